"""The `check` gate: `ledger check` of the checkout's state files, transitions judged
against the patch's base, as a gate."""

from __future__ import annotations

from patch_ledger import schemas
from patch_ledger.hookspecs import Failure, Gate, Kind, Outcome, Work, hookimpl

ARGS = schemas.load("config")["$defs"]["check_args"]  # the schema is the one source: schemas/config.json


@hookimpl
def ledger_gate_kinds() -> list[Kind]:
    return [Kind("check", "`ledger check` of the state files against the patch's base", ARGS)]


@hookimpl
def ledger_gate_run(gate: Gate, work: Work) -> Outcome | None:
    if gate.plugin != "check":
        return None
    from patch_ledger import check  # the checker loads only when this gate runs

    report = check.check(work.checkout, gate.args.get("paths", ()), base=work.base)
    counts = {"files": len(report.checked), "problems": len(report.findings)}
    if not report.findings:
        return Outcome("PASSED", f"{len(report.checked)} state file(s) sound", counts)
    failures = tuple(Failure(f"{f.path}:{f.line}:{f.col}", f.message, f.path, f.line) for f in report.findings)
    return Outcome("FAILED", f"{len(report.findings)} problem(s) in {len({f.path for f in report.findings})} file(s): "
                   f"{report.findings[0].text()}", counts, failures)
