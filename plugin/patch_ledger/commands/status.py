from __future__ import annotations

import json
from collections import Counter
from typing import Any

from patch_ledger import git
from patch_ledger.errors import OK
from patch_ledger.layout import ROOT, classify
from patch_ledger.report import emit
from patch_ledger.source import worktree


def run(cwd: str, fmt: str) -> int:
    root = git.toplevel(cwd)
    runs: dict[str, dict[str, Any]] = {}
    for f in filter(None, map(classify, worktree(root).files(f"{ROOT}/runs"))):
        if f.kind not in ("run", "task"):
            continue
        doc = _read(root / f.path)
        entry = runs.setdefault(f.run, {"id": f.run, "state": None, "progress": None, "tasks": Counter()})
        if f.kind == "run":
            entry.update(state=doc.get("state"), progress=doc.get("progress"))
        else:
            entry["tasks"][doc.get("state", "UNREADABLE")] += 1
    listing = [dict(r, tasks=dict(sorted(r["tasks"].items()))) for _, r in sorted(runs.items())]
    emit(fmt, {"runs": listing}, lambda _: _text(listing))
    return OK


def _read(path: Any) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _text(listing: list[dict[str, Any]]) -> str:
    if not listing:
        return "no runs under .ledger/runs (ledger demo shows one)"
    lines = []
    for r in listing:
        share = f"{r['progress']:.0%}" if isinstance(r["progress"], (int, float)) else "?"
        tasks = ", ".join(f"{n} {s}" for s, n in r["tasks"].items()) or "no tasks"
        lines.append(f"run {r['id']}: {r['state'] or 'no run.json'}, {share} done; tasks: {tasks}")
    return "\n".join(lines)
