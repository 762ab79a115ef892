"""The git worktrees of a run's tasks that produce patches.

Each attempt of such a task runs in its own checkout of the run's base, under
`.git/ledger/worktrees/<run>/<task>-<attempt>/`, so nothing outside it is touched by the task.
A worktree goes only after its change is in the ledger: nothing an attempt did is lost, and
one whose change could not be recorded stays, and is named. Which attempt holds which
worktree is the orchestrator's; this module makes, finds, records and removes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from patch_ledger import git, patches
from patch_ledger.errors import LedgerError


class TaskWorktrees:
    def __init__(self, root: Path, run: str, base: str | None, actor: str) -> None:
        self.root, self.run, self.base, self.actor = root, run, base, actor
        self.dir = git.common_dir(root) / "ledger" / "worktrees" / run

    def add(self, tid: str, attempt: int, title: str) -> Path:
        """The attempt's own checkout of the run's base (one an earlier scheduler left at the
        same place recorded and removed first)."""
        where = self.dir / f"{tid}-{attempt}"
        if where.exists():
            self.drop(where, tid, title, "left by an earlier attempt")
        where.parent.mkdir(parents=True, exist_ok=True)
        git.run(self.root, "worktree", "add", "--detach", "--quiet", str(where), self.base or "HEAD")
        return where

    def found(self) -> list[tuple[Path, str]]:
        """Every worktree of the run on disk, with its task."""
        return [(wt, wt.name.rsplit("-", 1)[0]) for wt in sorted(self.dir.glob("*"))] if self.dir.is_dir() else []

    def drop(self, where: Path, tid: str, title: str, why: str) -> str:
        """A worktree that is done with: its change recorded as a patch first, then removed;
        kept when recording fails, and the returned note says so ("" when it went)."""
        try:
            patches.add(where, None, self.base, tid, self.actor, f"{title} ({why})")
        except LedgerError as e:
            if "no change to record" not in str(e):
                return f"its worktree {where} stays: its change could not be recorded ({e})"
        self.remove(where)
        return ""

    def remove(self, where: Path) -> None:
        """The worktree gone, its change recorded already (or there was none)."""
        git.run(self.root, "worktree", "remove", "--force", str(where), check=False)
        if where.exists():
            shutil.rmtree(where, ignore_errors=True)
            git.run(self.root, "worktree", "prune", check=False)
