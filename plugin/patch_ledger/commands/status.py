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
    report = {"patches": _patches(root), "runs": _runs(root), "breakers": _breakers(root)}
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
    """Each run's state, progress, tasks by state, cost, an ETA from its tasks' measured
    durations, and the workers that went unhealthy."""
    runs: dict[str, dict[str, Any]] = {}
    for f in filter(None, map(classify, worktree(root).files(f"{ROOT}/runs"))):
        if f.kind not in ("run", "task", "worker"):
            continue
        doc = _read(root / f.path)
        entry = runs.setdefault(f.run, {"id": f.run, "state": None, "progress": None, "tasks": Counter(), "cost": {},
                                        "durations": [], "workers": 0, "unhealthy": []})
        if f.kind == "run":
            entry.update(state=doc.get("state"), progress=doc.get("progress"), cost=doc.get("cost", {}))
        elif f.kind == "task":
            entry["tasks"][doc.get("state", "UNREADABLE")] += 1
            if doc.get("state") == "COMPLETED" and isinstance(doc.get("duration_s"), (int, float)):
                entry["durations"].append(doc["duration_s"])
        else:
            entry["workers"] += doc.get("state") in ("IDLE", "BUSY")
            if any(h.get("to") == "UNHEALTHY" for h in doc.get("history", []) if isinstance(h, dict)):
                entry["unhealthy"].append(doc.get("id"))
    return [_finished_entry(r) for _, r in sorted(runs.items())]


def _finished_entry(r: dict[str, Any]) -> dict[str, Any]:
    durations = r.pop("durations")
    left = sum(n for s, n in r["tasks"].items() if s not in ("COMPLETED", "FAILED", "CANCELLED"))
    eta = None
    if left and durations and r["state"] == "RUNNING":
        eta = round(left * sum(durations) / len(durations) / max(1, r["workers"]), 1)
    return dict(r, tasks=dict(sorted(r["tasks"].items())), eta_s=eta)


def _breakers(root: Path) -> list[dict[str, Any]]:
    """The tools' breakers that hold work back (OPEN or HALF_OPEN)."""
    out = []
    for path in sorted((root / ROOT / "breakers").glob("*.json")):
        doc = _read(path)
        if doc.get("state") in ("OPEN", "HALF_OPEN"):
            out.append({"id": doc.get("id"), "state": doc["state"], "consecutive_failures": doc.get("consecutive_failures"),
                        "since": (doc.get("history") or [{}])[-1].get("at")})
    return out


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
        extra = [f"ETA {r['eta_s']:g} s" if r["eta_s"] is not None else "",
                 f"cost {r['cost'].get('money', 0):g} ({r['cost'].get('tokens', 0)} tokens)" if r["cost"] else "",
                 f"unhealthy workers: {', '.join(r['unhealthy'])}" if r["unhealthy"] else ""]
        lines.append(f"run {r['id']}: {r['state'] or 'no run.json'}, {share} done; tasks: {tasks}"
                     + "".join(f"; {e}" for e in extra if e))
    for b in report["breakers"]:
        lines.append(f"breaker {b['id']}: {b['state']} since {b['since']} after {b['consecutive_failures']} failure(s) in a row")
    return "\n".join(lines)
