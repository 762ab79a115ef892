"""The schemas in `schemas/`: loading, fast validation, and explaining failures.

Two validators, one source. fastjsonschema compiles a schema to Python and accepts a
valid document in tens of microseconds; jsonschema (draft 2020-12, the reference) is
imported only when a document fails, to list every error with its location. The schemas
use only keywords that mean the same in both, which tests/test_schemas.py enforces and
cross-checks on generated documents.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

from patch_ledger.resources import data_dir

ID_PREFIX = "https://patch-ledger.invalid/schemas/"
CURRENT_VERSION = 2  # every state file's schema_version; see migrate.py for older ones


class SchemaError(NamedTuple):
    """One reason a document does not match its schema: where (a JSON pointer's parts) and why."""

    path: tuple[str | int, ...]
    message: str


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The schema document `schemas/<name>.json`."""
    with open(data_dir("schemas") / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def names() -> list[str]:
    return sorted(p.stem for p in data_dir("schemas").glob("*.json"))


def _by_uri(uri: str) -> dict[str, Any]:
    name = uri.split("#", 1)[0].rsplit("/", 1)[-1].removesuffix(".json")
    return _private(name)


def _private(name: str) -> dict[str, Any]:
    """A copy for fastjsonschema, whose resolver rewrites every `$ref` in place."""
    import copy

    return copy.deepcopy(load(name))


def digest() -> str:
    """The digest of every schema file: what a generated validator was made from."""
    import hashlib

    h = hashlib.sha256()
    for n in names():
        h.update(n.encode() + b"\0" + (data_dir("schemas") / f"{n}.json").read_bytes() + b"\0")
    return h.hexdigest()


def compiled_source(name: str) -> str:
    """Python source of a validator for schema `name` (see patch_ledger.validators)."""
    import fastjsonschema

    return fastjsonschema.compile_to_code(_private(name), handlers={"https": _by_uri}, use_default=False)


@lru_cache(maxsize=None)
def _fast(name: str) -> Callable[[Any], Any]:
    from patch_ledger.validators import VALIDATORS

    if name in VALIDATORS:
        return VALIDATORS[name]  # type: ignore[no-any-return]
    import fastjsonschema  # a schema without a generated validator yet: compile it now

    return fastjsonschema.compile(_private(name), handlers={"https": _by_uri}, use_default=False)


def is_valid(name: str, document: Any) -> bool:
    from fastjsonschema import JsonSchemaValueException

    try:
        _fast(name)(document)
    except JsonSchemaValueException:
        return False
    return True


@lru_cache(maxsize=None)
def _reference(name: str) -> Any:
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (load(n)["$id"], Resource.from_contents(load(n))) for n in names()
    )
    checker = validators.extend(Draft202012Validator, {"pattern": _pattern})
    return checker(load(name), registry=registry)



def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """`pattern` as JSON Schema means it: an ECMA-262 `$` ends the string, where Python's
    `$` would also match before a final newline (so "id\\n" would pass)."""
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def _ecma(pattern: str) -> Any:
    import re

    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def explain(name: str, document: Any) -> Iterator[SchemaError]:
    """Every error of `document` against schema `name`, deepest location first within each."""
    errors = sorted(_reference(name).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = error.schema.get("properties", {})
            for key in (k for k in error.instance if k not in allowed):
                yield SchemaError((*path, key), f"{key}: unknown field (see {ID_PREFIX.rsplit('/', 2)[-2]}/{name}.json for the fields)")
            continue
        yield SchemaError(path, _message(error))


def validate(name: str, document: Any) -> list[SchemaError]:
    """No errors for a valid document (the fast path); all of them for an invalid one."""
    if is_valid(name, document):
        return []
    return list(explain(name, document)) or [SchemaError((), "does not match its schema")]


def _message(error: Any) -> str:
    where = error.absolute_path[-1] if error.absolute_path else None
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    prefix = f"{where}: " if isinstance(where, str) else ""
    text = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return prefix + text
