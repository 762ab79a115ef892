"""`ledger run`: a plan's tasks executed as a DAG by a pool of workers.

One loop, in one thread, owns the state and the jobs: it starts each ready task's job on a free
worker (patch_ledger.pool), reaps the jobs that ended, moves tasks, workstreams, workers and
breakers through their machines in the run's RunStore, and flushes each batch durably before
the next (the event log first). Ready tasks go out by priority. A task that fails is retried
after an exponential backoff whose jitter is fixed by the task and the attempt; one out of
attempts is FAILED, and every task that depends on it is CANCELLED (the run still finishes).
The scheduler beats to a watchdog, which kills every job when the scheduler dies and kills
the scheduler too when it misses two heartbeats; the run's next `--resume` finds its workers
UNHEALTHY and their tasks become new attempts. Ctrl-C drains: running tasks finish, nothing
new starts, the run is PAUSED; `--resume` continues it, a task found RUNNING becoming a new
attempt and a COMPLETED one never running again.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from patch_ledger import dag, machine, router
from patch_ledger.pool import Claim, Pool, Slot
from patch_ledger.store import RunStore
from patch_ledger.worktrees import TaskWorktrees

FLUSH_S = 0.05  # the longest a transition waits in memory before it is in the fsynced event log
CHECKPOINT_S = 1.0  # how often the state files themselves are written and synced (store.py says why)
MAX_RETRY_DELAY_S = 3600.0
ACTOR = "ledger run"


class Options(NamedTuple):
    workers: int = 2
    budget: float | None = None
    heartbeat_s: float = 1.0
    progress: bool = False  # a live line on a terminal
    actor: str = ACTOR


class Summary(NamedTuple):
    run: str
    state: str
    counts: dict[str, int]
    cost: dict[str, Any]
    duration_s: float
    note: str


def retry_delay(task: str, attempt: int, base: float) -> float:
    """base * 2^(attempt-1), capped, plus up to half of it again: a jitter computed from the
    task and the attempt, so a resumed run computes the same schedule."""
    delay = min(MAX_RETRY_DELAY_S, base * (2 ** max(0, attempt - 1)))
    digest = hashlib.sha256(f"{task}\0{attempt}".encode()).digest()
    return delay * (1 + 0.5 * int.from_bytes(digest[:4], "big") / 2**32)


class Orchestrator:
    def __init__(self, root: Path, graph: dag.Graph, store: RunStore, options: Options, claim: Claim) -> None:
        self.root, self.graph, self.store, self.options, self.claim = root, graph, store, options, claim
        self.router = router.Router(root, graph.tools, store)
        self.logs = claim.dir / "logs"
        self.routes: dict[str, tuple[str | None, str]] = {}  # task -> (tool, why) of its attempt out
        self.parked: list[tuple[float, str]] = []  # tasks held back by their tool's breaker
        self.base: str | None = store.read("run", store.run).get("base")
        self.worktrees: dict[str, Path] = {}  # task -> the worktree of its attempt out (a task that produces a patch)
        self.checkouts = TaskWorktrees(root, store.run, self.base, options.actor)
        self.to_record: list[str] = []  # tasks whose change waits for its taskpatch job
        self.to_continue: list[str] = []  # workflow tasks whose next phase waits for a worker
        self.phase_tools: dict[str, str | None] = {}  # workflow task -> the tool of its phase out
        self.run = store.run
        self.position = {tid: i for i, tid in enumerate(graph.tasks)}
        self.dependents = graph.dependents()
        self.ready: list[tuple[int, int, str]] = []
        self.retries: list[tuple[float, str]] = []
        self.pool: Pool | None = None
        self.unwritten: list[tuple[Slot, dict[str, Any], dict[str, Any]]] | None = None  # jobs started, not yet written down
        self.slots: dict[str, Slot] = {}  # worker id -> its Slot
        self.draining = False
        self.interrupted = False  # Ctrl-C seen; the loop starts draining
        self.aborted = False  # Ctrl-C seen twice; the loop stops
        self.note = ""
        self.last_flush = self.last_checkpoint = time.monotonic()
        self.started = time.monotonic()
        self.durations: list[float] = []
        self.worker_count = len(store.docs("worker"))
        self.terminal = machine.load("task").terminal
        self.unfinished = {t for t in graph.tasks if self._state(t) not in self.terminal}
        # aggregates kept as the tasks move, so a flush costs what changed, not the run's size
        self.waiting = {t: sum(self._state(d) != "COMPLETED" for d in spec.depends_on) for t, spec in graph.tasks.items()}
        self.finished = {ws: sum(self._state(t) in self.terminal for t in tids) for ws, tids in graph.workstreams.items()}
        self.costs = {ws: {} for ws in graph.workstreams}
        for tid, spec in graph.tasks.items():
            self.costs[spec.workstream] = _summed(self.costs[spec.workstream], self.store.read("task", tid).get("cost", {}))
        self.settled: list[tuple[str, str]] = []  # tasks finished since the last flush: their files are written with it
        self.touched: set[str] = set(graph.workstreams)  # workstreams whose tasks moved since the last flush
        self._shown_paths: dict[str, str] = {}

    # --- the loop ---------------------------------------------------------------------

    def execute(self) -> Summary:
        self._prepare()
        try:
            previous = signal.signal(signal.SIGINT, self._drain)
        except ValueError:  # not the main thread (a test): no Ctrl-C to catch
            previous = None
        self.pool = Pool(self.claim, self.options.heartbeat_s)
        self.slots = self.pool.slots
        try:
            for _ in range(self.options.workers):
                self._add_worker()
            while not self._finished():
                self._step()
            self._close()
        finally:
            self.pool.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self._summary()

    def _drain(self, signum: int, frame: Any) -> None:
        """SIGINT: a flag only, acted on by the loop (a handler may interrupt a write, or a job's
        start between its spawn and its pid kept). A second Ctrl-C stops at the loop's next turn."""
        self.aborted, self.interrupted = self.interrupted, True

    def _start_draining(self) -> None:
        self.draining = True
        self.note = "draining on Ctrl-C: running tasks finish, nothing new starts (Ctrl-C again stops at once)"
        for slot in self.slots.values():
            if _healthy(self.store.read("worker", slot.id)["state"]):
                self.store.move("worker", slot.id, "DRAINING", self.options.actor, "Ctrl-C: finishing its job, taking no more",
                                fields={"task": None})

    def _step(self) -> None:
        if self.aborted:
            raise KeyboardInterrupt  # the jobs are killed on the way out (Pool.close)
        if self.interrupted and not self.draining:
            self._start_draining()
        ended = list(self.pool.wait(self._timeout()))  # type: ignore[union-attr]
        if ended and self.options.budget is None and all(self._plain_success(d) for _, d in ended):
            # the freed workers take their next ready tasks before anything is written down,
            # so jobs never wait for our bookkeeping; the log still says the ended jobs ended
            # before the new ones started. Only after plain commands that succeeded: a tool's
            # outcome (a breaker), a failure, a workflow's phase, a change to record or a cost
            # under a budget is accounted first.
            self.unwritten = []
            self._dispatch()
        for slot, done in ended:
            self._done(slot, done)
        unwritten, self.unwritten = self.unwritten or [], None
        for slot, job, message in unwritten:
            self._started(slot, job, message)
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now and not self.draining:
            _, tid = heapq.heappop(self.retries)
            self._move_task(tid, "QUEUED", "the retry's delay passed")
            self._push_ready(tid)
        while self.parked and self.parked[0][0] <= now:
            self._push_ready(heapq.heappop(self.parked)[1])
        self._dispatch()
        for slot in self.slots.values():  # a worker given its next job at once stays BUSY
            if slot.job is None and self.store.read("worker", slot.id)["state"] == "BUSY":
                self._worker_to(slot, "IDLE", f"finished {slot.last}")
        if now - self.last_flush >= FLUSH_S or self._finished():
            self._flush(checkpoint=now - self.last_checkpoint >= CHECKPOINT_S or self._finished())
        self._show_progress()

    def _timeout(self) -> float:
        waits = [FLUSH_S]
        for queue in (self.retries, self.parked):
            if queue:
                waits.append(max(0.0, queue[0][0] - time.monotonic()))
        return max(0.001, min(waits))

    def _finished(self) -> bool:
        busy = any(s.job for s in self.slots.values())
        if self.draining:  # a change waiting to be recorded is recorded when the run closes
            return not busy
        if self._over_budget():  # no new task; the changes of finished ones are still recorded
            return not busy and not self.to_record
        return not self.unfinished

    def _flush(self, checkpoint: bool = True) -> None:
        self._settle_workstreams()
        self._refresh_aggregates()
        self.store.flush(files=checkpoint, final=self.settled)
        self.settled.clear()
        self.last_flush = time.monotonic()
        if checkpoint:
            self.last_checkpoint = self.last_flush

    # --- preparing and closing --------------------------------------------------------

    def _prepare(self) -> None:
        """Bring a new or resumed run to RUNNING: the workers of the scheduler before us (its
        jobs were killed when we claimed the run) are UNHEALTHY (why, when its watchdog said)
        and terminated, and a task found RUNNING or VALIDATING becomes a new attempt."""
        run = self.store.read("run", self.run)
        if run["state"] in ("INITIALIZING", "PAUSED"):
            self.store.move("run", self.run, "RUNNING", self.options.actor, "started" if run["state"] == "INITIALIZING" else "resumed")
        lost = self.claim.lost.split(" ", 1)[-1] if self.claim.lost else "its run was interrupted"
        if self.claim.killed:
            lost += f"; {self.claim.killed} process(es) of its jobs still running killed"
        for worker in self.store.docs("worker"):
            if _healthy(worker["state"]):
                self.store.move("worker", worker["id"], "UNHEALTHY", self.options.actor, lost, fields={"task": None})
            if worker["state"] != "TERMINATED":
                self.store.move("worker", worker["id"], "TERMINATED", self.options.actor, "its run was interrupted")
        for tid, task in self.graph.tasks.items():
            state = self._state(tid)
            if state in ("RUNNING", "VALIDATING"):
                self._fail_attempt(tid, "the run was interrupted while it ran; a new attempt", immediate=True)
            elif state == "QUEUED":
                self._push_ready(tid)
            elif state == "RETRYING":
                when = self.store.read("task", tid).get("next_retry_at")
                heapq.heappush(self.retries, (time.monotonic() + max(0.0, machine.seconds(when) - time.time()) if when else 0.0, tid))
            elif state == "PENDING":
                self._queue_if_ready(tid)
        for tid in self.graph.tasks:
            if self._state(tid) in ("FAILED", "CANCELLED"):
                self._cancel_dependents(tid)
        self._clear_worktrees("left when the run was interrupted")
        self._flush(checkpoint=False)
        self.claim.forget_note()

    def _clear_worktrees(self, why: str) -> None:
        """Worktrees of this run no attempt is using: their changes recorded, then removed."""
        for wt, tid in self.checkouts.found():
            if wt not in self.worktrees.values() and tid in self.graph.tasks:
                self._drop_worktree(wt, tid, why)

    def _close(self) -> None:
        for slot in list(self.slots.values()):
            self._retire(slot, "the run ended")
        self.worktrees.clear()  # no job runs now: every worktree left is recorded and removed
        self._clear_worktrees("left when the run stopped")
        run = self.store.read("run", self.run)
        states = [self._state(t) for t in self.graph.tasks]
        if all(s in machine.load("task").terminal for s in states):
            to = "COMPLETED" if all(s == "COMPLETED" for s in states) else "FAILED"
            why = "every task completed" if to == "COMPLETED" else f"{sum(s != 'COMPLETED' for s in states)} task(s) failed or were cancelled"
            self._settle_workstreams()
            if run["state"] == "RUNNING":
                self._refresh_aggregates()
                self.store.move("run", self.run, to, self.options.actor, why)
        elif run["state"] == "RUNNING":
            why = self.note or "stopped"
            self.store.move("run", self.run, "PAUSED", self.options.actor, f"{why}; `ledger run --resume {self.run}` continues")
        self._flush()
        if self.store.read("run", self.run)["state"] in machine.load("run").terminal:
            self.store.forget_spares()  # a finished run writes no more

    def _summary(self) -> Summary:
        counts: dict[str, int] = {}
        for tid in self.graph.tasks:
            counts[self._state(tid)] = counts.get(self._state(tid), 0) + 1
        run = self.store.read("run", self.run)
        return Summary(self.run, run["state"], dict(sorted(counts.items())), run.get("cost", {}),
                       time.monotonic() - self.started, self.note)

    # --- workers ----------------------------------------------------------------------

    def _add_worker(self) -> Slot:
        self.worker_count += 1
        slot = self.pool.add(f"worker-{self.worker_count}", self.logs)  # type: ignore[union-attr]
        self.store.create("worker", slot.id, self.options.actor, fields={"run": self.run, "host": os.uname().nodename,
                                                                         "pid": os.getpid()})
        return slot

    def _start(self, slot: Slot, job: dict[str, Any]) -> None:
        """The job started on the worker and written down (unless `self.unwritten` holds
        starts to write down later)."""
        message = self.pool.start(slot, job)  # type: ignore[union-attr]
        if self.unwritten is not None:
            self.unwritten.append((slot, job, message))
        else:
            self._started(slot, job, message)

    def _started(self, slot: Slot, job: dict[str, Any], message: dict[str, Any]) -> None:
        """A job's start written down (or, when it could not even start, its end)."""
        if "done" in message:
            tid, attempt = job["task"], job["attempt"]
            if job.get("phase") != "patch" and self._state(tid) == "QUEUED":  # that attempt (or its first phase) ran and failed
                self._move_task(tid, "RUNNING", f"attempt {attempt} on {slot.id}", {"attempts": attempt, "worker": slot.id}, slot.id)
            self._done(slot, message)
            return
        tid, attempt = message["start"], message["attempt"]
        self._worker_to(slot, "BUSY", f"runs {tid}", tid)
        if message.get("phase") == "patch":
            return  # the task is VALIDATING: its change is being recorded and gated
        if str(message.get("phase")).startswith("workflow:") and self._state(tid) == "RUNNING":
            return  # a later phase of a workflow under way
        tool, why = self.routes.get(tid, (None, ""))
        fields = {"attempts": attempt, "worker": slot.id, "tool": tool, "route": why or None}
        self._move_task(tid, "RUNNING", f"attempt {attempt} on {slot.id}", fields, slot.id)

    def _done(self, slot: Slot, done: dict[str, Any]) -> None:
        tid, attempt = done["done"], done["attempt"]
        current = self.store.read("task", tid)["attempts"] == attempt
        if done.get("phase") == "patch":
            if current and self._state(tid) == "VALIDATING":
                self._finish_patch(tid, done)
        elif str(done.get("phase")).startswith("workflow:"):
            if current and self._state(tid) == "RUNNING":
                self._finish_phase(tid, done, slot)
        elif current and self._state(tid) == "RUNNING":
            self._finish_attempt(tid, done, slot)
        slot.last = tid

    def _worker_to(self, slot: Slot, to: str, reason: str, task: str | None = None) -> None:
        """The worker's machine follows its jobs: BUSY with the task it runs, IDLE without one
        (a DRAINING worker stays so until it is terminated)."""
        state = self.store.read("worker", slot.id)["state"]
        if state == to == "BUSY":
            self.store.update("worker", slot.id, {"task": task})  # from one job to the next: still BUSY
        elif state not in (to, "DRAINING"):
            self.store.move("worker", slot.id, to, slot.id, reason, fields={"task": task})  # None drops the field

    def _retire(self, slot: Slot, why: str) -> None:
        self.pool.kill(slot)  # type: ignore[union-attr]
        state = self.store.read("worker", slot.id)["state"]
        if state == "BUSY":
            self.store.move("worker", slot.id, "DRAINING", self.options.actor, why)
        if state != "TERMINATED":
            self.store.move("worker", slot.id, "TERMINATED", self.options.actor, why)

    # --- tasks ------------------------------------------------------------------------

    def _state(self, tid: str) -> str:
        return self.store.read("task", tid)["state"]

    def _move_task(self, tid: str, to: str, reason: str, fields: dict[str, Any] | None = None, actor: str | None = None) -> None:
        self.store.move("task", tid, to, actor or self.options.actor, reason, fields=fields)
        ws = self.graph.tasks[tid].workstream
        self.touched.add(ws)
        if to in self.terminal:
            self.settled.append(("task", tid))
            self.unfinished.discard(tid)
            self.finished[ws] += 1
        if to == "COMPLETED":
            for child in self.dependents[tid]:
                self.waiting[child] -= 1
                self._queue_if_ready(child)

    def _push_ready(self, tid: str) -> None:
        heapq.heappush(self.ready, (-self.graph.tasks[tid].priority, self.position[tid], tid))

    def _queue_if_ready(self, tid: str) -> None:
        if self.waiting[tid] == 0 and self._state(tid) == "PENDING":
            deps = self.graph.tasks[tid].depends_on
            self._move_task(tid, "QUEUED", "its dependencies completed" if deps else "no dependencies")
            self._push_ready(tid)

    def _dispatch(self) -> None:
        if self.draining:
            return
        # the next job of a task under way first (recording its change, a workflow's next
        # phase): it is no new task, so a budget does not hold it back
        for waiting, job_of in ((self.to_record, self._record_job), (self.to_continue, self._phase_job)):
            while waiting and (slot := self._free_slot()) is not None:
                tid = waiting.pop(0)
                self._start(slot, job_of(tid, self.store.read("task", tid)["attempts"]))
        while self.ready and not self._over_budget():
            slot = self._free_slot()
            if slot is None:
                break
            _, _, tid = heapq.heappop(self.ready)
            if self._state(tid) != "QUEUED" or any(s.task and s.task[0] == tid for s in self.slots.values()):
                continue
            task = self.graph.tasks[tid]
            tool, why, wait = self.router.choose(task, self._full_tools())
            if tool is None and task.run is None and task.workflow is None:  # every tool it could use is held by its breaker
                heapq.heappush(self.parked, (time.monotonic() + wait, tid))
                continue
            if tool is not None:
                self.router.dispatched(tool)
            self.routes[tid] = (tool, why)
            attempt = self.store.read("task", tid)["attempts"] + 1
            if self._produces(task, tool):
                self.worktrees[tid] = self.checkouts.add(tid, attempt, task.title)
            if task.workflow is not None:
                job = self._phase_job(tid, attempt)
            else:
                job = self.router.job(self.run, task, tool, attempt, self.worktrees.get(tid, self.root))
            self._start(slot, {**job, "task": tid, "attempt": attempt})

    def _full_tools(self) -> frozenset[str]:
        """The tools running as many jobs as their `max_concurrency` allows."""
        out: dict[str, int] = {}
        for slot in self.slots.values():
            if slot.task is not None:
                tool = self.routes.get(slot.task[0], (None, ""))[0] or self.phase_tools.get(slot.task[0])
                if tool is not None:
                    out[tool] = out.get(tool, 0) + 1
        return frozenset(t for t, n in out.items() if n >= self.graph.tools[t].get("max_concurrency", n + 1))

    def _plain_success(self, done: dict[str, Any]) -> bool:
        tid = done["done"]
        return (done["rc"] == 0 and not done["timed_out"] and done.get("phase") is None
                and self.routes.get(tid, (None, ""))[0] is None and tid not in self.worktrees)

    def _free_slot(self) -> Slot | None:
        if self.unwritten and "done" in self.unwritten[-1][2]:
            return None  # a job could not start: written down before anything else starts
        return next((s for s in self.slots.values() if s.job is None), None)

    # --- tasks that produce patches ---------------------------------------------------

    def _produces(self, task: dag.Task, tool: str | None) -> bool:
        if task.produces_patch is not None:
            return task.produces_patch
        used = task.workflow["phases"].values() if task.workflow is not None else (tool,)
        return any(t and self.graph.tools[t].get("edits_code") for t in used)

    def _record_job(self, tid: str, attempt: int) -> dict[str, Any]:
        task, wt = self.graph.tasks[tid], self.worktrees[tid]
        tool = self.store.read("task", tid).get("tool") or self.options.actor
        argv = [sys.executable, "-m", "patch_ledger.taskpatch", str(wt), self.base or "HEAD", tid, tool, task.title, *task.gates]
        return {"argv": argv, "cwd": str(wt), "env": {}, "timeout": None, "task": tid, "attempt": attempt, "phase": "patch"}

    def _finish_patch(self, tid: str, done: dict[str, Any]) -> None:
        from patch_ledger import taskpatch  # its gates and their plugins: only a run with a patch to record loads them

        result = taskpatch.result_of(done["excerpt"]) or {}
        reason = result.get("reason") or f"recording its change ended with exit code {done['rc']}"
        where = self.worktrees.pop(tid, None)
        if result.get("patch") or result.get("reason") == "the task changed nothing":
            if where is not None:
                self.checkouts.remove(where)  # its change is in the ledger (or there was none)
        elif where is not None:
            reason += f"; its change was NOT recorded, so its worktree stays at {where}"
        fields = {"patch": result["patch"]} if result.get("patch") else {}
        if done["rc"] == 0:
            self._move_task(tid, "COMPLETED", reason, {**fields, "progress": 1.0})
        else:
            self.store.update("task", tid, fields)
            self._fail_attempt(tid, reason)

    # --- build workflows ----------------------------------------------------------------

    def _workflow(self, tid: str) -> dict[str, Any]:
        try:
            return self.store.read("workflow", tid)
        except FileNotFoundError:
            return self.store.create("workflow", tid, self.options.actor, fields={"run": self.run, "title": self.graph.tasks[tid].title,
                                                                                  "iterations": 0})

    def _hand_on(self, tid: str, reason: str) -> str:
        """The workflow to its next phase (or COMPLETED); its new state."""
        m = machine.load("workflow")
        state = self._workflow(tid)["state"]
        # the forward step of the machine: advance_to_<next>, or finish after DEPLOYMENT
        nxt = next(t for (f, t), name in m.transitions.items() if f == state and (name.startswith("advance_to") or name == "finish"))
        self.store.move("workflow", tid, nxt, self.options.actor, reason)
        return nxt

    def _phase_job(self, tid: str, attempt: int) -> dict[str, Any]:
        """The job of the workflow's current phase, handing on the phases no tool serves."""
        task, phases = self.graph.tasks[tid], self.graph.tasks[tid].workflow["phases"]  # type: ignore[index]
        roles = machine.load("workflow").roles
        state = self._workflow(tid)["state"]
        while phases.get(state) is None:
            state = self._hand_on(tid, f"no tool serves the {roles[state]}; {state} handed on")
        tool = phases[state]
        self.phase_tools[tid] = tool
        phase_task = task._replace(prompt=f"{task.prompt}\n\nPhase: {state} (you are the {roles[state]}).", tool=tool)
        job = self.router.job(self.run, phase_task, tool, attempt, self.worktrees.get(tid, self.root))
        return {**job, "task": tid, "attempt": attempt, "phase": f"workflow:{state}"}

    def _finish_phase(self, tid: str, done: dict[str, Any], slot: Slot) -> None:
        """A phase ended: on to the next (the handoff recorded), back to IMPLEMENTATION after a
        failed TESTING or VERIFICATION while reworks remain, else the workflow failed."""
        phase = done["phase"].split(":", 1)[1]
        tool = self.phase_tools.pop(tid, None)
        ok = done["rc"] == 0 and not done["timed_out"]
        if tool is not None:
            self.router.record(tool, ok, done.get("cost"))
        task = self.store.read("task", tid)
        cost = _summed(task.get("cost", {}), done.get("cost") or {})
        if cost:
            self.store.update("task", tid, {"cost": cost})
            self._add_cost(tid, done.get("cost"))
        flow = self._workflow(tid)
        if ok:
            nxt = self._hand_on(tid, f"{phase} done by {tool}")
            if nxt == "COMPLETED":
                self._finish_attempt(tid, {**done, "phase": None}, slot)
            else:
                self.to_continue.append(tid)
            return
        why = f"exit code {done['rc']}" if not done["timed_out"] else "timed out"
        limit = (self.graph.tasks[tid].workflow or {}).get("max_rework", 2)
        if machine.load("workflow").transitions.get((phase, "IMPLEMENTATION")) == "rework" and flow.get("iterations", 0) < limit:
            turn = flow.get("iterations", 0) + 1
            self.store.move("workflow", tid, "IMPLEMENTATION", self.options.actor,
                            f"{phase} failed ({why}): rework {turn} of {limit}", fields={"iterations": turn})
            self.to_continue.append(tid)
            return
        self.store.move("workflow", tid, "FAILED", self.options.actor, f"{phase} failed ({why}) by {tool}")
        if tid in self.worktrees:
            self._drop_worktree(self.worktrees.pop(tid), tid, f"its workflow failed at {phase}")
        self._move_task(tid, "FAILED", f"its build workflow failed at {phase} ({why})")
        self._cancel_dependents(tid)

    def _drop_worktree(self, where: Path, tid: str, why: str) -> str:
        return self.checkouts.drop(where, tid, self.graph.tasks[tid].title, why)

    def _finish_attempt(self, tid: str, done: dict[str, Any], slot: Slot) -> None:
        task = self.store.read("task", tid)
        cost = _summed(task.get("cost", {}), done.get("cost") or {})
        self._add_cost(tid, done.get("cost"))
        result = {"exit_code": done["rc"], "timed_out": done["timed_out"], "output": done["excerpt"][-2000:],
                  "log": self._log_range(done)}
        if done.get("cost_problem"):
            result["cost_problem"] = done["cost_problem"]
        fields: dict[str, Any] = {"duration_s": round(done["duration"], 6), "result": result}
        if cost:
            fields["cost"] = cost
        self.durations.append(done["duration"])
        ok = done["rc"] == 0 and not done["timed_out"]
        tool = self.routes.pop(tid, (None, ""))[0]
        if tool is not None:
            self.router.record(tool, ok, done.get("cost"))
        if ok and tid in self.worktrees:
            self._move_task(tid, "VALIDATING", "exit code 0; its change goes to the ledger and its gates", fields, slot.id)
            self.to_record.append(tid)
            return
        if tid in self.worktrees:
            note = self._drop_worktree(self.worktrees.pop(tid), tid, f"attempt {done['attempt']}, which failed")
            if note:
                fields["result"] = {**fields["result"], "worktree": note}
        if ok:
            self._move_task(tid, "VALIDATING", "exit code 0", fields, slot.id)
            self._move_task(tid, "COMPLETED", "its command succeeded", {"progress": 1.0})
            return
        self.store.update("task", tid, fields)
        why = f"timed out after {done['duration']:.1f} s" if done["timed_out"] else f"exit code {done['rc']}"
        self._fail_attempt(tid, why)

    def _log_range(self, done: dict[str, Any]) -> dict[str, Any]:
        """Where the attempt's whole output is: its worker's log (a path from the repository's
        top when it is inside it), the offset and length of its part."""
        where = dict(done.get("log") or {})
        if "file" in where:
            where["file"] = self._shown_paths.get(where["file"]) or self._shown_paths.setdefault(where["file"], self._shown(where["file"]))
        return where

    def _shown(self, path: str) -> str:
        """A log's path as a task's result shows it (one of a few files: resolved once each)."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path

    def _fail_attempt(self, tid: str, why: str, immediate: bool = False) -> None:
        """RUNNING or VALIDATING -> RETRYING (with its next time) while attempts remain, else
        FAILED. An `immediate` failure is an interruption (the run killed, the worker lost):
        not the task's fault, so it gives the task an attempt more (`interruptions`)."""
        task = self.store.read("task", tid)
        spec = self.graph.tasks[tid]
        lost = task.get("interruptions", 0) + (1 if immediate else 0)
        if task["attempts"] < task["max_attempts"] + lost:
            delay = 0.0 if immediate else retry_delay(tid, task["attempts"], spec.retry_delay_s)
            fields: dict[str, Any] = {"next_retry_at": machine.now(delay)}
            if immediate:
                fields["interruptions"] = lost
            self._move_task(tid, "RETRYING", f"attempt {task['attempts']} failed: {why}; again in {delay:.1f} s", fields)
            heapq.heappush(self.retries, (time.monotonic() + delay, tid))
        else:
            self._move_task(tid, "FAILED", f"attempt {task['attempts']} of {task['max_attempts']} failed: {why}")
            self._cancel_dependents(tid)

    def _cancel_dependents(self, tid: str) -> None:
        """Every task waiting on `tid`, directly or not, CANCELLED: the run can still finish."""
        todo = list(self.dependents[tid])
        while todo:
            child = todo.pop()
            if self._state(child) in ("PENDING", "BLOCKED", "QUEUED"):
                self._move_task(child, "CANCELLED", f"its dependency {tid} {self._state(tid)}")
                todo += self.dependents[child]

    def _over_budget(self) -> bool:
        budget = self.options.budget
        if budget is None:
            return False
        spent = sum(float(c.get("money", 0.0)) for c in self.costs.values())
        if spent >= budget and not self.note:
            self.note = f"budget {budget:g} reached ({spent:g} spent): no new task starts"
        return spent >= budget

    # --- aggregates -------------------------------------------------------------------

    def _settle_workstreams(self) -> None:
        """Each workstream whose tasks moved: READY and RUNNING once one is under way, then
        COMPLETED, FAILED or CANCELLED once all of them are final."""
        for ws in sorted(self.touched):
            states = [self._state(t) for t in self.graph.workstreams[ws]]
            started = any(s not in ("PENDING", "QUEUED", "CANCELLED") for s in states)
            state = self.store.read("workstream", ws)["state"]
            if state == "PENDING" and started:
                state = self.store.move("workstream", ws, "READY", self.options.actor, "a task is under way")["state"]
            if state == "READY" and started:
                state = self.store.move("workstream", ws, "RUNNING", self.options.actor, "a task started")["state"]
            if self.finished[ws] < len(states):
                continue
            self._refresh_aggregates()  # a final workstream's progress must say so first
            if all(s == "COMPLETED" for s in states) and state == "RUNNING":
                self.store.move("workstream", ws, "COMPLETED", self.options.actor, "every task completed")
            elif any(s == "FAILED" for s in states) and state == "RUNNING":
                self.store.move("workstream", ws, "FAILED", self.options.actor, "a task failed")
            elif state in ("PENDING", "READY", "RUNNING") and not all(s == "COMPLETED" for s in states):
                self.store.move("workstream", ws, "CANCELLED", self.options.actor, "its tasks were cancelled")

    def _refresh_aggregates(self) -> None:
        """Progress (the share of final tasks, as the run guards count it) and costs of the
        workstreams whose tasks moved, and of the run."""
        for ws in sorted(self.touched):
            doc = self.store.read("workstream", ws)
            share = self.finished[ws] / len(self.graph.workstreams[ws])
            changed = {k: v for k, v in (("progress", share), ("cost", self.costs[ws])) if (v or k == "progress") and doc.get(k) != v}
            if changed:
                self.store.update("workstream", ws, changed)
        self.touched.clear()
        run = self.store.read("run", self.run)
        share = sum(self.finished.values()) / len(self.graph.tasks) if self.graph.tasks else 0.0
        total: dict[str, Any] = {}
        for cost in self.costs.values():
            total = _summed(total, cost)
        changed = {k: v for k, v in (("progress", share), ("cost", total)) if (v or k == "progress") and run.get(k) != v}
        if changed:
            self.store.update("run", self.run, changed)

    def _add_cost(self, tid: str, cost: dict[str, Any] | None) -> None:
        if cost:
            ws = self.graph.tasks[tid].workstream
            self.costs[ws] = _summed(self.costs[ws], cost)
            self.touched.add(ws)

    def _show_progress(self) -> None:
        if not self.options.progress:
            return
        counts: dict[str, int] = {}
        for tid in self.graph.tasks:
            counts[self._state(tid)] = counts.get(self._state(tid), 0) + 1
        left = sum(n for s, n in counts.items() if s not in machine.load("task").terminal)
        eta = ""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ETA {left * mean / max(1, self.options.workers):.0f} s"
        line = " ".join(f"{n} {s}" for s, n in sorted(counts.items())) + eta
        sys.stderr.write(f"\r\033[K{self.run}: {line}")
        sys.stderr.flush()


def _healthy(worker_state: str) -> bool:
    """A worker at work or ready for it: a state it could fall sick from (schemas/worker.json)."""
    return machine.load("worker").is_legal(worker_state, "UNHEALTHY")


def _summed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    if "tokens" in b:
        out["tokens"] = out.get("tokens", 0) + int(b["tokens"])
    if "money" in b:
        out["money"] = round(out.get("money", 0.0) + float(b["money"]), 6)
    return out

