"""Reporters: one function a format, each taking a plain value and returning text."""

from __future__ import annotations

import json
from typing import Any, Callable


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=lambda o: o._asdict() if hasattr(o, "_asdict") else str(o))


def emit(fmt: str, value: Any, as_text: Callable[[Any], str]) -> None:
    """Print `value` in `fmt`: JSON uses the schemas' field names, text is for people."""
    print(as_json(value) if fmt == "json" else as_text(value), flush=True)
