"""The command line as a user meets it: version, help, completion, git's `git ledger`,
and the top-level handler's exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from patch_ledger import __version__, cli
from tests.builders import ledger


def test_version_and_help(tmp_path: Path) -> None:
    version = ledger(tmp_path, "--version")
    assert version.returncode == 0 and __version__ in version.stdout
    helped = ledger(tmp_path, "--help")
    assert helped.returncode == 0
    for command in ("check", "migrate", "init", "demo", "status", "report", "patch", "gate", "run", "ci", "sync", "verify", "log"):
        assert command in helped.stdout
    assert "Exit codes" in helped.stdout


def test_every_command_reports_in_text_or_json() -> None:
    """DESIGN.md: `--format text|json` on every command that reports (and every one does)."""
    import click

    from patch_ledger import cli

    def leaves(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
        out = []
        for name, sub in sorted(group.commands.items()):
            out += leaves(sub, f"{prefix}{name} ") if isinstance(sub, click.Group) else [(prefix + name, sub)]
        return out

    found = leaves(cli.cli)
    assert len(found) >= 25
    for name, command in found:
        (fmt,) = [p for p in command.params if "--format" in p.opts] or [None]
        assert fmt is not None and list(fmt.type.choices) == ["text", "json"], name  # type: ignore[union-attr]


def test_shell_completion_through_click(tmp_path: Path) -> None:
    script = shutil.which("ledger", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the ledger console script is not installed next to this interpreter")
    proc = subprocess.run([script], env={**os.environ, "_LEDGER_COMPLETE": "bash_source"}, capture_output=True, text=True)
    assert proc.returncode == 0
    assert "_ledger_completion" in proc.stdout


def test_git_ledger_runs_the_same_cli(repo: Path) -> None:
    bindir = os.path.dirname(sys.executable)
    if shutil.which("git-ledger", path=bindir) is None:
        pytest.skip("the git-ledger console script is not installed next to this interpreter")
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(["git", "ledger", "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "patches: 0" in proc.stdout and "runs: none" in proc.stdout


def test_usage_error_is_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = ledger(tmp_path, "check", "--no-such-option")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout


def test_outside_a_repository_is_exit_2(tmp_path: Path) -> None:
    proc = ledger(tmp_path, "check")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not inside a git repository" in proc.stderr


def test_internal_error_is_exit_3_with_traceback_only_under_debug(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # The one place we provoke a defect of ours: the checker itself raising.
    import patch_ledger.check

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(patch_ledger.check, "check", broken)
    monkeypatch.chdir(repo)
    monkeypatch.delitem(sys.modules, "patch_ledger.commands.check", raising=False)
    assert cli.main(["check"]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a defect" in err and "--debug" in err and "Traceback" not in err
    monkeypatch.delitem(sys.modules, "patch_ledger.commands.check", raising=False)
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "check"])
