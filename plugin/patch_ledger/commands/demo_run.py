"""The third act of `ledger demo`: the plan .ledger/plans/ship.yaml run with `ledger run`, in
the same repository: a step that fails once and passes on its retry, and an agent's change
made in its own worktree, recorded in the ledger and gated before its task completes."""

from __future__ import annotations

from pathlib import Path

from patch_ledger import config, dag, plans
from patch_ledger.commands.demo_ledger import Act
from patch_ledger.commands.run import create_run
from patch_ledger.orchestrator import Options, Orchestrator
from patch_ledger.pool import Claim

PLAN = ".ledger/plans/ship.yaml"
RUN = "ship-demo"


def play(root: Path) -> list[Act]:
    graph = dag.build(plans.load(root, PLAN), config.load(root).get("tools", {}), PLAN)
    claim = Claim.of(root, RUN)
    try:
        store = create_run(root, graph, PLAN, RUN, "demo", None)
        summary = Orchestrator(root, graph, store, Options(workers=2, actor="demo"), claim).execute()
    finally:
        claim.release()
    flaky, agent = store.read("task", "flaky"), store.read("task", "add-negate")
    retried = [h["reason"] for h in flaky["history"] if h["to"] == "RETRYING"]
    return [
        Act(f"ledger run {PLAN}: 3 tasks, 2 workers", "COMPLETED", summary.state,
            ", ".join(f"{n} {s}" for s, n in summary.counts.items()) + f" in {summary.duration_s:.1f} s"),
        Act("the flaky step: failed, retried, passed", "COMPLETED after 2 attempts",
            f"{flaky['state']} after {flaky['attempts']} attempts", retried[0] if retried else ""),
        Act("the agent's change, from its worktree to a gated patch", "COMPLETED with a patch",
            f"{agent['state']} with a patch" if agent.get("patch") else agent["state"],
            f"patch {agent.get('patch', '-')[:12]}: {agent['history'][-1]['reason']}; tool {agent.get('tool')} ({agent.get('route')})"),
    ]
