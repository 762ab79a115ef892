"""Where a patch's gates run: the checkout itself when it holds exactly the commit, else a
temporary worktree under .git/ledger/worktrees/ (the patch's base with the patch applied, or
the commit), removed afterwards."""

from __future__ import annotations

import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from patch_ledger import git, ledger, patches
from patch_ledger.errors import LedgerError
from patch_ledger.gating import Target, log_dir


def commit_patch(root: Path, rev: str, actor: str | None) -> tuple[ledger.Patch, str, str | None, bytes]:
    """(the patch of commit `rev`, recorded now if it was not yet, the commit, its parent, its
    diff). A patch already in the ledger, as in CI where commits are recorded first, is
    found with four git calls, not record_range's dozen."""
    shown = git.run(root, "log", "-1", "--format=%H %P", rev, "--", check=False)
    if shown.returncode != 0 or not shown.stdout.strip():
        raise LedgerError(f"--rev {rev}: no such commit in {root}")
    commit, *parents = shown.stdout.decode().split()
    if len(parents) > 1:
        raise LedgerError(f"--rev {rev}: {commit[:12]} is a merge commit; name one of the commits it merges, "
                          "or record the change with `ledger patch add` and pass --patch")
    revrange = f"{commit}^!" if parents else commit
    diff = patches.commit_diffs(root, revrange).get(commit, b"")
    ids = patches.patch_ids(root, diff) if diff.strip() else []
    known = ledger.read_ids(root, [ids[0][0]]) if ids else {}
    if known:
        patch = known[ids[0][0]]
    else:
        recorded, _ = patches.record_range(root, revrange, actor)
        if not recorded:
            raise LedgerError(f"--rev {rev}: commit {commit[:12]} changes nothing, so it is no patch to gate")
        patch = recorded[0].patch
    return patch, commit, parents[0] if parents else None, diff


def clean(root: Path) -> bool:
    """Whether the tracked files of the checkout are exactly HEAD's."""
    return not git.run(root, "status", "--porcelain", "--untracked-files=no", "--ignore-submodules").stdout.strip()


@contextmanager
def of_commit(root: Path, rev: str, actor: str | None) -> Iterator[Target]:
    """The patch of commit `rev`, tested as that commit: in the checkout when it is HEAD
    and clean, else in a temporary worktree of the commit."""
    patch, commit, parent, diff = commit_patch(root, rev, actor)
    paths = tuple(patches.paths_of(diff, f"patch {patch.id[:12]}"))
    if (rev == "HEAD" or commit == git.commit_of(root, "HEAD")) and clean(root):
        yield Target(patch.id, parent, diff, paths, root)
        return
    with _worktree(root, commit) as checkout:
        yield Target(patch.id, parent, diff, paths, checkout)


@contextmanager
def of_patch(root: Path, given: str) -> Iterator[Target]:
    """The patch `given` applied to its base, in a temporary worktree."""
    patch = ledger.find(root, given)
    diff = ledger.patch_bytes(root, patch)
    paths = tuple(patches.paths_of(diff, f"patch {patch.id[:12]}"))
    if patch.base is not None and git.commit_of(root, patch.base) is None:
        raise LedgerError(f"patch {patch.id[:12]}: its base {patch.base[:12]} is not in {root}; fetch it first")
    with _worktree(root, patch.base) as checkout:
        applied = git.run(checkout, "apply", *patches.APPLY, input=diff, check=False)
        if applied.returncode != 0:
            said = applied.stderr.decode(errors="replace").strip().splitlines()
            raise LedgerError(f"patch {patch.id[:12]} does not apply to its base {(patch.base or 'the empty tree')[:12]}: "
                              f"{said[0] if said else 'git apply failed'}; `ledger patch validate` says more")
        yield Target(patch.id, patch.base, diff, paths, checkout)


@contextmanager
def _worktree(root: Path, commit: str | None) -> Iterator[Path]:
    """A detached worktree of `commit` (an empty repository for None), removed afterwards."""
    where = log_dir(root).parent / "worktrees" / f"gate-{secrets.token_hex(6)}"
    where.parent.mkdir(parents=True, exist_ok=True)
    if commit is None:
        git.run(where.parent, "init", "--quiet", str(where))
    else:
        git.run(root, "worktree", "add", "--detach", "--quiet", str(where), commit)
    try:
        yield where
    finally:
        if commit is not None:
            git.run(root, "worktree", "remove", "--force", str(where), check=False)
        shutil.rmtree(where, ignore_errors=True)
        if commit is not None:
            git.run(root, "worktree", "prune", check=False)
