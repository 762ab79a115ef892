"""What `ledger status` and `ledger report` show, collected once: the ledger (counts by
state, the latest patches with their gates, the quarantined), the runs under .ledger/runs/
and the breakers that hold work back. Both read through here, so the terminal and the page
never disagree about what the repository holds. The JSON of `ledger status` is
`status_report`'s value, documented by schemas/status.json."""

from __future__ import annotations

import heapq
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from patch_ledger import config, ledger, machine, replay, results
from patch_ledger.layout import ROOT, classify, path_of
from patch_ledger.source import worktree

RECENT = 10


def tone(state: str | None) -> str:
    """good, bad, busy or plain: how a state should look, as its machine's schema says
    (`x-state-machine.tones`); a state name means the same in every machine that has it."""
    return _tones().get(state or "", "plain")


@lru_cache(maxsize=None)
def _tones() -> dict[str, str]:
    return {state: t for kind in machine.MACHINE_KINDS for state, t in machine.load(kind).tones.items()}


class Ledger(NamedTuple):
    """The ledger as a report shows it: every patch counted, the latest few in full."""

    total: int
    by_state: dict[str, int]
    latest: list[ledger.Patch]  # newest first
    quarantined: list[ledger.Patch]  # newest first
    verdicts: dict[str, dict[str, results.Verdict]]  # of latest and quarantined: patch id -> gate -> verdict


def _newest(p: ledger.Patch) -> tuple[str, str]:
    return (p.at, p.id)


def read_ledger(root: Path, recent: int = RECENT) -> Ledger:
    """The ledger in one `for-each-ref`, and the gates of the patches shown in one more,
    judged at each one's base. The required gates still missing are the configuration's:
    loading every gate plugin to find ones they add would cost more than the whole read."""
    patches = ledger.read_sound(root)
    latest = heapq.nlargest(recent, patches.values(), key=_newest)
    quarantined = sorted((p for p in patches.values() if p.state == "QUARANTINED"), key=_newest, reverse=True)
    shown = list({p.id: p for p in (*latest, *quarantined)}.values())
    verdicts = results.of_patches(root, shown, config.required_gates(config.load(root)))
    by_state = dict(sorted(Counter(p.state for p in patches.values()).items()))
    return Ledger(len(patches), by_state, latest, quarantined, verdicts)


def shown_gates(found: Ledger, patch: ledger.Patch) -> dict[str, results.Verdict]:
    """The gates worth showing for `patch`: all of them while it may still move; once it is
    final, only those that ran (a finished patch waits for no gate)."""
    final = machine.load("patch").terminal
    return {g: v for g, v in found.verdicts.get(patch.id, {}).items() if v.attempts or patch.state not in final}


def patch_summary(found: Ledger, p: ledger.Patch) -> dict[str, Any]:
    gates = {g: {"state": v.state, "reason": v.reason} for g, v in shown_gates(found, p).items()}
    return {"id": p.id, "state": p.state, "seq": p.seq, "at": p.at, "actor": p.actor,
            "message": p.message, "reason": p.reason, "gates": gates}


def ledger_report(found: Ledger) -> dict[str, Any]:
    return {"total": found.total, "by_state": found.by_state,
            "recent": [patch_summary(found, p) for p in found.latest],
            "quarantined": [patch_summary(found, p) for p in found.quarantined]}


def status_report(root: Path) -> dict[str, Any]:
    """`ledger status --format json` (schemas/status.json)."""
    return {"patches": ledger_report(read_ledger(root)), "runs": read_runs(root), "breakers": read_breakers(root)}


# --- runs ---------------------------------------------------------------------------------


SHOWN = ("run", "task", "worker")


def read_runs(root: Path, with_tasks: bool = False) -> list[dict[str, Any]]:
    """Each run's state, progress, tasks by state, cost, an ETA from its tasks' measured
    durations, and the workers that went unhealthy; `with_tasks` keeps each task's id,
    state, workstream, title and dependencies too (`tasks_detail`), for drawing its DAG.
    A run that has not finished and that no scheduler runs now is read through its event
    log, as `ledger check` reads it: a crash leaves its files behind the log (a live run's
    files are at most a checkpoint, a second, behind it)."""
    found: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for f in filter(None, map(classify, worktree(root).files(f"{ROOT}/runs"))):
        docs = found.setdefault(f.run, {})  # type: ignore[arg-type]
        if f.kind in SHOWN:
            docs[(f.kind, f.id or f.run)] = _read(root / f.path)  # type: ignore[index]
    out = []
    for run, docs in sorted(found.items()):
        scheduled = None
        if (docs.get(("run", run)) or {}).get("state") not in machine.load("run").terminal:
            scheduled = _scheduled(root, run)
            if not scheduled or ("run", run) not in docs:  # a live run's files are a checkpoint behind at most
                replay.catch_up(docs, _events(root / path_of("event", run, "")), lambda key: key[0] in SHOWN)
        entry = _new_run(run, with_tasks, scheduled)
        for (kind, file_id), doc in sorted(docs.items()):
            if kind in SHOWN:
                _take(entry, kind, file_id, doc)
        if entry["state"] is not None or entry["tasks"]:
            out.append(_finished_entry(entry))
    return out


def _events(path: Path) -> list[dict[str, Any]]:
    """A run's log as far as it can be read: a torn or hand-broken line is left out (`ledger
    check` names it)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _scheduled(root: Path, run: str) -> bool:
    """Whether a `ledger run` runs it now: it holds the run's claim (patch_ledger.pool)."""
    from patch_ledger import git
    from patch_ledger.pool import claimed

    return claimed(git.common_dir(root) / "ledger" / "runs" / run)


def _new_run(run: str, with_tasks: bool, scheduled: bool | None = None) -> dict[str, Any]:
    entry = {"id": run, "state": None, "progress": None, "tasks": Counter(), "cost": {},
             "durations": [], "workers": 0, "unhealthy": [], "scheduled": scheduled}
    return {**entry, "tasks_detail": []} if with_tasks else entry


def _take(entry: dict[str, Any], kind: str, file_id: str | None, doc: dict[str, Any]) -> None:
    """One state file of a run, into its entry."""
    if kind == "run":  # what a hand-broken run.json holds is shown as missing (`ledger check` names it)
        entry.update(state=_text(doc.get("state")), progress=_number(doc.get("progress")),
                     cost=doc.get("cost") if isinstance(doc.get("cost"), dict) else {})
    elif kind == "task":
        entry["tasks"][_text(doc.get("state")) or "UNREADABLE"] += 1
        if doc.get("state") == "COMPLETED" and isinstance(doc.get("duration_s"), (int, float)):
            entry["durations"].append(doc["duration_s"])
        if "tasks_detail" in entry:
            entry["tasks_detail"].append(task_detail(str(file_id), doc))
    else:
        entry["workers"] += _text(doc.get("state")) in _live_worker_states()
        history = doc.get("history") if isinstance(doc.get("history"), list) else []
        if any(h.get("to") == "UNHEALTHY" for h in history if isinstance(h, dict)):
            entry["unhealthy"].append(_text(doc.get("id")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@lru_cache(maxsize=None)
def _live_worker_states() -> frozenset[str]:
    """The states of a worker that works or can: both ends of schemas/worker.json's `assign`
    (IDLE -> BUSY), so a DRAINING one, which takes no new task, does not count for an ETA."""
    return frozenset(s for pair, name in machine.load("worker").transitions.items() if name == "assign" for s in pair)


def read_tasks(root: Path, run: str) -> list[dict[str, Any]]:
    """The tasks of one run as `task_detail` shows them, for a report that draws one run."""
    folder = root / ROOT / "runs" / run / "tasks"
    return [task_detail(path.stem, _read(path)) for path in sorted(folder.glob("*.json"))]


def task_detail(file_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A task file as every DAG draws it; what a hand-broken file holds wrongly is shown as
    missing, and only the ids among its `depends_on` count (`ledger check` names the rest)."""
    deps = doc.get("depends_on")
    return {"id": _text(doc.get("id")) or file_id, "state": _text(doc.get("state")) or "UNREADABLE",
            "workstream": _text(doc.get("workstream")), "title": _text(doc.get("title")),
            "depends_on": [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []}


def _finished_entry(r: dict[str, Any]) -> dict[str, Any]:
    durations = r.pop("durations")
    final = machine.load("task").terminal
    left = sum(n for s, n in r["tasks"].items() if s not in final)
    eta = None
    if left and durations and r["state"] == "RUNNING" and r["scheduled"]:
        eta = round(left * sum(durations) / len(durations) / max(1, r["workers"]), 1)
    return dict(r, tasks=dict(sorted(r["tasks"].items())), eta_s=eta)


def read_breakers(root: Path) -> list[dict[str, Any]]:
    """The tools' breakers that hold work back (any state but the breaker's initial, CLOSED)."""
    m = machine.load("breaker")
    breakers = (_breaker(_read(path)) for path in sorted((root / ROOT / "breakers").glob("*.json")))
    return [b for b in breakers if b["state"] in m.states and b["state"] != m.initial]


def _breaker(doc: dict[str, Any]) -> dict[str, Any]:
    """One breaker file; what a hand-broken one holds wrongly is shown as missing, as for runs."""
    history = doc.get("history") if isinstance(doc.get("history"), list) else []
    last = history[-1] if history and isinstance(history[-1], dict) else {}
    return {"id": _text(doc.get("id")), "state": _text(doc.get("state")),
            "consecutive_failures": _count(doc.get("consecutive_failures")), "since": _text(last.get("at"))}


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}
