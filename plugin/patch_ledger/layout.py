"""Where state lives in a user's repository: one catalogue drives the checker, the
pre-commit manifest's `files` pattern and the docs."""

from __future__ import annotations

import re
from typing import NamedTuple

ROOT = ".ledger"

# (kind, path pattern): {run} and {id} are one path segment each.
LAYOUT: tuple[tuple[str, str], ...] = (
    ("config", ".ledger/config.yaml"),
    ("plan", ".ledger/plans/{id}.yaml"),
    ("run", ".ledger/runs/{run}/run.json"),
    ("workstream", ".ledger/runs/{run}/workstreams/{id}.json"),
    ("task", ".ledger/runs/{run}/tasks/{id}.json"),
    ("worker", ".ledger/runs/{run}/workers/{id}.json"),
    ("breaker", ".ledger/breakers/{id}.json"),  # a tool's breaker outlives a run
    ("workflow", ".ledger/runs/{run}/workflows/{id}.json"),
    ("event", ".ledger/runs/{run}/events.jsonl"),
)

_PATTERNS = dict(LAYOUT)
_SEGMENT = r"[^/]+"


def path_of(kind: str, run: str, doc_id: str) -> str:
    """Where the file of entity `doc_id` of `kind` in `run` lives."""
    return _PATTERNS[kind].format(run=run, id=doc_id)


def _regex(pattern: str, named: bool) -> str:
    out = re.escape(pattern)
    for key in ("run", "id"):
        out = out.replace(re.escape("{" + key + "}"), f"(?P<{key}>{_SEGMENT})" if named else _SEGMENT)
    return out


_COMPILED = tuple((kind, re.compile(_regex(p, named=True) + r"\Z")) for kind, p in LAYOUT)


class StateFile(NamedTuple):
    path: str  # relative to the repository's top, with forward slashes
    kind: str  # the schema that validates it
    run: str | None  # the run it belongs to
    id: str | None  # the entity id its name promises


def classify(path: str) -> StateFile | None:
    """The state file at repository-relative `path`, or None when it is not one."""
    for kind, regex in _COMPILED:
        match = regex.match(path)
        if match:
            groups = match.groupdict()
            return StateFile(path, kind, groups.get("run"), groups.get("id"))
    return None


def is_include(path: str) -> bool:
    """A YAML file under .ledger/ that is no config or plan: something they may `$ref`."""
    return path.startswith(ROOT + "/") and path.endswith((".yaml", ".yml")) and classify(path) is None


def files_regex() -> str:
    """One anchored regex matching every state file and every YAML file under .ledger/
    (an include of the config or a plan): the pre-commit manifest's `files`."""
    inner = "|".join(_regex(p, named=False).removeprefix(re.escape(ROOT + "/")) for kind, p in LAYOUT if kind not in ("config", "plan"))
    return rf"^\.ledger/(.+\.ya?ml|{inner})$"
