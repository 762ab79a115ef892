"""From a JSON pointer to a line and column in the text it came from.

Only files with problems pay for this: a small scanner walks the JSON text to the target,
and YAML uses the marks of the composed node tree.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

_WS = re.compile(r"[ \t\r\n]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_SCALAR = re.compile(r"[^,\]}\s]+")

Pointer = Sequence["str | int"]


def line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def json_offset(text: str, pointer: Pointer) -> int:
    """The offset of the value at `pointer` (or of the deepest part that exists)."""
    pos = _skip(text, 0)
    for part in pointer:
        found = _child(text, pos, part)
        if found is None:
            break
        pos = found
    return pos


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def _child(text: str, pos: int, part: str | int) -> int | None:
    if pos >= len(text) or text[pos] not in "[{":
        return None
    is_object = text[pos] == "{"
    pos = _skip(text, pos + 1)
    index = 0
    while pos < len(text) and text[pos] not in "]}":
        if is_object:
            key_match = _STRING.match(text, pos)
            if not key_match:
                return None
            key = json.loads(key_match.group())
            pos = _skip(text, key_match.end())
            pos = _skip(text, pos + 1)  # the colon
            if key == str(part):
                return pos
        elif index == part:
            return pos
        pos = _skip(text, _value_end(text, pos))
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
        index += 1
    return None


def _value_end(text: str, pos: int) -> int:
    if text[pos] == '"':
        return _STRING.match(text, pos).end()  # type: ignore[union-attr]
    if text[pos] in "[{":
        depth, i = 0, pos
        while i < len(text):
            ch = text[i]
            if ch == '"':
                i = _STRING.match(text, i).end()  # type: ignore[union-attr]
                continue
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return i
    match = _SCALAR.match(text, pos)
    return match.end() if match else pos + 1


def yaml_line_col(text: str, pointer: Pointer) -> tuple[int, int]:
    import yaml

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return 1, 1
    for part in pointer:
        child = _yaml_child(node, part)
        if child is None:
            break
        node = child
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _yaml_child(node: object, part: str | int) -> object | None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None
