"""`ledger init` and the native hook, through real commits."""

from __future__ import annotations

from pathlib import Path

import yaml

from patch_ledger import schemas
from tests.builders import commit, git, ledger, task, write

TASK = ".ledger/runs/r1/tasks/a.json"


def test_init_writes_a_valid_commented_config(repo: Path) -> None:
    proc = ledger(repo, "init")
    assert proc.returncode == 0, proc.stderr
    text = (repo / ".ledger/config.yaml").read_text()
    assert text.count("#") > 5
    assert schemas.validate("config", yaml.safe_load(text)) == []
    again = ledger(repo, "init")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert ledger(repo, "check").returncode == 0


def test_native_hook_refuses_an_illegal_commit_and_accepts_a_legal_one(repo: Path) -> None:
    assert ledger(repo, "init", "--hooks").returncode == 0
    write(repo, TASK, task("a", ["QUEUED"]))
    assert commit(repo, "first", verify=True).returncode == 0
    jumped = task("a", ["QUEUED"])
    jumped["history"].append({"from": "QUEUED", "to": "COMPLETED", "at": "2026-01-01T01:00:00Z", "actor": "x", "reason": ""})
    write(repo, TASK, jumped | {"state": "COMPLETED"})
    refused = commit(repo, "jump", verify=True)
    assert refused.returncode != 0
    assert "QUEUED -> COMPLETED is not a Task transition" in refused.stdout + refused.stderr
    write(repo, TASK, task("a", ["QUEUED", "RUNNING"]))
    assert commit(repo, "legal", verify=True).returncode == 0


def test_hook_checks_the_index_not_the_worktree(repo: Path) -> None:
    assert ledger(repo, "init", "--hooks").returncode == 0
    write(repo, TASK, task("a", ["QUEUED"]))
    assert commit(repo, "first", verify=True).returncode == 0
    write(repo, TASK, task("a", ["QUEUED", "RUNNING"]))
    git(repo, "add", TASK)
    (repo / TASK).write_text("{ not json")  # unstaged garbage: not what the commit records
    proc = git(repo, "commit", "-q", "-m", "legal staged change", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_init_refuses_to_overwrite_a_foreign_hook_without_force(repo: Path) -> None:
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    proc = ledger(repo, "init", "--hooks")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert not (repo / ".ledger/config.yaml").exists()  # bad input writes nothing
    assert ledger(repo, "init", "--hooks", "--force").returncode == 0
    assert (repo / ".git/hooks/pre-commit.legacy").read_text() == "#!/bin/sh\nexit 0\n"
    assert "patch_ledger" in hook.read_text()


def test_a_replaced_hook_still_runs_first(repo: Path) -> None:
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho 'the team hook says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    assert ledger(repo, "init", "--hooks", "--force").returncode == 0
    write(repo, TASK, task("a"))
    refused = commit(repo, "first", verify=True)
    assert refused.returncode != 0 and "the team hook says no" in refused.stderr
    hook.with_name("pre-commit.legacy").write_text("#!/bin/sh\nexit 0\n")
    assert commit(repo, "first", verify=True).returncode == 0
    proc = ledger(repo, "init", "--hooks", "--force")  # ours again: nothing to replace, nothing lost
    assert proc.returncode == 0


def test_force_never_overwrites_a_kept_legacy_hook(repo: Path) -> None:
    hooks = repo / ".git/hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (hooks / "pre-commit.legacy").write_text("#!/bin/sh\necho older\n")
    proc = ledger(repo, "init", "--hooks", "--force")
    assert proc.returncode == 2 and "pre-commit.legacy" in proc.stderr
    assert (hooks / "pre-commit.legacy").read_text() == "#!/bin/sh\necho older\n"
