"""Turning a state file's bytes into data, refusing what no state file should be.

Bad input here (not UTF-8, invalid JSON or YAML, too large, not an object, an alias bomb,
a missing or escaping `$ref`) raises InputProblem with the position: exit 2 upstream.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Callable

MAX_BYTES = 16 * 1024 * 1024  # no state file is near this; a larger one is a mistake
MAX_YAML_NODES = 100_000  # config and plans are small; more is an alias bomb

Reader = Callable[[str], "bytes | int | None"]  # repository-relative path -> content (see decode), None if absent


class InputProblem(Exception):
    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.line, self.col = line, col


def decode(raw: bytes | int) -> str:
    """Text of a file's bytes; an int stands for an oversized file left unread, by its size."""
    size = raw if isinstance(raw, int) else len(raw)
    if isinstance(raw, int) or size > MAX_BYTES:
        raise InputProblem(f"is {size} bytes, over the {MAX_BYTES}-byte limit of a state file; is it really state?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputProblem(f"is not UTF-8 (byte {e.start}); state files are UTF-8 JSON or YAML") from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputProblem(f"invalid JSON: {e.msg}", e.lineno, e.colno) from None
    except RecursionError:
        raise InputProblem("invalid JSON: nested too deeply") from None


def parse_jsonl(text: str) -> list[Any]:
    """One JSON object a line; every line ends with a newline, the last one too."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    elif text:
        raise InputProblem("does not end with a newline; an event log is whole lines only", len(lines), 1)
    out = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputProblem(f"invalid JSON: {e.msg}", number, e.colno) from None
        if not isinstance(value, dict):
            raise InputProblem(f"is a JSON {type(value).__name__}, not an object", number, 1)
        out.append(value)
    return out


def parse_yaml(text: str, path: str, read: Reader, seen: tuple[str, ...] = ()) -> Any:
    """YAML with the C loader when present, refusing alias bombs and resolving `$ref` includes."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is not None and "&" in text:
            _refuse_bombs(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputProblem(f"invalid YAML: {problem}", mark and mark.line + 1, mark and mark.column + 1) from None
    finally:
        loader.dispose()
    return _includes(data, path, read, (*seen, path), ())


def _refuse_bombs(root: Any) -> None:
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias counts once
            children = node.value if isinstance(node.value, list) else []
            flat = [c for pair in children for c in (pair if isinstance(pair, tuple) else (pair,))]
            sizes[key] = 1 + sum(size(c) for c in flat)
            if sizes[key] > MAX_YAML_NODES:
                raise InputProblem(f"expands to over {MAX_YAML_NODES} nodes through aliases (a YAML bomb?); write it out plainly")
        return sizes[key]

    size(root)


def _includes(data: Any, path: str, read: Reader, seen: tuple[str, ...], where: tuple[Any, ...]) -> Any:
    if isinstance(data, dict):
        if set(data) == {"$ref"} and isinstance(data["$ref"], str):
            return _include(data["$ref"], path, read, seen, where)
        return {k: _includes(v, path, read, seen, (*where, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_includes(v, path, read, seen, (*where, i)) for i, v in enumerate(data)]
    return data


def _include(ref: str, path: str, read: Reader, seen: tuple[str, ...], where: tuple[Any, ...]) -> Any:
    def fail(message: str) -> InputProblem:
        from patch_ledger.positions import yaml_line_col

        raw = read(path)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        return InputProblem(message, *yaml_line_col(text, where))

    target = posixpath.normpath(posixpath.join(posixpath.dirname(path), ref))
    if ref.startswith("/") or not target.startswith(".ledger/"):
        raise fail(f"$ref {ref!r} leaves .ledger/; includes must stay inside it")
    if target in seen:
        raise fail(f"$ref {ref!r} includes itself through {' -> '.join(seen)}")
    raw = read(target)
    if raw is None:
        raise fail(f"$ref {ref!r} not found ({target}); create it or remove the reference")
    try:
        return parse_yaml(decode(raw), target, read, seen)
    except InputProblem as e:
        raise fail(f"$ref {ref!r}: {target}:{e.line or 1}:{e.col or 1}: {e}") from None


def parse(kind: str, raw: bytes | int, path: str, read: Reader) -> Any:
    """The data of a state file of `kind`; objects only (a list of them for an event log)."""
    text = decode(raw)
    if kind == "event":
        return parse_jsonl(text)
    data = parse_yaml(text, path, read) if kind in ("config", "plan") else parse_json(text)
    if not isinstance(data, dict):
        raise InputProblem(f"is {_a(data)}, not an object; a state file holds one object", 1, 1)
    return data


def _a(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "empty"}
    return names.get(type(value), type(value).__name__)
