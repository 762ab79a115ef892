"""Invariants across the files of one run: references resolve, dependencies form no cycle,
aggregates agree with their tasks (the run guards), and the event log agrees with every
history. Only documents that passed their own checks take part, brought up to the run's
event log first (patch_ledger.replay): the log is the run's write-ahead log, so files that
lag it by the steps a crash interrupted are the run as its log says it is, not a mismatch."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator, Sequence

from patch_ledger import guards, machine, replay
from patch_ledger.findings import Finding, pointer
from patch_ledger.layout import path_of

Locate = Callable[[Any, str, Sequence[Any]], "tuple[int, int]"]


def findings(run: str, loaded: Sequence[Any], locate: Locate, retired: Sequence[tuple[str, str]] = ()) -> list[Finding]:
    """Problems across the files of `run`. `retired` entities (kind, id) were deleted in a
    terminal state: the event log may still name them."""
    by_path = {item.file.path: item for item in loaded}
    docs = guards.RunDocs(run, {})
    known: dict[str, set[str]] = {}
    for kind, entity_id in retired:
        known.setdefault(kind, set()).add(entity_id)
    for item in loaded:
        if item.file.kind in machine.MACHINE_KINDS:
            known.setdefault(item.file.kind, set()).add(item.file.id or run)
            if item.valid:
                docs.by_kind.setdefault(item.file.kind, {})[item.data["id"]] = (item.file.path, item.data)
    _catch_up(run, docs, known, loaded)
    out = []
    for path, parts, message in _problems(run, docs, known, loaded):
        item = by_path.get(path)  # None: a document only the log holds yet
        where = locate(item.file, item.text, parts) if item else (1, 1)
        out.append(Finding(path, *where, "run", message, pointer(parts)))
    return out


def _catch_up(run: str, docs: guards.RunDocs, known: dict[str, set[str]], loaded: Sequence[Any]) -> None:
    """`docs` as the run's event log says they are: copies of the files brought up to it."""
    events = next((item.data for item in loaded if item.file.kind == "event" and item.valid), None)
    if not events:
        return
    current = {(kind, i): {**doc, "history": list(doc["history"])} for kind, entities in docs.by_kind.items()
               for i, (_, doc) in entities.items()}
    paths = {(kind, i): path for kind, entities in docs.by_kind.items() for i, (path, _) in entities.items()}
    # a file that exists but failed its own checks is reported as it is, never made anew from the log
    changed = replay.catch_up(current, events, may_create=lambda key: key[1] not in known.get(key[0], set()))
    for kind, entity_id in changed:
        path = paths.get((kind, entity_id)) or path_of(kind, run, entity_id)
        docs.by_kind.setdefault(kind, {})[entity_id] = (path, current[(kind, entity_id)])
        known.setdefault(kind, set()).add(entity_id)


def _problems(run: str, docs: guards.RunDocs, known: dict[str, set[str]], loaded: Sequence[Any]) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    yield from _references(run, docs, known)
    for kind in ("task", "workstream"):
        yield from _cycles(kind, docs)
    # Aggregates are judged only on a whole run: one broken task file is reported on its
    # own, not again as every total it would have counted in.
    if all(item.valid for item in loaded if item.file.kind in machine.MACHINE_KINDS):
        for kind in machine.MACHINE_KINDS:
            for path, problem in guards.run_problems(machine.load(kind), docs):
                yield path, problem.path, problem.message
    events = [item for item in loaded if item.file.kind == "event" and item.valid]
    for item in events:
        yield from _events(item.file.path, item.data, docs, known)


def _references(run: str, docs: guards.RunDocs, known: dict[str, set[str]]) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    for kind, field, target in (("task", "depends_on", "task"), ("workstream", "depends_on", "workstream")):
        for path, doc in docs.of(kind).values():
            for i, dep in enumerate(doc.get(field, ())):
                if dep not in known.get(target, set()):
                    yield path, (field, i), f"{field}[{i}] names {target} {dep!r}, which is not in run {run}"
    for path, task in docs.of("task").values():
        ws = task.get("workstream")
        if ws is not None and ws not in known.get("workstream", set()):
            yield path, ("workstream",), f"workstream names {ws!r}, which is not in run {run}"


def _cycles(kind: str, docs: guards.RunDocs) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    """Each dependency cycle once, named in order and blamed on its first member."""
    graph = {i: [d for d in doc.get("depends_on", ()) if d in docs.of(kind)] for i, (_, doc) in docs.of(kind).items()}
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if colour.get(start):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                first = min(cycle[:-1])
                turn = cycle[:-1].index(first)
                named = cycle[turn:-1] + cycle[:turn] + [first]
                yield docs.of(kind)[first][0], ("depends_on",), f"{kind} dependency cycle: {' -> '.join(named)}"
            elif not colour.get(child):
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))


def _events(path: str, events: list[dict[str, Any]], docs: guards.RunDocs, known: dict[str, set[str]]) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    previous = None
    for i, event in enumerate(events):
        if event["seq"] != i + 1:
            yield path, (i, "seq"), f"seq is {event['seq']}, expected {i + 1}; seq counts 1, 2, 3 with no gap"
        if previous is not None and machine.time_key(event["at"]) < machine.time_key(previous):
            yield path, (i, "at"), f"{event['at']} is earlier than the event before ({previous}); the log is in time order"
        previous = event["at"]
    expected = Counter(
        (kind, entity_id, h["from"], h["to"], h["at"])
        for kind, entities in docs.by_kind.items() for entity_id, (_, doc) in entities.items() for h in doc["history"]
    )
    logged: Counter = Counter()
    for i, event in enumerate(events):
        if event["type"] != "transition":
            continue
        key = (event["entity"], event["id"], event["from"], event["to"], event["at"])
        if event["id"] not in known.get(event["entity"], set()):
            yield path, (i, "id"), f"event {event['seq']} names {event['entity']} {event['id']!r}, which is not in this run"
        elif event["id"] in docs.of(event["entity"]):
            logged[key] += 1
            if logged[key] > expected[key]:
                yield path, (i,), f"event {event['seq']} ({_step(key)}) matches no entry of that {event['entity']}'s history"
    for kind, entities in docs.by_kind.items():
        for entity_id, (doc_path, doc) in entities.items():
            seen: Counter = Counter()
            for j, h in enumerate(doc["history"]):
                key = (kind, entity_id, h["from"], h["to"], h["at"])
                seen[key] += 1
                if seen[key] > logged[key]:
                    yield doc_path, ("history", j), f"{_step(key)} has no transition event in {path}"


def _step(key: tuple[Any, ...]) -> str:
    kind, entity_id, source, target, at = key
    return f"{kind} {entity_id} {source or 'new'} -> {target} at {at}"
