"""validate, apply and roll back: the lifecycle steps that touch git trees, with real git.
Validation works in a temporary index (the user's checkout stays byte for byte as it was);
apply and rollback commit on the checkout's branch, or refuse and write nothing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from patch_ledger import ledger, patches, validation
from patch_ledger.errors import LedgerError
from tests.builders import commit, git, write

_branches = itertools.count()
GREETING = "hello\nworld\n"


@pytest.fixture
def base(repo: Path) -> Path:
    """A repository whose main holds greeting.txt and a symlink `link` to the directory real/."""
    write(repo, "greeting.txt", GREETING)
    write(repo, "real/f", "inside\n")
    (repo / "link").symlink_to("real")
    commit(repo, "base")
    return repo


def side_patch(repo: Path, files: dict[str, str | bytes | None], message: str = "change greeting") -> ledger.Patch:
    """The patch of one commit made on a side branch off main (main itself is left as it was)."""
    branch = f"side{next(_branches)}"
    git(repo, "checkout", "-q", "-b", branch)
    for path, content in files.items():
        if content is None:
            (repo / path).unlink()
        else:
            write(repo, path, content)
    commit(repo, message)
    git(repo, "checkout", "-q", "main")
    recorded, _ = patches.record_range(repo, f"main..{branch}", "tester")
    return recorded[-1].patch


def raw_patch(repo: Path, diff: str, base: str | None, pid: str | None = None) -> ledger.Patch:
    """A patch put into the ledger directly, past the intake's checks (as a hand-made ref or an
    older writer could have), so that validation alone must catch what is wrong with it."""
    pid = pid or patches.patch_ids(repo, diff.encode())[0][0]
    return ledger.record(repo, [(pid, diff.encode(), {"base": base, "actor": "tester", "reason": "test"})])[0][0]


def policy(repo: Path, text: str) -> None:
    write(repo, ".ledger/config.yaml", f"schema_version: 2\npolicy:\n{text}")


def head(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "rev-parse", rev).stdout.strip()


def state(repo: Path, patch: ledger.Patch) -> ledger.Patch:
    return ledger.read_sound(repo)[patch.id]


def checkout_state(repo: Path) -> tuple[bytes, str, str, str]:
    """The index file's bytes, the staged and unstaged diffs and the untracked files."""
    return ((repo / ".git/index").read_bytes(), git(repo, "diff", "--cached", "--binary").stdout,
            git(repo, "diff", "--binary").stdout, git(repo, "status", "--porcelain", "--untracked-files=all").stdout)


# --- validate ---------------------------------------------------------------------------


def test_clean_patch_validates_applies_and_a_recorded_revert_rolls_it_back(base: Path) -> None:
    before = head(base)
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n"})
    assert patch.inverse is not None  # record_range knew it; validate finds the same
    validated = validation.validate(base, patch.id[:8], "val")
    assert (validated.state, validated.source) == ("VALIDATED", "VALIDATING")
    assert validated.inverse == patch.inverse
    assert [s.state for s in ledger.history(base, validated)] == ["PENDING", "VALIDATING", "VALIDATED"]

    applied = validation.apply(base, patch.id, "Alice Applier")
    sha = head(base)
    assert applied.state == "APPLIED" and applied.reason == f"applied as commit {sha}"
    assert head(base, "HEAD^") == before and (base / "greeting.txt").read_text() == "hello\nthere\n"
    assert git(base, "log", "-1", "--format=%an|%s|%(trailers:key=Ledger-Patch,valueonly)").stdout.strip() == \
        f"Alice Applier|change greeting|{patch.id}"
    assert git(base, "status", "--porcelain").stdout == ""

    git(base, "revert", "--no-edit", "HEAD")
    _, rolled = patches.record_range(base, "HEAD~1..HEAD", None)
    assert [p.id for p in rolled] == [patch.id]
    assert state(base, patch).state == "ROLLED_BACK"


def test_validate_finds_the_inverse_a_file_patch_lacks(base: Path, tmp_path: Path) -> None:
    write(base, "greeting.txt", "hello\nthere\n")
    diff = tmp_path / "p.diff"
    diff.write_bytes(git(base, "diff", "--binary", "--full-index").stdout.encode())
    git(base, "checkout", "--", ".")
    patch, _ = patches.add(base, str(diff), "HEAD", None, "tester", None)
    assert patch.inverse is None
    validated = validation.validate(base, patch.id, "val")
    applied = validation.apply(base, patch.id, "val")
    assert validated.inverse and applied.inverse == validated.inverse
    assert git(base, "log", "-1", "--format=%s").stdout.strip() == f"Apply patch {patch.id[:12]}"


def test_a_revert_is_recognised_after_applying_to_a_branch_that_moved_on(base: Path, tmp_path: Path) -> None:
    lines = [f"line {i}" for i in range(1, 10)]
    write(base, "numbers.txt", "\n".join(lines) + "\n")
    commit(base, "numbers")
    write(base, "numbers.txt", "\n".join(lines).replace("line 5", "five") + "\n")
    (tmp_path / "p.diff").write_text(git(base, "diff", "-U1", "--full-index").stdout)
    git(base, "checkout", "--", ".")
    patch, _ = patches.add(base, str(tmp_path / "p.diff"), "HEAD", None, "tester", None)
    validated = validation.validate(base, patch.id, "val")
    write(base, "numbers.txt", "\n".join(lines).replace("line 2", "two") + "\n")  # within git's 3 lines of context
    commit(base, "moved on")
    applied = validation.apply(base, patch.id, "a")
    assert applied.inverse != validated.inverse
    git(base, "revert", "--no-edit", "HEAD")
    _, rolled = patches.record_range(base, "HEAD~1..HEAD", None)
    assert [p.id for p in rolled] == [patch.id]


def test_validate_leaves_the_working_tree_and_index_byte_identical(base: Path) -> None:
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n", "new.txt": "new\n"})
    write(base, "greeting.txt", "dirty, unstaged\n")
    write(base, "real/f", "staged\n")
    git(base, "add", "real/f")
    write(base, "untracked.txt", "mine\n")
    before = checkout_state(base)
    assert validation.validate(base, patch.id, "val").state == "VALIDATED"
    assert checkout_state(base) == before
    assert not (base / "new.txt").exists()


def test_patch_that_does_not_apply_to_its_base_is_rejected_with_the_reason(base: Path) -> None:
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n"})
    first = head(base)
    write(base, "greeting.txt", "something\nelse\n")
    commit(base, "moved on")
    stale = ledger.record(base, [("f" * 40, ledger.patch_bytes(base, patch), {"base": head(base), "actor": "t"})])[0][0]
    rejected = validation.validate(base, stale.id, "val")
    assert rejected.state == "REJECTED"
    assert f"does not apply to {head(base)[:12]}" in rejected.reason and "greeting.txt" in rejected.reason
    assert rejected.inverse is None
    assert head(base, "HEAD^") == first


def test_policy_rejects_naming_every_broken_rule(base: Path) -> None:
    patch = side_patch(base, {"secret/key.pem": "KEY\n" * 40, "logo.png": b"\x89PNG\0\0\x01\x02" * 8}, "add things")
    policy(base, "  max_patch_bytes: 300\n  allow_binary: false\n  forbidden_paths: ['secret/']\n"
                 "  required_paths: ['tests/', 'secret/']\n")
    rejected = validation.validate(base, patch.id, "val")
    assert rejected.state == "REJECTED"
    reasons = rejected.reason.split("; ")
    assert len(reasons) == 4, reasons
    assert any("over the policy's max_patch_bytes of 300" in r for r in reasons)
    assert any("binary change to 'logo.png'" in r and "allow_binary" in r for r in reasons)
    assert any("'secret/key.pem' under the forbidden path 'secret/'" in r for r in reasons)
    assert any("nothing under the required path 'tests/'" in r for r in reasons)


def test_policy_allows_what_it_does_not_forbid(base: Path) -> None:
    patch = side_patch(base, {"tests/test_x.py": "x = 1\n", "logo.png": b"\0\1\2"})
    policy(base, "  allow_binary: true\n  forbidden_paths: ['secret/']\n  required_paths: ['tests/']\n")
    assert validation.validate(base, patch.id, "val").state == "VALIDATED"


def test_unsafe_paths_are_refused_at_intake_and_rejected_by_validation(base: Path, tmp_path: Path) -> None:
    through_link = ("diff --git a/link/f b/link/f\nindex 4c4e4ad..e69de29 100644\n--- a/link/f\n+++ b/link/f\n"
                    "@@ -1 +1 @@\n-inside\n+outside\n")
    climbing = "diff --git a/../x b/../x\nnew file mode 100644\n--- /dev/null\n+++ b/../x\n@@ -0,0 +1 @@\n+x\n"
    (tmp_path / "link.diff").write_text(through_link)
    with pytest.raises(LedgerError, match="goes through the symlink 'link'"):
        patches.add(base, str(tmp_path / "link.diff"), "HEAD", None, "tester", None)

    link = validation.validate(base, raw_patch(base, through_link, head(base)).id, "val")
    assert link.state == "REJECTED" and "'link/f' goes through the symlink 'link' of the base" in link.reason
    out = validation.validate(base, raw_patch(base, climbing, head(base), "e" * 40).id, "val")
    assert out.state == "REJECTED" and "climbs out of the repository" in out.reason
    assert "does not apply" not in out.reason  # an unsafe diff is never handed to git apply


def test_garbage_is_rejected_and_a_patch_without_base_meets_the_empty_tree(base: Path) -> None:
    garbage = validation.validate(base, raw_patch(base, "this is no diff\n", None, "d" * 40).id, "val")
    assert (garbage.state, garbage.reason) == ("REJECTED", "the diff: no file change found")
    broken = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,5 +1,5 @@\n-a\n"
    garbled = validation.validate(base, raw_patch(base, broken, None, "b" * 40).id, "val")
    assert garbled.state == "REJECTED" and garbled.reason.startswith("the diff: not a diff git can apply")
    adds = "diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1 @@\n+n\n"
    assert validation.validate(base, raw_patch(base, adds, None).id, "val").state == "VALIDATED"
    changes = ("diff --git a/greeting.txt b/greeting.txt\n--- a/greeting.txt\n+++ b/greeting.txt\n"
               "@@ -1,2 +1,2 @@\n hello\n-world\n+there\n")
    rejected = validation.validate(base, raw_patch(base, changes, None).id, "val")
    assert rejected.state == "REJECTED" and "does not apply to the empty tree" in rejected.reason


def test_a_validation_that_died_midway_is_done_again(base: Path) -> None:
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n"})
    ledger.move(base, patch, "VALIDATING", "crashed")
    assert validation.validate(base, patch.id, "val").state == "VALIDATED"


def test_wrong_state_unknown_id_and_missing_base_write_nothing(base: Path) -> None:
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n"})
    tips = head(base), patch.tip
    with pytest.raises(LedgerError, match=r"is PENDING; only a VALIDATED patch can be applied"):
        validation.apply(base, patch.id, "a")
    with pytest.raises(LedgerError, match=r"is PENDING; only a .* patch can be rolled back"):
        validation.rollback(base, patch.id, "a")
    with pytest.raises(LedgerError, match="no patch 0000"):
        validation.validate(base, "0000", "a")
    assert (head(base), state(base, patch).tip) == tips
    validated = validation.validate(base, patch.id, "a")
    with pytest.raises(LedgerError, match="is VALIDATED; only a PENDING patch can be validated"):
        validation.validate(base, patch.id, "a")
    assert state(base, patch).tip == validated.tip
    orphan = raw_patch(base, ledger.patch_bytes(base, patch).decode(), "1" * 40, "c" * 40)
    with pytest.raises(LedgerError, match="its base commit 1111111111111111111111111111111111111111 is not in"):
        validation.validate(base, orphan.id, "a")
    assert state(base, orphan).state == "PENDING"


# --- apply and roll back ----------------------------------------------------------------


def test_apply_refuses_staged_changes_and_conflicts_changing_nothing(base: Path) -> None:
    patch = validation.validate(base, side_patch(base, {"greeting.txt": "hello\nthere\n"}).id, "val")
    write(base, "real/f", "staged\n")
    git(base, "add", "real/f")
    before, tip = checkout_state(base), head(base)
    with pytest.raises(LedgerError, match="changes are staged; commit or unstage them"):
        validation.apply(base, patch.id, "a")
    assert (checkout_state(base), head(base), state(base, patch)) == (before, tip, patch)

    git(base, "reset", "-q", "--hard")
    write(base, "greeting.txt", "hello\nall\n")
    commit(base, "conflicting")
    tip = head(base)
    with pytest.raises(LedgerError, match=f"patch {patch.id[:12]} would not apply cleanly .*greeting.txt"):
        validation.apply(base, patch.id, "a")
    assert (head(base), git(base, "status", "--porcelain").stdout, state(base, patch)) == (tip, "", patch)

    git(base, "reset", "-q", "--hard", "HEAD~1")
    write(base, "greeting.txt", "hello\nworld\nlocal edit\n")  # unstaged, in a file the patch touches
    with pytest.raises(LedgerError, match="would not apply cleanly"):
        validation.apply(base, patch.id, "a")
    assert (base / "greeting.txt").read_text() == "hello\nworld\nlocal edit\n" and state(base, patch) == patch


def test_rollback_reverse_applies_and_commits(base: Path) -> None:
    patch = validation.validate(base, side_patch(base, {"greeting.txt": "hello\nthere\n", "real/f": None}).id, "v")
    applied = validation.apply(base, patch.id, "a")
    with pytest.raises(LedgerError, match="only a VALIDATED patch can be applied"):
        validation.apply(base, patch.id, "a")
    rolled = validation.rollback(base, patch.id, "Rob")
    sha = head(base)
    assert (rolled.state, rolled.source, rolled.reason) == ("ROLLED_BACK", "APPLIED", f"rolled back by commit {sha}")
    assert head(base, "HEAD^") == applied.reason.split()[-1]
    assert (base / "greeting.txt").read_text() == GREETING and (base / "real/f").read_text() == "inside\n"
    assert git(base, "log", "-1", "--format=%an|%s|%(trailers:key=Ledger-Patch,valueonly)").stdout.strip() == \
        f"Rob|Roll back patch {patch.id[:12]}|{patch.id}"
    assert git(base, "status", "--porcelain").stdout == ""


def test_rollback_refuses_a_conflict(base: Path) -> None:
    patch = validation.validate(base, side_patch(base, {"greeting.txt": "hello\nthere\n"}).id, "v")
    applied = validation.apply(base, patch.id, "a")
    write(base, "greeting.txt", "hello\nthere, again\n")
    commit(base, "edited after")
    tip = head(base)
    with pytest.raises(LedgerError, match="would not reverse-apply cleanly"):
        validation.rollback(base, patch.id, "r")
    assert (head(base), state(base, patch)) == (tip, applied)


def test_apply_and_rollback_in_another_worktree(base: Path, tmp_path: Path) -> None:
    patch = validation.validate(base, side_patch(base, {"greeting.txt": "hello\nthere\n"}).id, "v")
    wt = tmp_path / "wt"
    git(base, "worktree", "add", "-q", "-b", "feature", str(wt), "main")
    for bad, says in ((tmp_path / "nowhere", "no such directory"), (wt / "real", "not the top of a checkout")):
        with pytest.raises(LedgerError, match=says):
            validation.apply(base, patch.id, "a", str(bad))
    main, before = head(base), checkout_state(base)
    applied = validation.apply(base, patch.id[:10], "a", str(wt))
    assert applied.reason == f"applied as commit {head(base, 'feature')}"
    assert (wt / "greeting.txt").read_text() == "hello\nthere\n"
    assert (head(base), checkout_state(base), (base / "greeting.txt").read_text()) == (main, before, GREETING)
    rolled = validation.rollback(base, patch.id, "r", str(wt))
    assert rolled.reason == f"rolled back by commit {head(base, 'feature')}"
    assert (wt / "greeting.txt").read_text() == GREETING and head(base) == main


def test_a_commit_git_cannot_make_is_undone_in_the_checkout(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch = validation.validate(base, side_patch(base, {"greeting.txt": "hello\nthere\n"}).id, "v")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name)
    git(base, "config", "--unset", "user.email")
    git(base, "config", "user.useConfigOnly", "true")  # so git has no email and makes no commit
    before, tip = checkout_state(base), head(base)
    with pytest.raises(LedgerError, match="email"):
        validation.apply(base, patch.id, "a")
    assert (checkout_state(base)[1:], head(base), state(base, patch)) == (before[1:], tip, patch)


# --- what a review found -------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "diff --git x/.github/workflows/ci.yml y/.github/workflows/ci.yml\nnew file mode 100644\n--- /dev/null\n+++ y/.github/workflows/ci.yml\n",
    "diff --git a/.github//workflows/ci.yml b/.github//workflows/ci.yml\nnew file mode 100644\n--- /dev/null\n+++ b/.github//workflows/ci.yml\n",
], ids=["other-prefixes", "double-slash"])
def test_the_policy_sees_the_paths_git_applies(base: Path, header: str) -> None:
    """git apply strips any first part and collapses '//': such a diff cannot dodge a rule."""
    policy(base, "  forbidden_paths: ['.github/workflows/']\n")
    diff = header + "@@ -0,0 +1 @@\n+on: push\n"
    with pytest.raises(LedgerError):
        patches.check_safe(base, diff.encode(), head(base), "test")
    rejected = validation.validate(base, raw_patch(base, diff, head(base)).id, "val")
    assert rejected.state == "REJECTED"


def test_the_users_whitespace_setting_changes_nothing_applied(base: Path) -> None:
    git(base, "config", "apply.whitespace", "fix")
    patch = side_patch(base, {"greeting.txt": "hello  \n"})  # trailing spaces are the content
    validation.validate(base, patch.id, "val")
    validation.apply(base, patch.id, "app")
    assert (base / "greeting.txt").read_text() == "hello  \n"
    git(base, "config", "apply.whitespace", "error")
    other = side_patch(base, {"other.txt": "x \n"})
    assert validation.validate(base, other.id, "val").state == "VALIDATED"


def test_a_worktree_of_another_repository_is_refused(base: Path, tmp_path: Path) -> None:
    patch = side_patch(base, {"greeting.txt": "hello\nthere\n"})
    validation.validate(base, patch.id, "val")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    git(stranger, "init", "-q")
    with pytest.raises(LedgerError, match="another repository"):
        validation.apply(base, patch.id, "app", str(stranger))
    assert state(base, patch).state == "VALIDATED"
