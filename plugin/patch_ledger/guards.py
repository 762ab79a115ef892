"""Machine-specific rules: small named functions that the schemas list under `guards`.

A document guard sees one valid document; a run guard sees every valid document of one
run (`RunDocs`) and names the file it blames. A schema naming a guard that is not here is
refused when the machine is loaded, as a plugin is verified when it is registered.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

from patch_ledger.machine import Machine, Problem

Doc = dict[str, Any]


class RunDocs(NamedTuple):
    """The valid documents of one run: kind -> id -> (path, document)."""

    run_id: str
    by_kind: dict[str, dict[str, tuple[str, Doc]]]

    def of(self, kind: str) -> dict[str, tuple[str, Doc]]:
        return self.by_kind.get(kind, {})


DOCUMENT_GUARDS: dict[str, Callable[[Machine, Doc], Iterator[Problem]]] = {}
RUN_GUARDS: dict[str, Callable[[Machine, RunDocs], Iterator[tuple[str, Problem]]]] = {}


def document_guard(fn: Callable[[Machine, Doc], Iterator[Problem]]) -> Callable[[Machine, Doc], Iterator[Problem]]:
    DOCUMENT_GUARDS[fn.__name__] = fn
    return fn


def run_guard(fn: Callable[[Machine, RunDocs], Iterator[tuple[str, Problem]]]) -> Callable[[Machine, RunDocs], Iterator[tuple[str, Problem]]]:
    RUN_GUARDS[fn.__name__] = fn
    return fn


def unknown(machine: Machine) -> list[str]:
    return [g for g in machine.guards if g not in DOCUMENT_GUARDS and g not in RUN_GUARDS]


def document_problems(machine: Machine, doc: Doc) -> Iterator[Problem]:
    for name in machine.guards:
        if name in DOCUMENT_GUARDS:
            yield from DOCUMENT_GUARDS[name](machine, doc)


def run_problems(machine: Machine, docs: RunDocs) -> Iterator[tuple[str, Problem]]:
    for name in machine.guards:
        if name in RUN_GUARDS:
            yield from RUN_GUARDS[name](machine, docs)


@document_guard
def task_attempts_within_max(m: Machine, task: Doc) -> Iterator[Problem]:
    """A task's `attempts` counts its entries into RUNNING and never exceeds `max_attempts`
    (plus one for each attempt lost to an interruption, `interruptions`); it may enter
    RETRYING only while an attempt remains."""
    allowed = task["max_attempts"] + task.get("interruptions", 0)
    started = 0
    for i, entry in enumerate(task["history"]):
        if entry["to"] == "RUNNING":
            started += 1
        if entry["to"] == "RETRYING" and started >= allowed:
            yield Problem(("history", i), f"history[{i}] retries after attempt {started} of max_attempts {task['max_attempts']}; it must fail")
    if task["attempts"] != started:
        yield Problem(("attempts",), f"attempts is {task['attempts']} but the history enters RUNNING {started} time(s)")
    if task["attempts"] > allowed:
        yield Problem(("attempts",), f"attempts {task['attempts']} exceeds max_attempts {task['max_attempts']}")


@document_guard
def breaker_opens_at_threshold(m: Machine, breaker: Doc) -> Iterator[Problem]:
    """A breaker opens (CLOSED -> OPEN) only once `consecutive_failures` reached
    `failure_threshold`, and a CLOSED breaker at its threshold must have opened."""
    failures, threshold = breaker["consecutive_failures"], breaker["failure_threshold"]
    last = breaker["history"][-1]
    if breaker["state"] == "OPEN" and last["from"] == "CLOSED" and failures < threshold:
        yield Problem(("consecutive_failures",), f"consecutive_failures {failures} is below failure_threshold {threshold}; the breaker opened too early")
    if breaker["state"] == "CLOSED" and failures >= threshold:
        yield Problem(("consecutive_failures",), f"consecutive_failures {failures} reached failure_threshold {threshold}; the breaker must be OPEN")


@document_guard
def skip_needs_reason(m: Machine, doc: Doc) -> Iterator[Problem]:
    """Entering SKIPPED says why, so a required check never silently stays undecided."""
    for i, entry in enumerate(doc["history"]):
        if entry["to"] == "SKIPPED" and not entry["reason"].strip():
            yield Problem(("history", i, "reason"), f"history[{i}] enters SKIPPED with an empty reason; a skip must say why")


@document_guard
def busy_worker_has_task(m: Machine, worker: Doc) -> Iterator[Problem]:
    """A BUSY worker names the task it is running."""
    if worker["state"] == "BUSY" and not worker.get("task"):
        yield Problem(("task",), "task is missing; a BUSY worker names its task")


def share_done(tasks: list[Doc]) -> float:
    """The progress that tasks make: the share of them in a terminal state (0 with none)."""
    from patch_ledger.machine import load

    terminal = load("task").terminal
    return sum(t["state"] in terminal for t in tasks) / len(tasks) if tasks else 0.0


def _tasks_of(docs: RunDocs, workstream: str | None = None) -> list[Doc]:
    return [d for _, d in docs.of("task").values() if workstream is None or d.get("workstream") == workstream]


def _progress_problem(path: str, doc: Doc, tasks: list[Doc], what: str) -> Iterator[tuple[str, Problem]]:
    if not tasks:
        return
    derived = share_done(tasks)
    if abs(doc["progress"] - derived) > 1e-6:
        yield path, Problem(("progress",), f"progress is {doc['progress']:.4g} but {what} say {derived:.4g} (terminal tasks / all tasks)")


@run_guard
def run_progress_derived(m: Machine, docs: RunDocs) -> Iterator[tuple[str, Problem]]:
    """A run's `progress` is the share of its tasks in a terminal state."""
    for path, run in docs.of("run").values():
        yield from _progress_problem(path, run, _tasks_of(docs), "its tasks")


@run_guard
def run_completed_needs_terminal_workstreams(m: Machine, docs: RunDocs) -> Iterator[tuple[str, Problem]]:
    """A run is COMPLETED only when every workstream is terminal."""
    from patch_ledger.machine import load

    terminal = load("workstream").terminal
    for path, run in docs.of("run").values():
        open_ = sorted(i for i, (_, w) in docs.of("workstream").items() if w["state"] not in terminal)
        if run["state"] == "COMPLETED" and open_:
            yield path, Problem(("state",), f"state is COMPLETED but workstream(s) {', '.join(open_)} are not terminal")


@run_guard
def workstream_progress_derived(m: Machine, docs: RunDocs) -> Iterator[tuple[str, Problem]]:
    """A workstream's `progress` is the share of its tasks in a terminal state."""
    for ws_id, (path, ws) in docs.of("workstream").items():
        yield from _progress_problem(path, ws, _tasks_of(docs, ws_id), "its tasks")


@run_guard
def workstream_completed_needs_terminal_tasks(m: Machine, docs: RunDocs) -> Iterator[tuple[str, Problem]]:
    """A workstream is COMPLETED only when every one of its tasks is terminal."""
    from patch_ledger.machine import load

    terminal = load("task").terminal
    for ws_id, (path, ws) in docs.of("workstream").items():
        open_ = sorted(t["id"] for t in _tasks_of(docs, ws_id) if t["state"] not in terminal)
        if ws["state"] == "COMPLETED" and open_:
            yield path, Problem(("state",), f"state is COMPLETED but task(s) {', '.join(open_)} are not terminal")
