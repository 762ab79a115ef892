"""Plans (.ledger/plans/<name>.yaml): read, validated, and turned into the state of a new run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patch_ledger import documents, schemas
from patch_ledger.errors import LedgerError
from patch_ledger.store import RunStore


def load(root: Path, relpath: str) -> dict[str, Any]:
    """The plan at `relpath`, or LedgerError naming the file, line and what is wrong."""
    def read(p: str) -> bytes | None:
        try:
            return (root / p).read_bytes()
        except OSError:
            return None

    raw = read(relpath)
    if raw is None:
        raise LedgerError(f"{relpath}: no such plan; plans live in .ledger/plans/<name>.yaml")
    try:
        plan = documents.parse("plan", raw, relpath, read)
    except documents.InputProblem as e:
        raise LedgerError(f"{relpath}:{e.line or 1}:{e.col or 1}: {e}") from None
    errors = schemas.validate("plan", plan)
    if errors:
        from patch_ledger.positions import yaml_line_col

        line, col = yaml_line_col(raw.decode(), errors[0].path)
        raise LedgerError(f"{relpath}:{line}:{col}: {errors[0].message}")
    return plan


def start_run(root: Path, plan: dict[str, Any], plan_path: str, run_id: str, actor: str, at: str | None = None) -> RunStore:
    """Write a new run of `plan`: the run INITIALIZING, every workstream and task PENDING."""
    store = RunStore(root, run_id)
    store.create("run", run_id, actor, at=at, fields={"plan": plan_path, "progress": 0.0})
    defaults = plan.get("defaults", {})
    for ws in plan["workstreams"]:
        store.create("workstream", ws["id"], actor, at=at, fields={
            "run": run_id, "title": ws.get("title", ws["id"]), "depends_on": ws.get("depends_on", []), "progress": 0.0})
        for task in ws["tasks"]:
            store.create("task", task["id"], actor, at=at, fields={
                "run": run_id, "workstream": ws["id"], "title": task.get("title", task["id"]),
                "depends_on": task.get("depends_on", []), "attempts": 0,
                "max_attempts": task.get("max_attempts", defaults.get("max_attempts", 3))})
    return store
