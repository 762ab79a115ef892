"""The rows of `ledger run` (the issue's scheduling target), against `make -j2` running the same
DAG: N no-op tasks (`run: "true"`; make's recipe `@true`), 2 workers, every transition durable
in ours. Target: at N = 1,000, at most 1.5x make's wall time. N = 5,000 and 10,000 are shown
for information: the time a task, and how it compares with the 1,000's (linear scaling keeps
it near 1x). Last, for information, 200 tasks of `sleep 0.05` on the same DAG shape against
make: what our cost a task weighs once a task takes time.

Run by tests/perf/run.py (group `run`). Each round of ours is a fresh run, as a user starts one
(`ledger run dag --workers 2`, a new run id), in a fresh copy of the repository made before
any round is timed: nothing is deleted between rounds (deleting many files on a file system
mounted with `discard` slows creating files for seconds afterwards); the copies go when the
benchmark ends. To see where the time goes, in-process:

    python tests/perf/run_cases.py profile N [SORT]    # cProfile of cli.main(["run", ...]), N tasks
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[2] / "plugin")]  # patch_ledger even when not installed

from bench import Row, Target, git  # noqa: E402

SIZES = ((1_000, 9), (5_000, 3), (10_000, 3))  # (tasks, rounds); the first carries the target
if os.environ.get("LEDGER_BENCH_RUN_SIZES"):  # e.g. "1000:5" while working on the scheduler
    SIZES = tuple(tuple(int(x) for x in size.split(":")) for size in os.environ["LEDGER_BENCH_RUN_SIZES"].split(","))  # type: ignore[misc]
# For information: the same DAG shape with tasks that do something, where a task's cost to us
# is set against its own time (tasks, rounds, command); LEDGER_BENCH_RUN_WORK=0 leaves it out.
WORK = (200, 3, "sleep 0.05")
if os.environ.get("LEDGER_BENCH_RUN_WORK") == "0":
    WORK = None  # type: ignore[assignment]
TARGET = Target(1.5)
WORKERS = 2
PLAN = "dag"
WS_SIZE = 100  # tasks a workstream
SEED = 20240611
# Per task, the transitions `ledger run` must make durable: created PENDING, QUEUED, RUNNING,
# VALIDATING, COMPLETED.
TASK_EVENTS = 5
# A run removes its spare files when it ends, and on a file system mounted with `discard` the
# next few seconds of file creation are several times slower (measured here: 40 us a file
# calm, 200-1,000 us up to 10 s after deleting 2,000). Each round of ours waits this long,
# untimed, so that it pays for its own deletions, not for the round before.
SETTLE_S = 10.0


# ---------------------------------------------------------------- the DAG

def task_id(i: int) -> str:
    return f"t-{i:05d}"


def dag(n: int) -> list[list[int]]:
    """Each task's dependencies (indices of earlier tasks): up to 2 drawn at random, and at a
    quarter, half and three quarters of the way a wide layer: n/20 tasks that all wait for
    the task before them, then one that waits for all of them."""
    rng = random.Random(SEED)
    wide, starts = max(2, n // 20), {n * k // 4 for k in (1, 2, 3)}
    deps: list[list[int]] = []
    while len(deps) < n:
        i = len(deps)
        if i in starts and i + wide < n:
            deps += [[i - 1] for _ in range(wide)]
            deps.append(list(range(i, i + wide)))
        else:
            deps.append(sorted(rng.sample(range(i), min(i, rng.randint(0, 2)))))
    return deps


def plan_text(deps: list[list[int]], version: int, command: str = "true") -> str:
    lines = [f"schema_version: {version}", f"name: {PLAN}", "workstreams:"]
    for i, before in enumerate(deps):
        if i % WS_SIZE == 0:
            lines += [f"  - id: ws-{i // WS_SIZE:03d}", "    tasks:"]
        after = f", depends_on: [{', '.join(task_id(d) for d in before)}]" if before else ""
        lines.append(f"      - {{id: {task_id(i)}, run: \"{command}\"{after}}}")
    return "\n".join(lines) + "\n"


def makefile_text(deps: list[list[int]], command: str = "true") -> str:
    ids = [task_id(i) for i in range(len(deps))]
    lines = [f".PHONY: all {' '.join(ids)}", f"all: {' '.join(ids)}"]
    for i, before in enumerate(deps):
        lines += [f"{ids[i]}: {' '.join(task_id(d) for d in before)}".rstrip(), f"\t@{command}"]
    return "\n".join(lines) + "\n"


def template(where: Path, env: dict[str, str], n: int, command: str = "true") -> Path:
    """A git repository whose one commit holds the plan (.ledger/plans/dag.yaml) and the Makefile."""
    from patch_ledger import schemas

    deps = dag(n)
    (where / ".ledger" / "plans").mkdir(parents=True)
    (where / ".ledger" / "plans" / f"{PLAN}.yaml").write_text(plan_text(deps, schemas.CURRENT_VERSION, command))
    (where / "Makefile").write_text(makefile_text(deps, command))
    git(where, env, "init", "-q", "-b", "main")
    git(where, env, "config", "commit.gpgsign", "false")
    git(where, env, "add", "-A")
    git(where, env, "commit", "-q", "--no-verify", "-m", f"a DAG of {n:,} tasks: {command}")
    return where


# ---------------------------------------------------------------- timing

class Took(NamedTuple):
    seconds: float
    rc: int
    out: Path  # its standard output


def timed(argv: list[str], cwd: Path, env: dict[str, str], out: Path) -> Took:
    """From process start to exit. The file system is synced first (untimed), so that no
    earlier writer's dirty pages are flushed by our syncs inside the timed run."""
    os.sync()
    with open(out, "wb") as stdout:
        start = time.perf_counter()
        rc = subprocess.run(argv, cwd=cwd, stdout=stdout, stderr=subprocess.DEVNULL, env=env).returncode
        return Took(time.perf_counter() - start, rc, out)


def finished(took: Took, n: int) -> str:
    """'' when the run exited 0 with every task COMPLETED, else what went wrong."""
    if took.rc != 0:
        return f"ledger exited {took.rc}"
    summary = json.loads(took.out.read_text())
    if summary["state"] != "COMPLETED" or summary["counts"] != {"COMPLETED": n}:
        return f"run {summary['state']}, tasks {summary['counts']}"
    return ""


def durable(repo: Path, n: int) -> str:
    """What the first run's event log holds of its tasks: every transition of every task."""
    (log,) = (repo / ".ledger" / "runs").glob("*/events.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    tasks = [e for e in events if e.get("type") == "transition" and e["entity"] == "task"]
    done = sum(e["to"] == "COMPLETED" for e in tasks)
    verdict = "every task's transitions" if len(tasks) == TASK_EVENTS * n and done == n else "MISSING transitions"
    return f"{len(events):,} events in the fsynced log, {len(tasks):,} of tasks ({done:,} COMPLETED): {verdict}"


class Sized(NamedTuple):
    n: int
    ours: float  # medians, seconds
    make: float
    loop: float  # the run's own `duration_s`: its loop, after the run's files exist
    dry: float | None  # `ledger run --dry-run` (start, plan read, graph): 1,000 only
    floor: float | None  # the DAG through our job plumbing with no state kept (jobs_floor.py): 1,000 only
    bare: float | None  # the DAG through a bare Python loop (jobs_bare.py): 1,000 only
    note: str


def measure_size(tmp: Path, env: dict[str, str], ledger_bin: str, n: int, rounds: int, with_dry: bool,
                 command: str = "true") -> Sized:
    """Interleaved rounds, each command starting one further along the list, each run of ours in
    its own copy of the repository (copies made, and synced, before anything is timed)."""
    base = tmp / (f"run-{n}" if command == "true" else f"run-{n}-work")
    repo = template(base / "template", env, n, command)
    copies = [shutil.copytree(repo, base / f"round-{k}", symlinks=True) for k in range(rounds + 1)]
    os.sync()
    ours_argv = [ledger_bin, "run", PLAN, "--workers", str(WORKERS), "--format", "json"]
    make_argv = ["make", "-s", f"-j{WORKERS}"]
    first = timed(ours_argv, copies[0], env, base / "first.json")  # the warm-up, and the proof it does the work
    note = finished(first, n)
    if not note:
        print(f"run of {n:,}: {durable(copies[0], n)}")
    if timed(make_argv, repo, env, base / "make-first.out").rc != 0:
        note = note or "make failed"
    floor_argv = [sys.executable, str(HERE.parent / "jobs_floor.py"), str(repo), f".ledger/plans/{PLAN}.yaml", str(WORKERS)]
    (base / "dag.json").write_text(json.dumps(dag(n)))
    bare_argv = [sys.executable, str(HERE.parent / "jobs_bare.py"), str(base / "dag.json"), str(WORKERS)]
    for name, argv in (("floor", floor_argv), ("bare", bare_argv)):
        if with_dry and timed(argv, repo, env, base / f"{name}-first.out").rc != 0:
            note = note or f"the {name} loop failed"
    commands = ["ours", "make", *(["dry", "floor", "bare"] if with_dry else [])]
    times: dict[str, list[float]] = {c: [] for c in commands}
    loops: list[float] = []
    for r in range(rounds):
        for c in (commands[(r + j) % len(commands)] for j in range(len(commands))):
            out = base / f"{c}-{r}.out"
            if c == "ours":
                time.sleep(SETTLE_S)
                took = timed(ours_argv, copies[r + 1], env, out)
                note = note or finished(took, n)
                if took.rc == 0:
                    loops.append(json.loads(out.read_text())["duration_s"])
            elif c == "make":
                took = timed(make_argv, repo, env, out)
            elif c == "floor":
                took = timed(floor_argv, repo, env, out)
            elif c == "bare":
                took = timed(bare_argv, repo, env, out)
            else:
                took = timed([*ours_argv, "--dry-run"], repo, env, out)
            times[c].append(took.seconds)
    med = {c: statistics.median(t) for c, t in times.items()}
    print(f"run of {n:,}, {rounds} rounds: " + "; ".join(f"{c} {min(t):.2f}-{max(t):.2f} s" for c, t in times.items()))
    return Sized(n, med["ours"], med["make"], statistics.median(loops) if loops else float("nan"), med.get("dry"),
                 med.get("floor"), med.get("bare"), note)


# ---------------------------------------------------------------- the rows

def rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    sized = [measure_size(tmp, env, ledger_bin, n, rounds, with_dry=i == 0) for i, (n, rounds) in enumerate(SIZES)]
    first = sized[0]
    per_first = first.ours / first.n
    out = [Row(f"(k) `ledger run` of {first.n:,} no-op tasks, {WORKERS} workers / make -s -j{WORKERS}, same DAG",
               first.ours, first.make, TARGET, first.note)]
    if first.dry is not None:
        out.append(Row("(k) of which before and after its loop (wall - duration_s) / `ledger run --dry-run`",
                       first.ours - first.loop, first.dry, None))
    out.append(Row(f"(k) of which its loop (duration_s) / make -s -j{WORKERS}", first.loop, first.make, None))
    if first.floor is not None:
        # the design's own floor: our loop starting and reaping each job, with nothing
        # durable; ledger run's state costs what lies between it and ours
        out.append(Row(f"(k) the design's floor: the DAG on {WORKERS} workers through our job plumbing, no state / make",
                       first.floor, first.make, None))
    if first.bare is not None:
        # Python's own floor: a loop of posix_spawn and waitpid over a ready-made DAG
        out.append(Row(f"(k) a bare Python loop: the DAG on {WORKERS} workers, posix_spawn and waitpid only / make",
                       first.bare, first.make, None))
    for s in sized[1:]:
        per = s.ours / s.n
        out.append(Row(f"(k) {s.n:,} tasks: {per * 1e3:.2f} ms a task, {per / per_first:.2f}x the {first.n:,}'s "
                       f"(make: {s.make / s.n * 1e3:.2f} ms)", s.ours, s.make, None, s.note))
    if WORK is not None:
        n, rounds, command = WORK
        work = measure_size(tmp, env, ledger_bin, n, rounds, with_dry=False, command=command)
        out.append(Row(f"(k) {n:,} tasks of `{command}`, same DAG shape, {WORKERS} workers / make -s -j{WORKERS}",
                       work.ours, work.make, None, work.note))
    return out


# ---------------------------------------------------------------- profiling (by hand)

def profile(n: int, sort: str) -> None:
    """cProfile of one `ledger run` of `n` tasks, in-process (the jobs and the watchdog are
    processes of their own and are not in it), in a repository under the system's temporary directory."""
    import cProfile
    import pstats

    from bench import git_env

    with tempfile.TemporaryDirectory(prefix="ledger-run-profile-") as name:
        tmp = Path(name)
        env = git_env(tmp / "home")
        (tmp / "home").mkdir()
        repo = template(tmp / "repo", env, n)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(repo)
        from patch_ledger import cli

        prof = cProfile.Profile()
        start = time.perf_counter()
        rc = prof.runcall(cli.main, ["run", PLAN, "--workers", str(WORKERS), "--format", "json"])
        print(f"exit {rc}; {time.perf_counter() - start:.2f} s in cli.main", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats(sort).print_stats(40)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "profile":
        sys.exit("usage: python tests/perf/run_cases.py profile N [SORT]")
    profile(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "cumulative")
