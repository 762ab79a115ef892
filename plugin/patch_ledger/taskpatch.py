"""A task's change becomes a gated patch: the second job of a task that produces a patch,
run by a worker of `ledger run` in the task's worktree.

`python -m patch_ledger.taskpatch WORKTREE BASE TASK ACTOR MESSAGE [GATE...]` records the
worktree's change against BASE as a patch of TASK, validates it, and runs the task's gates
on it, there; it prints one JSON line (the patch, its state, each gate's state) and exits
0 when the patch passed (or there was no change), 1 when it was rejected or a gate failed,
2 on bad input. Its work is all in the ledger, so the worktree may go afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from patch_ledger import gating, patches, validation
from patch_ledger.errors import LedgerError

RESULT_KEY = "ledger_task_patch"


def record_and_gate(worktree: Path, base: str, task: str, actor: str, message: str, gates: Sequence[str]) -> tuple[int, dict[str, Any]]:
    diff = patches.worktree_diff(worktree, base)
    if not diff.strip():
        return 0, {"patch": None, "state": None, "gates": {}, "reason": "the task changed nothing"}
    patch, _ = patches.add(worktree, None, base, task, actor, message)
    if patch.state == "PENDING":
        patch = validation.validate(worktree, patch.id, actor)
    if patch.state == "REJECTED":
        return 1, {"patch": patch.id, "state": patch.state, "gates": {}, "reason": patch.reason}
    found = gating.plugins()
    chosen = gating.select(gating.configured(worktree, found), gates) if gates else []
    target = gating.Target(patch.id, base, diff, tuple(patches.paths_of(diff, f"patch {patch.id[:12]}")), worktree)
    done = gating.run(worktree, found, chosen, target, (1, 1), actor)
    states = {d["gate"]: d["state"] for d in done}
    failed = [g for g, s in states.items() if s == "FAILED"]
    reason = f"gate(s) failed: {', '.join(failed)}" if failed else "validated; every gate passed" if chosen else "validated"
    return (1 if failed else 0), {"patch": patch.id, "state": patch.state, "gates": states, "reason": reason}


def main(argv: Sequence[str]) -> int:
    if len(argv) < 5:
        print("usage: python -m patch_ledger.taskpatch WORKTREE BASE TASK ACTOR MESSAGE [GATE...]", file=sys.stderr)
        return 2
    worktree, base, task, actor, message, *gates = argv
    try:
        code, result = record_and_gate(Path(worktree), base, task, actor, message, gates)
    except LedgerError as e:
        code, result = 2, {"patch": None, "state": None, "gates": {}, "reason": str(e)}
    print(json.dumps({RESULT_KEY: result}), flush=True)
    return code


def result_of(output: str) -> dict[str, Any] | None:
    """The result line in a taskpatch job's output, or None."""
    for line in reversed(output.splitlines()):
        if RESULT_KEY in line:
            try:
                value = json.loads(line)[RESULT_KEY]
                return value if isinstance(value, dict) else None
            except (ValueError, KeyError):
                return None
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
