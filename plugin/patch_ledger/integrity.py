"""`ledger verify`: the integrity of every ref of the patch ledger, read in bulk.

A handful of git processes whatever the ledger's size: one `for-each-ref` lists the refs
of patches and gate results (its warnings name the refs git cannot read), one `cat-file
--batch-check` says what each points at, one `git log` reads commit, parents, tree and
trailers of every commit of every history, one `cat-file --batch` the patches' bytes, one
`git patch-id --stable` their identities, one `cat-file --batch` the gate results'
documents. Each history is then checked as ledger.record and ledger.move write it, and as
sync merges two of them; each gate attempt as results.save writes it (docs/data-model.md).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from patch_ledger import documents, git, guards, ledger, machine, patches, results, schemas


class Problem(NamedTuple):
    """What is wrong with one ref of the ledger, and in which commit (or object)."""

    ref: str
    commit: str | None  # the commit at fault; the ref's target for a ref-level problem; None: unreadable ref
    message: str


class Commit(NamedTuple):
    parents: tuple[str, ...]
    tree: str
    trailers: str  # the message body's lines joined with \x1f (ledger.block_of), as ledger.read_all reads them


_UNREADABLE = re.compile(r"^warning: ignoring (broken ref|ref with broken name|dangling symref) (\S+)", re.M)
_LOG_FORMAT = "--format=%H %T %P%n%b"


def verify_ledger(root: Path, prefix: str = ledger.PREFIX) -> list[Problem]:
    """Every problem of every ref under `prefix` (the ledger's patches; or a remote's mirror
    of them, before sync takes anything from there) and of the gate results beside them
    (`gates_beside`), by ref; empty when all is sound."""
    gates = gates_beside(prefix)
    targets, histories, problems = _histories(root, prefix, gates)
    patch_histories = {ref: h for ref, h in histories.items() if ref.startswith(prefix)}
    for ref, history in patch_histories.items():
        problems += _history_problems(ref, history)
    problems += _bytes_problems(root, patch_histories)
    known = {ref[len(prefix):] for ref in targets if ref.startswith(prefix)}  # a broken patch is still there
    problems += _gate_problems(root, gates, {ref: h for ref, h in histories.items() if ref.startswith(gates)}, known)
    problems += _stale_locks(root, prefix, gates)
    order = {ref: i for i, ref in enumerate(sorted({p.ref for p in problems}))}
    return sorted(problems, key=lambda p: order[p.ref])  # stable: a ref's own problems stay oldest first


def gates_beside(prefix: str) -> str:
    """Where the gate results of the patches under `prefix` are: refs/ledger/gates/ beside
    refs/ledger/patches/, and so in a remote's mirror (refs/remotes/<remote>/ledger/)."""
    return prefix.rstrip("/").rpartition("/")[0] + "/" + results.PREFIX.removeprefix("refs/ledger/")


STALE_LOCK_SECONDS = 60  # a live writer holds a ref's lock for milliseconds


def _stale_locks(root: Path, *prefixes: str) -> list[Problem]:
    """Lock files a killed writer left under the ledger's refs: every later write of that
    ref would be refused until someone removes them."""
    import time

    paths = git.run(root, "rev-parse", *(a for p in prefixes for a in ("--git-path", p.rstrip("/")))).stdout.decode().splitlines()
    old = time.time() - STALE_LOCK_SECONDS
    problems = []
    for prefix, path in zip(prefixes, paths):
        where = Path(path) if Path(path).is_absolute() else root / path
        locks = sorted(where.rglob("*.lock")) if where.is_dir() else []  # gate refs nest: <patch>/<gate>/<attempt>
        problems += [Problem(prefix + lock.relative_to(where).as_posix()[:-len(".lock")], None,
                             f"a lock file left by a killed writer blocks it: remove {lock} if no git or ledger process is running")
                     for lock in locks if _modified_before(lock, old)]
    return problems


def _modified_before(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime < moment
    except FileNotFoundError:  # a live writer's lock, gone since it was listed
        return False


def lines_by_ref(problems: Iterable[Problem]) -> list[str]:
    """One line a broken ref, as `ledger verify` prints them: its first problem, and how many more."""
    grouped: dict[str, list[Problem]] = {}
    for p in problems:
        grouped.setdefault(p.ref, []).append(p)
    return [f"{ref}: {ps[0].message}" + (f" (and {len(ps) - 1} more)" if len(ps) > 1 else "") for ref, ps in grouped.items()]


# --- reading, in bulk -------------------------------------------------------------------


def _histories(root: Path, *prefixes: str) -> tuple[dict[str, str], dict[str, dict[str, Commit]], list[Problem]]:
    """Every ref under `prefixes` -> the object it names; the history of each ref that names
    a commit git can walk, oldest first; and the problems of the others."""
    targets, problems = _refs(root, *prefixes)
    kinds = _kinds(root, set(targets.values()))
    tips = {ref: oid for ref, oid in targets.items() if kinds.get(oid) == "commit"}
    problems += [Problem(ref, oid, _not_a_commit(oid, kinds.get(oid))) for ref, oid in targets.items() if ref not in tips]
    commits, incomplete = _commits(root, tips.values())
    problems += [Problem(ref, tip, incomplete[tip]) for ref, tip in tips.items() if tip in incomplete]
    return targets, {ref: _history(tip, commits) for ref, tip in tips.items() if tip not in incomplete}, problems


def _refs(root: Path, *prefixes: str) -> tuple[dict[str, str], list[Problem]]:
    """ref -> the object it names; git skips the refs it cannot read, with a warning each."""
    env = {**os.environ, "LC_ALL": "C"}  # the warnings are read: untranslated
    proc = git.run(root, "for-each-ref", "--format=%(refname)%00%(objectname)", *prefixes, env=env)
    targets = dict(line.split("\0", 1) for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines() if "\0" in line)
    unreadable = [Problem(ref, None, f"git cannot read it ({what}), nor delete it: remove the file .git/{ref}")
                  for what, ref in _UNREADABLE.findall(proc.stderr.decode("utf-8", "replace"))
                  if ref.startswith(prefixes)]
    return targets, unreadable


def _kinds(root: Path, oids: set[str]) -> dict[str, str]:
    """object id -> its type ("missing" when the repository lacks it)."""
    if not oids:
        return {}
    out = git.run(root, "cat-file", "--batch-check=%(objectname) %(objecttype)", input="".join(o + "\n" for o in oids).encode())
    return dict(line.split(" ", 1) for line in out.stdout.decode().splitlines() if " " in line)


def _not_a_commit(oid: str, kind: str | None) -> str:
    if kind in (None, "missing"):
        return f"points at {oid}, an object the repository does not have; restore it from a clone or delete the ref"
    return f"points at a {kind} ({oid}), not a ledger commit; delete the ref or restore it from a clone"


def _commits(root: Path, tips: Iterable[str]) -> tuple[dict[str, Commit], dict[str, str]]:
    """Every commit of every history, from one `git log`; and the tips whose history git
    cannot walk (a missing parent), each with git's words, found one by one only then."""
    tips = sorted(set(tips))
    if not tips:
        return {}, {}
    proc = git.run(root, "log", "-z", "--stdin", _LOG_FORMAT, input="".join(t + "\n" for t in tips).encode(), check=False)
    if proc.returncode == 0:
        return _parse_log(proc.stdout), {}
    commits: dict[str, Commit] = {}
    incomplete = {}
    for tip in tips:
        one = git.run(root, "log", "-z", _LOG_FORMAT, tip, "--", check=False)
        if one.returncode:
            said = (one.stderr.decode("utf-8", "replace").strip().splitlines() or ["git log failed"])[-1]
            incomplete[tip] = f"its history cannot be read ({said}); restore the missing objects from a clone"
        commits.update(_parse_log(one.stdout))
    return commits, incomplete


def _parse_log(out: bytes) -> dict[str, Commit]:
    commits = {}
    for record in out.decode("utf-8", "replace").split("\0"):
        head, _, body = record.lstrip("\n").partition("\n")
        fields = head.split()
        if len(fields) >= 2:
            commits[fields[0]] = Commit(tuple(fields[2:]), fields[1], ledger.block_of(body))
    return commits


def _history(tip: str, commits: dict[str, Commit]) -> dict[str, Commit]:
    """The commits reachable from `tip`, parents before children (oldest first)."""
    done: dict[str, Commit] = {}
    stack = [(tip, False)]
    while stack:
        oid, expanded = stack.pop()
        if oid in done:
            continue
        if expanded:
            done[oid] = commits[oid]
            continue
        stack.append((oid, True))
        stack += [(p, False) for p in reversed(commits[oid].parents) if p not in done]
    return done


# --- the rules --------------------------------------------------------------------------


def _history_problems(ref: str, history: dict[str, Commit]) -> Iterator[Problem]:
    name = ref.rsplit("/", 1)[-1]
    steps: dict[str, ledger.Patch] = {}
    for oid, c in history.items():
        try:
            steps[oid] = ledger.parse_block(c.trailers, oid, c.tree)
        except ValueError as e:
            yield Problem(ref, oid, f"commit {oid[:12]}: {e}")
            continue
        if steps[oid].id != name:
            yield Problem(ref, oid, f"commit {oid[:12]} records patch {steps[oid].id}, not the one the ref's name says")
        if len(c.parents) > 2:
            yield Problem(ref, oid, f"commit {oid[:12]} has {len(c.parents)} parents; a ledger merge joins two histories")
        elif all(p in steps for p in c.parents):  # a parent that does not parse is reported as itself
            for why in _step_problems(steps[oid], [steps[p] for p in c.parents]):
                yield Problem(ref, oid, f"commit {oid[:12]}: {why}")
    first = next(iter(history.values())).tree
    yield from (Problem(ref, oid, f"commit {oid[:12]} has tree {c.tree[:12]}, not the first commit's {first[:12]}; "
                        "every transition keeps the patch's bytes") for oid, c in history.items() if c.tree != first)


def _step_problems(step: ledger.Patch, parents: list[ledger.Patch]) -> Iterator[str]:
    """What is wrong with one commit given its parents' states: a first entry, a transition, or a merge."""
    m = machine.load("patch")
    if not parents:
        if step.source is not None or step.state != m.initial or step.seq != 1:
            yield (f"a first commit enters {m.initial} from nothing at seq 1, this one {step.source or 'nothing'} -> "
                   f"{step.state} at seq {step.seq}")
        return
    if len(parents) == 1:
        before = parents[0]
        if step.source != before.state:
            yield f"starts from {step.source or 'nothing'} but its parent is {before.state}"
        elif not m.is_legal(before.state, step.state):
            allowed = ", ".join(m.targets(before.state)) or "nothing: it is final"
            yield f"{before.state} -> {step.state} is not a Patch transition (from {before.state}: {allowed})"
    elif step.state != m.stronger(p.state for p in parents):
        yield (f"a merge of {' and '.join(p.state for p in parents)} resolves to {step.state}, not to "
               f"{m.stronger(p.state for p in parents)} as the precedence says")
    if step.seq != max(p.seq for p in parents) + 1:
        yield f"seq {step.seq} follows seq {max(p.seq for p in parents)}; each commit counts one up"
    latest = max(parents, key=lambda p: machine.time_key(p.at))
    if machine.time_key(step.at) < machine.time_key(latest.at):
        yield f"Ledger-At {step.at} is earlier than its parent's {latest.at}; time never goes back"


def _bytes_problems(root: Path, histories: dict[str, dict[str, Commit]]) -> list[Problem]:
    """The first commit's patch.diff of each ref: exactly that one file in its tree, and bytes
    whose `git patch-id --stable` is the ref's name. One read and one patch-id for all."""
    firsts = {ref: next(iter(h.items())) for ref, h in histories.items()}
    trees = sorted({c.tree for _, c in firsts.values()})
    blobs = git.read_blobs(root, [f"{t}:{ledger.PATCH_FILE}" for t in trees], patches.MAX_DIFF_BYTES)
    data = {t: blobs[f"{t}:{ledger.PATCH_FILE}"] for t in trees}
    ids = _patch_ids(root, {t: d for t, d in data.items() if isinstance(d, bytes) and _holds_only(t, d)})
    problems = []
    for ref, (oid, c) in firsts.items():
        why = _bytes_problem(ref.rsplit("/", 1)[-1], c.tree, data[c.tree], ids.get(c.tree, []))
        if why:
            problems.append(Problem(ref, oid, f"commit {oid[:12]}: {why}"))
    return problems


def _bytes_problem(name: str, tree: str, data: bytes | int | None, ids: list[str]) -> str | None:
    if data is None:
        return f"its tree {tree[:12]} holds no {ledger.PATCH_FILE}; the patch's bytes are lost"
    if isinstance(data, int):
        return f"{ledger.PATCH_FILE} is {data} bytes, over the {patches.MAX_DIFF_BYTES}-byte limit of a patch"
    if not _holds_only(tree, data):
        return f"its tree {tree[:12]} holds more than the one file {ledger.PATCH_FILE} (mode 100644) the ledger writes"
    if patches.unidentifiable_binary(data):
        return (f"{ledger.PATCH_FILE} has a binary change before any `index A..B` line, for which `git patch-id` "
                "hashes uninitialised memory: its id cannot be reproduced")
    if not ids:
        return f"{ledger.PATCH_FILE} has no patch id: git finds no diff in it"
    if len(ids) > 1:
        return f"`git patch-id` splits {ledger.PATCH_FILE} into {len(ids)} patches; its id covers only the first"
    if ids[0] != name:
        return f"{ledger.PATCH_FILE} has patch id {ids[0]}, not the ref's; the bytes were changed"
    return None


def _holds_only(tree: str, data: bytes, name: str = ledger.PATCH_FILE) -> bool:
    """Whether `tree` is exactly what the ledger makes of `data` as its one file `name`
    (ledger.store_diffs, results.save): recomputed, not read."""
    blob = git.object_id("blob", data, len(tree))
    return git.object_id("tree", ledger.tree_object(blob, name), len(tree)) == tree


# A patch after each diff, behind a `commit` line of a random id: whatever the diff's bytes do
# to git's parser (a stray line splits a patch; a `commit <id>` line starts one), its ids end
# where that fence's id appears, and bytes cannot imitate a fence they never saw.
_FENCE = b"diff --git a/fence b/fence\n--- a/fence\n+++ b/fence\n@@ -1 +1 @@\n-a\n+b\n"


def _patch_ids(root: Path, diffs: dict[str, bytes]) -> dict[str, list[str]]:
    """key -> the ids `git patch-id --stable` gives its bytes alone (one run for all): one for
    a diff, more when git reads several patches in it, none when it finds no diff."""
    if not diffs:
        return {}
    width = len(next(iter(diffs)))
    fences = {secrets.token_hex(width // 2): key for key in diffs}
    stream = b"".join(b"commit %s\n%s%scommit %s\n%s" % (b"0" * width, diffs[key], b"" if diffs[key].endswith(b"\n") else b"\n",
                                                          fence.encode(), _FENCE)
                      for fence, key in fences.items())
    found: dict[str, list[str]] = {}
    pending: list[str] = []
    for pid, mark in patches.patch_ids(root, stream):
        if mark in fences:
            found[fences[mark]], pending = pending, []
        else:
            pending.append(pid)
    return found


# --- gate results -----------------------------------------------------------------------


def _gate_problems(root: Path, prefix: str, histories: Mapping[str, dict[str, Commit]], known: set[str]) -> list[Problem]:
    """Every commit of every attempt under `prefix`, as results.save writes them, each one
    document read in one `cat-file --batch` for all; and the patch each names, `known` to
    the ledger."""
    docs = _gate_documents(root, {c.tree for history in histories.values() for c in history.values()})
    problems = []
    for ref, history in histories.items():
        for oid, c in history.items():
            before = docs[history[c.parents[0]].tree] if c.parents else None
            problems += [Problem(ref, oid, f"commit {oid[:12]}: {why}")
                         for why in _gate_commit_problems(prefix, ref, oid, c, docs[c.tree], before)]
        patch = ref[len(prefix):].partition("/")[0]
        if patch not in known:
            problems.append(Problem(ref, next(reversed(history)), f"a result of patch {patch[:12]}, which is not in the "
                                    "ledger: sync the clone that recorded the patch, or delete the ref"))
    return problems


def _gate_documents(root: Path, trees: set[str]) -> dict[str, dict[str, Any] | str]:
    """tree -> its gate.json, valid against schemas/gate.json; or what is wrong with it."""
    specs = {f"{tree}:{results.DOC}": tree for tree in sorted(trees)}
    blobs = git.read_blobs(root, specs, documents.MAX_BYTES)
    return {tree: _gate_document(tree, blobs[spec]) for spec, tree in specs.items()}


def _gate_document(tree: str, data: bytes | int | None) -> dict[str, Any] | str:
    if data is None:
        return f"its tree {tree[:12]} holds no {results.DOC}; the result is lost"
    if isinstance(data, int):
        return f"{results.DOC} is {data} bytes, over the {documents.MAX_BYTES}-byte limit of a document"
    if not _holds_only(tree, data, results.DOC):
        return f"its tree {tree[:12]} holds more than the one file {results.DOC} (mode 100644) the ledger writes"
    try:
        doc = documents.parse_json(documents.decode(data))
    except documents.InputProblem as e:
        return f"{results.DOC}: {e}"
    errors = schemas.validate("gate", doc)
    if errors:
        where = "/".join(map(str, errors[0].path)) or "the document"
        return f"{results.DOC} is not valid against schemas/gate.json ({where}: {errors[0].message})"
    return doc  # type: ignore[no-any-return]


def _gate_commit_problems(prefix: str, ref: str, oid: str, c: Commit, doc: dict[str, Any] | str,
                          before: dict[str, Any] | str | None) -> Iterator[str]:
    """What is wrong with one commit of an attempt, given its document and its parent's (None
    for the first commit)."""
    if len(c.parents) > 1:
        yield f"has {len(c.parents)} parents; an attempt's commits are one line, each the next transition"
    try:
        said: results.Result | None = results.parse(c.trailers, oid, c.tree)
    except ValueError as e:
        said = None
        yield str(e)
    if said is not None and f"{prefix}{said.patch}/{said.gate}/{said.id}" != ref:
        yield f"records attempt {said.id} of gate {said.gate} on {said.patch[:12]}, not the one the ref's name says"
    if isinstance(doc, str):
        yield doc
        return
    yield from _gate_document_problems(doc, before if isinstance(before, dict) else None)
    disagreement = results.disagreement(said, c.trailers, doc) if said is not None else None
    if disagreement:
        yield disagreement


def _gate_document_problems(doc: dict[str, Any], before: dict[str, Any] | None) -> Iterator[str]:
    """A legal walk of the gate machine (its guards too) that extends the parent's document."""
    m = machine.load("gate")
    yield from (p.message for p in machine.history_problems(m, doc))
    yield from (p.message for p in guards.document_problems(m, doc))
    if before is not None:
        yield from (p.message for p in machine.change_problems(m, before, doc))
        if len(doc["history"]) <= len(before["history"]):
            yield "adds no transition to its parent's history; each commit of an attempt is one"
