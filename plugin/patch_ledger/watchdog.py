"""The watchdog of a `ledger run`: nothing the scheduler started outlives it unwatched.

Every job of a scheduler carries its mark in its environment (`LEDGER_SCHEDULER`, after the
marks of any run the scheduler runs in: set before the job's exec, so a job started a
moment before its scheduler was killed has it too, and inherited by whatever the job
starts), and the supervisor file lists the session of each job under way (a job that
clears its environment stays in it). The watchdog reads the scheduler's beats on its
standard input (patch_ledger.pool sends one every half interval). When the input closes,
the scheduler is gone (done, or killed): every process of its jobs is killed. When two
intervals pass with no beat, the scheduler froze: a note saying why is left beside the
supervisor file for the run's next `--resume` (which marks its workers UNHEALTHY), then the
scheduler is killed, then its jobs. A scheduler on a CPU is granted BUSY_FOR intervals
first (a long computation holds the beating thread off). A scheduler stopped by the terminal
(Ctrl-Z, or reading or writing it from the background) says so first (a `z` on the input;
SIGSTOP, which no process can catch, says nothing and is a freeze): the watchdog counts
nothing until its next beat. The watchdog runs in a session of its own, so that what ends
the scheduler's process group (a hang-up, `kill -9 -PGID`) does not end it: it waits for its
input to close, and then cleans up.

Processes are found in /proc (Linux): elsewhere nothing is killed.

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
    busy = 0  # intervals the scheduler has been silent on a CPU
    paused = False
    poller = select.poll()
    poller.register(0, select.POLLIN)
    while True:
        left = last + 2 * interval - time.monotonic()
        if left <= 0 and _state(scheduler) == "R" and busy < BUSY_FOR:
            busy += 1  # on a CPU (a long computation holds the beating thread off), not frozen: ask again
            last += interval
            continue
        if left <= 0:
            when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            why = (f"missed two heartbeats ({2 * interval:g} s)" if not busy else
                   f"beat no more for {(busy + 2) * interval:g} s, busy on a CPU all along (a runaway computation)")
            with open(os.path.join(os.path.dirname(supervisor), "lost"), "w") as f:
                f.write(f"{when} {why}: its scheduler (process {scheduler}) was killed with its jobs\n")
            os.kill(scheduler, signal.SIGKILL)
            break
        if poller.poll(None if paused else left * 1000):
            got = os.read(0, 4096)
            if not got:
                break  # the scheduler is gone
            paused = got.endswith(PAUSE)  # stopped by Ctrl-Z, or beating again after fg
            last, busy = time.monotonic(), 0
    try:
        with open(supervisor, "rb") as f:
            record = f.read()
    except OSError:
        record = b""
    kill_jobs(record, token)


PAUSE = b"z"  # from a scheduler about to stop as the terminal asked (Ctrl-Z): not a freeze
HEADER_BYTES = 96  # the supervisor file: "PID TOKEN", padded, then one fixed-width record a worker
RECORD_BYTES = 32  # "SESSION BOOTTIME" of the job a worker runs (its pid leads its session), or blank
BUSY_FOR = 10  # intervals a silent scheduler may stay on a CPU before it counts as hung all the same


def kill_jobs(record: bytes, token: str) -> int:
    """Every process of a scheduler's jobs, killed: those carrying its mark (`token` among the
    comma-separated marks of LEDGER_SCHEDULER, so a nested run's jobs too), and those in the
    sessions its supervisor file `record` lists (a job that cleared its environment stays in
    its session). A session is killed only while its leader is gone or is the job that
    started at the recorded time: a pid reused since is another's. Again until none is
    found, as one may start another meanwhile. How many."""
    sessions = {}
    for line in record[HEADER_BYTES:].decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit():
            sessions[int(fields[0])] = float(fields[1])
    sessions = {sid: boot for sid, boot in sessions.items() if _same_start(sid, boot)}
    killed: set[int] = set()
    for _ in range(5):
        found = [pid for pid in _pids() if pid not in killed and (_session(pid) in sessions or _marked(pid, token))]
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


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command: state, ppid, pgrp, session, ... starttime at 19."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2:].split()


def _state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, T stopped, ...); "" when unknown."""
    return (_stat(pid) or [""])[0]


def _session(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[3]) if len(fields) > 3 else -1


def _same_start(pid: int, boot: float) -> bool:
    """Whether `pid` is gone (its session, if any, can only be the job's: Linux reuses no pid a
    session still holds) or started at `boot` seconds since boot."""
    fields = _stat(pid)
    if len(fields) < 20:
        return True
    return abs(int(fields[19]) / os.sysconf("SC_CLK_TCK") - boot) < 0.5


def _marked(pid: int, token: str) -> bool:
    for entry in _environ(pid):
        if entry.startswith(MARK.encode() + b"="):
            return token.encode() in entry.split(b"=", 1)[1].split(b",")
    return False


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
