"""The state machines, tested from `schemas/` alone.

No state list or transition table is restated here: every case is generated from the
`x-state-machine` blocks (through `machine.load`), so adding a state or a transition to a
schema adds its tests. Histories are built two ways on purpose: as plain data (to test the
checker, `history_problems`, independently of the writer) and with `machine.step` (the
machine's own transitions, through tests/builders.py). `machine.advance` adds the guards:
the last tests here show it refusing what a guard forbids.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections import deque
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patch_ledger import guards, machine, schemas
from patch_ledger.errors import LedgerError
from tests import builders
from tests.builders import shortest_paths

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = machine.MACHINE_KINDS


def reachable(m: machine.Machine, start: str) -> set[str]:
    seen, queue = {start}, deque([start])
    while queue:
        for target in m.targets(queue.popleft()):
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def path_to(m: machine.Machine, state: str) -> list[str]:
    paths = shortest_paths(m)
    if state not in paths:
        pytest.fail(f"{m.kind}: {state} is unreachable from {m.initial}")
    return paths[state]


def entries(m: machine.Machine, states: list[str], stamps: list[str] | None = None) -> list[dict[str, Any]]:
    """A history as plain data: the initial entry, then one entry per state of `states`."""
    stamps = stamps or [builders.stamp(i) for i in range(len(states) + 1)]
    walked = [m.initial, *states]
    return [{"from": walked[i - 1] if i else None, "to": state, "at": stamps[i], "actor": "tester", "reason": f"step {i}"}
            for i, state in enumerate(walked)]


def document(history: list[dict[str, Any]], doc_id: str = "x1") -> dict[str, Any]:
    return {"schema_version": schemas.CURRENT_VERSION, "id": doc_id, "state": history[-1]["to"], "history": history}


def problems(m: machine.Machine, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [p.path for p in machine.history_problems(m, doc)]


LEGAL = [pytest.param(kind, source, target, id=f"{kind}:{source}->{target}")
         for kind in KINDS for (source, target) in machine.load(kind).transitions]
ILLEGAL = [pytest.param(kind, source, target, id=f"{kind}:{source}->{target}")
           for kind in KINDS
           for source in machine.load(kind).states
           for target in machine.load(kind).states
           if not machine.load(kind).is_legal(source, target)]
TERMINAL = [pytest.param(kind, state, id=f"{kind}:{state}")
            for kind in KINDS for state in sorted(machine.load(kind).terminal)]


# --- every pair of states, listed or not -------------------------------------------------

@pytest.mark.parametrize(("kind", "source", "target"), LEGAL)
def test_listed_transition_is_accepted(kind: str, source: str, target: str) -> None:
    m = machine.load(kind)
    path = path_to(m, source)
    assert problems(m, document(entries(m, [*path, target]))) == []

    before = builders.walk(kind, "x1", path)
    snapshot = copy.deepcopy(before)
    after = machine.step(before, kind, target, "tester", "legal step", at=builders.stamp(len(path) + 1))
    assert after["state"] == target
    assert after["history"][-1] == {"from": source, "to": target, "at": builders.stamp(len(path) + 1),
                                    "actor": "tester", "reason": "legal step"}
    assert problems(m, after) == []
    assert before == snapshot  # advance returns a new document


@pytest.mark.parametrize(("kind", "source", "target"), ILLEGAL)
def test_unlisted_transition_is_refused(kind: str, source: str, target: str) -> None:
    m = machine.load(kind)
    path = path_to(m, source)
    assert problems(m, document(entries(m, [*path, target]))) == [("history", len(path) + 1)]

    before = builders.walk(kind, "x1", path)
    with pytest.raises(LedgerError) as refused:
        machine.step(before, kind, target, "tester", "illegal step")
    assert source in str(refused.value) and target in str(refused.value)


@pytest.mark.parametrize("kind", KINDS)
def test_history_must_enter_the_initial_state(kind: str) -> None:
    m = machine.load(kind)
    for state in m.states:
        history = [{"from": None, "to": state, "at": builders.T0, "actor": "tester", "reason": "created"}]
        expected = [] if state == m.initial else [("history", 0)]
        assert problems(m, document(history)) == expected, state
    history = entries(m, [])
    history[0]["from"] = m.initial
    assert problems(m, document(history)) == [("history", 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_new_document_starts_in_the_initial_state(kind: str) -> None:
    m = machine.load(kind)
    doc = machine.new_document(kind, "x1", "tester", at=builders.T0)
    assert doc["state"] == m.initial
    assert doc["history"] == [{"from": None, "to": m.initial, "at": builders.T0, "actor": "tester", "reason": "created"}]
    assert problems(m, doc) == []


@pytest.mark.parametrize("kind", KINDS)
def test_advance_never_moves_time_back(kind: str) -> None:
    m = machine.load(kind)
    doc = machine.new_document(kind, "x1", "tester", at=builders.stamp(10))
    after = machine.step(doc, kind, m.targets(m.initial)[0], "tester", at=builders.stamp(5))
    assert after["history"][-1]["at"] == builders.stamp(10)
    assert problems(m, after) == []


# --- the shape of each machine ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_state_is_reachable_from_the_initial_state(kind: str) -> None:
    m = machine.load(kind)
    assert set(m.states) - set(shortest_paths(m)) == set()


@pytest.mark.parametrize("kind", KINDS)
def test_every_non_terminal_state_can_finish(kind: str) -> None:
    m = machine.load(kind)
    if not m.terminal:
        pytest.skip(f"{kind} has no terminal state")
    stuck = [s for s in m.states if s not in m.terminal and not reachable(m, s) & m.terminal]
    assert stuck == []


@pytest.mark.parametrize("kind", KINDS)
def test_only_terminal_states_are_dead_ends(kind: str) -> None:
    m = machine.load(kind)
    assert {s for s in m.states if not m.targets(s)} == set(m.terminal)


# --- properties of random walks -----------------------------------------------------------

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def rfc3339(ns: int, digits: int = 9) -> str:
    """BASE + `ns` nanoseconds with `digits` fractional digits; `ns` must fit that precision."""
    seconds, fraction = divmod(ns, 10**9)
    whole = (BASE + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    assert fraction % 10 ** (9 - digits) == 0
    return f"{whole}Z" if digits == 0 else f"{whole}.{fraction // 10 ** (9 - digits):0{digits}d}Z"


@st.composite
def moments(draw: st.DrawFn, count: int) -> list[tuple[int, int]]:
    """`count` non-decreasing (ns after BASE, fractional digits) pairs, each with its own precision."""
    out, now = [], 0
    for _ in range(count):
        digits = draw(st.integers(0, 9))
        grid = 10 ** (9 - digits)
        now += draw(st.sampled_from([0, 1, 999, 10**6, 10**9, 61 * 10**9]))
        now = -(-now // grid) * grid  # rounded up to what `digits` can say
        out.append((now, digits))
    return out


@st.composite
def legal_walks(draw: st.DrawFn) -> tuple[machine.Machine, dict[str, Any], list[int]]:
    m = machine.load(draw(st.sampled_from(KINDS)))
    states, current = [], m.initial
    for _ in range(draw(st.integers(0, 15))):
        targets = m.targets(current)
        if not targets:
            break
        current = draw(st.sampled_from(targets))
        states.append(current)
    instants = draw(moments(len(states) + 1))
    doc = document(entries(m, states, [rfc3339(ns, digits) for ns, digits in instants]))
    return m, doc, [ns for ns, _ in instants]


@SETTINGS
@given(legal_walks())
def test_random_legal_walks_pass(walk: tuple[machine.Machine, dict[str, Any], list[int]]) -> None:
    m, doc, _ = walk
    assert problems(m, doc) == []
    written = builders.walk(m.kind, "x1", [e["to"] for e in doc["history"][1:]])
    assert problems(m, written) == []
    assert [e["to"] for e in written["history"]] == [e["to"] for e in doc["history"]]


@SETTINGS
@given(legal_walks(), st.data())
def test_an_illegal_target_anywhere_is_refused(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                                data: st.DataObject) -> None:
    m, doc, _ = walk
    i = data.draw(st.integers(0, len(doc["history"]) - 1), label="step")
    source = doc["history"][i]["from"]
    allowed = {m.initial} if source is None else set(m.targets(source))
    bad = data.draw(st.sampled_from([s for s in m.states if s not in allowed] + ["NOT_A_STATE"]), label="to")
    doc["history"][i]["to"] = bad
    doc["state"] = doc["history"][-1]["to"]
    assert any(p[:2] == ("history", i) for p in problems(m, doc))


@SETTINGS
@given(legal_walks().filter(lambda w: len(w[1]["history"]) >= 2), st.data())
def test_time_going_back_is_refused(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                    data: st.DataObject) -> None:
    m, doc, instants = walk
    i = data.draw(st.integers(1, len(doc["history"]) - 1), label="step")
    earlier = instants[i - 1] - data.draw(st.sampled_from([1, 10**3, 10**9, 86400 * 10**9]), label="back by")
    doc["history"][i]["at"] = rfc3339(earlier)
    assert problems(m, doc) == [("history", i, "at")]


@SETTINGS
@given(legal_walks(), st.data())
def test_state_must_be_the_last_entered(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                        data: st.DataObject) -> None:
    m, doc, _ = walk
    doc["state"] = data.draw(st.sampled_from([s for s in m.states if s != doc["state"]]), label="state")
    assert problems(m, doc) == [("state",)]


# --- between two versions of a document ---------------------------------------------------

def changes(m: machine.Machine, old: dict[str, Any], new: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [p.path for p in machine.change_problems(m, old, new)]


@SETTINGS
@given(legal_walks(), st.data())
def test_appending_to_history_is_accepted(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                          data: st.DataObject) -> None:
    m, new, _ = walk
    cut = data.draw(st.integers(1, len(new["history"])), label="old length")
    old = {**new, "history": copy.deepcopy(new["history"][:cut]), "state": new["history"][cut - 1]["to"]}
    assert changes(m, old, new) == []


@SETTINGS
@given(legal_walks(), st.data())
def test_rewriting_history_is_refused(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                      data: st.DataObject) -> None:
    m, old, _ = walk
    new = copy.deepcopy(old)
    i = data.draw(st.integers(0, len(old["history"]) - 1), label="entry")
    field = data.draw(st.sampled_from(["actor", "reason", "at"]), label="field")
    new["history"][i][field] = "2027-01-01T00:00:00Z" if field == "at" else "someone else"
    found = list(machine.change_problems(m, old, new))
    assert [p.path for p in found] == [("history", i)]
    assert "append-only" in found[0].message


@SETTINGS
@given(legal_walks().filter(lambda w: len(w[1]["history"]) >= 2), st.data())
def test_truncating_history_is_refused(walk: tuple[machine.Machine, dict[str, Any], list[int]],
                                       data: st.DataObject) -> None:
    m, old, _ = walk
    keep = data.draw(st.integers(1, len(old["history"]) - 1), label="kept")
    new = {**old, "history": old["history"][:keep], "state": old["history"][keep - 1]["to"]}
    found = list(machine.change_problems(m, old, new))
    assert [p.path for p in found] == [("history",)]
    assert f"it had {len(old['history'])}, now {keep}" in found[0].message


@pytest.mark.parametrize(("kind", "state"), TERMINAL)
def test_leaving_a_terminal_state_is_refused(kind: str, state: str) -> None:
    m = machine.load(kind)
    old = builders.walk(kind, "x1", path_to(m, state))
    for other in m.states:
        if other == state:
            continue
        entry = {"from": state, "to": other, "at": builders.stamp(99), "actor": "tester", "reason": "leave"}
        new = {**old, "state": other, "history": [*old["history"], entry]}
        assert changes(m, old, new) == [("state",)], other
        assert problems(m, new) == [("history", len(old["history"]))], other


def test_progress_never_goes_down() -> None:
    m = machine.load("run")
    old = builders.walk("run", "r1", [], progress=0.5)
    assert changes(m, old, {**old, "progress": 0.5}) == []
    assert changes(m, old, {**old, "progress": 0.75}) == []
    assert changes(m, old, {**old, "progress": 0.25}) == [("progress",)]


@pytest.mark.parametrize("kind", KINDS)
def test_an_entity_keeps_its_id(kind: str) -> None:
    m = machine.load(kind)
    old = builders.walk(kind, "x1", [])
    assert changes(m, old, {**old, "id": "x2"}) == [("id",)]


# --- guards -------------------------------------------------------------------------------

def owners(name: str) -> list[str]:
    return [kind for kind in KINDS if name in machine.load(kind).guards]


def run_docs(*docs: tuple[str, dict[str, Any]]) -> guards.RunDocs:
    """The run "r1" holding `docs` (kind, document), each at its usual path."""
    folders = {"run": "", "workstream": "workstreams/", "task": "tasks/"}
    by_kind: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for kind, doc in docs:
        path = "run.json" if kind == "run" else f"{folders[kind]}{doc['id']}.json"
        by_kind.setdefault(kind, {})[doc["id"]] = (path, doc)
    return guards.RunDocs("r1", by_kind)


def task_in(state: str, doc_id: str, **fields: Any) -> dict[str, Any]:
    return builders.task(doc_id, path_to(machine.load("task"), state), **fields)


def entity_in(kind: str, state: str, doc_id: str, **fields: Any) -> dict[str, Any]:
    return builders.walk(kind, doc_id, path_to(machine.load(kind), state), **fields)


def breaker(states: list[str], failures: int) -> dict[str, Any]:
    return builders.walk("breaker", "b1", states, target="git push", failure_threshold=3, consecutive_failures=failures)


GATE = {"gate": "pytest", "patch": "a" * 40, "shard": "1/1", "plugin": "pytest"}


def skipped(kind: str, reason: str, doc_id: str = "s1", **fields: Any) -> dict[str, Any]:
    start = builders.walk(kind, doc_id, [], **fields)
    return machine.step(start, kind, "SKIPPED", "tester", reason, at=builders.stamp(1))


def two_tasks_half_done(ws: str = "w1") -> list[tuple[str, dict[str, Any]]]:
    return [("task", task_in("COMPLETED", "t1", workstream=ws)), ("task", task_in("PENDING", "t2", workstream=ws))]


# (guard, case id, the kind whose schema names the guard, subject builder, where the guard
# must complain: [] for a passing case). A run guard complains with (file, path).
GUARD_CASES: list[tuple[str, str, str, Callable[[], Any], list[Any]]] = [
    ("task_attempts_within_max", "retried-then-completed", "task",
     lambda: builders.task("t1", ["QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING", "VALIDATING", "COMPLETED"]),
     []),
    ("task_attempts_within_max", "fails-after-last-attempt", "task",
     lambda: builders.task("t1", ["QUEUED", "RUNNING", "FAILED"], max_attempts=1), []),
    ("task_attempts_within_max", "retries-after-last-attempt", "task",
     lambda: builders.task("t1", ["QUEUED", "RUNNING", "RETRYING"], max_attempts=1), [("history", 3)]),
    ("task_attempts_within_max", "attempts-exceed-max", "task",
     lambda: builders.task("t1", ["QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING"], max_attempts=1),
     [("history", 3), ("attempts",)]),
    ("task_attempts_within_max", "attempts-miscounted", "task",
     lambda: {**builders.task("t1", ["QUEUED", "RUNNING"]), "attempts": 0}, [("attempts",)]),
    ("breaker_opens_at_threshold", "closed-below-threshold", "breaker", lambda: breaker([], 2), []),
    ("breaker_opens_at_threshold", "opened-at-threshold", "breaker", lambda: breaker(["OPEN"], 3), []),
    ("breaker_opens_at_threshold", "probe-failed", "breaker", lambda: breaker(["OPEN", "HALF_OPEN", "OPEN"], 1), []),
    ("breaker_opens_at_threshold", "probe-succeeded", "breaker",
     lambda: breaker(["OPEN", "HALF_OPEN", "CLOSED"], 0), []),
    ("breaker_opens_at_threshold", "opened-below-threshold", "breaker", lambda: breaker(["OPEN"], 2),
     [("consecutive_failures",)]),
    ("breaker_opens_at_threshold", "closed-at-threshold", "breaker", lambda: breaker([], 3),
     [("consecutive_failures",)]),
    ("skip_needs_reason", "gate-skip-with-reason", "gate", lambda: skipped("gate", "docs only", **GATE), []),
    ("skip_needs_reason", "gate-skip-without-reason", "gate", lambda: skipped("gate", "  ", **GATE),
     [("history", 1, "reason")]),
    ("skip_needs_reason", "workstream-skip-with-reason", "workstream",
     lambda: skipped("workstream", "not needed", run="r1", progress=0), []),
    ("skip_needs_reason", "workstream-skip-without-reason", "workstream",
     lambda: skipped("workstream", "", run="r1", progress=0), [("history", 1, "reason")]),
    ("busy_worker_has_task", "busy-with-task", "worker",
     lambda: entity_in("worker", "BUSY", "wk1", run="r1", task="t1"), []),
    ("busy_worker_has_task", "idle-without-task", "worker", lambda: entity_in("worker", "IDLE", "wk1", run="r1"), []),
    ("busy_worker_has_task", "busy-without-task", "worker", lambda: entity_in("worker", "BUSY", "wk1", run="r1"),
     [("task",)]),
    ("run_progress_derived", "half-done", "run", lambda: run_docs(
        ("run", entity_in("run", "RUNNING", "r1", progress=0.5)), *two_tasks_half_done()), []),
    ("run_progress_derived", "no-tasks-yet", "run",
     lambda: run_docs(("run", entity_in("run", "RUNNING", "r1", progress=0))), []),
    ("run_progress_derived", "stale-progress", "run", lambda: run_docs(
        ("run", entity_in("run", "RUNNING", "r1", progress=0)), *two_tasks_half_done()), [("run.json", ("progress",))]),
    ("workstream_progress_derived", "counts-only-its-tasks", "workstream", lambda: run_docs(
        ("workstream", entity_in("workstream", "RUNNING", "w1", run="r1", progress=0.5)), *two_tasks_half_done(),
        ("task", task_in("PENDING", "t3", workstream="w2"))), []),
    ("workstream_progress_derived", "stale-progress", "workstream", lambda: run_docs(
        ("workstream", entity_in("workstream", "RUNNING", "w1", run="r1", progress=1)), *two_tasks_half_done()),
     [("workstreams/w1.json", ("progress",))]),
    ("run_completed_needs_terminal_workstreams", "all-terminal", "run", lambda: run_docs(
        ("run", entity_in("run", "COMPLETED", "r1", progress=1)),
        ("workstream", entity_in("workstream", "COMPLETED", "w1", run="r1", progress=1)),
        ("workstream", skipped("workstream", "not needed", "w2", run="r1", progress=0))), []),
    ("run_completed_needs_terminal_workstreams", "running-run-open-workstream", "run", lambda: run_docs(
        ("run", entity_in("run", "RUNNING", "r1", progress=0)),
        ("workstream", entity_in("workstream", "RUNNING", "w1", run="r1", progress=0))), []),
    ("run_completed_needs_terminal_workstreams", "open-workstream", "run", lambda: run_docs(
        ("run", entity_in("run", "COMPLETED", "r1", progress=1)),
        ("workstream", entity_in("workstream", "COMPLETED", "w1", run="r1", progress=1)),
        ("workstream", entity_in("workstream", "RUNNING", "w2", run="r1", progress=0))), [("run.json", ("state",))]),
    ("workstream_completed_needs_terminal_tasks", "all-terminal", "workstream", lambda: run_docs(
        ("workstream", entity_in("workstream", "COMPLETED", "w1", run="r1", progress=1)),
        ("task", task_in("COMPLETED", "t1", workstream="w1")), ("task", task_in("CANCELLED", "t2", workstream="w1")),
        ("task", task_in("PENDING", "t3", workstream="w2"))), []),
    ("workstream_completed_needs_terminal_tasks", "open-task", "workstream", lambda: run_docs(
        ("workstream", entity_in("workstream", "COMPLETED", "w1", run="r1", progress=0.5)), *two_tasks_half_done()),
     [("workstreams/w1.json", ("state",))]),
]
ALL_GUARDS = sorted({*guards.DOCUMENT_GUARDS, *guards.RUN_GUARDS})
CASE_PARAMS = [pytest.param(name, kind, build, expected, id=f"{name}:{case}")
               for name, case, kind, build, expected in GUARD_CASES]


@pytest.mark.parametrize(("name", "kind", "build", "expected"), CASE_PARAMS)
def test_guard(name: str, kind: str, build: Callable[[], Any], expected: list[Any]) -> None:
    m = machine.load(kind)
    assert name in m.guards, f"schemas/{kind}.json does not name {name}"
    subject = build()
    if name in guards.DOCUMENT_GUARDS:
        found = [p.path for p in guards.DOCUMENT_GUARDS[name](m, subject)]
    else:
        found = [(path, p.path) for path, p in guards.RUN_GUARDS[name](m, subject)]
    assert found == expected


@pytest.mark.parametrize(("name", "kind", "build", "expected"), CASE_PARAMS)
def test_guard_subjects_are_valid_documents(name: str, kind: str, build: Callable[[], Any], expected: list[Any]) -> None:
    """So a guard's verdict is never an accident of a malformed document."""
    subject = build()
    docs = ([(k, d) for k, held in subject.by_kind.items() for _, d in held.values()]
            if isinstance(subject, guards.RunDocs) else [(kind, subject)])
    for doc_kind, doc in docs:
        assert schemas.validate(doc_kind, doc) == [], doc
        assert problems(machine.load(doc_kind), doc) == [], doc


@pytest.mark.parametrize("name", ALL_GUARDS)
def test_every_guard_has_a_passing_and_a_failing_case(name: str) -> None:
    expectations = [expected for guard, _, _, _, expected in GUARD_CASES if guard == name]
    assert [] in expectations, f"{name} has no passing case"
    assert any(expectations), f"{name} has no failing case"


@pytest.mark.parametrize("name", ALL_GUARDS)
def test_every_guard_is_named_by_a_schema(name: str) -> None:
    assert owners(name), f"guards.{name} is not listed under x-state-machine.guards of any schema"


@pytest.mark.parametrize("kind", KINDS)
def test_every_named_guard_exists(kind: str) -> None:
    assert guards.unknown(machine.load(kind)) == []


def test_load_refuses_an_unknown_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    real = schemas.load

    def with_typo(name: str) -> dict[str, Any]:
        schema = copy.deepcopy(real(name))
        if name == "task":
            schema["x-state-machine"]["guards"] = ["task_attempts_within_max", "no_such_guard"]
        return schema

    monkeypatch.setattr(schemas, "load", with_typo)
    with pytest.raises(LedgerError, match="no_such_guard"):
        machine.load.__wrapped__("task")  # uncached: the cached real machine stays as it is


# --- advance: the writer's step, guards included --------------------------------------------


def test_advance_refuses_a_retry_after_the_last_attempt() -> None:
    doc = builders.task("t1", ["QUEUED", "RUNNING"], max_attempts=1)
    with pytest.raises(LedgerError, match="retries after attempt 1 of max_attempts 1"):
        machine.advance(doc, "task", "RETRYING", "tester")
    assert machine.advance(doc, "task", "FAILED", "tester")["state"] == "FAILED"


def test_advance_refuses_a_start_that_does_not_count_its_attempt() -> None:
    doc = builders.task("t1", ["QUEUED"])
    with pytest.raises(LedgerError, match="attempts is 0 but the history enters RUNNING 1 time"):
        machine.advance(doc, "task", "RUNNING", "tester")
    assert machine.advance(doc, "task", "RUNNING", "tester", fields={"attempts": 1})["attempts"] == 1


def test_advance_refuses_a_busy_worker_without_a_task() -> None:
    doc = builders.walk("worker", "w1", [], run="r1")
    with pytest.raises(LedgerError, match="a BUSY worker names its task"):
        machine.advance(doc, "worker", "BUSY", "tester")
