"""The schemas themselves: well-formed, complete, and read the same by both validators.

schemas.py accepts with fastjsonschema (draft-07 semantics) and explains with jsonschema
(draft 2020-12). That is only sound while the schemas use keywords that mean the same in
both drafts, so this file pins the keyword subset and cross-checks the two validators on
many generated documents.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from patch_ledger import machine, schemas
from tests import builders
from tests.builders import shortest_paths

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ENTITIES = ("run", "workstream", "task", "worker", "patch", "gate", "breaker", "workflow", "event", "config", "plan")
NAMES = schemas.names()

# Keywords whose meaning is the same in draft-07 and draft 2020-12 (and which both
# validators implement). Anything else — `format` (asserted by one, annotated by the other),
# `items` as an array, `dependencies`, `unevaluated*`, `$anchor`… — must not appear.
ALLOWED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "const", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "minLength", "maxLength", "minItems", "uniqueItems", "items", "anyOf", "allOf", "if", "then",
    "$ref", "$defs", "$schema", "$id", "title", "description", "x-state-machine",
})
ANNOTATIONS = frozenset({"title", "description"})
SUBSCHEMA_MAPS = ("properties", "$defs")  # name -> schema
SUBSCHEMAS = ("additionalProperties", "items", "if", "then")  # a schema (or a boolean)
SUBSCHEMA_LISTS = ("anyOf", "allOf")


def schema_nodes(node: Any, where: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every schema object inside `node` (itself included), with where it sits."""
    if not isinstance(node, dict):
        return
    yield where, node
    for key in SUBSCHEMA_MAPS:
        for name, sub in node.get(key, {}).items():
            yield from schema_nodes(sub, (*where, key, name))
    for key in SUBSCHEMAS:
        if key in node:
            yield from schema_nodes(node[key], (*where, key))
    for key in SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key, [])):
            yield from schema_nodes(sub, (*where, key, i))


def pointer(where: tuple[str | int, ...]) -> str:
    return "/" + "/".join(map(str, where))


# --- every schema file --------------------------------------------------------------------

def test_every_entity_has_a_schema() -> None:
    assert {*ENTITIES, "common", "state-machine"} <= set(NAMES)


def test_the_machine_kinds_are_the_schemas_with_a_machine() -> None:
    assert {n for n in NAMES if "x-state-machine" in schemas.load(n)} == set(machine.MACHINE_KINDS)


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_a_valid_2020_12_schema(name: str) -> None:
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"{schemas.ID_PREFIX}{name}.json"


@pytest.mark.parametrize("name", NAMES)
def test_schema_uses_only_keywords_both_drafts_agree_on(name: str) -> None:
    misused = [f"{pointer(where)}: {key}" for where, node in schema_nodes(schemas.load(name))
               for key in node if key not in ALLOWED_KEYWORDS]
    assert misused == []


@pytest.mark.parametrize("name", NAMES)
def test_no_ref_has_a_sibling_keyword(name: str) -> None:
    """draft-07 ignores every sibling of `$ref`; 2020-12 applies them."""
    crowded = [f"{pointer(where)}: {sorted(set(node) - ANNOTATIONS - {'$ref'})}"
               for where, node in schema_nodes(schemas.load(name)) if "$ref" in node and set(node) - ANNOTATIONS - {"$ref"}]
    assert crowded == []


@pytest.mark.parametrize("name", NAMES)
def test_keyword_values_have_their_common_meaning(name: str) -> None:
    """`items` is one schema (an array means tuples in draft-07, an error in 2020-12) and
    `exclusiveMinimum` a number (a boolean in draft-04)."""
    odd = [pointer(where) for where, node in schema_nodes(schemas.load(name))
           if ("items" in node and not isinstance(node["items"], dict))
           or ("exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], (int, float)))
           or ("exclusiveMinimum" in node and isinstance(node["exclusiveMinimum"], bool))]
    assert odd == []


@pytest.mark.parametrize("name", NAMES)
def test_every_ref_resolves(name: str) -> None:
    for where, node in schema_nodes(schemas.load(name)):
        if "$ref" not in node:
            continue
        document, _, fragment = node["$ref"].partition("#")
        target: Any = schemas.load(document.removesuffix(".json")) if document else schemas.load(name)
        for part in fragment.strip("/").split("/") if fragment else []:
            assert isinstance(target, dict) and part in target, f"{pointer(where)}: {node['$ref']} does not resolve"
            target = target[part]
        assert isinstance(target, dict), f"{pointer(where)}: {node['$ref']}"


# --- the state machines, as data ----------------------------------------------------------

@pytest.mark.parametrize("kind", machine.MACHINE_KINDS)
def test_machine_block_matches_state_machine_schema(kind: str) -> None:
    block = schemas.load(kind)["x-state-machine"]
    validator = Draft202012Validator(schemas.load("state-machine"))
    assert [e.message for e in validator.iter_errors(block)] == []
    assert schemas.validate("state-machine", block) == []


@pytest.mark.parametrize("kind", machine.MACHINE_KINDS)
def test_machine_states_live_in_one_place(kind: str) -> None:
    schema = schemas.load(kind)
    states = schema["$defs"]["state"]["enum"]
    assert len(states) == len(set(states))
    assert schema["properties"]["state"] == {"$ref": "#/$defs/state"}
    assert schema["properties"]["history"] == {"$ref": "common.json#/$defs/history"}
    assert {"schema_version", "id", "state", "history"} <= set(schema["required"])


@pytest.mark.parametrize("kind", machine.MACHINE_KINDS)
def test_roles_and_state_notes_name_states(kind: str) -> None:
    block, states = schemas.load(kind)["x-state-machine"], set(schemas.load(kind)["$defs"]["state"]["enum"])
    assert set(block.get("roles", {})) <= states
    assert set(block.get("states", {})) <= states


@pytest.mark.parametrize("kind", [k for k in machine.MACHINE_KINDS if schemas.load(k)["x-state-machine"].get("roles")])
def test_every_phase_has_a_role(kind: str) -> None:
    m = machine.load(kind)
    assert set(m.roles) == set(m.states) - m.terminal


# --- the two validators agree -------------------------------------------------------------

FIELDS: dict[str, dict[str, Any]] = {
    "run": {"progress": 0.25, "plan": "plans/build.yaml", "title": "Build", "labels": {"team": "core"}},
    "workstream": {"run": "r1", "progress": 0.5, "title": "Backend", "depends_on": ["w0"]},
    "task": {"workstream": "w1", "title": "Write the parser", "depends_on": ["t0"], "progress": 0.5,
             "worker": "wk1", "patch": "abcd1234", "result": {"exit": 0}},
    "worker": {"run": "r1", "host": "ci-1", "pid": 4242, "task": "t1", "heartbeat_at": "2026-01-01T00:05:00.25Z"},
    "patch": {"patch_id": "a" * 40, "seq": 1, "base": "b" * 64, "task": "t1",
              "message": "Fix the parser", "superseded_by": "p2", "gates": {"pytest": "PASSED"}},
    "gate": {"gate": "pytest", "patch": "a" * 40, "plugin": "pytest", "base": "b" * 40, "required": True, "shard": "1/2",
             "duration_s": 1.5, "workers": 2, "work_s": 1.2, "counts": {"passed": 3, "failed": 0},
             "failures": [{"test": "test_x", "message": "assert 1 == 2", "file": "t.py", "line": 3}], "log": "ok"},
    "breaker": {"run": "r1", "target": "git push", "failure_threshold": 3, "consecutive_failures": 0, "cooldown_s": 30},
    "workflow": {"run": "r1", "title": "Feature", "iterations": 1},
}


def entity_documents(kind: str) -> list[dict[str, Any]]:
    """`kind` documents in each of its states: one with only the required fields, one with all."""
    m = machine.load(kind)
    required = set(schemas.load(kind)["required"])
    docs = []
    for state, path in shortest_paths(m).items():
        if kind == "task":
            full = builders.task(f"t-{state.lower()}", path, **FIELDS["task"])
        else:
            full = builders.walk(kind, f"x-{state.lower()}", path, **FIELDS[kind])
        if kind == "patch":
            full["actor"] = "alice"  # not through walk: `actor` is also new_document's own parameter
        docs += [full, {k: v for k, v in full.items() if k in required}]
    return docs


EVENTS = [
    {"schema_version": 2, "seq": 1, "at": builders.T0, "type": "transition", "entity": "task", "id": "t1",
     "from": None, "to": "PENDING", "actor": "tester", "reason": "created"},
    {"schema_version": 2, "seq": 2, "at": "2026-01-01T00:01:00.123456789Z", "type": "transition", "entity": "run",
     "id": "r1", "from": "INITIALIZING", "to": "RUNNING", "actor": "ledger"},
    {"schema_version": 2, "seq": 3, "at": builders.stamp(2), "type": "note", "reason": "hello", "data": {"k": [1]}},
    {"schema_version": 2, "seq": 4, "at": builders.stamp(3), "type": "heartbeat", "entity": "worker", "id": "wk1"},
    {"schema_version": 2, "seq": 5, "at": builders.stamp(4), "type": "cost", "data": {"usd": 0.25}},
]
CONFIGS = [
    {"schema_version": 2},
    {"schema_version": 2,
     "gates": [{"name": "pytest", "plugin": "pytest", "args": {"args": ["-x"], "workers": "auto"}, "required": True, "timeout": 600,
                "paths": ["src/"]},
               {"name": "lint", "plugin": "ruff"}],
     "policy": {"max_patch_bytes": 100000, "allow_binary": False, "forbidden_paths": [".env"], "required_paths": []},
     "tools": {"agent": {"command": ["claude", "-p"], "timeout": 900.5, "max_concurrency": 2, "env": {"MODEL": "x"}}},
     "sync": {"remote": "origin"}},
]
PLANS = [
    {"schema_version": 2, "name": "small", "workstreams": [{"id": "w1", "tasks": [{"id": "t1"}]}]},
    {"schema_version": 2, "name": "build", "description": "Build it",
     "defaults": {"tool": "agent", "max_attempts": 3, "timeout": 60},
     "workstreams": [
         {"id": "w1", "title": "Core", "depends_on": [], "tasks": [
             {"id": "t1", "title": "Make", "run": "make", "depends_on": [], "max_attempts": 2, "timeout": 1.5},
             {"id": "t2", "prompt": "Write tests", "tool": "agent", "depends_on": ["t1"]}]},
         {"id": "w2", "depends_on": ["w1"], "tasks": [{"id": "t3", "run": "pytest -q"}]}]},
]
ORIGINALS: list[tuple[str, dict[str, Any]]] = [
    *((kind, doc) for kind in machine.MACHINE_KINDS for doc in entity_documents(kind)),
    *(("event", e) for e in EVENTS), *(("config", c) for c in CONFIGS), *(("plan", p) for p in PLANS),
]


@pytest.mark.parametrize(("name", "doc"), [pytest.param(n, d, id=f"{n}-{i}") for i, (n, d) in enumerate(ORIGINALS)])
def test_valid_originals_are_valid(name: str, doc: dict[str, Any]) -> None:
    assert schemas.is_valid(name, doc)
    assert schemas.validate(name, doc) == []
    assert list(schemas.explain(name, doc)) == []


def test_originals_cover_every_schema_with_documents() -> None:
    assert {name for name, _ in ORIGINALS} == set(ENTITIES)


JUNK: list[Any] = [None, True, False, 0, 1, -1, 2, 2.0, 1.5, 10**20, math.inf, math.nan, "", " ", "x", "PENDING",
                   "r1\n", "ÄÖ", "2026-01-01T00:00:00Z", [], [1], ["a", "a"], {}, {"a": 1}]
BAD_STAMPS = ["2026-01-01 00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T00:00:00.1234567890Z",
              "2026-01-01T00:00:00+00:00", "2026-1-01T00:00:00Z", "2026-01-01T00:00:00.Z", "2026-01-01t00:00:00z"]


def value_paths(node: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield where
    if isinstance(node, dict):
        for key, value in node.items():
            yield from value_paths(value, (*where, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from value_paths(value, (*where, i))


def get_at(doc: Any, where: tuple[Any, ...]) -> Any:
    for part in where:
        doc = doc[part]
    return doc


def set_at(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    if not where:
        return value
    get_at(doc, where[:-1])[where[-1]] = value
    return doc


def mutations(value: Any) -> list[str]:
    ops = ["junk"]
    if isinstance(value, dict):
        ops += ["add_key"] + (["drop_key"] if value else [])
    elif isinstance(value, list):
        ops += ["append_junk", "empty"] + (["duplicate", "drop_item"] if value else [])
    elif isinstance(value, str):
        ops += ["newline", "space", "empty", "long", "lower", "bad_stamp"]
    elif isinstance(value, bool):
        ops += ["to_int"]
    elif isinstance(value, (int, float)):
        ops += ["to_bool", "to_float", "add_half", "negate", "grow", "to_str"]
    return ops


def mutate(draw: st.DrawFn, value: Any) -> Any:
    op = draw(st.sampled_from(mutations(value)), label="mutation")
    if op == "junk":
        return copy.deepcopy(draw(st.sampled_from(JUNK), label="junk"))
    if op == "add_key":
        return {**value, draw(st.sampled_from(["zz_unknown", "State", "from", "id", "$ref"]), label="key"): 1}
    if op == "drop_key":
        key = draw(st.sampled_from(sorted(value)), label="dropped")
        return {k: v for k, v in value.items() if k != key}
    if op == "append_junk":
        return [*value, copy.deepcopy(draw(st.sampled_from(JUNK), label="junk"))]
    if op == "drop_item":
        i = draw(st.integers(0, len(value) - 1), label="item")
        return value[:i] + value[i + 1:]
    if op == "duplicate":
        return [*value, copy.deepcopy(value[0])]
    string_ops = {"newline": lambda s: s + "\n", "space": lambda s: " " + s, "empty": lambda s: s[:0],
                  "long": lambda s: s + "x" * 4100, "lower": str.lower}
    if op in string_ops:
        return string_ops[op](value)
    if op == "bad_stamp":
        return draw(st.sampled_from(BAD_STAMPS), label="stamp")
    if op == "to_int":
        return int(value)
    number_ops = {"to_bool": bool, "to_float": float, "add_half": lambda n: n + 0.5, "negate": lambda n: -n - 1,
                  "grow": lambda n: n + 1000, "to_str": str}
    return number_ops[op](value)


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[str, Any]:
    name, doc = draw(st.sampled_from(ORIGINALS), label="original")
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        where = draw(st.sampled_from(list(value_paths(doc))), label="where")
        doc = set_at(doc, where, mutate(draw, get_at(doc, where)))
    return name, doc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_fast_and_reference_validators_agree(case: tuple[str, Any]) -> None:
    name, doc = case
    errors = list(schemas.explain(name, doc))
    assert schemas.is_valid(name, doc) == (errors == []), errors


# A string with a trailing newline, wherever a schema anchors a pattern with `$`: in
# ECMA-262 (the regex dialect of JSON Schema) `$` is the end of input, so none is valid.
NEWLINE_CASES = [
    ("task", ("id",)), ("task", ("run",)), ("task", ("history", 0, "at")), ("task", ("history", 0, "to")),
    ("patch", ("patch_id",)), ("gate", ("shard",)), ("event", ("to",)), ("config", ("gates", 0, "name")),
    ("plan", ("name",)),
]


@pytest.mark.parametrize(("name", "where"), [pytest.param(n, w, id=f"{n}:{pointer(w)}") for n, w in NEWLINE_CASES])
def test_a_trailing_newline_is_refused_by_both_validators(name: str, where: tuple[Any, ...]) -> None:
    original = next(doc for n, doc in reversed(ORIGINALS) if n == name and _has(doc, where))
    doc = set_at(copy.deepcopy(original), where, get_at(original, where) + "\n")
    assert not schemas.is_valid(name, doc)
    assert [e.path for e in schemas.explain(name, doc)] == [where]


def _has(doc: Any, where: tuple[Any, ...]) -> bool:
    try:
        return isinstance(get_at(doc, where), str)
    except (KeyError, IndexError, TypeError):
        return False
