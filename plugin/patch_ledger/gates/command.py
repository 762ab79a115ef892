"""The `command` gate: any command, run in the checkout; its exit code is the verdict.

Its whole process group is killed at the gate's timeout, its output goes to a log file and
an excerpt of it to the ledger. A sharded run tells the command its part in the environment
(LEDGER_SHARD=I/N, LEDGER_SHARD_INDEX, LEDGER_SHARD_COUNT); the command splits its work.
"""

from __future__ import annotations

import os

from patch_ledger import proc, schemas
from patch_ledger.hookspecs import Gate, Kind, Outcome, Work, hookimpl

ARGS = schemas.load("config")["$defs"]["command_args"]  # the schema is the one source: schemas/config.json


@hookimpl
def ledger_gate_kinds() -> list[Kind]:
    return [Kind("command", "any command; its exit code is the verdict", ARGS, shardable=True)]


@hookimpl
def ledger_gate_run(gate: Gate, work: Work) -> Outcome | None:
    if gate.plugin != "command":
        return None
    index, count = work.shard
    env = {**os.environ, **gate.args.get("env", {}), "LEDGER_PATCH": work.patch, "LEDGER_BASE": work.base or "",
           "LEDGER_GATE": gate.name, "LEDGER_SHARD": f"{index}/{count}", "LEDGER_SHARD_INDEX": str(index),
           "LEDGER_SHARD_COUNT": str(count)}
    finished = proc.run_bounded(gate.args["command"], work.checkout, work.log, work.timeout, env)
    passed = not finished.timed_out and finished.returncode in gate.args.get("ok_codes", [0])
    log = proc.excerpt(finished.log)
    said = f"{gate.args['command'][0]}: {proc.describe(finished, work.timeout)}"
    if not passed and not finished.timed_out:
        said += _last_words(log)
    return Outcome("PASSED" if passed else "FAILED", said, log=log, workers=1)


def _last_words(log: str, limit: int = 200) -> str:
    """The last line the command wrote, which usually says why it failed (a missing program
    says "could not start ..."): the reason in `ledger status` is then enough to act on."""
    last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "")
    return f" ({last[:limit]}{'...' if len(last) > limit else ''})" if last else ""
