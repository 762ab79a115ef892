"""The CI flow of `ledger ci`, one event's worth: fetch the ledger, check the state files
against the base, record the event's commits as patches, validate them, run the gates, and
on the default branch mark them APPLIED and verify or quarantine them; then push the ledger
when this job may. Plain values in, a `Ran` record out: the command reports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

from patch_ledger import check, gating, git, ledger, lifecycle, machine, patches, results, sync, targets, validation
from patch_ledger.errors import LedgerError
from patch_ledger.findings import Finding
from patch_ledger.github import Event, credentials, fetch_commits, revrange
from patch_ledger.layout import ROOT, classify


class Options(NamedTuple):
    gates: tuple[str, ...] = ()  # none named: every configured gate
    run_gates: bool = True
    shard: tuple[int, int] = (1, 1)
    push: bool = True
    actor: str = "ledger ci"
    token: str | None = None  # for git's fetches and push only, never the gates'
    server: str = "https://github.com"


class Row(NamedTuple):
    """One patch of the event as the run left it."""

    patch: ledger.Patch
    commit: str | None  # None for a patch this event rolled back (its commit is older)
    gates: dict[str, results.Verdict]
    required: tuple[str, ...]
    note: str

    @property
    def failed(self) -> bool:
        """Rejected, or still live with a required gate FAILED (a reverted patch is settled)."""
        if self.patch.state == "REJECTED":
            return True
        live = self.patch.state not in machine.load("patch").terminal
        return live and any(self.gates[g].state == "FAILED" for g in self.required if g in self.gates)


class Ran(NamedTuple):
    event: Event
    base: str | None
    remote: str
    findings: list[Finding]
    checked: int
    rows: list[Row]
    attempts: list[dict[str, Any]]  # the gate attempts this job ran (their documents)
    pushed: int | None  # refs the remote took; None when nothing was pushed
    read_only: str | None  # why the ledger was not pushed, or None
    runs: list[str]  # the runs under .ledger/runs/ whose files the event changed

    @property
    def failed(self) -> bool:
        return bool(self.findings) or any(r.failed for r in self.rows)


def run(root: Path, event: Event, options: Options) -> Ran:
    # bad input (no remote, an unknown gate, a broken configuration) is refused before anything is written
    remote = sync.remote_of(root, None)
    found = gating.plugins()
    gates = gating.select(gating.configured(root, found), options.gates) if options.run_gates else []
    signed = lambda: credentials(root, options.token, options.server)  # noqa: E731
    with signed():
        base = fetch_commits(root, remote, event)
        read_only = _why_read_only(event, options)
        sync.sync(root, remote, options.actor, push=False)  # the remote's ledger in; pushing is the job's last step
    report = check.check(root, (), base or git.commit_of(root, f"{event.head}^"))
    commits, rolled = _record(root, event, base)
    notes = _advance(root, event, commits, options.actor)
    attempts = _gate(root, commits, found, gates, options) if gates else []
    if event.lands:
        notes.update(_verify(root, commits, options.actor))
    rows = _rows(root, commits, rolled, notes)
    pushed = None
    if read_only is None:
        with signed():
            pushed, read_only = _push(root, remote, options.actor)
    return Ran(event, base, remote, report.findings, len(report.checked), rows, attempts, pushed, read_only,
               touched_runs(root, base, event.head))


def _why_read_only(event: Event, options: Options) -> str | None:
    if event.fork:
        return "a pull request from a fork: its token cannot write to this repository"
    if not options.push:
        return "pushing the ledger is turned off (push-ledger: false, or --no-push)"
    return None


# --- recording --------------------------------------------------------------------------


class Commit(NamedTuple):
    commit: str
    patch: str  # its patch id
    created: bool  # recorded by this run


def _record(root: Path, event: Event, base: str | None) -> tuple[list[Commit], list[str]]:
    """The event's commits as patches, and the ids of the patches they rolled back: only
    commits that landed on the default branch roll back the patches they revert (a pull
    request merely proposes its revert)."""
    recorded, rolled = patches.record_range(root, revrange(root, base, event.head), None, roll_back=event.lands)
    return [Commit(r.commit, r.patch.id, r.created) for r in recorded], [p.id for p in rolled]


# --- moving the patches -----------------------------------------------------------------


def _advance(root: Path, event: Event, commits: Sequence[Commit], actor: str) -> dict[str, str]:
    """Validate the event's new patches; on the default branch, a VALIDATED one is APPLIED
    (git merged it; nothing is applied again). patch id -> what happened to it."""
    notes: dict[str, str] = {}
    now = ledger.read_ids(root, [c.patch for c in commits])  # one read; kept current as they move
    for c in commits:
        patch = now[c.patch]
        if patch.state in ("PENDING", "VALIDATING"):
            patch = now[c.patch] = validation.validate(root, patch.id, actor)
            notes[patch.id] = "validated" if patch.state == "VALIDATED" else "rejected"
        if event.lands and patch.state == "VALIDATED":
            now[c.patch] = ledger.move(root, patch, "APPLIED", actor, f"merged into {event.branch} as commit {c.commit}")
            notes[patch.id] = f"merged into {event.branch}"
    return notes


def _gate(root: Path, commits: Sequence[Commit], found: gating.Plugins, gates: Sequence[gating.Gate], options: Options) -> list[dict[str, Any]]:
    """Run `gates` (this job's shard of them) on each patch of the event that is still live
    and has not passed them at its base already (say, in its pull request)."""
    live = _live(root, commits)
    verdicts = results.of_patches(root, [p for p, _ in live], [g.name for g in gates])
    done: list[dict[str, Any]] = []
    for patch, commit in live:
        due = [g for g in gates if verdicts[patch.id][g.name].state not in results.SATISFIED]
        if due:
            with targets.of_commit(root, commit, options.actor) as target:
                done += gating.run(root, found, due, target, options.shard, options.actor)
    return done


def _live(root: Path, commits: Sequence[Commit]) -> list[tuple[ledger.Patch, str]]:
    """(patch, commit) of the event's patches that are not in a terminal state."""
    now = ledger.read_ids(root, [c.patch for c in commits])
    final = machine.load("patch").terminal
    return [(now[c.patch], c.commit) for c in commits if now[c.patch].state not in final]


def _verify(root: Path, commits: Sequence[Commit], actor: str) -> dict[str, str]:
    """VERIFIED or QUARANTINED for each APPLIED patch of the event whose required gates have
    all finished; one still waiting (for another job's shard, say) stays APPLIED."""
    applied = [p for p, _ in _live(root, commits) if p.state == "APPLIED"]
    required = gating.required(root)
    verdicts = results.of_patches(root, applied, required)
    notes = {}
    for patch in applied:
        waiting = [g for g in required if verdicts[patch.id][g].state not in results.FINISHED]
        if waiting:
            notes[patch.id] = f"waiting for {', '.join(waiting)} to finish before it is verified"
        else:
            notes[patch.id] = lifecycle.verify(root, patch.id, actor).reason
    return notes


def _rows(root: Path, commits: Sequence[Commit], rolled: Sequence[str], notes: dict[str, str]) -> list[Row]:
    """Every patch of the event, and every patch its commits rolled back, failures first."""
    ids = list(dict.fromkeys([*(c.patch for c in commits), *rolled]))
    now = ledger.read_ids(root, ids)
    required = tuple(gating.required(root))
    verdicts = results.of_patches(root, list(now.values()), required)
    by_commit = {c.patch: c.commit for c in commits}
    rows = [Row(now[i], by_commit.get(i), verdicts[i], required,
                notes.get(i, now[i].reason if i not in by_commit else "already in the ledger")) for i in ids]
    return sorted(rows, key=lambda r: not r.failed)  # stable: the event's order within each group


def _push(root: Path, remote: str, actor: str) -> tuple[int | None, str | None]:
    """(refs pushed, None), or (None, why not): a refused push loses nothing, since every
    transition stays in this clone's refs/ledger/; the summary says so."""
    try:
        return sync.sync(root, remote, actor).pushed, None
    except LedgerError as e:
        return None, f"the ledger could not be pushed to {remote}: {e}"


def touched_runs(root: Path, base: str | None, head: str) -> list[str]:
    """The runs whose state files the event's commits changed."""
    against = base or git.commit_of(root, f"{head}^") or git.empty_tree(root)
    out = git.run(root, "diff", "--name-only", "-z", "--no-renames", against, head, "--", f"{ROOT}/runs").stdout
    return sorted({f.run for f in map(classify, out.decode(errors="surrogateescape").split("\0")) if f and f.run})
