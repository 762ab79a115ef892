"""The pytest gate's own parts: how it chooses its parallelism from the gate's earlier runs,
and its lean JUnit XML writer, which must read back exactly as pytest's junitxml does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patch_ledger.gates import junit, pytest_gate
from patch_ledger.gates.pytest_gate import (EFFICIENCY, FILES_FOR_PARALLEL, GAIN_FOR_PARALLEL, PER_TEST_S, SPAWN_S,
                                             choose_workers)
from tests.test_gates import FAILING_SUITE, QUIET


def run(workers: int, duration_s: float, work_s: float, tests: int = 100) -> dict[str, Any]:
    """An earlier result of the gate, as gate.json holds it."""
    return {"workers": workers, "duration_s": duration_s, "work_s": work_s, "counts": {"tests": tests}}


def test_a_number_of_workers_in_the_args_is_used_as_it_is(tmp_path: Path) -> None:
    assert choose_workers(3, [], 2, tmp_path) == (3, "workers: 3 from the gate's args")
    assert choose_workers(0, [run(0, 100, 99)], 8, tmp_path)[0] == 0


def test_one_core_is_serial(tmp_path: Path) -> None:
    assert choose_workers("auto", [run(0, 100, 99)], 1, tmp_path) == (0, "serial: one core")


def test_without_history_the_number_of_test_files_decides(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    for i in range(FILES_FOR_PARALLEL - 1):
        (tmp_path / "tests" / f"test_{i}.py").write_text("")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "test_hidden.py").write_text("")  # not counted
    assert choose_workers("auto", [], 2, tmp_path) == (0, f"serial: no earlier run, {FILES_FOR_PARALLEL - 1} test files")
    (tmp_path / "tests" / "last_test.py").write_text("")
    assert choose_workers("auto", [], 2, tmp_path) == (2, f"-n 2: no earlier run, {FILES_FOR_PARALLEL} test files")


def test_after_a_serial_run_the_tests_time_against_the_default_cost_of_workers_decides(tmp_path: Path) -> None:
    tests, duration = 1_000, 10.0
    cost = SPAWN_S + PER_TEST_S * tests
    # the tests' time above which two workers save what they cost and a tenth of the run
    pays = (cost + GAIN_FOR_PARALLEL * duration) / (1 - 1 / (2 * EFFICIENCY))
    workers, why = choose_workers("auto", [run(0, duration, pays * 0.95, tests)], 2, tmp_path)
    assert workers == 0 and why.startswith("serial: tests took") and "(the defaults)" in why
    workers, why = choose_workers("auto", [run(0, duration, pays * 1.05, tests)], 2, tmp_path)
    assert workers == 2 and why.startswith("-n 2: tests took")


def test_with_a_serial_and_a_parallel_run_the_faster_one_wins(tmp_path: Path) -> None:
    slower = [run(2, 6.0, 3.0), run(0, 3.3, 1.4)]  # newest first; the parallel run's test times are inflated
    workers, why = choose_workers("auto", slower, 2, tmp_path)
    assert workers == 0 and "tests took 1.4 s" in why and "as its last serial and parallel runs measured" in why
    faster = [run(0, 30.0, 28.0), run(2, 17.0, 29.0), run(0, 31.0, 29.0)]
    assert choose_workers("auto", faster, 2, tmp_path)[0] == 2
    barely = [run(2, 3.2, 1.5), run(0, 3.3, 1.4)]  # a few percent: within the noise of one run each
    assert choose_workers("auto", barely, 2, tmp_path)[0] == 0


def test_a_parallel_run_alone_keeps_spreading_a_large_suite(tmp_path: Path) -> None:
    assert choose_workers("auto", [run(2, 20.0, 36.0)], 2, tmp_path)[0] == 2
    assert choose_workers("auto", [run(2, 2.0, 0.3)], 2, tmp_path)[0] == 0


def test_results_without_times_are_no_history(tmp_path: Path) -> None:
    broken = [{"workers": 0, "duration_s": None, "work_s": 5.0}, {"workers": 2}]
    assert choose_workers("auto", broken, 2, tmp_path)[1].startswith("serial: no earlier run")


def test_the_lean_writer_runs_only_in_the_ledger_s_own_interpreter(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    assert pytest_gate.junit_args(sys.executable, xml) == ["-p", "patch_ledger.gates.junit_writer", f"--ledger-junitxml={xml}"]
    assert pytest_gate.junit_args("/usr/bin/env", xml) == ["-o", "junit_family=xunit1", f"--junitxml={xml}"]


# FAILING_SUITE's failures, errors and parameters, and every other way a test ends
MORE = '''

class TestOuter:
    class TestInner:
        def test_nested(self):
            raise ValueError("bad \\x1b[31m value \\x00 \\u00e9")


@pytest.mark.parametrize("s", ["a::b", "c/d", "e[f]"])
def test_ids(s):
    assert s == "c/d"


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown broke")


def test_teardown(bad_teardown):
    pass


def test_fails_then_teardown(bad_teardown):
    assert False


def test_skip():
    pytest.skip("not here")


@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False


@pytest.mark.xfail(strict=True)
def test_xpass_strict():
    pass
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_the_lean_writer_reads_back_as_pytest_s_own_junit_xml(tmp_path: Path, workers: int) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text(FAILING_SUITE + MORE)
    (tmp_path / "tests" / "test_skipped.py").write_text('import pytest\npytest.skip("all of it", allow_module_level=True)\n')
    ours, theirs = tmp_path / "ours.xml", tmp_path / "theirs.xml"
    subprocess.run([sys.executable, "-m", "pytest", "tests", *QUIET, "-n", str(workers),
                    "-p", "patch_ledger.gates.junit_writer", f"--ledger-junitxml={ours}", "-o", "junit_family=xunit1",
                    f"--junitxml={theirs}"], cwd=tmp_path, capture_output=True, check=False)
    mine, pytests = junit.read(ours), junit.read(theirs)
    assert mine.counts == pytests.counts == {"tests": 17, "passed": 3, "failed": 8, "errors": 3, "skipped": 3}
    assert mine.failures == pytests.failures
    # pytest writes each test's time to the millisecond, rounded either way: half of one a test apart at most
    assert abs(mine.work_s - pytests.work_s) <= 0.0005 * mine.counts["tests"] + 1e-9 and mine.work_s > 0
