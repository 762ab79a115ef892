"""`ledger sync`: the patch ledger through a git remote — fetch, merge, push.

What the remote holds is fetched into `refs/remotes/<remote>/ledger/patches/`, a mirror and
the only namespace a `+` may touch; `refs/ledger/patches/` moves only by our own
compare-and-swap: a patch new to this clone is created, one that is behind fast-forwarded,
and one whose history diverged gets a merge commit with both tips as parents, so no
transition is ever lost. The push is atomic and never forced: when the remote moved
meanwhile, git refuses it, and we fetch, merge and push again. The merge rules are in
docs/data-model.md ("Merging divergent histories"); the precedence of states is data, in
schemas/patch.json.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from patch_ledger import config, git, integrity, ledger, machine, patches
from patch_ledger.errors import LedgerError

ATTEMPTS = 5  # fetch-merge-push rounds before giving up on a remote that keeps moving
ACTOR = "ledger sync"
_PUSH = f"{ledger.PREFIX}*:{ledger.PREFIX}*"  # no `+`: the remote refuses what is not a fast-forward
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


class _Taken(NamedTuple):
    """What one round brought into the local ledger."""

    created: int
    forwarded: int
    merged: tuple[Merged, ...]
    local: dict[str, str]  # id -> tip after the round
    complete: bool  # False when a local writer moved a ref meanwhile


def tracking_prefix(remote: str) -> str:
    return f"refs/remotes/{remote}/ledger/patches/"


def fetch_refspec(remote: str) -> str:
    # the `+` is for the mirror only: it follows the remote wherever it goes, while
    # refs/ledger/ is never fetched into and moves only by our compare-and-swap
    return f"+{ledger.PREFIX}*:{tracking_prefix(remote)}*"


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
    """Make plain `git fetch <remote>` bring the ledger too (into the mirror); True when the
    fetch refspec was added, False when it was there already."""
    name = remote_of(root, remote)
    spec = fetch_refspec(name)
    have = git.run(root, "config", "--get-all", f"remote.{name}.fetch", check=False).stdout.decode().splitlines()
    if spec in have:
        return False
    # No push refspec on purpose: once remote.<name>.push is set, a plain `git push` pushes
    # only what it lists, so the user's branches would silently stop being pushed (and the
    # ledger would be pushed without the fetch and merge that must precede it). The ledger
    # goes out through `ledger sync` alone.
    git.run(root, "config", "--add", f"remote.{name}.fetch", spec)
    return True


def sync(root: Path, remote: str | None = None, actor: str = ACTOR) -> SyncReport:
    """Fetch the remote's ledger, bring every patch in (create, fast-forward, or merge), and
    push what the remote lacks; again from the fetch while the remote moves meanwhile."""
    name = remote_of(root, remote)
    # The no-op is the common case and must stay fast: a fetch walks every fetched tip to
    # check connectivity (0.2-0.5 s with 10,000 refs), listing the remote's refs does not.
    if _advertised(root, name) == _tips(root, ledger.PREFIX)[0]:
        return SyncReport(name, 0, 0, (), 0, 1)
    created = forwarded = 0
    merged: list[Merged] = []
    for attempt in range(1, ATTEMPTS + 1):
        _fetch(root, name)
        _refuse_broken(root, tracking_prefix(name), f"{name}'s ledger", "nothing was taken; it needs fixing there")
        local, theirs = _tips(root, ledger.PREFIX, tracking_prefix(name))
        taken = _take(root, name, local, theirs, actor)
        created, forwarded, merged = created + taken.created, forwarded + taken.forwarded, [*merged, *taken.merged]
        # a revert, or the patch it reverts, may have come in: either way the patch is rolled back
        rolled = patches.roll_back_reverted(root, actor) if (taken.created or taken.forwarded or taken.merged) else []
        if taken.complete:
            if not rolled and all(theirs.get(i) == tip for i, tip in taken.local.items()):  # the remote has it all
                return SyncReport(name, created, forwarded, tuple(merged), 0, attempt)
            _refuse_broken(root, ledger.PREFIX, "this ledger", "nothing was pushed; `ledger verify` names every problem")
            pushed = _push(root, name)
            if pushed is not None:
                return SyncReport(name, created, forwarded, tuple(merged), pushed, attempt)
        time.sleep(random.uniform(0, 0.05 * attempt))
    raise LedgerError(f"sync with {name}: the remote's ledger (or this one) kept moving through {ATTEMPTS} "
                      "rounds of fetch, merge and push; run `ledger sync` again")


def _advertised(root: Path, remote: str) -> dict[str, str]:
    """id -> tip of every patch the remote holds, as it advertises them (nothing fetched)."""
    proc = git.run(root, "ls-remote", "--refs", remote, ledger.PREFIX + "*", check=False)
    _refuse_failed(proc.returncode, proc.stderr, "reading the ledger of", remote)
    return {ref[len(ledger.PREFIX):]: tip for tip, _, ref in (line.partition("\t") for line in proc.stdout.decode().splitlines())
            if ref.startswith(ledger.PREFIX)}  # the pattern matches the end of a name: keep ours only


def _fetch(root: Path, remote: str) -> None:
    proc = git.run(root, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                   remote, fetch_refspec(remote), check=False)
    _refuse_failed(proc.returncode, proc.stderr, "fetching the ledger from", remote)


def _refuse_failed(returncode: int, stderr: bytes, what: str, remote: str) -> None:
    if returncode != 0:
        raise LedgerError(f"sync: {what} {remote} failed: {_last_line(stderr)}; "
                          "check the remote (`git remote -v`) and your access to it")


def _tips(root: Path, *prefixes: str) -> tuple[dict[str, str], ...]:
    """For each of `prefixes`, id -> tip of the refs under it: one git call for all."""
    out = git.run(root, "for-each-ref", "--format=%(objectname) %(refname)", *prefixes).stdout.decode()
    found: tuple[dict[str, str], ...] = tuple({} for _ in prefixes)
    for line in out.splitlines():
        tip, _, ref = line.partition(" ")
        for prefix, tips in zip(prefixes, found):
            if ref.startswith(prefix):
                tips[ref[len(prefix):]] = tip
                break
    return found


def _take(root: Path, remote: str, local: dict[str, str], theirs: dict[str, str], actor: str) -> _Taken:
    """Bring the remote's patches into the local ledger, every ref in one transaction."""
    new = sorted(i for i in theirs if i not in local)
    differ = sorted(i for i in theirs if i in local and local[i] != theirs[i])
    behind, diverged = _relations(root, [(local[i], theirs[i]) for i in differ]) if differ else (set(), set())
    forward = [i for i in differ if (local[i], theirs[i]) in behind]
    joined = [i for i in differ if (local[i], theirs[i]) in diverged]
    if not new and not forward and not joined:
        return _Taken(0, 0, (), dict(local), True)
    incoming = _read(root, tracking_prefix(remote), [*new, *forward, *joined], theirs)
    ours = _read(root, ledger.PREFIX, joined, local) if joined else {}
    merges = _merges(root, remote, ours, incoming, joined, actor)
    updates = [(ledger.PREFIX + i, theirs[i], None) for i in new]
    updates += [(ledger.PREFIX + i, theirs[i], local[i]) for i in forward]
    updates += [(ledger.PREFIX + m.id, m.tip, local[m.id]) for m in merges]
    done = _swap(root, updates)
    after = {**local, **{ref[len(ledger.PREFIX):]: new_tip for ref, new_tip, _ in updates if ref in done}}
    return _Taken(sum(ledger.PREFIX + i in done for i in new), sum(ledger.PREFIX + i in done for i in forward),
                  tuple(m for m in merges if ledger.PREFIX + m.id in done), after,
                  len(done) == len(updates) and len(merges) == len(joined))


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
    proc = git.run(root, "push", "--atomic", "--porcelain", "--no-verify", remote, _PUSH, env=env, check=False)
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
