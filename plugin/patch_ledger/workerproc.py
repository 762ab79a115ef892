"""A worker of `ledger run`: a process that runs the jobs its scheduler sends, one at a time.

The scheduler writes one JSON job a line to the worker's standard input; the worker answers
on its standard output, one JSON message a line: `start` when a job's process began, `done`
when it ended (exit code, whether it timed out, its duration, an excerpt of its output and
the cost it reported), and a `beat` every interval, so the scheduler sees a worker that hangs.
Each job runs in its own process group, killed at the job's deadline and again when it ends
(a child that outlived it dies too). When its standard input closes (the scheduler is gone,
even killed), the worker kills the job it runs and exits: no task runs unwatched.

Run as `python -m patch_ledger.workerproc INTERVAL`.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, NamedTuple

COST_KEY = "ledger_cost"  # a tool's cost line: {"ledger_cost": {"tokens": 1200, "money": 0.03}}
SCAN_BYTES = 1 << 20  # of a log, the end that is searched for cost lines
EXCERPT_BYTES = 4000


def say(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message, separators=(",", ":")) + "\n").encode())


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Running(NamedTuple):
    job: dict[str, Any]
    proc: subprocess.Popen[bytes]
    started: float
    deadline: float
    log: int  # the log's descriptor
    first: int  # where the job's output starts in it


class Worker:
    """One thread and one loop: jobs arrive on standard input, a job's end wakes the loop
    through SIGCHLD (written to a pipe by the interpreter), and a beat goes out on time.
    Threads cost more here than the jobs: a queue between two threads is a few switches of
    the interpreter's lock a job, for a job that may take a millisecond."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.jobs: deque[dict[str, Any]] = deque()
        self.running: Running | None = None
        self.stopping = False  # {"stop": true}: drain; the job running finishes, waiting ones are dropped
        self.buffer = b""
        self.logs: dict[str, int] = {}  # one log a worker, opened once
        self.programs: dict[tuple[str, str], str | None] = {}
        self.next_beat = 0.0
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.wake = wake_r
        # poll, not epoll: epoll refuses a regular file or /dev/null as standard input
        self.selector = getattr(selectors, "PollSelector", selectors.SelectSelector)()
        self.selector.register(0, selectors.EVENT_READ)
        self.selector.register(wake_r, selectors.EVENT_READ)

    def serve(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self.next_beat:
                say({"beat": stamp()})
                self.next_beat = now + self.interval
            while self.running is None and self.jobs:
                self._start(self.jobs.popleft())
            until = min(self.next_beat, self.running.deadline if self.running else self.next_beat)
            for key, _ in self.selector.select(max(0.0, until - time.monotonic())):
                if key.fd == 0 and not self._read_jobs():
                    return
                if key.fd == self.wake:
                    _drain(self.wake)
            if self.running is not None:
                self._reap()

    def _read_jobs(self) -> bool:
        """False when standard input closed: the scheduler is gone or done."""
        data = os.read(0, 1 << 16)
        if not data:
            if self.running is not None:
                _kill(self.running.proc.pid)  # nothing we started outlives us
            return False
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in filter(bytes.strip, lines):
            message = json.loads(line)
            if message.get("stop"):
                self.stopping = True
            else:
                self.jobs.append(message)
        return True

    def _start(self, job: dict[str, Any]) -> None:
        if self.stopping:
            say({"dropped": job["task"], "attempt": job["attempt"], "phase": job.get("phase")})
            return
        log = self._log(job["log"])
        first = os.fstat(log).st_size
        started = time.monotonic()
        try:
            env = {**os.environ, **job["env"]} if job.get("env") else None
            proc = subprocess.Popen(job["argv"], executable=self._program(job["argv"][0], env), cwd=job.get("cwd"),
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except (OSError, ValueError, IndexError) as e:  # no such program, a NUL in an argument, nothing to run
            os.write(log, f"could not start {job['argv'][:1]!r}: {getattr(e, 'strerror', None) or e}\n".encode())
            say(_done(job, 127, False, time.monotonic() - started, log, first))
            return
        say({"start": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "pid": proc.pid, "at": stamp()})
        timeout = job.get("timeout")
        self.running = Running(job, proc, started, started + timeout if timeout else float("inf"), log, first)

    def _reap(self) -> None:
        r = self.running
        assert r is not None
        timed_out = r.proc.poll() is None and time.monotonic() >= r.deadline
        if r.proc.returncode is None and not timed_out:
            return
        _kill(r.proc.pid)  # its whole group: nothing of it writes to the log after this
        returncode = r.proc.wait()
        self.running = None
        say(_done(r.job, returncode, timed_out, time.monotonic() - r.started, r.log, r.first))

    def _program(self, name: str, env: dict[str, str] | None) -> str | None:
        """Where a bare program name is on PATH, looked up once a name and PATH: exec's own
        search tries every directory before the right one, for every job."""
        if os.sep in name:
            return None  # a path: resolved against the job's directory by exec itself
        path = (env or os.environ).get("PATH", os.defpath)
        key = (name, path)
        if key not in self.programs:
            self.programs[key] = shutil.which(name, path=path)
        return self.programs[key]

    def _log(self, path: str) -> int:
        if path not in self.logs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.logs[path] = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return self.logs[path]


def main(interval: float) -> None:
    # Ctrl-C at a terminal reaches the whole process group: the scheduler drains, and its
    # workers must let their jobs finish rather than die with them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Worker(interval).serve()
    os._exit(0)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _done(job: dict[str, Any], returncode: int, timed_out: bool, duration: float, log: int, first: int) -> dict[str, Any]:
    """The `done` message: where in the log the job's output is, an excerpt of it, and the
    cost it reported (a job that wrote nothing costs no read)."""
    end = os.fstat(log).st_size
    scan = max(first, end - SCAN_BYTES)
    tail = os.pread(log, end - scan, scan) if end > first else b""
    cost, problem = parse_cost(tail, job.get("cost_pattern")) if tail else (None, None)
    return {"done": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "rc": returncode, "timed_out": timed_out,
            "duration": round(duration, 6), "excerpt": tail[-EXCERPT_BYTES:].decode("utf-8", "replace"), "cost": cost,
            "cost_problem": problem, "at": stamp(), "log": {"file": job["log"], "offset": first, "length": end - first}}


def parse_cost(output: bytes, pattern: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The cost a tool reported: the sum of its `{"ledger_cost": {...}}` lines, or of the
    matches of the tool's `pattern` (named groups tokens and money); (None, why) when a line
    claimed to be one and was not."""
    total: dict[str, Any] = {}
    problem = None
    text = output.decode("utf-8", "replace")
    if pattern:
        for m in re.finditer(pattern, text):
            try:
                _add(total, m.groupdict().get("tokens"), m.groupdict().get("money"))
            except ValueError as e:
                problem = f"the cost pattern matched {m.group(0)[:120]!r}, which is no cost ({e})"
    for line in text.splitlines():
        if COST_KEY not in line:
            continue
        try:
            value = json.loads(line)[COST_KEY]
            if not isinstance(value, dict):
                raise ValueError("not an object")
            _add(total, value.get("tokens"), value.get("money"))
        except (ValueError, KeyError, TypeError) as e:
            problem = f"a {COST_KEY} line is not the documented JSON ({e}): {line.strip()[:120]!r}"
    return (total or None), problem


def _add(total: dict[str, Any], tokens: Any, money: Any) -> None:
    if tokens is not None:
        value = int(float(tokens))
        if value < 0:
            raise ValueError("tokens below 0")
        total["tokens"] = total.get("tokens", 0) + value
    if money is not None:
        value = float(money)
        if not value >= 0 or value == float("inf"):
            raise ValueError("money is not a finite amount of at least 0")
        total["money"] = round(total.get("money", 0.0) + value, 6)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
