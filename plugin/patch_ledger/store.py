"""Writing run state: every transition goes through the engine and lands in the entity's
file and in the run's event log together, so what we write always passes `ledger check`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from patch_ledger import machine, schemas
from patch_ledger.layout import LAYOUT

Doc = dict[str, Any]
_PATTERNS = dict(LAYOUT)


def path_of(kind: str, run: str, doc_id: str) -> str:
    return _PATTERNS[kind].format(run=run, id=doc_id)


class RunStore:
    """The state files of one run under a repository's top directory."""

    def __init__(self, root: Path, run: str) -> None:
        self.root, self.run = Path(root), run
        self.events_path = self.root / path_of("event", run, "")
        self._seq = _count_lines(self.events_path)

    def read(self, kind: str, doc_id: str) -> Doc:
        return json.loads((self.root / path_of(kind, self.run, doc_id)).read_text())

    def create(self, kind: str, doc_id: str, actor: str, at: str | None = None, fields: Mapping[str, Any] | None = None) -> Doc:
        return self._save(kind, machine.new_document(kind, doc_id, actor, at=at, fields=fields))

    def move(self, kind: str, doc_id: str, to: str, actor: str, reason: str = "", at: str | None = None,
             fields: Mapping[str, Any] | None = None) -> Doc:
        return self._save(kind, machine.advance(self.read(kind, doc_id), kind, to, actor, reason, at=at, fields=fields))

    def update(self, kind: str, doc_id: str, fields: Mapping[str, Any]) -> Doc:
        """Change fields that are not the state (an aggregate such as progress)."""
        return self._write(kind, {**self.read(kind, doc_id), **fields})

    def refresh_progress(self) -> None:
        """Set the progress of every workstream and of the run from their tasks (the run guards' rule)."""
        from patch_ledger.guards import share_done

        tasks_dir = self.root / path_of("task", self.run, "x")
        tasks = [json.loads(p.read_text()) for p in sorted(tasks_dir.parent.glob("*.json"))]
        for ws in sorted({t["workstream"] for t in tasks if "workstream" in t}):
            self.update("workstream", ws, {"progress": share_done([t for t in tasks if t.get("workstream") == ws])})
        self.update("run", self.run, {"progress": share_done(tasks)})

    def _save(self, kind: str, doc: Doc) -> Doc:
        step = doc["history"][-1]
        self._write(kind, doc)
        self._seq += 1
        event = {"schema_version": schemas.CURRENT_VERSION, "seq": self._seq, "at": step["at"], "type": "transition",
                 "entity": kind, "id": doc["id"], "from": step["from"], "to": step["to"], "actor": step["actor"],
                 "reason": step["reason"]}
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(event, separators=(",", ":")) + "\n")
        return doc

    def _write(self, kind: str, doc: Doc) -> Doc:
        target = self.root / path_of(kind, self.run, doc["id"])
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        temporary.replace(target)
        return doc


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
