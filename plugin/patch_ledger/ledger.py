"""The patch ledger in `refs/ledger/patches/<id>`: one ref a patch, one commit a transition.

Every commit's message ends in strict trailers that carry the patch's full current state,
so one `git for-each-ref` reads the whole ledger. The first commit's tree holds the patch's
bytes (`patch.diff`), exactly as git produced them; later commits reuse that tree. Every
ref write is a compare-and-swap through `git update-ref --stdin`, with a reflog. The format
is documented in docs/data-model.md; its version is the `Ledger-Format` trailer.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from patch_ledger import git, machine
from patch_ledger.errors import LedgerError

PREFIX = "refs/ledger/patches/"
FORMAT = "1"
PATCH_FILE = "patch.diff"
NONE = "-"
ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # a patch id: sha1 or sha256 hex
PREFIX_OF_ID = re.compile(r"^[0-9a-f]{4,64}$")

# trailer key -> Patch field, in the order they are written; every one appears exactly once
TRAILERS: dict[str, str] = {
    "Ledger-Format": "format",
    "Ledger-Patch": "id",
    "Ledger-Seq": "seq",
    "Ledger-State": "state",
    "Ledger-From": "source",
    "Ledger-At": "at",
    "Ledger-Actor": "actor",
    "Ledger-Reason": "reason",
    "Ledger-Base": "base",
    "Ledger-Task": "task",
    "Ledger-Message": "message",
    "Ledger-Gates": "gates",
    "Ledger-Inverse": "inverse",
    "Ledger-Superseded-By": "superseded_by",
}


class Patch(NamedTuple):
    """A patch's current state, as the trailers of its ref's tip commit say."""

    id: str
    tip: str  # the commit the ref points at
    tree: str  # holds patch.diff
    seq: int
    state: str
    source: str | None  # the state it came from (None for the first entry)
    at: str
    actor: str
    reason: str
    base: str | None
    task: str | None
    message: str | None
    gates: dict[str, str]
    inverse: str | None  # the id of this patch's reverse diff, once known (to spot its revert)
    superseded_by: str | None

    @property
    def ref(self) -> str:
        return PREFIX + self.id


class Broken(NamedTuple):
    """A ref under refs/ledger/patches/ that does not hold a well-formed ledger commit."""

    ref: str
    reason: str


def _kind() -> machine.Machine:
    return machine.load("patch")


# --- the trailer format -----------------------------------------------------------------


def _one_line(value: str) -> str:
    return " ".join(value.split()) or NONE


def render(fields: Mapping[str, Any]) -> str:
    """The commit message of one ledger transition."""
    if _one_line(str(fields.get("actor") or "")) == NONE:
        raise LedgerError(f"actor {fields.get('actor')!r} is not a name; pass --actor NAME")
    values = dict(fields)
    values["format"] = FORMAT
    values["gates"] = ",".join(f"{k}={v}" for k, v in sorted((values.get("gates") or {}).items())) or NONE
    lines = [f"ledger: {values['id'][:12]} {values['state']}", ""]
    for key, field in TRAILERS.items():
        value = values.get(field)
        lines.append(f"{key}: {_one_line(str(value)) if value not in (None, '') else NONE}")
    return "\n".join(lines) + "\n"


# The trailers as `render` writes them: one match reads a well-formed block, in C.
_CANONICAL = re.compile("\x1f".join(f"{re.escape(k)}: ?([^\x1f]*)" for k in TRAILERS) + r"\Z")


def parse_block(block: str, tip: str, tree: str) -> Patch:
    """A Patch from the trailers that for-each-ref or log joined with \\x1f."""
    match = _CANONICAL.match(block)
    if match is None:
        return parse(_split(block), tip, tree)  # the strict path says what is wrong
    return _checked(dict(zip(TRAILERS.values(), (None if v.strip() == NONE else v.strip() for v in match.groups()))), tip, tree)


def parse(trailers: Sequence[tuple[str, str]], tip: str, tree: str) -> Patch:
    """A Patch from its trailers, refusing anything but exactly one of each known key."""
    seen: dict[str, str] = {}
    for key, value in trailers:
        if key not in TRAILERS:
            raise ValueError(f"unknown trailer {key}")
        if key in seen:
            raise ValueError(f"trailer {key} appears twice")
        seen[key] = value.strip()
    missing = [k for k in TRAILERS if k not in seen]
    if missing:
        raise ValueError(f"missing trailer(s) {', '.join(missing)}")
    return _checked({TRAILERS[k]: (None if value == NONE else value) for k, value in seen.items()}, tip, tree)


def _checked(v: dict[str, Any], tip: str, tree: str) -> Patch:
    if v["format"] != FORMAT:
        raise ValueError(f"Ledger-Format {v['format']} is not one this patch-ledger reads ({FORMAT})")
    if not v["id"] or not ID.match(v["id"]):
        raise ValueError(f"Ledger-Patch {v['id']!r} is not a patch id")
    if not (v["seq"] or "").isdigit() or int(v["seq"]) < 1:
        raise ValueError(f"Ledger-Seq {v['seq']!r} is not a positive number")
    states = _kind().states
    for field in ("state", "source"):
        if v[field] is not None and v[field] not in states:
            raise ValueError(f"{field} {v[field]!r} is not a Patch state")
    if v["state"] is None or not v["at"] or not machine.is_timestamp(v["at"]) or not v["actor"]:
        raise ValueError("Ledger-State, Ledger-At (RFC 3339 UTC) and Ledger-Actor are required")
    gates = _gates(v["gates"])
    return Patch(v["id"], tip, tree, int(v["seq"]), v["state"], v["source"], v["at"], v["actor"], v["reason"] or "",
                 v["base"], v["task"], v["message"], gates, v["inverse"], v["superseded_by"])


def _split(raw: str) -> list[tuple[str, str]]:
    pairs = []
    for item in raw.split("\x1f"):
        if item.strip():
            key, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"malformed trailer {item!r}")
            pairs.append((key.strip(), value))
    return pairs


# --- reading ----------------------------------------------------------------------------

# The raw message body, not `%(trailers)`: a ledger commit's body is its trailer block in one
# canonical form, which the strict regex below reads faster than git's trailer parser would
# (git needs ~40 ms of its ~90 ms on 10,000 refs for `%(trailers)`); anything else is broken.
_FORMAT = "%(refname)%00%(objectname)%00%(objecttype)%00%(tree)%00%(contents:body)%1e"


@lru_cache(maxsize=None)
def _strict_line() -> re.Pattern[str]:
    """One for-each-ref line of a well-formed ledger ref, every field checked by the regex
    itself (states from the patch machine, the timestamp's form from common.json)."""
    stamp = re.sub(r"\((?!\?)", "(?:", machine.stamp_form().pattern.removeprefix("^").removesuffix(r"\Z"))
    value = r"([^\x1f\n]*)"
    fields = {"Ledger-Format": re.escape(FORMAT), "Ledger-Patch": r"([0-9a-f]{40}(?:[0-9a-f]{24})?)",
              "Ledger-Seq": r"([1-9][0-9]*)", "Ledger-State": "([A-Z_]+)", "Ledger-From": "([A-Z_]+|-)",
              "Ledger-At": f"({stamp})", "Ledger-Actor": r"([^\x1f\n]+)"}  # states: checked against the machine
    trailers = "\x1f".join(f"{re.escape(k)}: {fields.get(k, value)}" for k in TRAILERS)
    return re.compile(r"^[^\0\n]*/([0-9a-f]+)\0([0-9a-f]+)\0commit\0([0-9a-f]+)\0" + trailers + "$", re.M)


def _fast(text: str) -> dict[str, Patch] | None:
    """Every patch when every line is well-formed (one regex pass), else None."""
    found: dict[str, Patch] = {}
    states = frozenset(_kind().states) | {NONE}
    real_time = machine.real_time
    for m in _strict_line().finditer(text):
        name, tip, tree, _id, seq, state, source, at, actor, reason, base, task, message, gates, inverse, by = m.groups()
        if name != _id or state not in states or source not in states or state == NONE or not real_time(at):
            return None
        found[_id] = Patch(_id, tip, tree, int(seq), state, None if source == NONE else source, at, actor,
                           "" if reason == NONE else reason, None if base == NONE else base, None if task == NONE else task,
                           None if message == NONE else message, {} if gates == NONE else _gates(gates),
                           None if inverse == NONE else inverse, None if by == NONE else by)
    return found if len(found) == text.count("\n") else None


def _gates(text: str | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (text or "").split(",") if "=" in item)


def read_all(root: Path, *patterns: str) -> tuple[dict[str, Patch], list[Broken]]:
    """Every patch of the ledger (one `for-each-ref`; or the refs matching `patterns`), and
    the refs that hold no ledger commit."""
    raw = git.run(root, "for-each-ref", f"--format={_FORMAT}", *(patterns or (PREFIX,))).stdout.decode("utf-8", "replace")
    text = "".join(block_of(r) + "\n" for r in raw.split("\x1e\n") if r)  # one ref a line
    fast = _fast(text)
    if fast is not None:
        return fast, []
    patches: dict[str, Patch] = {}
    broken: list[Broken] = []
    _read_lines(text, patches, broken)
    return patches, broken


def _read_lines(text: str, patches: dict[str, Patch], broken: list[Broken]) -> None:
    """The strict path, line by line: what is wrong with each broken ref."""
    for line in text.splitlines():
        ref, tip, kind, tree, trailers = (line.split("\0") + [""] * 5)[:5]
        try:
            if kind != "commit":
                raise ValueError(f"points at a {kind or 'missing object'}, not a commit")
            patch = parse_block(trailers, tip, tree)
            if ref.rsplit("/", 1)[-1] != patch.id:
                raise ValueError(f"holds patch {patch.id[:12]}, not the one its name says")
        except ValueError as e:
            broken.append(Broken(ref, str(e)))
            continue
        patches[patch.id] = patch


def block_of(body: str) -> str:
    """A commit body's lines joined with \\x1f: the one form every reader of the ledger parses
    (read_all, history, `ledger verify`), strictly, whatever git's trailer parser would make of it."""
    return body.rstrip("\n").replace("\n", "\x1f")


def sound(found: tuple[dict[str, Patch], list[Broken]]) -> dict[str, Patch]:
    """The patches read, when no ref was broken; a broken ref is bad input."""
    patches, broken = found
    if broken:
        raise LedgerError(f"{broken[0].ref}: {broken[0].reason}; `ledger verify` lists every broken ref")
    return patches


def read_sound(root: Path) -> dict[str, Patch]:
    """Every patch; a broken ref is bad input (run `ledger verify` to list them all)."""
    return sound(read_all(root))


def resolve(patches: Mapping[str, Patch], given: str) -> Patch:
    """The patch whose id starts with `given` (a unique prefix of at least 4 hex digits)."""
    wanted = given.strip().lower()
    if not PREFIX_OF_ID.match(wanted):
        raise LedgerError(f"{given!r} is not a patch id; ids are hexadecimal (at least 4 digits of one)")
    found = [p for i, p in patches.items() if i.startswith(wanted)]
    if not found:
        raise LedgerError(f"no patch {given} in the ledger; `ledger patch list` shows them")
    if len(found) > 1:
        raise LedgerError(f"{given} is the start of {len(found)} patch ids; give more digits")
    return found[0]


def find(root: Path, given: str) -> Patch:
    """The patch whose id starts with `given`, reading only the refs that could match."""
    wanted = given.strip().lower()
    if not PREFIX_OF_ID.match(wanted):
        raise LedgerError(f"{given!r} is not a patch id; ids are hexadecimal (at least 4 digits of one)")
    return resolve(sound(read_all(root, f"{PREFIX}{wanted}*")), wanted)


def history(root: Path, patch: Patch) -> list[Patch]:
    """Every transition of `patch`, oldest first (both sides of a merged history)."""
    return histories(root, [patch.tip]).get(patch.id, [])


def histories(root: Path, tips: Sequence[str] = ()) -> dict[str, list[Patch]]:
    """patch id -> its transitions, oldest first: of the histories of `tips`, or of the whole
    ledger, in one `git log`."""
    where = list(tips) or [f"--glob={PREFIX}*"]
    out = git.run(root, "log", "--topo-order", "--reverse", "--format=%H%x00%T%x00%b%x1e", *where, "--").stdout.decode("utf-8", "replace")
    steps: dict[str, list[Patch]] = {}
    for record in out.split("\x1e"):
        record = record.lstrip("\n")
        if record:
            tip, tree, body = (record.split("\0") + ["", ""])[:3]
            try:
                step = parse_block(block_of(body), tip, tree)
            except ValueError as e:
                raise LedgerError(f"commit {tip[:12]} of the ledger: {e}; `ledger verify` lists every broken ref") from None
            steps.setdefault(step.id, []).append(step)
    return steps


# --- writing ----------------------------------------------------------------------------


def commit_object(tree: str, parents: Iterable[str], fields: Mapping[str, Any], message: str | None = None) -> bytes:
    """A commit object's content: its author is the actor, its dates the transition's time;
    its message the patch's trailers (or `message`: a gate result's)."""
    name = " ".join(str(fields["actor"]).replace("<", "").replace(">", "").split()) or "ledger"
    stamp = machine.epoch(fields["at"])
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents),
             f"author {name} <ledger@patch-ledger.invalid> {stamp} +0000",
             f"committer patch-ledger <ledger@patch-ledger.invalid> {stamp} +0000", "",
             render(fields) if message is None else message]
    return "\n".join(lines).encode("utf-8")


def write_commit(root: Path, tree: str, parents: Iterable[str], fields: Mapping[str, Any]) -> str:
    return git.hash_objects(root, "commit", [commit_object(tree, parents, fields)])[0]


def tree_object(blob: str, name: str = PATCH_FILE) -> bytes:
    """A tree of one regular file: a patch's `patch.diff` (or a gate result's document)."""
    return b"100644 " + name.encode() + b"\0" + bytes.fromhex(blob)


def store_diffs(root: Path, diffs: Sequence[bytes]) -> list[str]:
    """The trees holding each diff as patch.diff (objects written, nothing referenced yet)."""
    return git.hash_objects(root, "tree", [tree_object(b) for b in git.hash_objects(root, "blob", diffs)])


class Locked(LedgerError):
    """A ref's lock file is held: by a writer at work, or left by one that was killed."""


LOCK_WAIT_SECONDS = 2.0  # a live writer holds a ref's lock for milliseconds


def swap(root: Path, updates: Sequence[tuple[str, str, str | None]]) -> bool:
    """Move every (ref, new, expected old; None: must not exist) at once, or none: False when
    another writer moved one first. Reflogs are kept for every ledger ref. A lock that stays
    held is named (Locked): retrying cannot help when a killed writer left it."""
    zero = "0" * len(updates[0][1])
    lines = ["start", *(f"update {ref} {new} {old or zero}" for ref, new, old in updates), "prepare", "commit", ""]
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        proc = git.run(root, "update-ref", "--create-reflog", "--stdin", input="\n".join(lines).encode(), check=False)
        if proc.returncode == 0:
            return True
        err = proc.stderr.decode(errors="replace")
        lock = re.search(r"Unable to create '([^']+\.lock)': File exists", err)
        if lock is None:
            if "but expected" in err or "reference already exists" in err:
                return False  # another writer moved it first
            raise LedgerError(f"git update-ref failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
        if time.monotonic() > deadline:
            raise Locked(f"{lock.group(1)} is held; if no git or ledger process is running (a writer was killed), remove it")
        time.sleep(0.02)


def record(root: Path, new: Sequence[tuple[str, bytes, Mapping[str, Any]]]) -> list[tuple[Patch, bool]]:
    """Record patches (id, diff bytes, fields) as PENDING, all with a handful of git processes;
    each comes back with False when it was in the ledger already (the same content)."""
    known = ids_in_ledger(root)
    fresh = [(i, diff, fields) for i, diff, fields in dict((n[0], n) for n in new).values() if i not in known]
    ours: dict[str, str] = {}
    if fresh:
        trees = store_diffs(root, [diff for _, diff, _ in fresh])
        values = [{**fields, "id": i, "seq": 1, "state": _kind().initial, "source": None, "at": fields.get("at") or machine.now()}
                  for i, _, fields in fresh]
        tips = git.hash_objects(root, "commit", [commit_object(t, [], v) for t, v in zip(trees, values)])
        ours = {v["id"]: tip for v, tip in zip(values, tips)}
        updates = [(PREFIX + i, tip, None) for i, tip in ours.items()]
        if not swap(root, updates):  # someone recorded one of them meanwhile: one at a time then
            for update in updates:
                swap(root, [update])
    existing = read_ids(root, [i for i, _, _ in new])
    return [(existing[i], existing[i].tip == ours.get(i)) for i, _, _ in new]


def ids_in_ledger(root: Path) -> set[str]:
    """The ids of every patch, by the refs' names alone (no trailer read)."""
    out = git.run(root, "for-each-ref", "--format=%(refname:lstrip=3)", PREFIX).stdout.decode()
    return set(out.split())


def read_ids(root: Path, ids: Sequence[str]) -> dict[str, Patch]:
    """The patches of these ids (one for-each-ref of exactly their refs)."""
    wanted = list(dict.fromkeys(ids))
    found: dict[str, Patch] = {}
    for start in range(0, len(wanted), 2000):  # keep the command line well under its limit
        found.update(sound(read_all(root, *(PREFIX + i for i in wanted[start:start + 2000]))))
    return found


class Step(NamedTuple):
    patch: Patch
    to: str
    actor: str
    reason: str = ""


def _next(patch: Patch, to: str, actor: str, reason: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `patch` after the step to `to`, or LedgerError when the step is illegal."""
    m = _kind()
    if not m.is_legal(patch.state, to):
        allowed = ", ".join(m.targets(patch.state)) or "nothing: it is final"
        raise LedgerError(f"patch {patch.id[:12]} is {patch.state}; it cannot go to {to} (from {patch.state}: {allowed})")
    at = machine.now()
    if machine.time_key(at) < machine.time_key(patch.at):
        at = patch.at
    return {**patch._asdict(), **fields, "seq": patch.seq + 1, "state": to, "source": patch.state, "at": at,
            "actor": actor, "reason": reason}


def _moved(values: Mapping[str, Any], tip: str) -> Patch:
    return Patch(**{**{k: v for k, v in values.items() if k in Patch._fields}, "tip": tip})


def move_many(root: Path, steps: Sequence[Step]) -> list[Patch]:
    """Many steps of different patches in one transaction: every commit written by one git
    process, every ref swapped by one `update-ref --stdin`. When another writer moved one of
    them first, each step is retried on its own (`move`)."""
    if not steps:
        return []
    if len({s.patch.id for s in steps}) != len(steps):
        raise LedgerError("one patch twice in one batch; give each patch one step")
    values = [_next(s.patch, s.to, s.actor, s.reason, {}) for s in steps]
    tips = git.hash_objects(root, "commit", [commit_object(s.patch.tree, [s.patch.tip], v) for s, v in zip(steps, values)])
    if swap(root, [(s.patch.ref, tip, s.patch.tip) for s, tip in zip(steps, tips)]):
        return [_moved(v, tip) for v, tip in zip(values, tips)]
    current = read_ids(root, [s.patch.id for s in steps])
    moved, refused = [], []
    for s in steps:  # each on its own now: every legal one is made, whatever the others do
        try:
            moved.append(move(root, current.get(s.patch.id, s.patch), s.to, s.actor, s.reason))
        except LedgerError as e:
            refused.append(f"{s.patch.id[:12]}: {e}")
    if refused:
        raise LedgerError(f"{len(refused)} of {len(steps)} steps refused (the others were made): {refused[0]}")
    return moved


def move(root: Path, patch: Patch, to: str, actor: str, reason: str = "", **fields: Any) -> Patch:
    """`patch` to state `to` with a compare-and-swap; after a lost race, again on the new tip
    while the step is still legal from there, else refused naming the state that won."""
    for attempt in range(50):
        try:
            values = _next(patch, to, actor, reason, fields)
        except LedgerError as e:
            if attempt:  # the race was lost to a step that makes this one illegal: say who won
                raise LedgerError(f"{e} — another writer moved it to {patch.state} first") from None
            raise
        tip = write_commit(root, patch.tree, [patch.tip], values)
        if swap(root, [(patch.ref, tip, patch.tip)]):
            return _moved(values, tip)
        import random  # only after a lost race: not on every start

        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        current, _ = read_all(root, patch.ref)
        if patch.id not in current:
            raise LedgerError(f"{patch.ref} disappeared while moving it; is someone deleting ledger refs?")
        patch = current[patch.id]
    raise LedgerError(f"patch {patch.id[:12]}: gave up after 50 lost races; the ledger is too busy, try again")


def patch_bytes(root: Path, patch: Patch) -> bytes:
    blobs = git.read_blobs(root, [f"{patch.tree}:{PATCH_FILE}"], 1 << 62)
    data = blobs[f"{patch.tree}:{PATCH_FILE}"]
    if not isinstance(data, bytes):
        raise LedgerError(f"{patch.ref}: its tree holds no {PATCH_FILE}; run `ledger verify`")
    return data

