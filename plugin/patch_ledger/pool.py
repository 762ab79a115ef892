"""The processes of `ledger run`, as plumbing: the jobs its workers run, started and reaped by
the scheduler's own loop, and the watchdog that ends them when the scheduler dies or freezes.

A worker is a slot of the scheduler's process, running one job at a time; the job is a
process of its own, in its own process group (killed whole at its deadline, and again when
it ends, so a child that outlived it dies too), its output appended to the worker's log. One
process supervises every job, as make does: a worker process between the scheduler and each
job cost more than the jobs themselves (docs/architecture.md has the figures).

What outlives a scheduler that was killed is covered by the claim and the watchdog. A run is
claimed by an exclusive lock on `.git/ledger/runs/<run>/supervisor`, a file that also holds
the scheduler's pid, the mark its jobs carry in their environment (`LEDGER_SCHEDULER`) and
the session of each job under way, each written in place as it changes (no fsync: the page
cache outlives a killed process). The watchdog (patch_ledger.watchdog, which says how jobs
are found and killed) gets a beat from the scheduler every half interval; it cleans up when
its pipe closes or the beats stop. The next claim of the run cleans up after the scheduler
before it, in case its watchdog died with it.

What a job's end means for the run's state is the orchestrator's; this module knows
processes, files and signals.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from patch_ledger.errors import LedgerError
from patch_ledger.watchdog import HEADER_BYTES, MARK, PAUSE, RECORD_BYTES, kill_jobs

# the terminal's stops: Ctrl-Z, and a background run reading or writing the terminal
_STOPS = tuple(getattr(signal, name) for name in ("SIGTSTP", "SIGTTIN", "SIGTTOU") if hasattr(signal, name))
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))
_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)  # the clock of /proc/PID/stat's starttime (Linux)
COST_KEY = "ledger_cost"  # a tool's cost line: {"ledger_cost": {"tokens": 1200, "money": 0.03}}
SCAN_BYTES = 1 << 20  # of a log, the end that is searched for cost lines
EXCERPT_BYTES = 4000
SUPERVISOR = "supervisor"  # in the run's local directory: the claim, the scheduler's pid and its jobs' mark
LOST = "lost"  # left there by the watchdog that killed a frozen scheduler: why


class Claim:
    """A run claimed by this process: the exclusive lock on its supervisor file, held until
    the process exits (the kernel lets go of a killed one's). The file holds the scheduler's
    pid, the mark its jobs carry (patch_ledger.watchdog) and the session of each job it runs;
    whatever is left of the jobs of the scheduler before us (dead, since its lock was free)
    is killed at once: a task never runs twice at once, whatever this run does next. A mark
    names the file it was made for (its device and inode), so a copy of the repository never
    kills the original's jobs."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(run_dir / SUPERVISOR, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 0.25  # `ledger status` may hold a shared lock for a moment
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                holder = (os.pread(self.fd, 64, 0).split()[:1] or [b"?"])[0].decode(errors="replace")
                os.close(self.fd)
                raise LedgerError(f"run {run_dir.name} is being run by process {holder}: let it finish, or stop it "
                                  "(Ctrl-C drains it), then resume") from None
        info = os.fstat(self.fd)
        identity = f"{info.st_dev:x}.{info.st_ino:x}"
        before = os.pread(self.fd, 1 << 16, 0)
        old = before[:HEADER_BYTES].split()
        ours = len(old) > 1 and old[1].decode(errors="replace").rsplit(".", 1)[0] == identity
        self.killed = kill_jobs(before, old[1].decode(errors="replace")) if ours else 0
        self.lost = _note(run_dir / LOST)  # why the watchdog stopped the scheduler before us, if it did
        self.token = f"{identity}.{secrets.token_hex(8)}"
        header = f"{os.getpid()} {self.token}".ljust(HEADER_BYTES - 1) + "\n"
        os.pwrite(self.fd, header.encode(), 0)
        os.ftruncate(self.fd, HEADER_BYTES)

    def record(self, index: int, session: int | None, boot: float = 0.0) -> None:
        """Worker `index`'s job: its session (its pid) and when it started, in seconds since
        boot; or none. One write in place: the page cache outlives a killed process."""
        text = f"{session} {boot:.3f}" if session is not None else ""
        os.pwrite(self.fd, (text.ljust(RECORD_BYTES - 1) + "\n").encode(), HEADER_BYTES + index * RECORD_BYTES)

    @classmethod
    def of(cls, root: Path, run: str) -> "Claim":
        """Run `run` of the repository at `root` claimed; its local directory is .git/ledger/runs/<run>/."""
        from patch_ledger import git

        return cls(git.common_dir(root) / "ledger" / "runs" / run)

    def forget_note(self) -> None:
        """The watchdog's note, once the run's state says it."""
        (self.dir / LOST).unlink(missing_ok=True)

    def release(self) -> None:
        os.close(self.fd)  # the lock goes with it


def claimed(run_dir: Path) -> bool:
    """Whether a scheduler holds the run now (its claim's lock is taken); asked without waiting."""
    try:
        fd = os.open(run_dir / SUPERVISOR, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # ours at once: nobody holds it (closing the file lets go)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class Slot:
    """A worker: the job it runs, if any."""

    def __init__(self, worker_id: str, log: Path, index: int) -> None:
        self.id, self.log_path, self.index = worker_id, log, index
        self.job: dict[str, Any] | None = None
        self.pid: int | None = None  # of the job's process, the leader of its process group
        self.started = 0.0
        self.deadline = float("inf")
        self.first = 0  # where the job's output starts in the log
        self.last = ""  # the task of its last job
        self._log: int | None = None

    @property
    def task(self) -> tuple[str, int] | None:
        """(task, attempt) of the job it runs."""
        return (self.job["task"], self.job["attempt"]) if self.job else None

    def log(self) -> int:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return self._log


class Pool:
    def __init__(self, claim: Claim, heartbeat_s: float) -> None:
        self.claim, self.heartbeat_s = claim, heartbeat_s
        self.slots: dict[str, Slot] = {}
        self.programs: dict[tuple[str, str], str | None] = {}
        # the marks of the schedulers above us (a run inside a job) and ours: each watchdog finds its own
        self.mark = ",".join(filter(None, (os.environ.get(MARK), claim.token)))
        self.environ = {**os.environ, MARK: self.mark}  # read once: os.environ decodes every entry on every read
        _close_on_exec_inherited()
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.home = os.open(".", os.O_RDONLY)  # the directory we return to after starting a job elsewhere
        self.here = os.getcwd()
        self.selector = selectors.DefaultSelector()
        self.wake: int | None = None
        self._previous: tuple[Any, int] | None = None
        self._stops: dict[int, Any] = {}  # the terminal's stops we handle, with their handlers before us
        # in a session of its own: what ends our process group (a hang-up, kill -9 -PGID) leaves
        # it to clean up after us
        self.watchdog = subprocess.Popen([sys.executable, "-m", "patch_ledger.watchdog", str(claim.dir / SUPERVISOR),
                                          str(heartbeat_s), str(os.getpid()), claim.token], stdin=subprocess.PIPE,
                                         start_new_session=True)
        self._beat_lock = threading.Lock()  # a beat and a stop's word to the watchdog never cross
        try:  # a job's end wakes the loop: SIGCHLD, written to a pipe by the interpreter
            wake_r, wake_w = os.pipe()
            for fd in (wake_r, wake_w):
                os.set_blocking(fd, False)
            previous_fd = signal.set_wakeup_fd(wake_w)
            self._previous = (signal.signal(signal.SIGCHLD, lambda signum, frame: None), previous_fd)
            for signum in _STOPS:  # ours to handle only where the stop would stop us
                if signal.getsignal(signum) == signal.SIG_DFL:
                    self._stops[signum] = signal.signal(signum, self._suspend)
            self.wake, self._wake_w = wake_r, wake_w
            self.selector.register(wake_r, selectors.EVENT_READ)
        except ValueError:  # not the main thread (an embedding program): the loop polls instead
            pass
        self._beating = threading.Event()
        self._beat = threading.Thread(target=self._beats, name="ledger-heartbeat", daemon=True)
        self._beat.start()

    def _beats(self) -> None:
        """A beat to the watchdog every interval, from a thread: it stops when the whole
        process stops (frozen, stopped, swapped out), not while the loop waits on git."""
        fd = self.watchdog.stdin.fileno()  # type: ignore[union-attr]
        while not self._beating.wait(self.heartbeat_s / 2):
            try:
                with self._beat_lock:
                    os.write(fd, b".")
            except OSError:
                return

    def _suspend(self, signum: int, frame: Any) -> None:
        """A stop the terminal asked for (Ctrl-Z; a background run touching the terminal): the
        watchdog is told that it is no freeze, then we stop as the signal's default action
        does; after `fg`, the next beat ends the pause. Another stop meanwhile is ignored (a
        handler run inside this one would wait for the lock this one holds)."""
        for stop in self._stops:
            signal.signal(stop, signal.SIG_IGN)
        try:
            with self._beat_lock:
                try:
                    os.write(self.watchdog.stdin.fileno(), PAUSE)  # type: ignore[union-attr]
                except (OSError, ValueError):
                    pass
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        finally:
            for stop in self._stops:
                signal.signal(stop, self._suspend)

    def add(self, worker_id: str, logs: Path) -> Slot:
        slot = self.slots[worker_id] = Slot(worker_id, logs / f"{worker_id}.log", len(self.slots))
        return slot

    def start(self, slot: Slot, job: dict[str, Any]) -> dict[str, Any]:
        """The job started on `slot`: its `start` message; or, when it could not start (no
        such program, a NUL in an argument), its `done` message with exit code 127."""
        log = slot.log()
        slot.first = os.lseek(log, 0, os.SEEK_END)
        slot.started = time.monotonic()
        boot = time.clock_gettime(_BOOT_CLOCK)
        try:
            pid = self._spawn(job, log)
        except (OSError, ValueError, IndexError) as e:
            os.write(log, f"could not start {job['argv'][:1]!r}: {getattr(e, 'strerror', None) or e}\n".encode())
            return _done(job, slot, 127, False, time.monotonic() - slot.started)
        slot.job, slot.pid = job, pid
        self.claim.record(slot.index, pid, boot)
        timeout = job.get("timeout")
        slot.deadline = slot.started + timeout if timeout else float("inf")
        return {"start": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "pid": pid}

    def _spawn(self, job: dict[str, Any], log: int) -> int:
        """posix_spawn (a vfork, then exec: ~60 us less of our time a job than Popen) of the
        job in a session of its own, standard input /dev/null, output to `log`, the signals
        Python ignores given back their defaults. posix_spawn cannot change directory, so we
        change ours around it: nothing else runs in this process meanwhile (the beat thread
        writes to a pipe)."""
        env = {**self.environ, **job["env"], MARK: self.mark} if job.get("env") else self.environ
        argv = job["argv"]
        cwd = job.get("cwd") or self.here
        try:
            if cwd != self.here:
                os.chdir(cwd)
            program = self._program(argv[0], env)
            if program is None:
                raise FileNotFoundError(errno.ENOENT, "no such program on PATH")
            return os.posix_spawn(program, argv, env, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                                                (os.POSIX_SPAWN_DUP2, log, 2)])
        finally:
            if cwd != self.here:
                os.fchdir(self.home)

    def wait(self, timeout: float) -> Iterator[tuple[Slot, dict[str, Any]]]:
        """The jobs that ended within `timeout` (or were killed at their deadline), each with
        its `done` message."""
        busy = [s for s in self.slots.values() if s.job is not None]
        if busy:
            timeout = min(timeout, max(0.0, min(s.deadline for s in busy) - time.monotonic()))
        if self.wake is None:
            timeout = min(timeout, 0.005)
        for _ in self.selector.select(timeout):  # a job that ended since the last drain left a byte there
            _drain(self.wake)  # type: ignore[arg-type]
        for slot in busy:
            pid, job = slot.pid, slot.job
            assert pid is not None and job is not None
            ended, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not ended and time.monotonic() >= slot.deadline
            if not ended and not timed_out:
                continue
            _kill(pid)  # its whole group: nothing of it writes to the log after this
            if not ended:
                _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
            slot.job, slot.pid = None, None
            self.claim.record(slot.index, None)
            yield slot, _done(job, slot, returncode, timed_out, time.monotonic() - slot.started)

    def kill(self, slot: Slot) -> None:
        """The slot's job and its whole process group."""
        if slot.pid is not None:
            _kill(slot.pid)
            os.waitpid(slot.pid, 0)
            slot.job, slot.pid = None, None
            self.claim.record(slot.index, None)

    def close(self) -> None:
        """Every job killed, the watchdog told we are done (its pipe closed), signals restored."""
        for slot in self.slots.values():
            self.kill(slot)
            if slot._log is not None:
                os.close(slot._log)
                slot._log = None
        for signum, previous in self._stops.items():  # before the watchdog's pipe closes: a stop now is a plain one
            signal.signal(signum, previous)
        self._stops = {}
        self._beating.set()
        self._beat.join()
        os.close(self.devnull)
        os.close(self.home)
        try:
            self.watchdog.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        self.watchdog.wait()
        if self._previous is not None:
            on_child, previous_fd = self._previous
            signal.signal(signal.SIGCHLD, on_child)
            signal.set_wakeup_fd(previous_fd)
            self.selector.close()
            for fd in (self.wake, self._wake_w):
                os.close(fd)  # type: ignore[arg-type]
            self._previous = None

    def _program(self, name: str, env: dict[str, str]) -> str | None:
        """Where a bare program name is on PATH, looked up once a name and PATH: exec's own
        search tries every directory before the right one, for every job."""
        if os.sep in name:
            return name  # a path: resolved against the job's directory
        path = env.get("PATH", os.defpath)
        key = (name, path)
        if key in self.programs:
            return self.programs[key]
        found = shutil.which(name, path=path)
        if found is None or os.path.isabs(found):  # a relative PATH entry finds it in this job's directory only
            self.programs[key] = found
        return found


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _kill(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _note(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _close_on_exec_inherited() -> None:
    """Descriptors this process inherited (a pipe its caller passed along) are closed when a
    job execs: posix_spawn keeps what is inheritable, and Python's own are not."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def _done(job: dict[str, Any], slot: Slot, returncode: int, timed_out: bool, duration: float) -> dict[str, Any]:
    """The `done` message: where in the log the job's output is, an excerpt of it, and the
    cost it reported (a job that wrote nothing costs no read)."""
    log, first = slot.log(), slot.first
    end = os.lseek(log, 0, os.SEEK_END)
    scan = max(first, end - SCAN_BYTES)
    tail = os.pread(log, end - scan, scan) if end > first else b""
    cost, problem = parse_cost(tail, job.get("cost_pattern")) if tail else (None, None)
    return {"done": job["task"], "attempt": job["attempt"], "phase": job.get("phase"), "rc": returncode, "timed_out": timed_out,
            "duration": round(duration, 6), "excerpt": tail[-EXCERPT_BYTES:].decode("utf-8", "replace"), "cost": cost,
            "cost_problem": problem, "log": {"file": str(slot.log_path), "offset": first, "length": end - first}}


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
