"""The `pytest` gate: the repository's tests, with pytest-xdist when it pays.

The parallelism is chosen from what earlier runs of the gate recorded in the ledger: the
time the tests themselves took (`work_s`, from the JUnit XML) against what starting xdist's
workers costs. Serial when the suite is small, `-n N --dist worksteal` when the time saved
beats the start-up; `workers:` in the gate's args overrides. The JUnit XML gives every
failing test's node id, file and line. A shard runs the tests whose node id hashes to it
(`--ledger-shard`, from patch_ledger.pytest_plugin).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from patch_ledger import proc
from patch_ledger.gates import junit
from patch_ledger.hookspecs import Gate, Kind, Outcome, Work, hookimpl

ARGS = {"type": "object", "additionalProperties": False, "properties": {
    "python": {"type": "string", "minLength": 1, "description": "the interpreter that runs pytest (default: the ledger's own)"},
    "args": {"type": "array", "items": {"type": "string"}, "description": "more arguments for pytest, e.g. [tests/, -x]"},
    "workers": {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 0}],
                "description": "xdist workers: auto (chosen from earlier runs) or a number (0: serial)"},
    "dist": {"enum": ["worksteal", "load", "loadscope", "loadfile", "loadgroup"], "description": "xdist's --dist (default worksteal)"},
}}

# What starting xdist costs, and how much of N cores it gets out of them, until the gate's
# own history says better. Measured on 2 cores with a 1,000-test suite (tests/perf/).
SPAWN_S = 1.2
EFFICIENCY = 0.85
FILES_FOR_PARALLEL = 40  # with no history: test files above which a suite is worth spreading
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
    command = [gate.args.get("python", sys.executable), "-m", "pytest", *gate.args.get("args", []),
               "-o", "junit_family=xunit1", f"--junitxml={xml}"]
    if workers:
        command += ["-n", str(workers), "--dist", gate.args.get("dist", "worksteal")]
    index, count = work.shard
    if count > 1:
        command.append(f"--ledger-shard={index}/{count}")
    finished = proc.run_bounded(command, work.checkout, work.log, work.timeout, os.environ)
    return verdict(finished, xml, work, workers, why)


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
    tests' own time over the cores saves more than starting the workers costs, as the
    gate's earlier runs measured it."""
    if setting != "auto":
        return int(setting), f"workers: {setting} from the gate's args"
    if ncores < 2:
        return 0, "serial: one core"
    runs = [r for r in earlier if isinstance(r.get("work_s"), (int, float)) and isinstance(r.get("duration_s"), (int, float))]
    if not runs:
        files = count_test_files(checkout)
        if files >= FILES_FOR_PARALLEL:
            return ncores, f"-n {ncores}: no earlier run, {files} test files"
        return 0, f"serial: no earlier run, {files} test files"
    work = float(runs[0]["work_s"])
    spawn = _spawn_cost(runs)
    saved = work - work / (ncores * EFFICIENCY)
    if saved > spawn:
        return ncores, f"-n {ncores}: tests took {work:.1f} s, spreading them saves ~{saved:.1f} s, workers cost ~{spawn:.1f} s"
    return 0, f"serial: tests took {work:.1f} s, spreading them would save ~{max(saved, 0):.1f} s, workers cost ~{spawn:.1f} s"


def _spawn_cost(runs: Sequence[Mapping[str, Any]]) -> float:
    """What starting workers cost, from the newest serial and parallel runs when there are
    both (each run's time less its tests' share); the measured default otherwise."""
    serial = next((r for r in runs if not r.get("workers")), None)
    parallel = next((r for r in runs if r.get("workers")), None)
    if serial is None or parallel is None:
        return SPAWN_S
    fixed = float(serial["duration_s"]) - float(serial["work_s"])
    spread = float(parallel["work_s"]) / (int(parallel["workers"]) * EFFICIENCY)
    return max(0.1, float(parallel["duration_s"]) - spread - fixed)


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
