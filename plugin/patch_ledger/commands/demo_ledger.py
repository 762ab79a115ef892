"""The second act of `ledger demo`: the patch ledger in the same repository. Commits are
recorded as patches, a change is validated, applied, passes its gates and is verified, a
patch that breaks the policy is rejected, a recorded revert rolls an applied patch back, and
a change that breaks a test fails its gate and is quarantined, then rolled back."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from patch_ledger import gating, git, integrity, ledger, lifecycle, patches, results, targets, validation

AGENT = "agent-7"


class Act(NamedTuple):
    title: str
    expected: str
    got: str
    detail: str


def play(root: Path) -> list[Act]:
    acts: list[Act] = []

    def act(title: str, expected: str, do: Callable[[], tuple[str, str]]) -> None:
        got, detail = do()
        acts.append(Act(title, expected, got, detail))

    act("record the two commits of main as patches", "PENDING PENDING", lambda: _record(root))
    change = {}
    act("an agent's change to src/calc.py, recorded from the working tree", "PENDING", lambda: _add(root, change))
    act("validated in a temporary index, applied as a commit, its gates passed, verified", "VERIFIED",
        lambda: _ship(root, change["id"]))
    act("a patch that edits .github/workflows/ (a forbidden path)", "REJECTED", lambda: _forbidden(root))
    act("quarantined after a report, then released", "APPLIED", lambda: _quarantine(root, change["id"]))
    act("someone reverts the commit; recording the revert", "ROLLED_BACK", lambda: _revert(root, change["id"]))
    broken = {}
    act("an agent's change that breaks power(): applied, its tests fail, verify quarantines it", "QUARANTINED",
        lambda: _break(root, broken))
    act("the quarantined patch rolled back (main is green again)", "ROLLED_BACK", lambda: _roll_back(root, broken["id"]))
    act("ledger verify: every ledger ref well-formed and legal", "sound", lambda: _verify(root))
    return acts


def _record(root: Path) -> tuple[str, str]:
    recorded, _ = patches.record_range(root, "main", "demo")
    return " ".join(r.patch.state for r in recorded), ", ".join(f"{r.patch.id[:12]} {r.patch.message}" for r in recorded)


def _add(root: Path, change: dict[str, str]) -> tuple[str, str]:
    calc = root / "src" / "calc.py"
    calc.write_text(calc.read_text() + "\n\ndef subtract(a: float, b: float) -> float:\n    return a - b\n")
    patch, _ = patches.add(root, None, None, "write-code", AGENT, "add subtract()")
    git.run(root, "checkout", "--", "src/calc.py", env=git.clean_env())  # the agent's worktree is done with it
    change["id"] = patch.id
    return patch.state, patch.id[:12]


def _ship(root: Path, patch_id: str) -> tuple[str, str]:
    validation.validate(root, patch_id, "ci")
    applied = validation.apply(root, patch_id, "ci", None)
    gates = _gate(root, patch_id)
    verified = lifecycle.verify(root, patch_id, "ci")
    return verified.state, f"{applied.reason}; gates: {gates}"


def _gate(root: Path, patch_id: str) -> str:
    """Every gate of the demo's configuration run on the patch (applied to its base in a
    temporary worktree) and recorded in refs/ledger/gates/."""
    found = gating.plugins()
    with targets.of_patch(root, patch_id) as target:
        done = gating.run(root, found, gating.configured(root, found), target, (1, 1), "ci")
    return ", ".join(f"{d['gate']} {d['state']} ({d['history'][-1]['reason']})" for d in done)


def _break(root: Path, broken: dict[str, str]) -> tuple[str, str]:
    calc = root / "src" / "calc.py"
    calc.write_text(calc.read_text().replace("return base**exponent", "return base * exponent  # faster"))
    patch, _ = patches.add(root, None, None, "speed-up", AGENT, "make power() faster")
    git.run(root, "checkout", "--", "src/calc.py", env=git.clean_env())
    broken["id"] = patch.id
    validation.validate(root, patch.id, "ci")
    validation.apply(root, patch.id, "ci", None)
    _gate(root, patch.id)
    quarantined = lifecycle.verify(root, patch.id, "ci")
    return quarantined.state, quarantined.reason


def _roll_back(root: Path, patch_id: str) -> tuple[str, str]:
    rolled = validation.rollback(root, patch_id, "oncall", None)
    return rolled.state, rolled.reason


def _forbidden(root: Path) -> tuple[str, str]:
    diff = (b"diff --git a/.github/workflows/ci.yml b/.github/workflows/ci.yml\nnew file mode 100644\n"
            b"--- /dev/null\n+++ b/.github/workflows/ci.yml\n@@ -0,0 +1 @@\n+on: push\n")
    ids = patches.patch_ids(root, diff)
    head = git.commit_of(root, "HEAD")
    patch, _ = ledger.record(root, [(ids[0][0], diff, {"base": head, "actor": AGENT, "message": "run CI on push",
                                                       "reason": "recorded by the demo"})])[0]
    rejected = validation.validate(root, patch.id, "ci")
    return rejected.state, rejected.reason


def _quarantine(root: Path, patch_id: str) -> tuple[str, str]:
    lifecycle.quarantine(root, patch_id, "oncall", "a user reports wrong results")
    released = lifecycle.release(root, patch_id, "oncall", "false alarm: the report was about another build")
    return released.state, released.reason


def _revert(root: Path, patch_id: str) -> tuple[str, str]:
    git.run(root, "revert", "--no-edit", "HEAD", env=git.clean_env())
    _, rolled = patches.record_range(root, "HEAD~1..HEAD", "ci")
    found = [p for p in rolled if p.id == patch_id]
    return (found[0].state, found[0].reason) if found else ("not rolled back", "")


def _verify(root: Path) -> tuple[str, str]:
    problems = integrity.verify_ledger(root)
    count, gated = len(ledger.read_sound(root)), len(results.read_sound(root))
    return ("sound" if not problems else "broken"), f"{count} patches, {gated} gate results" if not problems else problems[0].message
