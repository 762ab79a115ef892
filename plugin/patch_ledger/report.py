"""Reporters: one function a format, each taking a plain value and returning text."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


def as_json(value: Any) -> str:
    """Indented for a person at a terminal; one line for a script (the compact encoder is
    the C one, several times faster on a ledger of thousands)."""
    indent = 2 if sys.stdout.isatty() else None
    return json.dumps(value, indent=indent, default=lambda o: o._asdict() if hasattr(o, "_asdict") else str(o))


def emit(fmt: str, value: Any, as_text: Callable[[Any], str]) -> None:
    """Print `value` in `fmt`: JSON uses the schemas' field names, text is for people."""
    print(as_json(value) if fmt == "json" else as_text(value), flush=True)


def mermaid(m: Any) -> list[str]:
    """A state machine (machine.Machine) as a Mermaid state diagram, a list of lines: the
    docs (generate.py) and `ledger ci`'s step summary draw it alike."""
    lines = ["stateDiagram-v2", f"    [*] --> {m.initial}"]
    lines += [f"    {source} --> {target} : {name}" for (source, target), name in m.transitions.items()]
    return lines + [f"    {state} --> [*]" for state in m.states if state in m.terminal]
