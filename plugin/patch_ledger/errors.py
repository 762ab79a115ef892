"""The one error type that reaches the user, and the exit codes of DESIGN.md."""

from __future__ import annotations

OK = 0
CHECK_FAILED = 1  # a check or gate said no: the normal "no"
BAD_INPUT = 2  # bad input or usage; nothing was written
INTERNAL = 3  # a defect of ours; --debug shows the traceback


class LedgerError(Exception):
    """Bad input or usage: one line that names the file and says what to do (exit 2)."""

    exit_code = BAD_INPUT
