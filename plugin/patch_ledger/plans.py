"""Plans (.ledger/plans/<name>.yaml): read, validated, and turned into the state of a new run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patch_ledger import documents
from patch_ledger.errors import LedgerError
from patch_ledger.store import RunStore


def load(root: Path, relpath: str) -> dict[str, Any]:
    """The plan at `relpath`, or LedgerError naming the file, line and what is wrong."""
    plan = documents.load_checked(root, relpath, "plan")
    if plan is None:
        raise LedgerError(f"{relpath}: no such plan; plans live in .ledger/plans/<name>.yaml")
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
