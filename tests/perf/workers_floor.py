"""The floor of `ledger run`'s design, for the benchmark's information row: a plan's DAG
run through our own worker processes (patch_ledger.pool and workerproc, two jobs held a
worker, as the orchestrator holds them) by a loop that keeps no state at all: no files, no
event log, no machines. What `ledger run` takes beyond this is the cost of its durable
state; what this takes beyond make is the cost of Python worker processes.

    python tests/perf/workers_floor.py REPO PLAN WORKERS
"""

from __future__ import annotations

import heapq
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "plugin")]  # as run_cases.py

from patch_ledger import config, dag, plans  # noqa: E402
from patch_ledger.pool import Pool  # noqa: E402

HOLD = 2


def main(root: Path, plan: str, workers: int) -> int:
    graph = dag.build(plans.load(root, plan), config.load(root).get("tools", {}), plan)
    waiting = {t: len(spec.depends_on) for t, spec in graph.tasks.items()}
    dependents = graph.dependents()
    ready = [t for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    pool = Pool(root, 1.0)
    slots = [pool.spawn(f"w{i}") for i in range(workers)]
    log = str(root / ".git" / "floor.log")
    done = 0
    try:
        while done < len(graph.tasks):
            for slot in slots:
                jobs = []
                while len(slot.jobs) < HOLD and ready:
                    tid = heapq.heappop(ready)
                    slot.jobs.append((tid, 1))
                    jobs.append({"task": tid, "attempt": 1, "argv": dag.shell_argv(graph.tasks[tid].run or "true"),
                                 "cwd": str(root), "env": {}, "timeout": None, "log": log})
                if jobs:
                    pool.send(slot, *jobs)
            for slot, message in pool.messages(1.0):
                if message is None:
                    return 3
                if "done" in message:
                    if message["rc"] != 0:
                        return 1
                    slot.jobs.remove((message["done"], 1))
                    done += 1
                    for child in dependents[message["done"]]:
                        waiting[child] -= 1
                        if waiting[child] == 0:
                            heapq.heappush(ready, child)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    rc = main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    print(f"{time.perf_counter() - start:.3f}")
    sys.exit(rc)
