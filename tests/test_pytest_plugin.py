"""The pytest plugin in real pytest processes: inactive unless asked, `--ledger-gate NAME`
records the run once as gate NAME of the checked-out commit's patch (under xdist too),
never a run of uncommitted code, and `--ledger-shard I/N` splits the tests by node id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from patch_ledger import pytest_plugin
from tests.test_gates import QUIET, committed, configure, gate_refs, recorded, verdict, write

SUITE = '''\
import pytest


@pytest.mark.parametrize("n", range(8))
def test_number(n):
    pass


def test_fails():
    assert "left" == "right"


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
'''
PASSING = "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(10))


def run_pytest(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in its own process in `repo`, as a developer or a CI job runs it (patch-ledger's
    plugin loaded through its pytest11 entry point)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PYTEST_"))}
    return subprocess.run([sys.executable, "-m", "pytest", *QUIET, *args],
                          cwd=repo, capture_output=True, text=True, env=env)


@pytest.fixture
def suite(repo: Path) -> Path:
    """A repository whose HEAD commit adds a suite with one failing test, and a `tests` gate."""
    configure(repo, {"name": "tests", "plugin": "pytest", "required": True})
    committed(repo, {"README": "root\n"}, "root")
    committed(repo, {"tests/test_suite.py": SUITE}, "add the suite")
    return repo


def test_inactive_unless_asked(suite: Path) -> None:
    ran = run_pytest(suite, "tests")
    assert ran.returncode == 1 and "1 failed, 8 passed, 1 skipped" in ran.stdout
    assert "ledger:" not in ran.stdout and gate_refs(suite) == []


def test_a_run_is_recorded_once_as_the_gate_of_the_checked_out_commit(suite: Path) -> None:
    ran = run_pytest(suite, "tests", "--ledger-gate", "tests")
    assert ran.returncode == 1  # pytest's own verdict, unchanged
    assert "ledger: recorded gate tests FAILED for patch" in ran.stdout, ran.stdout
    [doc] = recorded(suite).values()
    assert doc["gate"] == "tests" and doc["plugin"] == "pytest" and doc["shard"] == "1/1" and doc["required"] is True
    assert doc["base"] == subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=suite, capture_output=True, text=True).stdout.strip()
    assert doc["counts"] == {"tests": 10, "passed": 8, "failed": 1, "errors": 0, "skipped": 1}
    assert [(f["test"], f["file"], f["line"]) for f in doc["failures"]] == [("tests/test_suite.py::test_fails", "tests/test_suite.py", 9)]
    assert "AssertionError" in doc["failures"][0]["message"]
    assert doc["history"][-1]["reason"] == "1 of 10 tests failed, first tests/test_suite.py::test_fails"
    assert verdict(suite, doc["patch"], "tests", doc["base"]).state == "FAILED"


def test_under_xdist_only_the_controller_records_once(suite: Path) -> None:
    ran = run_pytest(suite, "tests", "-n", "2", "--ledger-gate", "tests")
    assert ran.returncode == 1 and ran.stdout.count("ledger: recorded gate tests FAILED") == 1, ran.stdout
    assert len(gate_refs(suite)) == 1
    [doc] = recorded(suite).values()
    assert doc["workers"] == 2 and doc["counts"]["tests"] == 10 and len(doc["failures"]) == 1


def test_a_test_that_kills_its_worker_is_recorded_as_a_failed_test(repo: Path) -> None:
    configure(repo, {"name": "tests", "plugin": "pytest"})
    committed(repo, {"tests/test_crash.py": "import os\n\n\ndef test_ok():\n    pass\n\n\ndef test_dies():\n    os._exit(3)\n"})
    ran = run_pytest(repo, "tests", "-n", "2", "--ledger-gate", "tests")
    assert ran.returncode == 1 and "ledger: recorded gate tests FAILED" in ran.stdout, ran.stdout
    [doc] = recorded(repo).values()
    assert doc["counts"] == {"tests": 2, "passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert [f["test"] for f in doc["failures"]] == ["tests/test_crash.py::test_dies"] and "crashed" in doc["failures"][0]["message"]


def test_a_passing_run_is_recorded_passed(repo: Path) -> None:
    configure(repo, {"name": "tests", "plugin": "pytest"})
    committed(repo, {"tests/test_ok.py": PASSING})
    ran = run_pytest(repo, "tests", "--ledger-gate", "tests", "--ledger-actor", "ci-job-7")
    assert ran.returncode == 0 and "ledger: recorded gate tests PASSED" in ran.stdout
    [doc] = recorded(repo).values()
    assert doc["state"] == "PASSED" and doc["base"] is None and doc["history"][-1]["actor"] == "ci-job-7"
    assert doc["history"][-1]["reason"] == "10 passed"


def test_uncommitted_changes_are_tested_but_not_recorded(suite: Path) -> None:
    write(suite, "tests/test_suite.py", SUITE.replace('"left" == "right"', '"left" == "left"'))
    ran = run_pytest(suite, "tests", "--ledger-gate", "tests")
    assert ran.returncode == 0  # pytest's verdict on what it ran
    assert "ledger: gate tests NOT recorded: the checkout has uncommitted changes to tracked files" in ran.stdout
    assert gate_refs(suite) == []


@pytest.mark.parametrize(("args", "said"), [
    (["--ledger-gate", "test"], "no gate named 'test' in .ledger/config.yaml (gates: tests)"),
    (["--ledger-gate", "tests", "--collect-only"], "--collect-only runs no test"),
])
def test_a_run_that_is_not_the_gate_is_not_recorded(suite: Path, args: list[str], said: str) -> None:
    expected = run_pytest(suite, "tests", *args[2:]).returncode
    ran = run_pytest(suite, "tests", *args)
    assert ran.returncode == expected and f"ledger: gate {args[1]} NOT recorded: {said}" in ran.stdout, ran.stdout
    assert gate_refs(suite) == []


def test_ledger_shard_deselects_by_node_id_the_same_way_every_time(suite: Path) -> None:
    def collected(*args: str) -> list[str]:
        ran = run_pytest(suite, "tests", "--collect-only", "-q", *args)
        return [line for line in ran.stdout.splitlines() if "::" in line]

    everything = [f"tests/test_suite.py::test_number[{n}]" for n in range(8)] + ["tests/test_suite.py::test_fails",
                                                                                "tests/test_suite.py::test_skipped"]
    one, two = collected("--ledger-shard", "1/2"), collected("--ledger-shard", "2/2")
    assert one and two and sorted(one + two) == sorted(everything) and not set(one) & set(two)
    # by a hash of the node id, not the order: the same split in every job, on every machine
    assert one == [t for t in everything if pytest_plugin.in_shard(t, 1, 2)]


def test_shards_recorded_by_pytest_make_one_verdict(repo: Path) -> None:
    configure(repo, {"name": "tests", "plugin": "pytest"})
    committed(repo, {"tests/test_ok.py": PASSING})
    first = run_pytest(repo, "tests", "--ledger-gate", "tests", "--ledger-shard", "1/2")
    assert first.returncode == 0 and "recorded gate tests PASSED" in first.stdout
    patch = next(iter(recorded(repo).values()))["patch"]
    assert verdict(repo, patch, "tests", None).state == "PENDING"
    assert run_pytest(repo, "tests", "-n", "2", "--ledger-gate", "tests", "--ledger-shard", "2/2").returncode == 0
    final = verdict(repo, patch, "tests", None)
    assert final.state == "PASSED" and sum(r.counts["tests"] for r in final.attempts) == 10
    # a shard in which no test falls is SKIPPED, not FAILED
    elsewhere = 2 if pytest_plugin.in_shard("tests/test_ok.py::test_0", 1, 2) else 1
    empty = run_pytest(repo, "tests/test_ok.py::test_0", "--ledger-gate", "tests", "--ledger-shard", f"{elsewhere}/2")
    assert empty.returncode == 5 and "recorded gate tests SKIPPED" in empty.stdout, empty.stdout


@pytest.mark.parametrize("shard", ["3/2", "0/2", "2", "a/b"])
def test_a_malformed_shard_stops_pytest_before_it_runs(suite: Path, shard: str) -> None:
    ran = run_pytest(suite, "tests", "--ledger-shard", shard, "--ledger-gate", "tests")
    assert ran.returncode == 4 and f"--ledger-shard '{shard}': write I/N" in ran.stderr
    assert gate_refs(suite) == []
