"""What a check found: one record a problem, located in its file."""

from __future__ import annotations

from typing import NamedTuple

RULES = ("input", "schema", "state", "change", "run")  # "input" is bad input: exit 2


class Finding(NamedTuple):
    path: str
    line: int
    col: int
    rule: str
    message: str
    pointer: str = ""

    def text(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


def pointer(parts: tuple[object, ...] | list[object]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
