"""Running a command that may hang, flood its output or leave children behind: with a
deadline that kills its whole process group, its output streamed to a file, and a bounded
excerpt of it for the ledger. Gates use it; so will the task adapters of `ledger run`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

_LIVE: set[int] = set()  # process groups running now: killed on Ctrl-C from any thread's caller
HEAD_BYTES = 2_000  # of an excerpt: the start says what ran, the end what went wrong
TAIL_BYTES = 8_000


class Finished(NamedTuple):
    returncode: int  # negative: killed by that signal
    timed_out: bool
    duration_s: float
    log: Path  # everything the command wrote, stdout and stderr interleaved


def run_bounded(command: Sequence[str], cwd: Path, log: Path, timeout: float | None,
                env: Mapping[str, str] | None = None) -> Finished:
    """Run `command` in its own session (a new process group), its output to `log`. At the
    deadline the whole group is killed: a child that forked off dies with it. After a normal
    exit, children that outlived it are killed too, so none holds the log open."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:  # not found, not executable: the command's own failure
            out.write(f"could not start {command[0]!r}: {e.strerror or e}\n".encode())
            return Finished(127, False, time.monotonic() - start, log)
        _LIVE.add(proc.pid)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # Ctrl-C: take the group down with us
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            _kill_group(proc.pid)
            _LIVE.discard(proc.pid)
        returncode = proc.wait()
    return Finished(returncode, timed_out, time.monotonic() - start, log)


def kill_all() -> None:
    """Kill every process group started here that still runs (when the caller is
    interrupted while another thread waits for one)."""
    for pid in list(_LIVE):
        _kill_group(pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def excerpt(path: Path, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> str:
    """The start and the end of a log, cut at line breaks, with what was left out said in
    the middle; the whole log when it is short. Undecodable bytes are replaced."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size <= head + tail:
                return _text(f.read())
            first = f.read(head)
            f.seek(size - tail)
            last = f.read()
    except OSError:
        return ""
    first = first[:first.rfind(b"\n") + 1] or first
    last = last[last.find(b"\n") + 1:] or last
    omitted = size - len(first) - len(last)
    return _text(first) + f"[... {omitted} bytes omitted; the whole log is {path} ...]\n" + _text(last)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\0", "")


def describe(finished: Finished, timeout: float | None) -> str:
    """How a command ended, in a few words."""
    if finished.timed_out:
        return f"timed out after {timeout:g} s; its process group was killed"
    if finished.returncode < 0:
        try:
            name = signal.Signals(-finished.returncode).name
        except ValueError:
            name = f"signal {-finished.returncode}"
        return f"killed by {name}"
    return f"exit code {finished.returncode}"
