"""The least a Python scheduler can do, for the benchmark's information row: the same DAG as a
JSON list of each task's dependencies, its no-op commands started with posix_spawn on N
workers and reaped with waitpid, with nothing else: no plan to read, no state, no output
files, no watchdog. Against make it shows what starting and reaping jobs from Python costs in
itself; against jobs_floor.py, what reading the plan and our job plumbing add.

    python tests/perf/jobs_bare.py DAG.json WORKERS
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import sys


def main(deps: list[list[int]], workers: int) -> int:
    program = shutil.which("true")
    assert program is not None
    waiting = [len(d) for d in deps]
    dependents: list[list[int]] = [[] for _ in deps]
    for task, before in enumerate(deps):
        for d in before:
            dependents[d].append(task)
    ready = [t for t, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    running: dict[int, int] = {}
    done = 0
    while done < len(deps):
        while ready and len(running) < workers:
            task = heapq.heappop(ready)
            running[os.posix_spawn(program, ["true"], os.environ, setsid=True)] = task
        pid, status = os.waitpid(-1, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return 1
        done += 1
        for child in dependents[running.pop(pid)]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return 0


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.exit(main(json.load(f), int(sys.argv[2])))
