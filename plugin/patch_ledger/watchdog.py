"""The watchdog of a `ledger run`: nothing the scheduler started outlives it unwatched.

Every job of a scheduler carries its mark, `LEDGER_SCHEDULER=<token>` in its environment
(set before the job's exec, so a job started a moment before its scheduler was killed has
it too, and inherited by whatever the job starts). The watchdog reads the scheduler's beats
on its standard input (patch_ledger.pool sends one every half interval). When the input
closes, the scheduler is gone (done, or killed): every process carrying its mark is killed.
When two intervals pass with no beat and the scheduler is not on a CPU (a long computation
can hold the beating thread off: that is no freeze), it froze: a note saying why is left
beside the supervisor file for the run's next `--resume` (which marks its workers
UNHEALTHY), then the scheduler is killed, then its jobs. A SIGCONT (the watchdog and the scheduler continued
after Ctrl-Z) starts the count again. Hang-ups and terminations are the scheduler's to die
of; the watchdog waits for its input to close, and then cleans up.

Marked processes are found in /proc (Linux): elsewhere nothing is killed.

Run as `python -m patch_ledger.watchdog SUPERVISOR_FILE INTERVAL SCHEDULER_PID TOKEN`; the
standard library only, and quick to start.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from datetime import datetime, timezone

MARK = "LEDGER_SCHEDULER"
last = time.monotonic()


def _continued(signum: int, frame: object) -> None:
    global last
    last = time.monotonic()


def main(supervisor: str, interval: float, scheduler: int, token: str) -> None:
    global last
    for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGQUIT"):  # Ctrl-C drains the scheduler; the rest end it: we clean up after
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGCONT, _continued)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    while True:
        left = last + 2 * interval - time.monotonic()
        if left <= 0 and _state(scheduler) == "R":
            last += interval  # busy on a CPU (a long computation holds the beating thread off), not frozen: ask again
            continue
        if left <= 0:
            when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            with open(os.path.join(os.path.dirname(supervisor), "lost"), "w") as f:
                f.write(f"{when} missed two heartbeats ({2 * interval:g} s): its scheduler (process {scheduler}) "
                        "was killed with its jobs\n")
            os.kill(scheduler, signal.SIGKILL)
            break
        if poller.poll(left * 1000):
            if not os.read(0, 4096):
                break  # the scheduler is gone
            last = time.monotonic()
    kill_marked(token)


def kill_marked(token: str) -> int:
    """Every process carrying the mark `token`, killed (and its process group, when it leads
    one); again until none is found, as one may start another meanwhile. How many."""
    mark = f"{MARK}={token}".encode()
    killed: set[int] = set()
    for _ in range(5):
        found = [pid for pid in _pids() if pid not in killed and mark in _environ(pid)]
        if not found:
            break
        for pid in found:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)  # a job: its group, what did not carry the mark along too
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            killed.add(pid)
    return len(killed)


def _state(pid: int) -> str:
    """A process's state letter from /proc/PID/stat (R running, S sleeping, T stopped, ...); "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2:][:1]


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return []


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
