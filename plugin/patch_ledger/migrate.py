"""Upgrading state files written in an older `schema_version`, one step a version.

Version 1 (the format of the project's origin documents) recorded each history entry as
the state entered, `{"state", "at", "by", "note"}`, and progress as a percentage 0-100.
Version 2 records each step as `{"from", "to", "at", "actor", "reason"}` so that every
entry can be checked as a transition on its own, and progress as a share 0-1.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from patch_ledger import documents, git, schemas
from patch_ledger.errors import LedgerError
from patch_ledger.layout import ROOT, classify
from patch_ledger.source import state_paths, worktree

Doc = dict[str, Any]


def _v1_to_v2(kind: str, doc: Doc) -> Doc:
    doc = copy.deepcopy(doc)
    if isinstance(doc.get("history"), list):
        previous = None
        steps = []
        for entry in doc["history"]:
            if not isinstance(entry, dict):
                raise LedgerError(f"a version-1 history entry is not an object: {entry!r}")
            steps.append({"from": previous, "to": entry.get("state"), "at": entry.get("at"),
                          "actor": entry.get("by") or "unknown", "reason": entry.get("note") or ""})
            previous = entry.get("state")
        doc["history"] = steps
    if isinstance(doc.get("progress"), (int, float)) and not isinstance(doc["progress"], bool):
        doc["progress"] = round(doc["progress"] / 100, 6)
    if kind == "event" and "state" in doc:
        doc["to"] = doc.pop("state")
        doc.setdefault("from", doc.pop("previous", None))
    doc["schema_version"] = 2
    return doc


# version -> the step that lifts a document of that version to the next
STEPS: dict[int, Callable[[str, Doc], Doc]] = {1: _v1_to_v2}


def upgrade(kind: str, doc: Doc) -> Doc:
    """`doc` lifted to the current schema_version; LedgerError for an unknown version."""
    version = doc.get("schema_version")
    while version != schemas.CURRENT_VERSION:
        step = STEPS.get(version) if isinstance(version, int) else None
        if step is None:
            raise LedgerError(f"unknown schema_version {version!r}; this patch-ledger reads 1 to {schemas.CURRENT_VERSION}")
        doc = step(kind, doc)
        version = doc["schema_version"]
    return doc


class Migrated(NamedTuple):
    path: str
    old_version: int


def migrate(cwd: Path | str, paths: Sequence[str] = (), dry_run: bool = False) -> list[Migrated]:
    """Rewrite every older state file (under .ledger/, or those named) in the current version.
    Everything is read and upgraded before anything is written, so bad input writes nothing."""
    root = git.toplevel(cwd)
    wanted = state_paths(root, Path(cwd), paths, worktree(root)) if paths else _all_files(root)
    files = [classify(p) for p in wanted]
    pending: list[tuple[Path, str, Migrated]] = []
    for f in files:
        if f is None:
            continue
        target = root / f.path
        try:
            raw = target.read_bytes()
            text = documents.decode(raw)
            data = _unparsed_includes(f.kind, text, f.path)
        except (OSError, documents.InputProblem) as e:
            raise LedgerError(f"{f.path}: {e}; fix it before migrating") from None
        records = data if f.kind == "event" else [data]
        versions = [r.get("schema_version", schemas.CURRENT_VERSION) for r in records]
        unknown = [v for v in versions if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= schemas.CURRENT_VERSION]
        if unknown:
            raise LedgerError(f"{f.path}: unknown schema_version {unknown[0]!r}; this patch-ledger reads 1 to {schemas.CURRENT_VERSION}")
        oldest = min(versions, default=schemas.CURRENT_VERSION)
        if oldest == schemas.CURRENT_VERSION:
            continue
        try:
            new_text = _yaml_bumped(text) if f.kind in YAML_KINDS else _dump(f.kind, [upgrade(f.kind, r) for r in records])
        except LedgerError as e:
            raise LedgerError(f"{f.path}: {e}") from None
        pending.append((target, new_text, Migrated(f.path, oldest)))
    if not dry_run:
        for target, text, _ in pending:
            _write(target, text)
    return [m for _, _, m in pending]


YAML_KINDS = ("config", "plan")


def _unparsed_includes(kind: str, text: str, path: str) -> Any:
    """The document, with a YAML file's `$ref` includes left as they are: each is its own file."""
    if kind in YAML_KINDS:
        data = documents.parse_yaml(text, path, lambda p: b"{}")
        if not isinstance(data, dict):
            raise documents.InputProblem("is not a mapping")
        return data
    return documents.parse_text(kind, text, path, lambda p: None)


def _yaml_bumped(text: str) -> str:
    """Config and plans keep their comments: from version 1 to 2 only the version changes."""
    bumped, count = re.subn(r"(?m)^schema_version:[ \t]*1[ \t]*(#.*)?$", f"schema_version: {schemas.CURRENT_VERSION}", text, count=1)
    if count != 1:
        raise LedgerError("schema_version is not a plain top-level `schema_version: 1` line; change it by hand")
    return bumped


def _all_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)).replace("\\", "/") for p in sorted((root / ROOT).rglob("*")) if p.is_file()]


def _dump(kind: str, records: list[Doc]) -> str:
    if kind == "event":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    return json.dumps(records[0], indent=2) + "\n"


def _write(target: Path, text: str) -> None:
    temporary = target.with_name(target.name + ".ledger-tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(target)
