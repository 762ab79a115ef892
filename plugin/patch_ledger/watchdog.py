"""The watchdog of a `ledger run`: nothing the scheduler started outlives it unwatched.

It reads the scheduler's beats on its standard input (patch_ledger.pool sends one every half
interval). When the input closes, the scheduler is gone (done, or killed): the jobs the
supervisor file still lists are killed with their process groups. When two intervals pass
with no beat, the scheduler froze: it is killed, then its jobs, and a note saying why is left
beside the supervisor file for the run's next `--resume`, which marks its workers UNHEALTHY.
A SIGCONT (the watchdog and the scheduler continued after Ctrl-Z) starts the count again.

Run as `python -m patch_ledger.watchdog SUPERVISOR_FILE INTERVAL SCHEDULER_PID`; the
standard library only, and quick to start.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Iterable

last = time.monotonic()


def _continued(signum: int, frame: object) -> None:
    global last
    last = time.monotonic()


def main(supervisor: str, interval: float, scheduler: int) -> None:
    global last
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the scheduler; we wait for it
    signal.signal(signal.SIGCONT, _continued)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    while True:
        left = last + 2 * interval - time.monotonic()
        if left <= 0:
            os.kill(scheduler, signal.SIGKILL)
            when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            note = f"{when} missed two heartbeats ({2 * interval:g} s): its scheduler (process {scheduler}) was killed with its jobs\n"
            with open(os.path.join(os.path.dirname(supervisor), "lost"), "w") as f:
                f.write(note)
            break
        if poller.poll(left * 1000):
            if not os.read(0, 4096):
                break  # the scheduler is gone
            last = time.monotonic()
    _kill_jobs(supervisor)


def _kill_jobs(supervisor: str) -> None:
    try:
        with open(supervisor) as f:
            lines = f.read().split("\n")
    except OSError:
        return
    kill_jobs(int(g) for g in (lines[1].split() if len(lines) > 1 else ()) if g.isdigit())


def kill_jobs(groups: Iterable[int]) -> list[int]:
    """The jobs' process groups killed; only a group whose leader still leads a session of its
    own, as a job does: a pid recycled since is some other process's, and is left alone."""
    killed = []
    for group in groups:
        if _leads_session(group):
            try:
                os.killpg(group, signal.SIGKILL)
                killed.append(group)
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def _leads_session(pid: int) -> bool:
    """/proc/PID/stat's fields after the command are state, ppid, pgrp, session."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return len(fields) > 3 and fields[2] == fields[3] == str(pid)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
