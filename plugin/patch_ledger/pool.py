"""The worker processes of `ledger run`, as plumbing: start one, send it jobs, read what it
says, notice one that went quiet, kill one with its job. What a message means for the run's
state (a task RUNNING, a worker UNHEALTHY) is the orchestrator's; this module knows
processes, pipes and the worker protocol of patch_ledger.workerproc.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator


class Slot:
    """One worker process and what it holds."""

    def __init__(self, worker_id: str, proc: subprocess.Popen[bytes]) -> None:
        self.id, self.proc = worker_id, proc
        self.jobs: list[tuple[str, int]] = []  # (task, attempt) sent, not done; the first runs
        self.running: tuple[str, int, int] | None = None  # (task, attempt, pid) once started
        self.last_beat = time.monotonic()
        self.buffer = b""
        self.alive = True  # False once its pipe broke or it exited: the orchestrator replaces it


class Pool:
    def __init__(self, root: Path, heartbeat_s: float) -> None:
        self.root, self.heartbeat_s = root, heartbeat_s
        self.slots: dict[str, Slot] = {}
        self.selector = selectors.DefaultSelector()

    def spawn(self, worker_id: str) -> Slot:
        proc = subprocess.Popen([sys.executable, "-m", "patch_ledger.workerproc", str(self.heartbeat_s)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.root)
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        slot = self.slots[worker_id] = Slot(worker_id, proc)
        self.selector.register(proc.stdout, selectors.EVENT_READ, slot)  # type: ignore[arg-type]
        return slot

    def send(self, slot: Slot, *messages: dict[str, Any]) -> None:
        """One write for all of them; a worker that cannot take it is marked not alive."""
        try:
            slot.proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())  # type: ignore[union-attr]
            slot.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            slot.alive = False

    def messages(self, timeout: float) -> Iterator[tuple[Slot, dict[str, Any] | None]]:
        """What the workers said within `timeout`, in order; (slot, None) for one that exited."""
        for key, _ in self.selector.select(timeout):
            slot = key.data
            try:
                data = os.read(slot.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                yield slot, None
                continue
            slot.last_beat = time.monotonic()
            *lines, slot.buffer = (slot.buffer + data).split(b"\n")
            for line in filter(bytes.strip, lines):
                yield slot, json.loads(line)

    def quiet(self, now: float) -> Iterator[tuple[Slot, str]]:
        """Workers that missed two heartbeats or stopped reading their jobs, with why."""
        for slot in list(self.slots.values()):
            if slot.alive and now - slot.last_beat > 2 * self.heartbeat_s:
                yield slot, f"{slot.id} missed two heartbeats ({2 * self.heartbeat_s:g} s)"
            elif not slot.alive:
                yield slot, f"{slot.id} stopped reading its jobs"

    def kill(self, slot: Slot) -> None:
        """The worker and its job's whole process group: the job never runs twice at once."""
        if slot.running:
            try:
                os.killpg(slot.running[2], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.selector.unregister(slot.proc.stdout)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass
        slot.proc.kill()
        slot.proc.wait()
        slot.alive = False

    def retire(self, slot: Slot) -> None:
        """Its input closed (it stops), then killed with whatever it still ran; forgotten."""
        try:
            slot.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        self.kill(slot)
        del self.slots[slot.id]

    def close(self) -> None:
        for slot in list(self.slots.values()):
            self.kill(slot)
