"""`ledger sync`: the patch ledger through a git remote — fetch, merge, push.

What the remote holds is fetched into `refs/remotes/<remote>/ledger/patches/` and
`.../ledger/gates/`, a mirror and the only namespace a `+` may touch; `refs/ledger/` moves
only by our own compare-and-swap: a patch new to this clone is created, one that is behind
fast-forwarded, and one whose history diverged gets a merge commit with both tips as
parents, so no transition is ever lost. A gate result is only ever created or
fast-forwarded: an attempt has one writer, so one that diverged is refused. The push is
atomic and never forced: when the remote moved meanwhile, git refuses it, and we fetch,
merge and push again. The merge rules are in docs/data-model.md ("Merging divergent
histories", "Gate results"); the precedence of states is data, in schemas/patch.json.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from patch_ledger import config, git, integrity, ledger, machine, patches, results
from patch_ledger.errors import LedgerError

ATTEMPTS = 5  # fetch-merge-push rounds before giving up on a remote that keeps moving
ACTOR = "ledger sync"
CARRIED = (ledger.PREFIX, results.PREFIX)  # what sync carries: the patches and their gate results
_PUSH = tuple(f"{prefix}*:{prefix}*" for prefix in CARRIED)  # no `+`: the remote refuses what is not a fast-forward
# Why a push was refused, when it means "the remote moved meanwhile": on the client's side
# (it saw the new tip) or the remote's (its ref moved after it advertised it to us).
_MOVED = re.compile(r"fetch first|non-fast-forward|stale info|atomic push failed|atomic transaction failed"
                    r"|failed to update ref|failed to lock|cannot lock ref|incorrect old value")
_NOT_A_NAME = re.compile(r"[\s:*?\[\\^~]|\.\.|^-|^$")


class Merged(NamedTuple):
    """A patch whose two histories were joined by a merge commit."""

    id: str
    local: str  # the state this clone had
    remote: str  # the state the remote had
    state: str  # the state the merge resolved to
    tip: str  # the merge commit


class SyncReport(NamedTuple):
    remote: str
    fetched: int  # patches new to this clone
    fast_forwarded: int
    merged: tuple[Merged, ...]
    pushed: int  # refs the remote took from us
    attempts: int  # fetch-merge-push rounds: more than one when the remote moved meanwhile
    gates_fetched: int = 0  # gate attempts new to this clone
    gates_forwarded: int = 0


class _Sides(NamedTuple):
    """name -> tip of the refs of one namespace: in this clone, and in the remote's mirror."""

    local: dict[str, str]
    theirs: dict[str, str]


class _Moves(NamedTuple):
    """The names of one namespace by how this clone's refs relate to the remote's."""

    new: list[str]  # only on the remote
    forward: list[str]  # this clone's tip is an ancestor of the remote's
    diverged: list[str]  # both moved on from a common commit, or they share none


class _Taken(NamedTuple):
    """What one round brought into the local ledger."""

    created: int
    forwarded: int
    merged: tuple[Merged, ...]
    gates_created: int
    gates_forwarded: int
    local: dict[str, str]  # id -> tip after the round
    local_gates: dict[str, str]  # <patch>/<gate>/<attempt> -> tip after the round
    complete: bool  # False when a local writer moved a ref meanwhile


def tracking_prefix(remote: str, local: str = ledger.PREFIX) -> str:
    """Where the remote's refs under `local` (refs/ledger/patches/ or gates/) are mirrored."""
    return f"refs/remotes/{remote}/{local.removeprefix('refs/')}"


def fetch_refspecs(remote: str) -> list[str]:
    # the `+` is for the mirror only: it follows the remote wherever it goes, while
    # refs/ledger/ is never fetched into and moves only by our compare-and-swap
    return [f"+{prefix}*:{tracking_prefix(remote, prefix)}*" for prefix in CARRIED]


def remote_of(root: Path, given: str | None) -> str:
    """The remote to sync with: `given`, else `sync.remote` of the configuration, else origin;
    LedgerError when the repository has no such remote."""
    name = given or config.load(root).get("sync", {}).get("remote") or "origin"
    known = not _NOT_A_NAME.search(name) and git.run(root, "config", "--get", f"remote.{name}.url", check=False).returncode == 0
    if not known:
        raise LedgerError(f"no git remote named {name!r} in {root}; `git remote -v` lists them "
                          f"(`git remote add {name} URL` adds one, `sync.remote` in .ledger/config.yaml picks the default)")
    return name


def configure_remote(root: Path, remote: str) -> bool:
    """Make plain `git fetch <remote>` bring the ledger too (into the mirror): its patches
    and its gate results, a refspec each; True when one was added, False when both were
    there already."""
    name = remote_of(root, remote)
    have = git.run(root, "config", "--get-all", f"remote.{name}.fetch", check=False).stdout.decode().splitlines()
    missing = [spec for spec in fetch_refspecs(name) if spec not in have]
    # No push refspec on purpose: once remote.<name>.push is set, a plain `git push` pushes
    # only what it lists, so the user's branches would silently stop being pushed (and the
    # ledger would be pushed without the fetch and merge that must precede it). The ledger
    # goes out through `ledger sync` alone.
    for spec in missing:
        git.run(root, "config", "--add", f"remote.{name}.fetch", spec)
    return bool(missing)


def sync(root: Path, remote: str | None = None, actor: str = ACTOR, push: bool = True) -> SyncReport:
    """Fetch the remote's ledger, bring every patch in (create, fast-forward, or merge), and
    push what the remote lacks (unless not `push`: a job that may not, or not yet);
    again from the fetch while the remote moves meanwhile."""
    name = remote_of(root, remote)
    # The no-op is the common case and must stay fast: a fetch walks every fetched tip to
    # check connectivity (0.2-0.5 s with 10,000 refs), listing the remote's refs does not.
    if _advertised(root, name, *CARRIED) == _tips(root, *CARRIED):
        return SyncReport(name, 0, 0, (), 0, 1)
    report = SyncReport(name, 0, 0, (), 0, 0)
    for attempt in range(1, ATTEMPTS + 1):
        _fetch(root, name)
        _refuse_broken(root, tracking_prefix(name), f"{name}'s ledger", "nothing was taken; it needs fixing there")
        local, theirs, local_gates, their_gates = _tips(root, ledger.PREFIX, tracking_prefix(name),
                                                        results.PREFIX, tracking_prefix(name, results.PREFIX))
        taken = _take(root, name, _Sides(local, theirs), _Sides(local_gates, their_gates), actor)
        report = _added(report, taken, attempt)
        # a revert, or the patch it reverts, may have come in: either way the patch is rolled back
        rolled = patches.roll_back_reverted(root, actor) if (taken.created or taken.forwarded or taken.merged) else []
        if taken.complete:
            if not push or (not rolled and taken.local.items() <= theirs.items() and taken.local_gates.items() <= their_gates.items()):
                return report  # the remote has it all, or is not to be given it
            _refuse_broken(root, ledger.PREFIX, "this ledger", "nothing was pushed; `ledger verify` names every problem")
            pushed = _push(root, name)
            if pushed is not None:
                return report._replace(pushed=pushed)
        time.sleep(random.uniform(0, 0.05 * attempt))
    raise LedgerError(f"sync with {name}: the remote's ledger (or this one) kept moving through {ATTEMPTS} "
                      "rounds of fetch, merge and push; run `ledger sync` again")


def _added(report: SyncReport, taken: _Taken, attempt: int) -> SyncReport:
    """The report after one more round that took `taken`."""
    return report._replace(fetched=report.fetched + taken.created, fast_forwarded=report.fast_forwarded + taken.forwarded,
                           merged=(*report.merged, *taken.merged), attempts=attempt,
                           gates_fetched=report.gates_fetched + taken.gates_created,
                           gates_forwarded=report.gates_forwarded + taken.gates_forwarded)


def _advertised(root: Path, remote: str, *prefixes: str) -> tuple[dict[str, str], ...]:
    """For each of `prefixes`, name -> tip of the refs under it the remote holds, as it
    advertises them (nothing fetched)."""
    proc = git.run(root, "ls-remote", "--refs", remote, *(prefix + "*" for prefix in prefixes), check=False)
    _refuse_failed(proc.returncode, proc.stderr, "reading the ledger of", remote)
    return _by_prefix(proc.stdout.decode(), prefixes)  # a pattern matches the end of a name: keep ours only


def _fetch(root: Path, remote: str) -> None:
    # --prune: the mirror follows the remote, deletions too (a diverged gate result deleted
    # there must not stay in the mirror to be refused again)
    proc = git.run(root, "fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                   remote, *fetch_refspecs(remote), check=False)
    _refuse_failed(proc.returncode, proc.stderr, "fetching the ledger from", remote)


def _refuse_failed(returncode: int, stderr: bytes, what: str, remote: str) -> None:
    if returncode != 0:
        raise LedgerError(f"sync: {what} {remote} failed: {_last_line(stderr)}; "
                          "check the remote (`git remote -v`) and your access to it")


def _tips(root: Path, *prefixes: str) -> tuple[dict[str, str], ...]:
    """For each of `prefixes`, name -> tip of the refs under it: one git call for all."""
    return _by_prefix(git.run(root, "for-each-ref", "--format=%(objectname)%09%(refname)", *prefixes).stdout.decode(), prefixes)


def _by_prefix(listing: str, prefixes: Sequence[str]) -> tuple[dict[str, str], ...]:
    """For each of `prefixes`, name -> tip of the refs of `listing` (`tip<TAB>ref` lines) under it."""
    found: tuple[dict[str, str], ...] = tuple({} for _ in prefixes)
    for line in listing.splitlines():
        tip, _, ref = line.partition("\t")
        for prefix, tips in zip(prefixes, found):
            if ref.startswith(prefix):
                tips[ref[len(prefix):]] = tip
                break
    return found


def _take(root: Path, remote: str, patch_tips: _Sides, gate_tips: _Sides, actor: str) -> _Taken:
    """Bring the remote's patches and gate results into the local ledger, every ref in one
    transaction; a gate attempt that diverged stops the round before anything is written."""
    moves, gate_moves = _compare(root, patch_tips, gate_tips)
    _refuse_diverged(remote, gate_moves.diverged, gate_tips)
    merges = _merges_of(root, remote, moves, patch_tips, actor) if any(moves) else []  # any patch to take
    local = patch_tips.local
    updates = [*_updates(ledger.PREFIX, moves, patch_tips), *((ledger.PREFIX + m.id, m.tip, local[m.id]) for m in merges),
               *_updates(results.PREFIX, gate_moves, gate_tips)]
    done = _swap(root, updates)
    return _Taken(_count(done, ledger.PREFIX, moves.new), _count(done, ledger.PREFIX, moves.forward),
                  tuple(m for m in merges if ledger.PREFIX + m.id in done),
                  _count(done, results.PREFIX, gate_moves.new), _count(done, results.PREFIX, gate_moves.forward),
                  _after(ledger.PREFIX, local, updates, done), _after(results.PREFIX, gate_tips.local, updates, done),
                  len(done) == len(updates) and len(merges) == len(moves.diverged))


def _compare(root: Path, *sides: _Sides) -> list[_Moves]:
    """How each namespace's refs relate to the remote's, from one `rev-list` for all."""
    differ = [sorted(n for n, tip in s.theirs.items() if n in s.local and s.local[n] != tip) for s in sides]
    pairs = [(s.local[n], s.theirs[n]) for s, names in zip(sides, differ) for n in names]
    behind, diverged = _relations(root, pairs) if pairs else (set(), set())
    return [_Moves(sorted(n for n in s.theirs if n not in s.local), [n for n in names if (s.local[n], s.theirs[n]) in behind],
                   [n for n in names if (s.local[n], s.theirs[n]) in diverged]) for s, names in zip(sides, differ)]


def _refuse_diverged(remote: str, names: Sequence[str], tips: _Sides) -> None:
    """An attempt has one writer, so two histories of one mean something wrote it twice:
    neither is the truth by rule, so neither is forced over the other."""
    if names:
        ref, here, there = results.PREFIX + names[0], tips.local[names[0]][:12], tips.theirs[names[0]][:12]
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise LedgerError(f"sync: {ref} diverged from {remote}'s{more}; an attempt has one writer, so neither side is forced "
                          f"and nothing was taken: compare them (`git log {here} {there}`), delete the wrong one where it "
                          "is, and run `ledger sync` again")


def _updates(prefix: str, moves: _Moves, tips: _Sides) -> list[tuple[str, str, str | None]]:
    """The compare-and-swaps that create the new refs and fast-forward the ones behind."""
    return [*((prefix + n, tips.theirs[n], None) for n in moves.new),
            *((prefix + n, tips.theirs[n], tips.local[n]) for n in moves.forward)]


def _count(done: set[str], prefix: str, names: Sequence[str]) -> int:
    return sum(prefix + n in done for n in names)


def _after(prefix: str, local: Mapping[str, str], updates: Sequence[tuple[str, str, str | None]], done: set[str]) -> dict[str, str]:
    """name -> tip of the refs under `prefix` once the updates `done` are made."""
    return {**local, **{ref[len(prefix):]: tip for ref, tip, _ in updates if ref in done and ref.startswith(prefix)}}


def _merges_of(root: Path, remote: str, moves: _Moves, tips: _Sides, actor: str) -> list[Merged]:
    """The merge commits of the diverged patches, once every patch taken is read sound."""
    incoming = _read(root, tracking_prefix(remote), [*moves.new, *moves.forward, *moves.diverged], tips.theirs)
    ours = _read(root, ledger.PREFIX, moves.diverged, tips.local) if moves.diverged else {}
    return _merges(root, remote, ours, incoming, moves.diverged, actor)


def _relations(root: Path, pairs: Sequence[tuple[str, str]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The (local, remote) pairs where local is behind, and those that diverged (the rest:
    local is ahead), from one `rev-list` over both sides' commits."""
    tips = sorted({tip for pair in pairs for tip in pair})
    out = git.run(root, "rev-list", "--parents", "--stdin", input="\n".join(tips).encode() + b"\n").stdout.decode()
    parents = {commit: rest for commit, *rest in (line.split() for line in out.splitlines())}
    behind = {(mine, their) for mine, their in pairs if _reaches(parents, their, mine)}
    diverged = {(mine, their) for mine, their in pairs if (mine, their) not in behind and not _reaches(parents, mine, their)}
    return behind, diverged


def _reaches(parents: Mapping[str, list[str]], start: str, wanted: str) -> bool:
    """Whether `wanted` is `start` or one of its ancestors."""
    seen, todo = {start}, [start]
    while todo:
        commit = todo.pop()
        if commit == wanted:
            return True
        for parent in parents.get(commit, ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return False


def _read(root: Path, prefix: str, ids: Sequence[str], tips: Mapping[str, str]) -> dict[str, ledger.Patch]:
    """The patches `ids` under `prefix`, as their tips in `tips`; a ref that holds no ledger
    commit stops the sync before anything is written."""
    patches, broken = ledger.read_all(root, prefix)
    wanted = {prefix + i for i in ids}
    bad = [b for b in broken if b.ref in wanted]
    if bad:
        raise LedgerError(f"sync: {bad[0].ref}: {bad[0].reason}; nothing was merged "
                          f"({len(bad)} broken ref(s); `ledger verify` names the local ones, the remote's need fixing there)")
    return {i: patches[i] for i in ids if i in patches and patches[i].tip == tips[i]}


def _merges(root: Path, remote: str, ours: Mapping[str, ledger.Patch], theirs: Mapping[str, ledger.Patch],
            ids: Sequence[str], actor: str) -> list[Merged]:
    """A merge commit for each diverged patch, all written by one git process. A patch whose
    ref moved since it was listed is left to the next round (its CAS would fail anyway)."""
    pairs = [(ours[i], theirs[i]) for i in ids if i in ours and i in theirs]
    for mine, their in pairs:
        if mine.tree != their.tree:
            raise LedgerError(f"sync: {mine.ref}: this clone and {remote} hold different bytes for the same patch "
                              f"(trees {mine.tree[:12]} and {their.tree[:12]}); run `ledger verify` on both")
    fields = [merged_fields(mine, their, remote, actor) for mine, their in pairs]
    objects = [ledger.commit_object(mine.tree, [mine.tip, their.tip], f) for (mine, their), f in zip(pairs, fields)]
    tips = git.hash_objects(root, "commit", objects) if objects else []
    return [Merged(mine.id, mine.state, their.state, f["state"], tip) for (mine, their), f, tip in zip(pairs, fields, tips)]


def _refuse_broken(root: Path, prefix: str, what: str, then: str) -> None:
    """No illegal history travels: a broken ref is neither taken nor pushed."""
    problems = integrity.verify_ledger(root, prefix)
    if problems:
        raise LedgerError(f"sync: {what} is not sound: {integrity.lines_by_ref(problems)[0]}; {then}")


def merged_fields(mine: ledger.Patch, theirs: ledger.Patch, remote: str, actor: str) -> dict[str, object]:
    """The trailers of the merge of two histories of one patch: the stronger state by the
    machine's precedence (a tie keeps ours), its side's fields filling in from the other,
    gate results of both (the winner's where both have one)."""
    stronger = machine.load("patch").stronger([mine.state, theirs.state])
    win, lose = (mine, theirs) if stronger == mine.state else (theirs, mine)
    filled = {k: v if v is not None else getattr(lose, k) for k, v in win._asdict().items()}
    at = max(machine.now(), mine.at, theirs.at, key=machine.time_key)  # time never goes back on either side
    return {**filled, "gates": {**lose.gates, **win.gates}, "seq": max(mine.seq, theirs.seq) + 1, "source": mine.state,
            "at": at, "actor": actor, "reason": f"sync: merged {remote}/{theirs.tip[:12]} ({mine.state} vs {theirs.state} -> {win.state})"}


def _swap(root: Path, updates: list[tuple[str, str, str | None]]) -> set[str]:
    """The refs moved: all at once, else one by one (a local writer won a race for some)."""
    if not updates:
        return set()
    if ledger.swap(root, updates):
        return {ref for ref, _, _ in updates}
    return {update[0] for update in updates if ledger.swap(root, [update])}


def _push(root: Path, remote: str) -> int | None:
    """How many refs the remote took; None when it refused because it moved meanwhile."""
    # --no-verify: a pre-push hook is for code; pre-commit's would run its hooks over the
    # ledger's commits. The remote's own hooks still run.
    env = {**os.environ, "LC_ALL": "C"}  # the reasons are read: untranslated
    proc = git.run(root, "push", "--atomic", "--porcelain", "--no-verify", remote, *_PUSH, env=env, check=False)
    lines = [line.split("\t") for line in proc.stdout.decode(errors="replace").splitlines() if "\t" in line]
    refused = [fields for fields in lines if fields[0] == "!"]
    if proc.returncode == 0 and not refused:
        return sum(fields[0] in (" ", "*", "+") for fields in lines)
    if refused and all(_MOVED.search(fields[-1]) for fields in refused):
        return None
    why = f"{refused[0][1]} {refused[0][-1]}" if refused else _last_line(proc.stderr)
    raise LedgerError(f"sync: pushing the ledger to {remote} failed: {why}; nothing of this clone was lost, "
                      "fix the cause and run `ledger sync` again")


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip() and not line.startswith("hint:")]
    return lines[-1].strip() if lines else "no message from git"
