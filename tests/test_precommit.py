"""The pre-commit framework runs our manifest for real: `pre-commit try-repo` builds the
hook's environment from this checkout and runs it in a user's repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.builders import git, task, write

TOP = Path(__file__).resolve().parent.parent
TASK = ".ledger/runs/r1/tasks/a.json"


def test_manifest_is_what_pre_commit_expects() -> None:
    (hook,) = yaml.safe_load((TOP / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "ledger-check" and hook["language"] == "python"
    assert hook["files"].startswith("^") and hook["files"].endswith("$")
    assert hook["require_serial"] is True
    assert set(hook["stages"]) <= {"pre-commit", "pre-merge-commit", "pre-push", "manual"}
    assert tuple(map(int, hook["minimum_pre_commit_version"].split("."))) >= (3, 2, 0)  # modern stage names
    assert hook["always_run"] is True and "--staged" in hook["entry"]


@pytest.mark.slow
def test_try_repo_checks_a_user_repository(repo: Path, tmp_path: Path) -> None:
    if shutil.which("pre-commit", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("pre-commit is not installed next to this interpreter (it is in the test extras)")
    source = tmp_path / "source"  # a committed copy of this checkout, as a user would point at
    shutil.copytree(TOP, source, ignore=shutil.ignore_patterns(".git", ".ci", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    git(source, "init", "-q")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "snapshot")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PRE_COMMIT_COLOR": "never"}
    pre_commit = [os.path.join(os.path.dirname(sys.executable), "pre-commit"), "try-repo", str(source), "ledger-check"]

    write(repo, TASK, task("a", ["QUEUED"]))
    git(repo, "add", "-A")
    good = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout

    bad = task("a", ["QUEUED"]) | {"attempts": "two"}
    write(repo, TASK, bad)
    git(repo, "add", "-A")
    refused = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{TASK}:" in refused.stdout and "attempts: 'two' is not of type 'integer'" in refused.stdout

    # a commit that only deletes an unfinished task: the framework names no file, we still look
    write(repo, TASK, task("a", ["QUEUED"]))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", "-m", "a queued task")
    git(repo, "rm", "-q", TASK)
    deleted = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True)
    assert deleted.returncode == 1, deleted.stdout + deleted.stderr
    assert "was deleted while QUEUED" in deleted.stdout
