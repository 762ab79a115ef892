"""The floor of `ledger run`'s design, for the benchmark's information row: a plan's DAG run by
our own job plumbing (patch_ledger.pool: a loop that starts each job on a free worker and
reaps it, with the watchdog and its beats) keeping no state at all: no files, no event log,
no machines. What `ledger run` takes beyond this is the cost of its durable state; what this
takes beyond make is the cost of starting and reaping jobs from Python.

    python tests/perf/jobs_floor.py REPO PLAN WORKERS
"""

from __future__ import annotations

import heapq
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "plugin")]  # as run_cases.py

from patch_ledger import config, dag, plans  # noqa: E402
from patch_ledger.pool import Claim, Pool  # noqa: E402


def main(root: Path, plan: str, workers: int) -> int:
    graph = dag.build(plans.load(root, plan), config.load(root).get("tools", {}), plan)
    waiting = {t: len(spec.depends_on) for t, spec in graph.tasks.items()}
    dependents = graph.dependents()
    ready = [t for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    claim = Claim(root / ".git" / "floor")
    pool = Pool(claim, 1.0)
    slots = [pool.add(f"w{i}", claim.dir) for i in range(workers)]
    done = 0
    try:
        while done < len(graph.tasks):
            for slot in slots:
                if slot.job is None and ready:
                    tid = heapq.heappop(ready)
                    job = {"task": tid, "attempt": 1, "argv": dag.shell_argv(graph.tasks[tid].run or "true"), "cwd": str(root)}
                    if "done" in pool.start(slot, job):
                        return 3
            for slot, message in pool.wait(1.0):
                if message["rc"] != 0:
                    return 1
                done += 1
                for child in dependents[message["done"]]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        heapq.heappush(ready, child)
    finally:
        pool.close()
        claim.release()
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    rc = main(Path(sys.argv[1]).resolve(), sys.argv[2], int(sys.argv[3]))
    print(f"{time.perf_counter() - start:.3f}")
    sys.exit(rc)
