"""`ledger run` killed with SIGKILL at random moments and resumed each time (the issue's
"Reliability"): every run completes, every task is COMPLETED exactly once (counted in the event
log and the task files, not in what the tasks wrote: a task killed mid-run may have written
before it died), no task runs twice at the same time (each holds a lock on its name while it
runs, and says so when it finds the lock taken), every state file passes `ledger check` after
every kill (files behind the event log included: the checker reads a run as its log says it
is) and at the end (also against the state committed after a kill: append-only), and no
process of the run outlives it."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from tests.builders import git, init_repo
from tests.test_run import (alive, all_events, assert_state_is_whole, docs, done_lines, entered, finish, no_process_left,
                            problems, processes_in, read, run_id, setup, start, task, ws)

KILLS = 20  # at least this many SIGKILLs that hit a run under way
MAX_RUNS = 16  # fresh runs at most, each killed up to KILLS_A_RUN times before it may finish
KILLS_A_RUN = 3
SEED = int(os.environ.get("LEDGER_KILL_SEED", "20240611"))

# The lock is flock's: the kernel drops it when its holder dies, so only a job still alive
# can make a later attempt find it taken.
LOCKED = ("flock -n locks/$LEDGER_TASK -c 'echo $LEDGER_ATTEMPT >> done/$LEDGER_TASK; sleep 0.08' "
          "|| { echo $LEDGER_TASK >> overlaps; exit 1; }")


def thirty_tasks(repo: Path) -> list[str]:
    """~30 tasks in four workstreams: chains, a workstream dependency and cross-workstream edges."""
    setup(repo,
          ws("a", *(task(f"a{i}", LOCKED, *([f"a{i - 1}"] if i % 2 else [])) for i in range(8))),
          ws("b", *(task(f"b{i}", LOCKED) for i in range(8))),
          ws("c", *(task(f"c{i}", LOCKED) for i in range(7)), depends_on=("a",)),
          ws("d", *(task(f"d{i}", LOCKED, f"b{i}") for i in range(7))),
          max_attempts=10)  # a crash counts against attempts (see test_run.py); 10 leaves room for the kills
    return [*(f"a{i}" for i in range(8)), *(f"b{i}" for i in range(8)), *(f"c{i}" for i in range(7)),
            *(f"d{i}" for i in range(7))]


def kill_at(repo: Path, args: list[str], delay: float) -> tuple[int | None, str]:
    """Start `ledger ARGS` and SIGKILL it after `delay` s: (None, "") when that hit it still
    running, else (its exit code, its output). Afterwards nothing of it is left (its workers
    saw their standard input close and killed their jobs)."""
    proc = start(repo, *args)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    no_process_left(repo)
    return (None, "") if proc.returncode == -signal.SIGKILL else (proc.returncode, out + err)


def the_run(repo: Path) -> Path | None:
    runs = repo / ".ledger" / "runs"
    found = sorted(runs.iterdir()) if runs.is_dir() else []
    assert len(found) <= 1, found
    return found[0] if found else None


def args_for(repo: Path) -> list[str]:
    """A new run of the plan, or the run that was started: resumed."""
    again = ["--resume", run_id(repo)] if the_run(repo) else ["p"]
    return ["run", *again, "--workers", "3", "--heartbeat", "0.5"]


def test_sigkill_at_random_moments_then_resume_completes_every_task_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    kills = runs = 0
    known: list[str] = []
    history: list[str] = []
    while kills < KILLS:
        assert runs < MAX_RUNS, f"only {kills} kills hit a run under way in {runs} runs (seed {SEED}): {history}"
        repo = init_repo(tmp_path / f"run{runs}")
        runs += 1
        tids = thirty_tasks(repo)
        what = f"run {runs} (seed {SEED})"
        exit_code: int | None = None
        for n in range(rng.randint(2, KILLS_A_RUN)):
            delay = rng.uniform(0.05, 1.0) if n == 0 else rng.uniform(0.05, 0.5)
            exit_code, output = kill_at(repo, args_for(repo), delay)
            if exit_code is not None:
                what += f"; finished before its kill: {output}"
                break
            kills += 1
            what += f", killed {delay:.2f} s in"
            run = the_run(repo)
            if run is None:
                continue  # killed before it wrote anything: it starts again
            if not (run / "run.json").is_file():
                known.append(f"{what}: no run.json yet")  # checked, and resumed, like any other state
            assert problems(repo) == [], f"{what}: the state the kill left"
            if entered(repo, "run", "COMPLETED"):
                # killed on its way out: the log says COMPLETED; --resume replays it into the
                # files and says there is nothing left to do
                result = finish(start(repo, *args_for(repo)))
                assert result.returncode == 0 and "COMPLETED" in result.stdout, result
                exit_code = 0
                break
            git(repo, "add", ".ledger")
            git(repo, "commit", "-qm", f"after kill {kills}", "--no-verify", "--allow-empty")
        else:
            result = finish(start(repo, *args_for(repo)))
            exit_code = result.returncode
            what += f"; resumed: {result.stdout}{result.stderr}"
        history.append(what)
        assert exit_code == 0, what
        check_finished(repo, tids, what)
    assert kills >= KILLS
    print(f"{kills} kills in {runs} runs; known problems met: {known}")


def check_finished(repo: Path, tids: list[str], what: str) -> None:
    assert read(repo, "run")["state"] == "COMPLETED", what
    tasks = docs(repo, "task")
    assert sorted(tasks) == sorted(tids)
    completed = entered(repo, "task", "COMPLETED")
    assert sorted(completed) == sorted(tids), f"{what}: COMPLETED transitions {sorted(completed)}"
    starts = entered(repo, "task", "RUNNING")
    for tid, doc in tasks.items():
        history = [h["to"] for h in doc["history"]]
        assert doc["state"] == "COMPLETED" and history.count("COMPLETED") == 1, (what, tid, history)
        assert starts.count(tid) == history.count("RUNNING") == doc["attempts"], (what, tid, history)
        # the attempt that completed is the last to have started (an earlier one was killed or failed)
        assert done_lines(repo, tid)[-1] == str(doc["attempts"]), (what, tid, done_lines(repo, tid))
    assert not (repo / "overlaps").exists(), f"{what}: ran twice at once: {(repo / 'overlaps').read_text()}"
    assert all(w["state"] == "TERMINATED" and not alive(w["pid"]) for w in docs(repo, "worker").values()), what
    assert_state_is_whole(repo)  # `ledger check` compares with HEAD: the state committed after the last kill
    assert processes_in(repo) == [], what
    assert [e["seq"] for e in all_events(repo)][-1] == len(all_events(repo))
