"""The steps of a patch's life that touch git trees: validate it against its base in a
temporary index (the user's index and working tree are never touched), apply it to
a checkout as a commit on its branch, and roll it back with a commit that reverses it.

Apply and rollback refuse, with nothing written, when the checkout has staged changes or
the change would not apply cleanly; their commits are made with plumbing (write-tree,
commit-tree, then a compare-and-swap of HEAD), so no hook or editor runs in between.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from patch_ledger import config, git, ledger, machine, patches
from patch_ledger.errors import LedgerError

_SHOWN = 5  # paths or git error lines named in one reason; the rest are counted


# --- validate ---------------------------------------------------------------------------


def validate(root: Path, given_id: str, actor: str) -> ledger.Patch:
    """PENDING -> VALIDATING -> VALIDATED (with the id of its inverse, to spot its revert) or
    REJECTED with every reason. A patch left VALIDATING by a validator that died is
    validated again."""
    policy = config.load(root).get("policy", {})
    patch = _patch_for(root, given_id, "validate", "validated", also=("VALIDATING",))
    base_tree = _base_tree(root, patch)
    diff = ledger.patch_bytes(root, patch)
    if patch.state != "VALIDATING":  # recorded first, so other writers see the work under way
        patch = ledger.move(root, patch, "VALIDATING", actor, "validation started")
    reasons, inverse = examine(root, patch.base, base_tree, diff, policy)
    if reasons:
        return ledger.move(root, patch, "REJECTED", actor, "; ".join(reasons))
    where = f"its base {patch.base}" if patch.base else "the empty tree"
    return ledger.move(root, patch, "VALIDATED", actor, f"applies cleanly to {where}, within the policy", inverse=inverse)


def examine(root: Path, base: str | None, base_tree: str, diff: bytes,
            policy: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Every reason to reject `diff` on `base`, and (when there is none) the patch id of its
    inverse. Unsafe paths are never handed to `git apply`."""
    try:
        paths: list[str] | None = patches.paths_of(diff, "the diff", root)
    except LedgerError as e:  # its problem, without the intake's advice: reasons are joined with "; "
        return [str(e).split("; ")[0], *policy_problems(diff, None, policy)], None
    unsafe = [p for p in map(patches.path_problem, paths) if p] or patches.symlink_problems(root, base, paths)
    reasons = [*unsafe, *policy_problems(diff, paths, policy)]
    if unsafe:
        return reasons, None
    after, problem = after_tree(root, base_tree, diff)
    if after is None:
        return [*reasons, f"does not apply to {base[:12] if base else 'the empty tree'}: {problem}"], None
    return reasons, (None if reasons else inverse_id(root, after, base_tree))


def policy_problems(diff: bytes, paths: Sequence[str] | None, policy: Mapping[str, Any]) -> list[str]:
    """What `policy` (of .ledger/config.yaml) forbids in `diff`; what it leaves out is
    allowed. Paths match a prefix as written: "docs/" is the directory, "docs" also matches
    "docs.md". `paths` is None when the diff did not parse: only size and binary are judged."""
    out = []
    limit = policy.get("max_patch_bytes")
    if limit is not None and len(diff) > limit:
        out.append(f"{len(diff)} bytes, over the policy's max_patch_bytes of {limit}")
    if not policy.get("allow_binary", True) and patches.BINARY.search(diff):
        binary = _binary_files(diff) if paths is not None else []
        names = f" to {_names(binary)}" if binary else ""
        out.append(f"a binary change{names}, and the policy does not allow_binary")
    for prefix in policy.get("forbidden_paths", []) if paths is not None else ():
        hits = [p for p in paths if p.startswith(prefix)]
        if hits:
            out.append(f"changes {_names(hits)} under the forbidden path {prefix!r}")
    for prefix in policy.get("required_paths", []) if paths is not None else ():
        if not any(p.startswith(prefix) for p in paths):
            out.append(f"changes nothing under the required path {prefix!r}")
    return out


def _binary_files(diff: bytes) -> list[str]:
    from unidiff import PatchSet

    return [f.path for f in PatchSet(diff.decode("utf-8", "surrogateescape")) if f.is_binary_file]


def after_tree(root: Path, base_tree: str, diff: bytes) -> tuple[str | None, str | None]:
    """(the tree `diff` makes of `base_tree`, None) or (None, why it does not apply): worked
    out in a temporary index, so the user's index and working tree stay as they are."""
    with tempfile.TemporaryDirectory(prefix="ledger-validate-") as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        git.run(root, "read-tree", base_tree, env=env)
        proc = git.run(root, "apply", *patches.APPLY, "--cached", input=diff, env=env, check=False)  # all or nothing
        if proc.returncode != 0:
            return None, _git_said(proc)
        return git.run(root, "write-tree", env=env).stdout.decode().strip(), None


def inverse_id(root: Path, after: str, before: str) -> str | None:
    """The patch id of the change from `after` back to `before`, named forward (a/ -> b/)
    with renames found as `git log -p` finds them: the id a recorded revert will have."""
    reverse = git.run(root, *patches.DIFF_CONFIG, "diff-tree", "-p", *patches.DIFF, after, before).stdout
    return next(iter(patches.patch_ids(root, reverse)), (None,))[0]


def _base_tree(root: Path, patch: ledger.Patch) -> str:
    if patch.base is None:
        return git.empty_tree(root)
    if git.commit_of(root, patch.base) is None:
        raise LedgerError(f"patch {patch.id[:12]}: its base commit {patch.base} is not in {root}; fetch it, then validate again")
    return f"{patch.base}^{{tree}}"


# --- apply and roll back ----------------------------------------------------------------


def apply(root: Path, given_id: str, actor: str, worktree: str | None = None) -> ledger.Patch:
    """VALIDATED -> APPLIED: the stored bytes applied to the checkout at `root` (or the
    checkout `worktree`) and committed on its branch, authored by `actor`."""
    patch = _patch_for(root, given_id, "apply", "applied")
    checkout = _checkout(root, worktree)
    diff = ledger.patch_bytes(root, patch)
    commit, parent = _commit_change(checkout, patch, diff, patch.message or f"Apply patch {patch.id[:12]}", actor, False)
    # A recorded revert of this commit shows git's diff of it, whose context lines come from
    # the branch it landed on, not from the base: the inverse that will be seen is this one.
    inverse = inverse_id(checkout, commit, parent or git.empty_tree(checkout)) or patch.inverse
    return _record(root, patch, "APPLIED", actor, f"applied as commit {commit}", commit, inverse=inverse)


def rollback(root: Path, given_id: str, actor: str, worktree: str | None = None) -> ledger.Patch:
    """APPLIED, VERIFIED or QUARANTINED -> ROLLED_BACK: the patch reverse-applied to the
    checkout and committed on its branch."""
    patch = _patch_for(root, given_id, "rollback", "rolled back")
    checkout = _checkout(root, worktree)
    diff = ledger.patch_bytes(root, patch)
    commit, _ = _commit_change(checkout, patch, diff, f"Roll back patch {patch.id[:12]}", actor, True)
    return _record(root, patch, "ROLLED_BACK", actor, f"rolled back by commit {commit}", commit)


def _commit_change(checkout: Path, patch: ledger.Patch, diff: bytes, subject: str, actor: str,
                   reverse: bool) -> tuple[str, str | None]:
    """`diff` (reversed when `reverse`) applied to the checkout's index and working tree and
    committed on its branch: (the commit, its parent). Refused, with nothing changed, when
    changes are staged or it would not apply; undone when the commit cannot be made."""
    there, undo = (["-R"], []) if reverse else ([], ["-R"])
    head = git.commit_of(checkout, "HEAD")
    if git.run(checkout, "diff", "--cached", "--quiet", "--no-ext-diff", check=False).returncode != 0:
        raise LedgerError(f"{checkout}: changes are staged; commit or unstage them before patch {patch.id[:12]} is "
                          f"{'rolled back' if reverse else 'applied'} there")
    check = git.run(checkout, "apply", *patches.APPLY, *there, "--index", "--check", input=diff, check=False)
    if check.returncode != 0:
        raise LedgerError(f"patch {patch.id[:12]} would not {'reverse-' if reverse else ''}apply cleanly in {checkout} "
                          f"({_git_said(check)}); commit or stash the local changes it touches, or resolve by hand")
    git.run(checkout, "apply", *patches.APPLY, *there, "--index", input=diff)
    try:
        return _commit_index(checkout, head, f"{subject}\n\nLedger-Patch: {patch.id}\n", actor), head
    except LedgerError:
        git.run(checkout, "apply", *patches.APPLY, *undo, "--index", input=diff, check=False)
        raise


def _commit_index(checkout: Path, head: str | None, message: str, actor: str) -> str:
    """The checkout's index committed on top of `head`, HEAD moved only if it is still `head`."""
    tree = git.run(checkout, "write-tree").stdout.decode().strip()
    env = {**os.environ, "GIT_AUTHOR_NAME": " ".join(actor.replace("<", "").replace(">", "").split()) or "ledger"}
    parents = ["-p", head] if head else []
    commit = git.run(checkout, "commit-tree", tree, *parents, input=message.encode(), env=env).stdout.decode().strip()
    expected = head or "0" * len(commit)  # an unborn branch must still be unborn
    git.run(checkout, "update-ref", "-m", f"ledger: {message.splitlines()[0]}", "HEAD", commit, expected)
    return commit


def _record(root: Path, patch: ledger.Patch, to: str, actor: str, reason: str, commit: str, **fields: Any) -> ledger.Patch:
    try:
        return ledger.move(root, patch, to, actor, reason, **fields)
    except LedgerError as e:  # another writer won the race after our commit was made
        short = commit[:12]
        raise LedgerError(f"{e}; commit {short} was made nonetheless: `git revert {short}` if it should not stay") from None


# --- shared -----------------------------------------------------------------------------


def _patch_for(root: Path, given: str, transition: str, done: str, also: Sequence[str] = ()) -> ledger.Patch:
    """The patch `given` names, when the machine's `transition` starts from its state
    (checked before anything touches git, so a refusal writes nothing)."""
    patch = ledger.find(root, given)
    sources = [s for (s, _), name in machine.load("patch").transitions.items() if name == transition]
    if patch.state not in (*sources, *also):
        raise LedgerError(f"patch {patch.id[:12]} is {patch.state}; only a {' or '.join(sources)} patch can be {done}")
    return patch


def _checkout(root: Path, worktree: str | None) -> Path:
    if worktree is None:
        return root
    if not os.path.isdir(worktree):
        raise LedgerError(f"--worktree {worktree}: no such directory; pass a checkout (`git worktree add DIR` makes one)")
    top = git.toplevel(worktree)
    if top.resolve() != Path(worktree).resolve():
        raise LedgerError(f"--worktree {worktree}: not the top of a checkout ({top} is); pass the checkout's directory")
    if git.common_dir(top) != git.common_dir(root):
        raise LedgerError(f"--worktree {worktree}: a checkout of another repository; pass a worktree of this one (`git worktree add DIR`)")
    return top


def _names(items: Sequence[str], quote: bool = True) -> str:
    shown = ", ".join(repr(i) if quote else i for i in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _git_said(proc: subprocess.CompletedProcess[bytes]) -> str:
    """What git wrote to stderr, on one line: the reason in a Ledger-Reason or a refusal."""
    lines = [re.sub(r"^(?:error|fatal): ", "", line) for line in proc.stderr.decode(errors="replace").splitlines()]
    return _names([line for line in lines if line.strip()], quote=False) or f"git apply exit {proc.returncode}"
