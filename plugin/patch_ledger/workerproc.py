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
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COST_KEY = "ledger_cost"  # a tool's cost line: {"ledger_cost": {"tokens": 1200, "money": 0.03}}
SCAN_BYTES = 1 << 20  # of a log, the end that is searched for cost lines
EXCERPT_BYTES = 4000

_write_lock = threading.Lock()


def say(message: dict[str, Any]) -> None:
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with _write_lock:
        os.write(1, line)


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main(interval: float) -> None:
    # Ctrl-C at a terminal reaches the whole process group: the scheduler drains, and its
    # workers must let their jobs finish rather than die with them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
    current: dict[str, int] = {}  # "pgid" of the job running now
    stop = threading.Event()  # {"stop": true}: drain; the job running finishes, waiting ones are dropped
    threading.Thread(target=_run_jobs, args=(jobs, current, stop), daemon=True).start()
    threading.Thread(target=_beat, args=(interval,), daemon=True).start()
    for line in sys.stdin.buffer:
        if line.strip():
            message = json.loads(line)
            if message.get("stop"):
                stop.set()
            else:
                jobs.put(message)
    # standard input closed: the scheduler is gone or done; nothing we started outlives us
    pgid = current.get("pgid")
    if pgid:
        _kill(pgid)
    os._exit(0)


def _beat(interval: float) -> None:
    while True:
        say({"beat": stamp()})
        time.sleep(interval)


def _run_jobs(jobs: "queue.Queue[dict[str, Any] | None]", current: dict[str, int], stop: threading.Event) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        if stop.is_set():
            say({"dropped": job["task"], "attempt": job["attempt"], "phase": job.get("phase")})
            continue
        say(run_job(job, current))


def run_job(job: dict[str, Any], current: dict[str, int]) -> dict[str, Any]:
    """Run one job, its output appended to the worker's log (`job["log"]`): one file a worker,
    not one a job, since creating a file costs as much as a short job on some disks. The
    `done` message says where in the log the job's output is."""
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        first = out.tell()
        try:
            proc = subprocess.Popen(job["argv"], cwd=job.get("cwd"), env={**os.environ, **job.get("env", {})},
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except (OSError, ValueError, IndexError) as e:  # no such program, a NUL in an argument, nothing to run
            out.write(f"could not start {job['argv'][:1]!r}: {getattr(e, 'strerror', None) or e}\n".encode())
            out.flush()
            return _done(job, 127, False, time.monotonic() - start, log, first)
        current["pgid"] = proc.pid
        say({"start": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "pid": proc.pid, "at": stamp()})
        timed_out = False
        try:
            proc.wait(timeout=job.get("timeout"))
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill(proc.pid)  # its whole group: nothing of it writes to the log after this
        returncode = proc.wait()
        current.pop("pgid", None)
    return _done(job, returncode, timed_out, time.monotonic() - start, log, first)


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _done(job: dict[str, Any], returncode: int, timed_out: bool, duration: float, log: Path, first: int) -> dict[str, Any]:
    end = log.stat().st_size
    tail = _read(log, max(first, end - SCAN_BYTES), end)
    cost, problem = parse_cost(tail, job.get("cost_pattern"))
    text = tail[-EXCERPT_BYTES:].decode("utf-8", "replace")
    return {"done": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "rc": returncode, "timed_out": timed_out,
            "duration": round(duration, 6), "excerpt": text, "cost": cost, "cost_problem": problem, "at": stamp(),
            "log": {"file": str(log), "offset": first, "length": end - first}}


def _read(path: Path, start: int, end: int) -> bytes:
    if end <= start:
        return b""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


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
