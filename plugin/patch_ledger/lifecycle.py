"""The steps of a patch's life that need nothing but the ledger: quarantine and release,
supersede, expire, and verify against the required gates of the configuration."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from patch_ledger import ledger, machine, results
from patch_ledger.errors import LedgerError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def quarantine(root: Path, given: str, actor: str, reason: str) -> ledger.Patch:
    if not reason.strip():
        raise LedgerError("--reason is empty; say why the patch is quarantined")
    return _move(root, given, "QUARANTINED", actor, reason)


def release(root: Path, given: str, actor: str, reason: str) -> ledger.Patch:
    return _move(root, given, "APPLIED", actor, reason or "released from quarantine; verify it again")


def supersede(root: Path, old: str, new: str, actor: str, reason: str) -> ledger.Patch:
    replacement = ledger.find(root, new)
    target = ledger.find(root, old)
    if replacement.id == target.id:
        raise LedgerError(f"patch {target.id[:12]} cannot supersede itself")
    return ledger.move(root, target, "SUPERSEDED", actor, reason or f"superseded by {replacement.id}",
                       superseded_by=replacement.id)


def verify(root: Path, given: str, actor: str) -> ledger.Patch:
    """APPLIED -> VERIFIED when every required gate of the configuration PASSED for the
    patch at its current base (or was SKIPPED: the patch touches none of its paths),
    otherwise QUARANTINED naming the gates that did not. The states of every gate are kept
    in the transition's Ledger-Gates trailer."""
    patch = ledger.find(root, given)
    if patch.state != "APPLIED":
        raise LedgerError(f"patch {patch.id[:12]} is {patch.state}; only an APPLIED patch is verified")
    from patch_ledger import gating  # plugins load only when a patch is verified

    required = gating.required(root)
    verdicts = results.of_patches(root, [patch], required)[patch.id]
    gates = {name: v.state for name, v in verdicts.items()}
    missing = [g for g in required if gates[g] not in results.SATISFIED]
    if missing:
        said = ", ".join(f"{g} {verdicts[g].state} ({verdicts[g].reason})" for g in missing)
        return ledger.move(root, patch, "QUARANTINED", actor, f"required gate(s) did not pass: {said}", gates=gates)
    return ledger.move(root, patch, "VERIFIED", actor, "every required gate passed" if required else "no gate is required", gates=gates)


def expire(root: Path, older_than: str, actor: str) -> list[ledger.Patch]:
    """EXPIRED for every patch that may expire and has not moved for `older_than` (30m, 12h, 7d, 2w)."""
    cutoff = (datetime.now(timezone.utc) - parse_duration(older_than)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    m = machine.load("patch")
    stale = [p for p in ledger.read_sound(root).values()
             if m.is_legal(p.state, "EXPIRED") and machine.time_key(p.at) < machine.time_key(cutoff)]
    steps = [ledger.Step(p, "EXPIRED", actor, f"no change for over {older_than}") for p in sorted(stale, key=lambda p: p.id)]
    return ledger.move_many(root, steps)  # one transaction, however many


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", text)
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else None
    if seconds is None or seconds > 100 * 365 * 86400:
        raise LedgerError(f"--older-than {text!r}: not a duration of at most 100 years; write e.g. 30m, 12h, 7d or 2w")
    return timedelta(seconds=seconds)


def _move(root: Path, given: str, to: str, actor: str, reason: str) -> ledger.Patch:
    return ledger.move(root, ledger.find(root, given), to, actor, reason)
