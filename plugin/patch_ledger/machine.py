"""One state-machine engine for every entity, driven by the `x-state-machine` of its schema.

A machine's states are the enum at `#/$defs/state` of the entity's schema; the block
`x-state-machine` adds the initial state, the terminal states, the named transitions and
the guards (patch_ledger.guards) that hold for it. Nothing else restates them.

The engine enforces the global invariants of DESIGN.md on one document (`history_problems`)
and between two versions of it (`change_problems`), and makes transitions in-process
(`advance`), so a writer can never produce what the checker would refuse.
"""

from __future__ import annotations

import datetime as _dt
import time as _time
import re
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from patch_ledger import schemas
from patch_ledger.errors import LedgerError

MACHINE_KINDS = ("run", "workstream", "task", "worker", "patch", "gate", "breaker", "workflow")


class Problem(NamedTuple):
    """Something wrong in one document: where (a JSON pointer's parts) and why."""

    path: tuple[str | int, ...]
    message: str


@dataclass(frozen=True)
class Machine:
    kind: str
    name: str
    states: tuple[str, ...]
    initial: str
    terminal: frozenset[str]
    transitions: dict[tuple[str, str], str]  # (from, to) -> transition name
    guards: tuple[str, ...]
    roles: dict[str, str]
    immutable: tuple[str, ...]  # fields fixed once set
    precedence: tuple[str, ...] = ()  # every state, strongest first: what a merge of two histories resolves to
    tones: dict[str, str] = dataclasses.field(default_factory=dict)  # state -> good, bad or busy: how reports show it

    def is_legal(self, source: str, target: str) -> bool:
        return (source, target) in self.transitions

    def targets(self, source: str) -> list[str]:
        return [to for (frm, to) in self.transitions if frm == source]

    def stronger(self, states: Iterable[str]) -> str:
        """What a merge of histories ending in `states` resolves to: the first by precedence."""
        return min(states, key=self.precedence.index)


@lru_cache(maxsize=None)
def load(kind: str) -> Machine:
    """The machine of entity `kind`, read from `schemas/<kind>.json` and checked for sense."""
    schema = schemas.load(kind)
    block = schema.get("x-state-machine")
    if block is None:
        raise LedgerError(f"schemas/{kind}.json: no x-state-machine; {kind} has no state machine")
    states = tuple(schema["$defs"]["state"]["enum"])
    transitions: dict[tuple[str, str], str] = {}
    for t in block["transitions"]:
        for source in t["from"]:
            if (source, t["to"]) in transitions:
                raise LedgerError(f"schemas/{kind}.json: {source}->{t['to']} is named twice; give each step one name")
            transitions[(source, t["to"])] = t["name"]
    machine = Machine(kind, block["name"], states, block["initial"], frozenset(block["terminal"]),
                      transitions, tuple(block.get("guards", ())), dict(block.get("roles", {})),
                      tuple(block.get("immutable", ())), tuple(block.get("precedence", ())),
                      {state: tone for tone, named in block.get("tones", {}).items() for state in named})
    _check_sense(machine)
    strangers = [f for f in machine.immutable if f not in schema["properties"]]
    if strangers:
        raise LedgerError(f"schemas/{kind}.json: immutable names {', '.join(strangers)}, not a field of {kind}")
    return machine


def _check_sense(m: Machine) -> None:
    named = {m.initial, *m.terminal, *m.roles, *m.tones, *(s for pair in m.transitions for s in pair)}
    unknown = sorted(named - set(m.states))
    if unknown:
        raise LedgerError(f"schemas/{m.kind}.json: {', '.join(unknown)} not in $defs/state; add or fix them")
    leaving = sorted(frm for (frm, _) in m.transitions if frm in m.terminal)
    if leaving:
        raise LedgerError(f"schemas/{m.kind}.json: terminal state(s) {', '.join(leaving)} have transitions out")
    if m.precedence and sorted(m.precedence) != sorted(m.states):
        raise LedgerError(f"schemas/{m.kind}.json: precedence must name every state exactly once; it has "
                          f"{', '.join(m.precedence)}, the states are {', '.join(m.states)}")
    from patch_ledger import guards  # guards builds on this module

    missing = guards.unknown(m)
    if missing:
        raise LedgerError(f"schemas/{m.kind}.json: no guard named {', '.join(missing)} in patch_ledger.guards")


@lru_cache(maxsize=None)
def stamp_form() -> re.Pattern[str]:
    pattern = schemas.load("common")["$defs"]["timestamp"]["pattern"]
    return re.compile(pattern.removesuffix("$") + r"\Z")


def is_timestamp(stamp: str) -> bool:
    """RFC 3339 UTC of the schemas' form (common.json), and a real date and time."""
    return bool(stamp_form().match(stamp)) and real_time(stamp)


def epoch(stamp: str) -> int:
    """Whole seconds since 1970 of a stamp of the schemas' form."""
    moment = _dt.datetime.fromisoformat(stamp[:19]).replace(tzinfo=_dt.timezone.utc)
    return int(moment.timestamp())


def real_time(stamp: str) -> bool:
    try:
        _dt.datetime.fromisoformat(stamp[:19])
    except ValueError:
        return False
    return True


def time_key(stamp: str) -> tuple[str, str]:
    """Orders RFC 3339 UTC stamps of the schema's form, whatever their fractional digits."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, fraction.ljust(9, "0")


def history_problems(m: Machine, doc: dict[str, Any]) -> Iterator[Problem]:
    """The invariants of one version: a legal walk from the initial state, in time order,
    ending in `state`. Assumes the document matched its schema."""
    history = doc["history"]
    for i, entry in enumerate(history):
        if not real_time(entry["at"]):
            yield Problem(("history", i, "at"), f"history[{i}] at {entry['at']} is not a real date and time")
    first = history[0]
    if first["from"] is not None or first["to"] != m.initial:
        yield Problem(("history", 0), f"history[0] must enter the initial state: from null to {m.initial}")
    for i in range(1, len(history)):
        before, step = history[i - 1], history[i]
        yield from _step_problems(m, i, before, step)
    if doc["state"] != history[-1]["to"]:
        yield Problem(("state",), f"state is {doc['state']} but the last history entry enters {history[-1]['to']}")


def _step_problems(m: Machine, i: int, before: dict[str, Any], step: dict[str, Any]) -> Iterator[Problem]:
    where = ("history", i)
    for field in ("from", "to"):
        if step[field] not in m.states:
            yield Problem((*where, field), f"history[{i}]: {step[field]} is not a {m.name} state")
            return
    if step["from"] != before["to"]:
        yield Problem((*where, "from"), f"history[{i}] starts from {step['from']} but history[{i - 1}] entered {before['to']}")
    elif step["from"] in m.terminal:
        yield Problem(where, f"history[{i}] leaves the terminal state {step['from']} (to {step['to']}); terminal states are final")
    elif not m.is_legal(step["from"], step["to"]):
        allowed = ", ".join(m.targets(step["from"])) or "nothing"
        yield Problem(where, f"history[{i}]: {step['from']} -> {step['to']} is not a {m.name} transition (from {step['from']}: {allowed})")
    if time_key(step["at"]) < time_key(before["at"]):
        yield Problem((*where, "at"), f"history[{i}] at {step['at']} is earlier than history[{i - 1}] ({before['at']}); time never goes back")


def change_problems(m: Machine, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Problem]:
    """The invariants between the previous version `old` and `new` (which matched its schema)
    of one entity. `old` may be anything: a version committed past the hook."""
    if old.get("id") != new.get("id"):
        yield Problem(("id",), f"id changed from {old.get('id')!r} to {new.get('id')!r}; an entity keeps its id")
    old_h, new_h = old.get("history"), new["history"]
    old_h = old_h if isinstance(old_h, list) else []
    for i, entry in enumerate(old_h):
        if i >= len(new_h):
            yield Problem(("history",), f"history lost entries: it had {len(old_h)}, now {len(new_h)}; history is append-only")
            return
        if new_h[i] != entry:
            yield Problem(("history", i), f"history[{i}] was rewritten ({_difference(entry, new_h[i])}); history is append-only")
            return
    if isinstance(old.get("state"), str) and old["state"] in m.terminal and new["state"] != old["state"]:
        yield Problem(("state",), f"state left the terminal state {old['state']} for {new['state']}")
    for field in m.immutable:
        if field in old and old[field] != new.get(field):
            yield Problem((field,), f"{field} changed from {old[field]!r} to {new.get(field)!r}; it is fixed once set")
    old_p, new_p = old.get("progress"), new.get("progress")
    if _number(old_p) and _number(new_p) and new_p < old_p:
        yield Problem(("progress",), f"progress went down from {old_p} to {new_p}; progress never goes down")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _difference(old: Any, new: Any) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"was {old!r}, now {new!r}"
    keys = [k for k in (*old, *(k for k in new if k not in old)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} became {new.get(k)!r}" for k in keys)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def now(later_s: float = 0.0) -> str:
    """The time now (or `later_s` seconds from now) as the schemas write it, microseconds
    included. A run stamps thousands of transitions a second: the date and time of a second
    is formatted once."""
    moment = _time.time() + later_s
    whole = int(moment)
    if _second[0] != whole:
        _second[0], _second[1] = whole, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(whole))
    return f"{_second[1]}.{int((moment - whole) * 1e6):06d}Z"


def seconds(stamp: str) -> float:
    """Seconds since 1970 of a stamp of the schemas' form, its fraction kept."""
    _, _, fraction = stamp.rstrip("Z").partition(".")
    return epoch(stamp) + float(f"0.{fraction or 0}")


def new_document(kind: str, doc_id: str, actor: str, reason: str = "created", at: str | None = None,
                 fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A new entity in its machine's initial state, with its first history entry and `fields`."""
    m = load(kind)
    entry = {"from": None, "to": m.initial, "at": at or now(), "actor": actor, "reason": reason}
    return {"schema_version": schemas.CURRENT_VERSION, "id": doc_id, "state": m.initial, **(fields or {}), "history": [entry]}


def step(doc: dict[str, Any], kind: str, to: str, actor: str, reason: str = "",
         at: str | None = None, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`doc` moved to state `to` (with `fields` updated) as the machine allows, or LedgerError
    naming the refused step. The machine's guards are `advance`'s business."""
    m = load(kind)
    source = doc["state"]
    if source in m.terminal:
        raise LedgerError(f"{kind} {doc['id']} is {source}, a terminal state; it cannot move to {to}")
    if not m.is_legal(source, to):
        allowed = ", ".join(m.targets(source)) or "nothing"
        raise LedgerError(f"{kind} {doc['id']}: {source} -> {to} is not a {m.name} transition (from {source}: {allowed})")
    stamp = at or now()
    last = doc["history"][-1]["at"]
    if (stamp < last) if len(stamp) == len(last) == 27 else (time_key(stamp) < time_key(last)):  # our own stamps compare as text
        stamp = last  # a clock that stepped back must not break the order
    entry = {"from": source, "to": to, "at": stamp, "actor": actor, "reason": reason}
    return {**doc, **(fields or {}), "state": to, "history": [*doc["history"], entry]}


def advance(doc: dict[str, Any], kind: str, to: str, actor: str, reason: str = "",
            at: str | None = None, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`step`, and the machine's guards on the result: what every writer of state uses, so
    it never writes what the checker would refuse."""
    moved = step(doc, kind, to, actor, reason, at, fields)
    from patch_ledger import guards  # guards builds on this module

    refused = next(guards.document_problems(load(kind), moved), None)
    if refused is not None:
        raise LedgerError(f"{kind} {doc['id']}: {doc['state']} -> {to} refused: {refused.message}")
    return moved
