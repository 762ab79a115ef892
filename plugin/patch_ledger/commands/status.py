from __future__ import annotations

import heapq
import json
from collections import Counter
from pathlib import Path
from typing import Any

from patch_ledger import config, git, ledger, machine, results
from patch_ledger.errors import OK
from patch_ledger.layout import ROOT, classify
from patch_ledger.report import emit
from patch_ledger.source import worktree

RECENT = 10


def run(cwd: str, fmt: str) -> int:
    root = git.toplevel(cwd)
    report = {"patches": _patches(root), "runs": _runs(root)}
    emit(fmt, report, _text)
    return OK


def _patches(root: Path) -> dict[str, Any]:
    """The ledger in one `for-each-ref`: counts by state, the latest patches, the quarantined."""
    patches = ledger.read_sound(root)
    latest = heapq.nlargest(RECENT, patches.values(), key=lambda p: (p.at, p.id))
    quarantined = sorted((p for p in patches.values() if p.state == "QUARANTINED"), key=lambda p: (p.at, p.id), reverse=True)
    final = machine.load("patch").terminal
    # the gates of the patches shown: one for-each-ref of their results, judged at each one's
    # base. The required gates still missing are the configuration's: loading every gate
    # plugin to find ones they add would cost status more than the whole ledger's read.
    gates = results.of_patches(root, list({p.id: p for p in (*latest, *quarantined)}.values()),
                               config.required_gates(config.load(root)))
    summary = lambda p: {"id": p.id, "state": p.state, "seq": p.seq, "at": p.at, "actor": p.actor,  # noqa: E731
                         "message": p.message, "reason": p.reason,
                         "gates": {g: {"state": v.state, "reason": v.reason} for g, v in gates.get(p.id, {}).items()
                                   if v.attempts or p.state not in final}}  # a finished patch waits for no gate
    return {"total": len(patches), "by_state": dict(sorted(Counter(p.state for p in patches.values()).items())),
            "recent": [summary(p) for p in latest],
            "quarantined": [summary(p) for p in quarantined]}


def _runs(root: Path) -> list[dict[str, Any]]:
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
    return [dict(r, tasks=dict(sorted(r["tasks"].items()))) for _, r in sorted(runs.items())]


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _gates(patch: dict[str, Any]) -> str:
    return "  [" + " ".join(f"{g}:{v['state']}" for g, v in patch["gates"].items()) + "]" if patch["gates"] else ""


def _text(report: dict[str, Any]) -> str:
    p = report["patches"]
    lines = [f"patches: {p['total']}" + (f" ({', '.join(f'{n} {s}' for s, n in p['by_state'].items())})" if p["total"] else "")]
    lines += [f"  {x['id'][:12]}  {x['state']:<11} {x['at'][:19]}  {x['actor']}  {x['message'] or ''}{_gates(x)}".rstrip()
              for x in p["recent"]]
    if p["quarantined"]:
        lines.append(f"quarantined: {len(p['quarantined'])}")
        lines += [f"  {x['id'][:12]}  {x['reason']}" for x in p["quarantined"]]
    if not report["runs"]:
        lines.append("runs: none under .ledger/runs (ledger demo shows one)")
    for r in report["runs"]:
        share = f"{r['progress']:.0%}" if isinstance(r["progress"], (int, float)) else "?"
        tasks = ", ".join(f"{n} {s}" for s, n in r["tasks"].items()) or "no tasks"
        lines.append(f"run {r['id']}: {r['state'] or 'no run.json'}, {share} done; tasks: {tasks}")
    return "\n".join(lines)
