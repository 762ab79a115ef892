"""The `diff-policy` gate: what a patch may contain (its size, binary changes, forbidden
and required paths), from the gate's `args` or else the `policy:` of .ledger/config.yaml."""

from __future__ import annotations

from patch_ledger import config, schemas, validation
from patch_ledger.hookspecs import Failure, Gate, Kind, Outcome, Work, hookimpl

# the same fields as `policy:` in schemas/config.json
ARGS = schemas.load("config")["$defs"]["diff_policy_args"]  # the schema is the one source: schemas/config.json


@hookimpl
def ledger_gate_kinds() -> list[Kind]:
    return [Kind("diff-policy", "size, binary changes, forbidden and required paths", ARGS)]


@hookimpl
def ledger_gate_run(gate: Gate, work: Work) -> Outcome | None:
    if gate.plugin != "diff-policy":
        return None
    policy = dict(gate.args) or config.load(work.repo).get("policy", {})
    problems = validation.policy_problems(work.diff, list(work.paths), policy)
    if problems:
        return Outcome("FAILED", problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)",
                       {"problems": len(problems)}, tuple(Failure("diff-policy", p) for p in problems))
    return Outcome("PASSED", f"{len(work.diff)} bytes, {len(work.paths)} path(s) within the policy", {"problems": 0})
