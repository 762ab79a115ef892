"""The `pytest` gate: the repository's tests, with pytest-xdist when it pays.

The parallelism is chosen from what earlier runs of the gate recorded in the ledger: the
time the tests themselves took (`work_s`) against what xdist costs (starting its workers,
and feeding them each test); a serial and a parallel run of the gate's own measure that
cost, until they do the defaults measured below stand in. `workers:` in the gate's args
overrides. pytest writes a JUnit XML (xunit1, which keeps each test's file and line),
which gives every failing test's node id, file and line; in the ledger's own interpreter a
lean writer of ours writes it (gates/junit_writer.py). A shard runs the tests whose node id
hashes to it (`--ledger-shard`, from patch_ledger.pytest_plugin).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from patch_ledger import proc, schemas
from patch_ledger.gates import junit
from patch_ledger.hookspecs import Gate, Kind, Outcome, Work, hookimpl

ARGS = schemas.load("config")["$defs"]["pytest_args"]  # the schema is the one source: schemas/config.json

# What xdist costs and gives, until the gate's own runs say better. Measured on this
# project's 2-core machine (Python 3.11, pytest 9, pytest-xdist 3.8, --dist worksteal),
# plain pytest serial against -n 2, medians of 8, quiet (and loaded by other jobs):
# - one test: 0.25 s against 0.6 s (0.44 against 1.8): starting two workers, ~0.35-0.5 s;
# - 500 and 2,000 trivial tests: 0.41 against 1.0-1.1 s, 1.0 against 2.7-3.4 s (1.8 against
#   4.1): the controller receives and reports each test, ~1 ms a test with three processes
#   on two cores. python-dateutil's 2,096 tests (1.3-1.4 s of their own in a 2.9-3.3 s run,
#   tests/perf/gate_cases.py) gain nothing: 2.8 s with -n 2 when quiet, 4.4-6 s when not;
# - 40 tests of 50 ms of CPU each: 2.3 s against 1.6-1.7 s (2.8 against 4.2): the tests' own
#   time spreads almost perfectly over free cores, and not at all over busy ones.
# With no history the number of test files says little (dateutil's 16 files gain nothing
# from -n 2, this project's 20, with 1,200 slow tests, a little: 138 s against 131 s, loaded),
# so a first run is serial unless the suite is very large: it measures the suite, and costs
# at most once what -n N would have saved.
SPAWN_S = 0.5
PER_TEST_S = 0.001
EFFICIENCY = 0.9  # leaves room for a machine that runs something else too
FILES_FOR_PARALLEL = 100  # with no history: test files from which a suite is spread at once
# Loaded, -n 2 runs of one suite vary twice as much as serial ones (the 40 tests: 2.5-5.8 s
# against 2.4-3.7 s; dateutil's: 4.3-9.1 s against 3.3-5.4 s), and the comparison has one run
# of each (in the benchmark, the gate's -n 2 warm-up on dateutil's took 2.8 s against 2.7 s
# serial; a -n 2 run chosen on such evidence took 4.4 s): spreading must be expected to save
# a fifth of the run, or the gate stays serial.
GAIN_FOR_PARALLEL = 0.2
_PYTEST_EXIT = {2: "interrupted", 3: "an internal error", 4: "a usage error", 5: "no tests collected"}


@hookimpl
def ledger_gate_kinds() -> list[Kind]:
    return [Kind("pytest", "the repository's tests with pytest (and pytest-xdist when it pays)", ARGS, shardable=True)]


@hookimpl
def ledger_gate_run(gate: Gate, work: Work) -> Outcome | None:
    if gate.plugin != "pytest":
        return None
    workers, why = choose_workers(gate.args.get("workers", "auto"), work.earlier, cores(), work.checkout)
    xml = work.log.with_suffix(".junit.xml")
    python = gate.args.get("python", sys.executable)
    command = [python, "-m", "pytest", *gate.args.get("args", []), *junit_args(python, xml)]
    if workers:
        command += ["-n", str(workers), "--dist", gate.args.get("dist", "worksteal")]
    index, count = work.shard
    if count > 1:
        command.append(f"--ledger-shard={index}/{count}")
    finished = proc.run_bounded(command, work.checkout, work.log, work.timeout, os.environ)
    return verdict(finished, xml, work, workers, why)


def junit_args(python: str, xml: Path) -> list[str]:
    """How pytest is asked for the JUnit XML: from our lean writer when it runs in the
    ledger's own interpreter (which has patch_ledger), from pytest's junitxml plugin in any
    other. pytest's plugin builds an element tree a test: its hooks took 75 ms of a 3 s run of
    python-dateutil's 2,096 tests, ours 20 ms (tests/perf/gate_cases.py)."""
    found = shutil.which(python)
    if found is not None and os.path.abspath(found) == os.path.abspath(sys.executable):
        return ["-p", "patch_ledger.gates.junit_writer", f"--ledger-junitxml={xml}"]
    return ["-o", "junit_family=xunit1", f"--junitxml={xml}"]


def verdict(finished: proc.Finished, xml: Path, work: Work, workers: int, why: str) -> Outcome:
    """The outcome from pytest's exit and its JUnit XML (which is believed over the exit code
    when it lists failures)."""
    log = f"[{why}]\n" + proc.excerpt(finished.log)
    ended = proc.describe(finished, work.timeout)
    if finished.timed_out or finished.returncode < 0:
        return Outcome("FAILED", f"pytest {ended}", log=log, workers=workers)
    try:
        suite = junit.read(xml)
    except junit.JUnitError as e:
        return Outcome("FAILED", f"pytest ended with {ended}, and its JUnit XML is unreadable ({e})", log=log, workers=workers)
    finally:
        xml.unlink(missing_ok=True)
    c = suite.counts
    said = f"{c['passed']} passed" + "".join(f", {c[k]} {k}" for k in ("failed", "errors", "skipped") if c[k])
    common: dict[str, Any] = {"counts": c, "failures": suite.failures, "log": log, "workers": workers, "work_s": suite.work_s}
    if suite.failures:
        return Outcome("FAILED", f"{len(suite.failures)} of {c['tests']} tests failed, first {suite.failures[0].test}", **common)
    if finished.returncode == 5 and work.shard[1] > 1:
        return Outcome("SKIPPED", f"no tests fell in shard {work.shard[0]}/{work.shard[1]}", **common)
    if finished.returncode != 0:
        meaning = _PYTEST_EXIT.get(finished.returncode, "a failure")
        return Outcome("FAILED", f"pytest ended with {ended} ({meaning}); {said}", **common)
    return Outcome("PASSED", said, **common)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_workers(setting: Any, earlier: Sequence[Mapping[str, Any]], ncores: int, checkout: Path) -> tuple[int, str]:
    """(xdist workers, why): `setting` when it is a number; else serial unless spreading the
    tests' own time over the cores saves more than the workers cost (by a margin), as the
    gate's earlier runs measured it. The tests' time is a serial run's when there is one:
    under xdist each test's time also holds its wait for a core, which would make spreading
    look better."""
    if setting != "auto":
        return int(setting), f"workers: {setting} from the gate's args"
    if ncores < 2:
        return 0, "serial: one core"
    runs = [r for r in earlier if isinstance(r.get("work_s"), (int, float)) and isinstance(r.get("duration_s"), (int, float))]
    serial = next((r for r in runs if not r.get("workers")), None)
    spread = next((r for r in runs if r.get("workers")), None)
    if serial is None and spread is None:
        files = count_test_files(checkout)
        return (ncores, f"-n {ncores}: no earlier run, {files} test files") if files >= FILES_FOR_PARALLEL \
            else (0, f"serial: no earlier run, {files} test files")
    known = next(r for r in (serial, spread) if r is not None)
    work = float(known["work_s"])
    cost, measured = _workers_cost(serial, spread, int(known.get("counts", {}).get("tests", 0)))
    saved = work - work / (ncores * EFFICIENCY)
    said = (f"tests took {work:.1f} s; {ncores} workers would save ~{max(saved, 0):.1f} s and cost ~{cost:.1f} s "
            f"({'as its last serial and parallel runs measured' if measured else 'the defaults'})")
    margin = GAIN_FOR_PARALLEL * float(known["duration_s"])
    if saved - cost > margin:
        return ncores, f"-n {ncores}: {said}"
    return 0, f"serial: {said}" + (f"; a gain under {margin:.1f} s is within the noise" if saved > cost else "")


def _workers_cost(serial: Mapping[str, Any] | None, spread: Mapping[str, Any] | None, tests: int) -> tuple[float, bool]:
    """(what running under xdist costs beyond the tests' own time, whether the gate's own
    runs measured it): from its newest serial and parallel runs when it has both (the
    parallel run's time less the serial run's tests spread over its workers, less what the
    serial run spent outside its tests); else starting the workers and feeding them each test."""
    if serial is None or spread is None:
        return SPAWN_S + PER_TEST_S * tests, False
    fixed = float(serial["duration_s"]) - float(serial["work_s"])
    tests_alone = float(serial["work_s"]) / (int(spread["workers"]) * EFFICIENCY)
    return max(0.0, float(spread["duration_s"]) - tests_alone - fixed), True


def count_test_files(checkout: Path, limit: int = 20_000) -> int:
    """Files named like pytest's tests (test_*.py, *_test.py), hidden and vendored
    directories left out, looking at `limit` entries at most."""
    found = seen = 0
    for _, dirs, files in os.walk(checkout):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "site-packages", "venv", "__pycache__")]
        seen += len(files) + len(dirs)
        found += sum(1 for f in files if f.endswith(".py") and (f.startswith("test_") or f.endswith("_test.py")))
        if seen > limit:
            break
    return found
