from __future__ import annotations

from typing import Sequence

from patch_ledger.check import Report, check
from patch_ledger.errors import BAD_INPUT
from patch_ledger.report import emit


def run(cwd: str, paths: Sequence[str], base: str | None, staged: bool, fmt: str) -> int:
    report = check(cwd, paths, base, staged)
    emit(fmt, {
        "ok": not report.findings,
        "exit_code": report.exit_code,
        "base": report.base,
        "checked": report.checked,
        "findings": [f._asdict() for f in report.findings],
    }, lambda _: _text(report))
    return report.exit_code


def _text(report: Report) -> str:
    lines = [f.text() for f in report.findings]
    against = f"against {report.base[:12]}" if report.base else "as new files (no base commit)"
    files = len(report.checked)
    if report.exit_code == BAD_INPUT:
        return "\n".join(f.text() for f in report.findings if f.rule == "input")  # one line a bad file
    if report.findings:
        bad = len({f.path for f in report.findings})
        lines.append(f"ledger check: {len(report.findings)} problem(s) in {bad} file(s); {files} state file(s) checked {against}")
    else:
        lines.append(f"ledger check: {files} state file(s) OK, checked {against}")
    return "\n".join(lines)
