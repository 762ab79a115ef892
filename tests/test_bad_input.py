"""Bad input and usage exit 2 with one line that names the file, never a traceback, and
change nothing; `ledger migrate` upgrades version-1 files so that `ledger check` accepts them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.builders import commit, git, ledger, stamp, task, write

TASK = ".ledger/runs/r1/tasks/a.json"
CONFIG = ".ledger/config.yaml"
BIG = 200 * 1024 * 1024


def snapshot(repo: Path) -> dict[str, Any]:
    """Every file of the repository (git's own too) and the index's entries."""
    files: dict[str, Any] = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and rel != ".git/index":
            size = path.stat().st_size
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if size < 1024 * 1024 else path.stat().st_mtime_ns
            files[rel] = (size, digest)
    files["index"] = git(repo, "ls-files", "-s", check=False).stdout
    return files


def assert_bad_input(proc: subprocess.CompletedProcess[str], names: str, says: tuple[str, ...] = ()) -> None:
    """Exit 2 and exactly one line, on stdout or stderr, naming `names` (and saying `says`);
    no traceback."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert proc.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and names in lines[0], output
    assert all(s in lines[0] for s in says), f"{lines[0]!r} should say {says}"
    assert len(lines) == 1, f"expected one line, got: {lines}"


def refused(repo: Path, *args: str, names: str, says: tuple[str, ...] = (), cwd: Path | None = None) -> None:
    """`ledger ARGS` is refused as bad input, in one line naming `names`, and changes nothing."""
    before = snapshot(repo)
    proc = ledger(cwd or repo, *args)
    assert snapshot(repo) == before
    assert_bad_input(proc, names, says)


# Starts `ledger` and writes its peak memory to the file argv[1]. A process started from this
# test's own (exec after vfork) inherits its high-water mark of memory: measured from a small
# process instead, the peak is ledger's own, however much the tests before grew this one.
_MEASURE = """import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def ledger_measured(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`ledger ARGS` and the peak resident memory, in bytes, of it and the processes it ran."""
    out, err, peak = cwd.parent / "out.txt", cwd.parent / "err.txt", cwd.parent / "peak.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    argv = [sys.executable, "-m", "patch_ledger", *args]
    with open(out, "wb") as o, open(err, "wb") as e:
        code = subprocess.run([sys.executable, "-c", _MEASURE, str(peak), *argv], cwd=cwd, stdout=o, stderr=e, env=env).returncode
    result = subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())
    return result, int(peak.read_text())


# --- files that are no state file ----------------------------------------------------------


def test_invalid_json(repo: Path) -> None:
    write(repo, TASK, '{\n  "schema_version": 2,\n  "id": "a"\n  "state": "PENDING"\n}\n')

    refused(repo, "check", names=TASK, says=(f"{TASK}:4:3: ", "invalid JSON"))


def test_invalid_json_in_a_json_report(repo: Path) -> None:
    write(repo, TASK, "{")
    before = snapshot(repo)

    proc = ledger(repo, "check", "--format", "json")

    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert (report["ok"], report["exit_code"]) == (False, 2)
    assert [(f["path"], f["rule"]) for f in report["findings"]] == [(TASK, "input")]
    assert snapshot(repo) == before


def test_a_yaml_bomb_in_the_config(repo: Path) -> None:
    lines = ["schema_version: 2", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    write(repo, CONFIG, "\n".join(lines) + "\n")

    refused(repo, "check", names=CONFIG, says=("YAML bomb",))


def test_a_huge_file_is_refused_unread(repo: Path) -> None:
    path = write(repo, TASK, b"")
    os.truncate(path, BIG)  # sparse: no disk, no time
    before = snapshot(repo)

    proc, peak = ledger_measured(repo, "check")

    assert peak < BIG // 2, f"ledger check used {peak >> 20} MB to refuse a {BIG >> 20} MB file"
    assert snapshot(repo) == before
    assert_bad_input(proc, TASK, says=(str(BIG),))


def test_a_huge_staged_file_is_refused_unread(repo: Path) -> None:
    """The same from the index (the pre-commit hook): its blob must not be read whole either."""
    path = write(repo, TASK, b"")
    os.truncate(path, BIG)
    git(repo, "add", TASK)
    before = snapshot(repo)

    proc, peak = ledger_measured(repo, "check", "--staged")

    assert peak < BIG // 2, f"ledger check --staged used {peak >> 20} MB to refuse a {BIG >> 20} MB blob"
    assert snapshot(repo) == before
    assert_bad_input(proc, TASK, says=(str(BIG),))


def test_a_list_instead_of_an_object(repo: Path) -> None:
    write(repo, TASK, [task("a")])

    refused(repo, "check", names=TASK, says=("list", "object"))


def test_an_unknown_schema_version(repo: Path) -> None:
    write(repo, TASK, {**task("a"), "schema_version": 99})

    refused(repo, "check", names=TASK, says=("99",))


def test_an_old_schema_version_says_to_migrate(repo: Path) -> None:
    write(repo, TASK, {**task("a"), "schema_version": 1})

    refused(repo, "check", names=TASK, says=(f"ledger migrate {TASK}",))


def test_a_missing_include_in_the_config(repo: Path) -> None:
    write(repo, CONFIG, "schema_version: 2\ngates: {$ref: missing.yaml}\n")

    refused(repo, "check", names=CONFIG, says=(f"{CONFIG}:2:8: ", "missing.yaml"))


def test_a_path_outside_the_repository(repo: Path) -> None:
    write(repo.parent, "x.json", task("x"))

    refused(repo, "check", "../x.json", names="../x.json")


def test_base_head_before_the_first_commit(repo: Path) -> None:
    write(repo, TASK, task("a"))

    refused(repo, "check", "--base", "HEAD", names="--base HEAD", says=("no commits",))


def test_not_a_git_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    write(plain, TASK, task("a"))
    if git(plain, "rev-parse", "--git-dir", check=False).returncode == 0:
        pytest.skip("the temporary directory is inside a git repository")

    refused(plain, "check", names=str(plain), says=("not inside a git repository",))


def test_a_file_that_is_not_utf8(repo: Path) -> None:
    write(repo, TASK, b'{"id": "caf\xe9"}\n')

    refused(repo, "check", names=TASK, says=("UTF-8",))


def test_an_unknown_option_is_a_usage_error(repo: Path) -> None:
    before = snapshot(repo)

    proc = ledger(repo, "check", "--bogus")

    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()  # one line, naming the option and where help is
    assert "--bogus" in line and "ledger check --help" in line
    assert snapshot(repo) == before


# --- ledger migrate ---------------------------------------------------------------------


def v1_task(task_id: str = "a", progress: int = 50) -> dict[str, Any]:
    """A task as version 1 wrote it: the states entered, and progress in percent."""
    return {
        "schema_version": 1, "id": task_id, "state": "RUNNING", "run": "r1", "attempts": 1, "max_attempts": 3,
        "progress": progress,
        "history": [
            {"state": "PENDING", "at": stamp(0), "by": "alice", "note": "created"},
            {"state": "QUEUED", "at": stamp(1), "by": "alice", "note": ""},
            {"state": "RUNNING", "at": stamp(2), "by": "worker-1"},
        ],
    }


def test_migrate_upgrades_a_version_1_task_that_check_then_accepts(repo: Path) -> None:
    write(repo, TASK, v1_task())

    proc = ledger(repo, "migrate")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TASK in proc.stdout
    doc = json.loads((repo / TASK).read_text())
    assert (doc["schema_version"], doc["progress"]) == (2, 0.5)
    assert doc["history"] == [
        {"from": None, "to": "PENDING", "at": stamp(0), "actor": "alice", "reason": "created"},
        {"from": "PENDING", "to": "QUEUED", "at": stamp(1), "actor": "alice", "reason": ""},
        {"from": "QUEUED", "to": "RUNNING", "at": stamp(2), "actor": "worker-1", "reason": ""},
    ]
    checked = ledger(repo, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = ledger(repo, "migrate", "--check")
    assert again.returncode == 0


def test_migrate_check_reports_and_writes_nothing(repo: Path) -> None:
    write(repo, TASK, v1_task())
    before = snapshot(repo)

    proc = ledger(repo, "migrate", "--check")

    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert TASK in proc.stdout
    assert snapshot(repo) == before


def test_migrate_with_bad_input_writes_nothing(repo: Path) -> None:
    write(repo, TASK, v1_task())
    write(repo, ".ledger/runs/r1/tasks/b.json", "{not json")

    refused(repo, "migrate", names=".ledger/runs/r1/tasks/b.json")


def test_migrating_a_committed_version_1_file_passes_against_head(repo: Path) -> None:
    """The base holds version 1: it is upgraded in memory before the comparison."""
    write(repo, TASK, v1_task())
    assert commit(repo, "v1").returncode == 0
    assert ledger(repo, "migrate").returncode == 0

    migrated = ledger(repo, "check", "--format", "json")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert commit(repo, "migrate").returncode == 0
    assert ledger(repo, "check", "--base", "HEAD~1").returncode == 0

    doc = json.loads((repo / TASK).read_text())
    write(repo, TASK, {**doc, "progress": 0.25})
    lower = json.loads(ledger(repo, "check", "--base", "HEAD~1", "--format", "json").stdout)
    assert lower["exit_code"] == 1
    assert [f["message"] for f in lower["findings"]] == ["progress went down from 0.5 to 0.25; progress never goes down"]
