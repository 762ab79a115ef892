"""`ledger run PLAN [--workers N] [--resume RUN_ID] [--dry-run] [--budget AMOUNT]`."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patch_ledger import config, dag, git, machine, plans, router
from patch_ledger.commands import actor_of
from patch_ledger.errors import CHECK_FAILED, OK, LedgerError
from patch_ledger.orchestrator import Options, Orchestrator, Summary
from patch_ledger.pool import Claim
from patch_ledger.report import emit
from patch_ledger.store import RunStore, path_of


def run(cwd: str, plan: str | None, workers: int, resume: str | None, dry_run: bool, budget: float | None,
        heartbeat: float, actor: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    if workers < 1:
        raise LedgerError(f"--workers {workers}: give at least 1")
    if not heartbeat > 0:
        raise LedgerError(f"--heartbeat {heartbeat:g}: give the seconds between two beats, more than 0 (e.g. 1)")
    if budget is not None and budget < 0:
        raise LedgerError(f"--budget {budget:g}: a budget is an amount of at least 0")
    if resume:
        _must_exist(root, resume)
    elif plan is None:
        raise LedgerError("name a plan (e.g. .ledger/plans/build.yaml, or just build), or --resume RUN_ID")
    # a resumed run is claimed before anything of it is read or written (one scheduler a run); a dry
    # run claims, kills and writes nothing
    claim = Claim.of(root, resume) if resume and not dry_run else None
    try:
        store = _resumed(root, resume) if claim is not None else None  # type: ignore[arg-type]
        if store is not None:
            plan_path = store.read("run", store.run)["plan"]
        else:
            plan_path = _plan_of(root, resume) if resume else plan_path_of(root, plan)  # type: ignore[arg-type]
        graph = dag.build(plans.load(root, plan_path), config.load(root).get("tools", {}), plan_path)
        if dry_run:
            return _dry_run(graph, router.Router(root, graph.tools), fmt)
        who = actor_of(root, actor)
        if store is None:
            run_id = _new_run_id(root, graph, plan_path)
            claim = Claim.of(root, run_id)
            store = create_run(root, graph, plan_path, run_id, who, budget)
        elif budget is not None:
            store.update("run", store.run, {"budget": budget})
        run_budget = budget if budget is not None else store.read("run", store.run).get("budget")
        options = Options(workers, run_budget, heartbeat, fmt == "text" and sys.stderr.isatty(), who)
        if store.read("run", store.run)["state"] in machine.load("run").terminal:
            summary = _already_finished(store)  # a kill that landed after the run's last write: nothing to do
        else:
            summary = Orchestrator(root, graph, store, options, claim).execute()  # type: ignore[arg-type]
    finally:
        if claim is not None:
            claim.release()
    if options.progress:
        sys.stderr.write("\n")
    emit(fmt, summary._asdict(), lambda s: _text(s))
    return OK if summary.state == "COMPLETED" else CHECK_FAILED


def _already_finished(store: RunStore) -> Summary:
    run = store.read("run", store.run)
    counts = Counter(t["state"] for t in store.docs("task"))
    return Summary(store.run, run["state"], dict(sorted(counts.items())), run.get("cost", {}), 0.0,
                   f"the run had already finished ({run['state']}); nothing was run")


def plan_path_of(root: Path, given: str) -> str:
    """A plan by path (relative to the repository) or by name (.ledger/plans/NAME.yaml)."""
    candidates = [given, f".ledger/plans/{given}.yaml", f".ledger/plans/{given}"]
    for c in candidates:
        path = (Path.cwd() / c) if not os.path.isabs(c) else Path(c)
        for p in (path, root / c):
            if p.is_file():
                try:
                    return p.resolve().relative_to(root.resolve()).as_posix()
                except ValueError:
                    raise LedgerError(f"{given}: a plan must live in the repository (under .ledger/plans/)") from None
    raise LedgerError(f"{given}: no such plan; plans live in .ledger/plans/<name>.yaml")


def create_run(root: Path, graph: dag.Graph, plan_path: str, run_id: str, actor: str, budget: float | None) -> RunStore:
    """The run, every task PENDING, in its event log (the files follow at the run's first checkpoint)."""
    store = RunStore(root, run_id, autoflush=False)
    fields: dict[str, Any] = {"plan": plan_path, "progress": 0.0}
    base = git.commit_of(root, "HEAD")
    if base:
        fields["base"] = base
    if budget is not None:
        fields["budget"] = budget
    store.create("run", run_id, actor, fields=fields)
    for ws, tids in graph.workstreams.items():
        store.create("workstream", ws, actor, fields={"run": run_id, "title": ws, "depends_on": list(graph.workstream_deps[ws]),
                                                     "progress": 0.0})
    for task in graph.tasks.values():
        store.create("task", task.id, actor, fields={
            "run": run_id, "workstream": task.workstream, "title": task.title, "depends_on": list(task.depends_on),
            "priority": task.priority, "attempts": 0, "max_attempts": task.max_attempts})
    store.flush(files=False)
    return store


def _new_run_id(root: Path, graph: dag.Graph, plan_path: str) -> str:
    """A new run's id, its directory claimed (mkdir): never one a crashed run left."""
    name = Path(plan_path).stem
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_id = f"{name}-{stamp}" + (f"-{n}" if n > 1 else "")
        directory = (root / path_of("run", run_id, run_id)).parent
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir()
            return run_id
        except FileExistsError:
            continue
    raise LedgerError(f"{directory.parent}: no free run id for {name} at {stamp}; remove old runs")


def _must_exist(root: Path, run_id: str) -> None:
    run_file, log = root / path_of("run", run_id, run_id), root / path_of("event", run_id, "")
    if "/" in run_id or not (run_file.is_file() or log.is_file()):
        raise LedgerError(f"--resume {run_id}: no run {run_id} under .ledger/runs/; `ledger status` lists the runs")


def _plan_of(root: Path, run_id: str) -> str:
    """The plan of a run, as its run.json or (before its first checkpoint) its log's first event says."""
    for read in (lambda: json.loads((root / path_of("run", run_id, run_id)).read_text()),
                 lambda: json.loads((root / path_of("event", run_id, "")).read_text().split("\n", 1)[0])["data"]):
        try:
            plan = read().get("plan")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(plan, str):
            return plan
    raise LedgerError(f"--resume {run_id}: neither run.json nor its event log names the run's plan; start it again")


def _resumed(root: Path, run_id: str) -> RunStore:
    store = RunStore.load(root, run_id)  # rebuilds what a crash left behind its log, run.json too
    try:
        store.read("run", run_id)
    except (OSError, ValueError):
        raise LedgerError(f"--resume {run_id}: neither run.json nor its event log holds the run; start it again") from None
    return store


def _dry_run(graph: dag.Graph, routes: "router.Router", fmt: str) -> int:
    order = dag.order(graph)
    steps = []
    for i, tid in enumerate(order, 1):
        task = graph.tasks[tid]
        tool, why, _ = routes.choose(task)
        steps.append({"order": i, "task": tid, "workstream": task.workstream, "priority": task.priority,
                      "depends_on": list(task.depends_on), "tool": tool, "route": why})
    emit(fmt, {"tasks": steps}, lambda _: "\n".join(
        f"{s['order']:>4}. {s['task']}  [{s['workstream']}]" + (f" priority {s['priority']}" if s["priority"] else "")
        + f"  -> {s['tool'] or ('workflow' if s['route'].startswith('build workflow') else 'sh')}: {s['route']}"
        + (f"  after {', '.join(s['depends_on'])}" if s["depends_on"] else "")
        for s in steps))
    return OK


def _text(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
    cost = summary["cost"]
    spent = f"; cost {cost.get('money', 0):g} ({cost.get('tokens', 0)} tokens)" if cost else ""
    note = f"\n{summary['note']}" if summary["note"] else ""
    return f"run {summary['run']}: {summary['state']} in {summary['duration_s']:.1f} s; tasks: {counts}{spent}{note}"
