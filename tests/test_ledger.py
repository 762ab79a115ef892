"""The patch ledger's core through real git: the ref and trailer format, recording diffs and
commit ranges, the lifecycle verbs, compare-and-swap, and the reports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from patch_ledger import ledger, schemas
from tests.builders import commit, git, ledger as cli, write


def _repo_with_history(repo: Path, count: int = 3) -> list[str]:
    write(repo, "README.md", "start\n")
    commit(repo, "root")
    for i in range(1, count + 1):
        write(repo, f"src/f{i}.txt", f"line {i}\n")
        commit(repo, f"c{i}")
    return git(repo, "rev-list", "--reverse", "HEAD").stdout.split()


def _diff(repo: Path) -> Path:
    """A change in the working tree, saved as a diff file (the change then undone)."""
    write(repo, "README.md", "start\nmore\n")
    diff = git(repo, "diff", "--binary", "--full-index").stdout
    git(repo, "checkout", "--", "README.md")
    path = repo.parent / "change.diff"
    path.write_text(diff)
    return path


def _patch(repo: Path, prefix: str) -> ledger.Patch:
    return ledger.resolve(ledger.read_sound(repo), prefix)


def test_add_records_the_exact_bytes_under_their_patch_id(repo: Path) -> None:
    _repo_with_history(repo, 1)
    diff = _diff(repo)
    proc = cli(repo, "patch", "add", str(diff), "--message", "more text", "--task", "t1")
    assert proc.returncode == 0, proc.stderr
    patch_id = proc.stdout.strip()
    expected = subprocess.run(["git", "patch-id", "--stable"], input=diff.read_bytes(), capture_output=True, cwd=repo).stdout.split()[0].decode()
    assert patch_id == expected
    tip = git(repo, "rev-parse", f"refs/ledger/patches/{patch_id}").stdout.strip()
    stored = subprocess.run(["git", "-C", str(repo), "cat-file", "blob", f"{tip}:patch.diff"], capture_output=True).stdout
    assert stored == diff.read_bytes()
    message = git(repo, "log", "-1", "--format=%B", tip).stdout
    assert "Ledger-Format: 1" in message and "Ledger-State: PENDING" in message and "Ledger-Task: t1" in message
    assert (repo / ".git/logs/refs/ledger/patches" / patch_id).is_file()  # a reflog is kept
    again = cli(repo, "patch", "add", str(diff), "--format", "json")
    assert json.loads(again.stdout)["created"] is False
    assert git(repo, "rev-parse", f"refs/ledger/patches/{patch_id}").stdout.strip() == tip


def test_the_working_tree_and_stdin_are_sources_too(repo: Path) -> None:
    commits = _repo_with_history(repo, 1)
    diff = _diff(repo)
    from_stdin = cli(repo, "patch", "add", "-", input=diff.read_text())
    write(repo, "README.md", "start\nmore\n")
    from_worktree = cli(repo, "patch", "add")
    assert from_stdin.returncode == 0 and from_stdin.stdout == from_worktree.stdout  # one content, one patch
    patch = _patch(repo, from_worktree.stdout.strip())
    assert patch.base == commits[-1]  # without --base, a diff is meant for HEAD
    git(repo, "checkout", "--", "README.md")
    write(repo, "src/new-untracked.txt", "x\n")  # the working tree's changes include new files
    other = _patch(repo, cli(repo, "patch", "add").stdout.strip())
    assert other.base == commits[-1] and other.inverse  # the working tree's reverse diff is known
    assert b"src/new-untracked.txt" in ledger.patch_bytes(repo, other)
    assert git(repo, "status", "--porcelain").stdout == "?? src/new-untracked.txt\n"  # the index untouched


def test_record_a_range_once_and_a_cherry_pick_is_the_same_patch(repo: Path) -> None:
    commits = _repo_with_history(repo, 3)
    proc = cli(repo, "patch", "record", f"{commits[0]}..HEAD", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(proc.stdout)["recorded"]
    assert [r["message"] for r in recorded] == ["c1", "c2", "c3"] and all(r["created"] for r in recorded)
    assert [r["base"] for r in recorded] == commits[:3]
    again = json.loads(cli(repo, "patch", "record", f"{commits[0]}..HEAD", "--format", "json").stdout)["recorded"]
    assert not any(r["created"] for r in again)
    git(repo, "checkout", "-q", "-b", "other", commits[0])
    git(repo, "cherry-pick", commits[2])
    picked = json.loads(cli(repo, "patch", "record", "HEAD~1..HEAD", "--format", "json").stdout)["recorded"]
    assert picked[0]["id"] == recorded[1]["id"] and picked[0]["created"] is False


def test_a_recorded_revert_rolls_an_applied_patch_back(repo: Path) -> None:
    commits = _repo_with_history(repo, 2)
    recorded = json.loads(cli(repo, "patch", "record", f"{commits[0]}..HEAD", "--format", "json").stdout)["recorded"]
    target = _patch(repo, recorded[-1]["id"])
    for state in ("VALIDATING", "VALIDATED", "APPLIED"):
        target = ledger.move(repo, target, state, "tester", "test")
    git(repo, "revert", "--no-edit", "HEAD")
    proc = cli(repo, "patch", "record", "HEAD~1..HEAD", "--format", "json")
    rolled = json.loads(proc.stdout)["rolled_back"]
    assert [r["id"] for r in rolled] == [target.id] and rolled[0]["state"] == "ROLLED_BACK"


def _applied(repo: Path) -> ledger.Patch:
    _repo_with_history(repo, 1)
    patch = _patch(repo, cli(repo, "patch", "add", str(_diff(repo))).stdout.strip())
    for state in ("VALIDATING", "VALIDATED", "APPLIED"):
        patch = ledger.move(repo, patch, state, "tester", "test")
    return patch


def test_quarantine_release_and_verify(repo: Path) -> None:
    patch = _applied(repo)
    assert cli(repo, "patch", "quarantine", patch.id[:8]).returncode == 2  # a reason is required
    proc = cli(repo, "patch", "quarantine", patch.id[:8], "--reason", "flaky test")
    assert proc.returncode == 0 and "APPLIED -> QUARANTINED" in proc.stdout
    assert "quarantined: 1" in cli(repo, "status").stdout
    assert cli(repo, "patch", "release", patch.id[:8]).returncode == 0
    assert "APPLIED -> VERIFIED" in cli(repo, "patch", "verify", patch.id[:8]).stdout


def test_verify_quarantines_when_a_required_gate_did_not_pass(repo: Path) -> None:
    patch = _applied(repo)
    write(repo, ".ledger/config.yaml", "schema_version: 2\ngates:\n  - {name: tests, plugin: pytest, required: true}\n")
    proc = cli(repo, "patch", "verify", patch.id[:8], "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "QUARANTINED"
    assert "tests PENDING" in _patch(repo, patch.id).reason


def test_supersede_and_expire(repo: Path) -> None:
    commits = _repo_with_history(repo, 2)
    recorded = json.loads(cli(repo, "patch", "record", f"{commits[0]}..HEAD", "--format", "json").stdout)["recorded"]
    old, new = recorded[0]["id"], recorded[1]["id"]
    assert cli(repo, "patch", "supersede", old[:8], "--by", new[:8]).returncode == 0
    assert _patch(repo, old).superseded_by == new
    assert cli(repo, "patch", "expire", "--older-than", "soon").returncode == 2
    assert cli(repo, "patch", "expire", "--older-than", "1d").stdout.strip() == "no patch to expire"
    proc = cli(repo, "patch", "expire", "--older-than", "0s")
    assert proc.returncode == 0 and f"{new[:12]}  PENDING -> EXPIRED" in proc.stdout
    assert _patch(repo, old).state == "SUPERSEDED"  # final states stay


def test_show_and_log_report_the_history_in_the_schema_form(repo: Path) -> None:
    patch = _applied(repo)
    report = json.loads(cli(repo, "patch", "show", patch.id[:6], "--format", "json").stdout)
    assert schemas.validate("patch", report) == []
    assert [h["to"] for h in report["history"]] == ["PENDING", "VALIDATING", "VALIDATED", "APPLIED"]
    text = cli(repo, "log", patch.id[:6]).stdout
    assert len(text.splitlines()) == 4 and "VALIDATED -> APPLIED" in text and "tester: test" in text
    assert [p["state"] for p in json.loads(cli(repo, "patch", "list", "--state", "applied", "--format", "json").stdout)["patches"]] == ["APPLIED"]


def test_an_ambiguous_or_unknown_id_is_bad_input(repo: Path) -> None:
    commits = _repo_with_history(repo, 3)
    cli(repo, "patch", "record", f"{commits[0]}..HEAD")
    ids = sorted(ledger.read_sound(repo))
    shared = next((a[:4] for a, b in zip(ids, ids[1:]) if a[:4] == b[:4]), None)
    for given in ("zz", "../x", "ffffffff"):
        proc = cli(repo, "patch", "show", given)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    if shared:
        assert "give more digits" in cli(repo, "patch", "show", shared).stderr


def test_a_lost_race_is_retried_while_legal_and_refused_naming_the_winner(repo: Path) -> None:
    stale = _applied(repo)
    current = ledger.move(repo, stale, "VERIFIED", "other", "won the race")
    moved = ledger.move(repo, stale, "QUARANTINED", "me", "late")  # VERIFIED -> QUARANTINED is legal too
    assert moved.source == "VERIFIED" and moved.seq == current.seq + 1
    assert git(repo, "rev-parse", f"{moved.tip}^").stdout.strip() == current.tip
    with pytest.raises(Exception, match="another writer moved it to QUARANTINED first"):
        ledger.move(repo, stale, "VERIFIED", "me", "too late")


def test_many_steps_in_one_transaction(repo: Path) -> None:
    commits = _repo_with_history(repo, 3)
    cli(repo, "patch", "record", f"{commits[0]}..HEAD")
    pending = list(ledger.read_sound(repo).values())
    moved = ledger.move_many(repo, [ledger.Step(p, "VALIDATING", "batch") for p in pending])
    assert {p.state for p in moved} == {"VALIDATING"} and {p.seq for p in moved} == {2}
    assert {p.id: p.tip for p in moved} == {p.id: p.tip for p in ledger.read_sound(repo).values()}
    with pytest.raises(Exception, match="cannot go to APPLIED"):
        ledger.move_many(repo, [ledger.Step(moved[0], "APPLIED", "batch")])


def test_a_hand_edited_ref_is_refused_in_one_line(repo: Path) -> None:
    _repo_with_history(repo, 1)
    tree = git(repo, "rev-parse", "HEAD^{tree}").stdout.strip()
    bad = git(repo, "commit-tree", tree, "-m", "ledger: x\n\nLedger-Format: 1\nLedger-State: DONE\n").stdout.strip()
    git(repo, "update-ref", "refs/ledger/patches/" + "a" * 40, bad)
    proc = cli(repo, "patch", "list")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "refs/ledger/patches/aaaa" in proc.stderr


def test_quoted_paths_are_checked_as_the_paths_they_name(repo: Path) -> None:
    from patch_ledger import patches

    assert patches.unquote('"b/secret/\\303\\251.txt"') == "b/secret/\u00e9.txt"
    assert patches.path_problem(patches.unquote('"../\\303\\251"')) is not None
    diff = b'diff --git "a/caf\\303\\251" "b/caf\\303\\251"\nnew file mode 100644\nindex 0000000..e69de29\n--- /dev/null\n+++ "b/caf\\303\\251"\n@@ -0,0 +1 @@\n+x\n'
    assert patches.paths_of(diff, "test") == ["caf\u00e9"]


# --- what a review found ---------------------------------------------------------------------


def test_bad_options_and_a_broken_history_are_bad_input(repo: Path) -> None:
    patch = _applied(repo)
    assert cli(repo, "patch", "expire", "--older-than", "99999999999999w").returncode == 2
    listed = cli(repo, "patch", "list", "--state", "BOGUS")
    assert listed.returncode == 2 and "not a Patch state" in listed.stderr
    write(repo, "NEW.txt", "new\n")
    assert cli(repo, "patch", "add", "--actor", "-").returncode == 2  # "-" reads back as no one
    (repo / "NEW.txt").unlink()
    # an older commit of a sound tip turned to garbage: named, not a crash
    tree = git(repo, "rev-parse", f"{patch.tip}^{{tree}}").stdout.strip()
    garbage = git(repo, "commit-tree", tree, "-m", "ledger: x\n\nLedger-State: ???\n").stdout.strip()
    body = git(repo, "log", "-1", "--format=%B", patch.tip).stdout
    forged = git(repo, "commit-tree", tree, "-p", garbage, "-m", body).stdout.strip()
    git(repo, "update-ref", patch.ref, forged)
    for args in (("patch", "show", patch.id[:8]), ("log", patch.id[:8])):
        proc = cli(repo, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and garbage[:12] in proc.stderr


def test_identity_does_not_depend_on_the_users_quote_path_setting(repo: Path) -> None:
    commits = _repo_with_history(repo, 1)
    write(repo, "caf\u00e9.txt", "x\n")
    commit(repo, "accented")
    first = json.loads(cli(repo, "patch", "record", "HEAD~1..HEAD", "--format", "json").stdout)["recorded"][0]
    git(repo, "config", "core.quotePath", "false")
    git(repo, "checkout", "-q", "-b", "other", commits[-1])
    git(repo, "cherry-pick", "main")
    again = json.loads(cli(repo, "patch", "record", "HEAD~1..HEAD", "--format", "json").stdout)["recorded"][0]
    assert again["id"] == first["id"] and again["created"] is False


def test_record_refuses_before_writing_when_the_ledger_has_a_broken_ref(repo: Path) -> None:
    commits = _repo_with_history(repo, 2)
    tree = git(repo, "rev-parse", "HEAD^{tree}").stdout.strip()
    git(repo, "update-ref", "refs/ledger/patches/" + "b" * 40, git(repo, "commit-tree", tree, "-m", "junk").stdout.strip())
    before = git(repo, "for-each-ref", "refs/ledger").stdout
    proc = cli(repo, "patch", "record", f"{commits[0]}..HEAD")
    assert proc.returncode == 2 and git(repo, "for-each-ref", "refs/ledger").stdout == before
