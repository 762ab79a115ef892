"""Gate results in the ledger: `refs/ledger/gates/<patch>/<gate>/<attempt>`.

One ref an attempt of one gate (or one shard of it) on one patch at one base; one commit a
transition of that attempt, as the test-gate machine of schemas/gate.json allows. The
commit's tree holds the attempt as a document (`gate.json`, valid against schemas/gate.json:
counts, failing tests, a log excerpt); the message's trailers carry what `ledger status`
shows, so one `for-each-ref` reads every result. An attempt is never rewritten: a rerun is a
new attempt with its own ref, so two CI jobs never race for one ref and `ledger sync` only
ever creates or fast-forwards them. The newest attempt of each shard decides (`verdict`).
The format is documented in docs/data-model.md.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from patch_ledger import git, ledger, machine, schemas
from patch_ledger.errors import LedgerError

PREFIX = "refs/ledger/gates/"
DOC = "gate.json"
FINISHED = tuple(sorted(machine.load("gate").terminal))  # an attempt that ended: schemas/gate.json's terminal states
# the verdicts that let a patch through: it passed, or it touches none of the gate's paths
SATISFIED = ("PASSED", "SKIPPED")

# trailer key -> field, in the order they are written; every one appears exactly once
TRAILERS: dict[str, str] = {
    "Ledger-Format": "format",
    "Ledger-Patch": "patch",
    "Ledger-Gate": "gate",
    "Ledger-Attempt": "id",
    "Ledger-Shard": "shard",
    "Ledger-State": "state",
    "Ledger-From": "source",
    "Ledger-At": "at",
    "Ledger-Actor": "actor",
    "Ledger-Reason": "reason",
    "Ledger-Base": "base",
    "Ledger-Required": "required",
    "Ledger-Duration": "duration_s",
    "Ledger-Counts": "counts",
}


class Result(NamedTuple):
    """One attempt's current state, as the trailers of its ref's tip say."""

    patch: str
    gate: str
    id: str  # the attempt
    shard: str  # "I/N"
    state: str
    source: str | None
    at: str
    actor: str
    reason: str
    base: str | None
    required: bool
    duration_s: float | None
    counts: dict[str, int]
    tip: str
    tree: str

    @property
    def ref(self) -> str:
        return ref_of(self.patch, self.gate, self.id)


def ref_of(patch: str, gate: str, attempt: str) -> str:
    return f"{PREFIX}{patch}/{gate}/{attempt}"


def new_attempt_id() -> str:
    """Sortable by when the attempt began, and unique across clones and CI jobs."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(4)


# --- the trailer format -----------------------------------------------------------------


def render(doc: Mapping[str, Any]) -> str:
    """The commit message of an attempt's latest transition."""
    last = doc["history"][-1]
    counts = ",".join(f"{k}={v}" for k, v in sorted((doc.get("counts") or {}).items()))
    values = {**doc, "format": ledger.FORMAT, "source": last["from"], "at": last["at"], "actor": last["actor"],
              "reason": last["reason"], "required": "yes" if doc.get("required") else "no", "counts": counts,
              "duration_s": f"{doc['duration_s']:.3f}" if doc.get("duration_s") is not None else None}
    lines = [f"ledger: gate {doc['gate']} {doc['state']} on {doc['patch'][:12]}", ""]
    for key, field in TRAILERS.items():
        value = values.get(field)
        lines.append(f"{key}: {ledger._one_line(str(value)) if value not in (None, '') else ledger.NONE}")
    return "\n".join(lines) + "\n"


def parse(block: str, tip: str, tree: str) -> Result:
    """A Result from a commit body's lines joined with \\x1f; ValueError says what is wrong."""
    seen: dict[str, str | None] = {}
    for item in filter(str.strip, block.split("\x1f")):
        key, sep, value = item.partition(": ")
        if not sep or key not in TRAILERS:
            raise ValueError(f"unknown or malformed trailer {item[:60]!r}")
        if TRAILERS[key] in seen:
            raise ValueError(f"trailer {key} appears twice")
        seen[TRAILERS[key]] = None if value.strip() == ledger.NONE else value.strip()
    missing = [k for k, f in TRAILERS.items() if f not in seen]
    if missing:
        raise ValueError(f"missing trailer(s) {', '.join(missing)}")
    return _checked(seen, tip, tree)


def _checked(v: dict[str, str | None], tip: str, tree: str) -> Result:
    m = machine.load("gate")
    if v["format"] != ledger.FORMAT:
        raise ValueError(f"Ledger-Format {v['format']} is not one this patch-ledger reads ({ledger.FORMAT})")
    if not v["patch"] or not ledger.ID.match(v["patch"]):
        raise ValueError(f"Ledger-Patch {v['patch']!r} is not a patch id")
    if not v["gate"] or not v["id"] or not v["shard"] or not parse_shard(v["shard"]):
        raise ValueError("Ledger-Gate, Ledger-Attempt and Ledger-Shard (I/N) are required")
    if v["state"] not in m.states or (v["source"] is not None and v["source"] not in m.states):
        raise ValueError(f"Ledger-State {v['state']!r} (from {v['source']!r}) is not a Test gate state")
    if not v["at"] or not machine.is_timestamp(v["at"]) or not v["actor"]:
        raise ValueError("Ledger-At (RFC 3339 UTC) and Ledger-Actor are required")
    if v["base"] is not None and not ledger.ID.match(v["base"]):
        raise ValueError(f"Ledger-Base {v['base']!r} is not a commit id")
    try:
        duration = None if v["duration_s"] is None else float(v["duration_s"])
        counts = {k: int(n) for k, _, n in (c.partition("=") for c in (v["counts"] or "").split(",") if c)}
    except ValueError:
        raise ValueError(f"Ledger-Duration {v['duration_s']!r} or Ledger-Counts {v['counts']!r} is not numbers") from None
    return Result(v["patch"], v["gate"], v["id"], v["shard"], v["state"], v["source"], v["at"], v["actor"],
                  v["reason"] or "", v["base"], v["required"] == "yes", duration, counts, tip, tree)


def disagreement(said: Result, block: str, doc: Mapping[str, Any]) -> str | None:
    """The first trailer of a commit (`said`, parsed from `block`) that is not what `render`
    makes of its document `doc` (valid against schemas/gate.json), or None: the trailers
    are a copy of the document, never news."""
    expected = ledger.block_of(render(doc).partition("\n\n")[2])
    if block == expected:  # as results.save writes it: nothing to compare field by field
        return None
    try:
        written = parse(expected, said.tip, said.tree)
    except ValueError as e:
        return f"{DOC} makes no well-formed trailers ({e})"
    for key, field in TRAILERS.items():
        if field in Result._fields and getattr(said, field) != getattr(written, field):
            return f"{key} says {getattr(said, field)!r}, {DOC} says {getattr(written, field)!r}"
    return None


def parse_shard(text: str) -> tuple[int, int] | None:
    """(I, N) of a shard written I/N with 1 <= I <= N; None when it is not one."""
    index, sep, count = text.partition("/")
    ok = bool(sep) and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)
    return (int(index), int(count)) if ok else None


# --- reading ----------------------------------------------------------------------------

_FORMAT = "%(refname)%00%(objectname)%00%(objecttype)%00%(tree)%00%(contents:body)%1e"


def read_all(root: Path, patches: Sequence[str] = ()) -> tuple[list[Result], list[ledger.Broken]]:
    """Every result (of `patches` only, when given), in one `for-each-ref`; and the refs
    under refs/ledger/gates/ that hold no well-formed result."""
    where = [f"{PREFIX}{p}/" for p in patches] if patches else [PREFIX]
    return _parsed(git.run(root, "for-each-ref", f"--format={_FORMAT}", *where).stdout.decode("utf-8", "replace"))


def latest(root: Path, gate: str, count: int) -> list[Result]:
    """The `count` attempts of `gate` (on any patch) that moved last, newest first."""
    out = git.run(root, "for-each-ref", "--sort=-committerdate", f"--count={count}", f"--format={_FORMAT}", f"{PREFIX}*/{gate}/*")
    return _parsed(out.stdout.decode("utf-8", "replace"))[0]


def _parsed(raw: str) -> tuple[list[Result], list[ledger.Broken]]:
    found: list[Result] = []
    broken: list[ledger.Broken] = []
    for record in raw.split("\x1e\n"):
        if record:
            ref, tip, kind, tree, body = (record.split("\0") + [""] * 5)[:5]
            try:
                if kind != "commit":
                    raise ValueError(f"points at a {kind or 'missing object'}, not a commit")
                result = parse(ledger.block_of(body), tip, tree)
                if ref != result.ref:
                    raise ValueError(f"holds attempt {result.id} of gate {result.gate} on {result.patch[:12]}, not the one its name says")
            except ValueError as e:
                broken.append(ledger.Broken(ref, str(e)))
                continue
            found.append(result)
    return found, broken


def read_sound(root: Path, patches: Sequence[str] = ()) -> list[Result]:
    found, broken = read_all(root, patches)
    if broken:
        raise LedgerError(f"{broken[0].ref}: {broken[0].reason}; `ledger verify` lists every broken ref")
    return found


def documents(root: Path, found: Iterable[Result]) -> dict[str, dict[str, Any]]:
    """ref -> the attempt's document (gate.json of its tip), read in one `cat-file --batch`."""
    wanted = {f"{r.tree}:{DOC}": r.ref for r in found}
    out: dict[str, dict[str, Any]] = {}
    for spec, data in git.read_blobs(root, wanted, 1 << 24).items():
        if isinstance(data, bytes):
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out[wanted[spec]] = doc
    return out


# --- writing ----------------------------------------------------------------------------


def begin(patch: str, gate: str, shard: str, base: str | None, plugin: str, required: bool, actor: str,
          at: str | None = None) -> dict[str, Any]:
    """A new attempt, PENDING (not written yet)."""
    return machine.new_document("gate", new_attempt_id(), actor, "created", at, fields={
        "gate": gate, "patch": patch, "plugin": plugin, "base": base, "shard": shard, "required": required})


def save(root: Path, doc: Mapping[str, Any], old_tip: str | None) -> str:
    """Write the attempt's current state as a commit on its ref (created when `old_tip` is
    None), with a compare-and-swap; its tip. The document must be valid: a writer never
    leaves what `ledger verify` would refuse."""
    errors = schemas.validate("gate", doc)
    if errors:
        raise LedgerError(f"gate {doc.get('gate')}: its result is not valid ({errors[0].message}); nothing was recorded")
    text = json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
    blob = git.hash_objects(root, "blob", [text])[0]
    tree = git.hash_objects(root, "tree", [ledger.tree_object(blob, DOC)])[0]
    last = doc["history"][-1]
    commit = git.hash_objects(root, "commit", [ledger.commit_object(tree, [old_tip] if old_tip else [], last, render(doc))])[0]
    ref = ref_of(doc["patch"], doc["gate"], doc["id"])
    if not ledger.swap(root, [(ref, commit, old_tip)]):
        raise LedgerError(f"{ref} was moved by another writer; an attempt has one writer, so something else wrote it")
    return commit


def step(doc: Mapping[str, Any], to: str, actor: str, reason: str = "", at: str | None = None, **fields: Any) -> dict[str, Any]:
    """The attempt moved to `to` with `fields`, as the gate machine and its guards allow."""
    return machine.advance(dict(doc), "gate", to, actor, reason, at, fields=fields)


# --- deciding ---------------------------------------------------------------------------


class Verdict(NamedTuple):
    """A gate's state for a patch at a base, from every shard's newest attempt."""

    state: str  # PENDING (nothing yet), RUNNING, PASSED, FAILED or SKIPPED
    reason: str
    attempts: tuple[Result, ...]  # the attempt that decides each shard, in shard order


def verdict(found: Iterable[Result], base: str | None) -> Verdict:
    """The state of one gate for one patch at `base`, from its attempts `found`: the newest
    attempt's shard count N says how many shards there are; each shard's newest attempt
    counts; PASSED only when all N are PASSED (or SKIPPED, with one PASSED), FAILED when any
    is FAILED. Results at another base do not count: the patch was tested on other code."""
    at_base = sorted((r for r in found if r.base == base), key=lambda r: r.id)
    if not at_base:
        return Verdict("PENDING", f"not run on {base[:12] if base else 'the empty tree'}", ())
    count = int(at_base[-1].shard.split("/")[1])
    newest = {r.shard: r for r in at_base if r.shard.endswith(f"/{count}")}
    decided = tuple(newest[f"{i}/{count}"] for i in range(1, count + 1) if f"{i}/{count}" in newest)
    states = [r.state for r in decided]
    failed = [r for r in decided if r.state == "FAILED"]
    if failed:
        return Verdict("FAILED", failed[0].reason, decided)
    if any(s not in FINISHED for s in states):
        return Verdict("RUNNING", f"{sum(s in FINISHED for s in states)} of {count} shard(s) finished", decided)
    if len(decided) < count:
        return Verdict("PENDING", f"{len(decided)} of {count} shards recorded", decided)
    if all(s == "SKIPPED" for s in states):
        return Verdict("SKIPPED", decided[0].reason, decided)
    return Verdict("PASSED", decided[0].reason if count == 1 else f"all {count} shards passed", decided)


def by_patch(found: Iterable[Result]) -> dict[str, dict[str, list[Result]]]:
    """patch -> gate -> its attempts."""
    out: dict[str, dict[str, list[Result]]] = {}
    for r in found:
        out.setdefault(r.patch, {}).setdefault(r.gate, []).append(r)
    return out


def of_patches(root: Path, patches: Sequence[Any], names: Iterable[str] = ()) -> dict[str, dict[str, Verdict]]:
    """patch id -> gate -> its verdict at the patch's base, for ledger.Patch-es `patches`
    (one `for-each-ref` of their results); `names` (the required gates) appear even
    without a result, as PENDING."""
    if not patches:
        return {}
    found = by_patch(read_sound(root, [p.id for p in patches]))
    wanted = list(names)
    return {p.id: summary(found.get(p.id, {}), p.base, wanted) for p in patches}


def summary(attempts: Mapping[str, list[Result]], base: str | None, names: Iterable[str] = ()) -> dict[str, Verdict]:
    """gate -> its verdict for one patch at `base`: every gate with an attempt, and `names`
    (the configured ones) even without one, as PENDING."""
    return {g: verdict(attempts.get(g, ()), base) for g in sorted({*attempts, *names})}
