"""Turning a state file's bytes into data, refusing what no state file should be.

Bad input here (not UTF-8, invalid JSON or YAML, too large, not an object, an alias bomb,
a missing or escaping `$ref`) raises InputProblem with the position: exit 2 upstream.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Callable, NamedTuple

MAX_BYTES = 16 * 1024 * 1024  # no state file is near this; a larger one is a mistake
MAX_YAML_NODES = 100_000  # config and plans are small; more is an alias bomb

class Unreadable(NamedTuple):
    """A file that is there but must not be read as state: why, in a few words."""

    reason: str


Raw = "bytes | Unreadable | None"
Reader = Callable[[str], Raw]  # repository-relative path -> content; None when absent


class InputProblem(Exception):
    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.line, self.col = line, col


def too_large(size: int) -> Unreadable:
    return Unreadable(f"is {size} bytes, over the {MAX_BYTES}-byte limit of a state file; is it really state?")


def decode(raw: bytes | Unreadable) -> str:
    if isinstance(raw, Unreadable):
        raise InputProblem(raw.reason)
    if len(raw) > MAX_BYTES:
        raise InputProblem(too_large(len(raw)).reason)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputProblem(f"is not UTF-8 (byte {e.start}); state files are UTF-8 JSON or YAML") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return result


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)


def parse_json(text: str) -> Any:
    try:
        return _loads(text)
    except json.JSONDecodeError as e:
        raise InputProblem(f"invalid JSON: {e.msg}", e.lineno, e.colno) from None
    except ValueError as e:
        raise InputProblem(f"invalid JSON: {e}") from None
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
            value = _loads(line)
        except json.JSONDecodeError as e:
            raise InputProblem(f"invalid JSON: {e.msg}", number, e.colno) from None
        except (ValueError, RecursionError) as e:
            raise InputProblem(f"invalid JSON: {e if isinstance(e, ValueError) else 'nested too deeply'}", number, 1) from None
        if not isinstance(value, dict):
            raise InputProblem(f"is a JSON {type(value).__name__}, not an object", number, 1)
        out.append(value)
    return out


def parse_yaml(text: str, path: str, read: Reader) -> Any:
    """YAML with the C loader when present, refusing alias bombs and resolving `$ref`
    includes (each file parsed once; the whole, expanded, within MAX_YAML_NODES)."""
    try:
        includes = _Includes(read)
        data = includes.load(text, path, (path,))
        if "&" in text or includes.parsed:  # only aliases and includes make a value count more than once
            _within_budget(data)
    except RecursionError:
        raise InputProblem("is nested too deeply to be a configuration") from None
    return data


def _parse_one(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is not None and "&" in text:
            _refuse_bombs(node)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputProblem(f"invalid YAML: {problem}", mark and mark.line + 1, mark and mark.column + 1) from None
    finally:
        loader.dispose()


def _refuse_bombs(root: Any) -> None:
    """Aliases that would expand the node graph past MAX_YAML_NODES (a billion laughs)."""
    def children(node: Any) -> list[Any]:
        items = node.value if isinstance(node.value, list) else []
        return [c for pair in items for c in (pair if isinstance(pair, tuple) else (pair,))]

    total, shared = _expanded(root, children)
    if shared and total > MAX_YAML_NODES:
        raise InputProblem(f"expands to over {MAX_YAML_NODES} nodes through aliases (a YAML bomb?); write it out plainly")


def _within_budget(data: Any) -> None:
    """Shared values (aliases, a file included many times) count each time they appear."""
    def children(value: Any) -> Any:
        return value.values() if isinstance(value, dict) else value if isinstance(value, list) else None

    total, shared = _expanded(data, children)
    if shared and total > MAX_YAML_NODES:
        raise InputProblem(f"expands to over {MAX_YAML_NODES} values through aliases or $ref includes; write it out plainly")


def _expanded(root: Any, children_of: Callable[[Any], Any]) -> tuple[int, bool]:
    """How many items `root` holds with a shared one counted each time it appears (each
    counted once all the same: linear however deep the sharing), and whether any is shared.
    A large document that shares nothing is no bomb, however large."""
    sizes: dict[int, int] = {}
    shared = False

    def size(item: Any) -> int:
        nonlocal shared
        children = children_of(item)
        if children is None:
            return 1
        key = id(item)
        if key in sizes:
            shared = True
            return sizes[key]
        sizes[key] = 0  # a recursive alias counts once
        sizes[key] = 1 + sum(size(c) for c in children)
        return sizes[key]

    return size(root), shared


class _Includes:
    """`{$ref: file}` mappings replaced by that file's content, each file parsed once."""

    def __init__(self, read: Reader) -> None:
        self.read = read
        self.parsed: dict[str, Any] = {}

    def load(self, text: str, path: str, chain: tuple[str, ...]) -> Any:
        data = _parse_one(text)
        return self._walk(data, path, chain, ()) if "$ref" in text else data

    def _walk(self, data: Any, path: str, chain: tuple[str, ...], where: tuple[Any, ...]) -> Any:
        if isinstance(data, dict):
            if set(data) == {"$ref"} and isinstance(data["$ref"], str):
                return self._include(data["$ref"], path, chain, where)
            return {k: self._walk(v, path, chain, (*where, k)) for k, v in data.items()}
        if isinstance(data, list):
            return [self._walk(v, path, chain, (*where, i)) for i, v in enumerate(data)]
        return data

    def _include(self, ref: str, path: str, chain: tuple[str, ...], where: tuple[Any, ...]) -> Any:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), ref))
        if ref.startswith("/") or not target.startswith(".ledger/"):
            raise self._fail(path, where, f"$ref {ref!r} leaves .ledger/; includes must stay inside it")
        if target in chain:
            raise self._fail(path, where, f"$ref {ref!r} includes itself through {' -> '.join(chain)}")
        if target not in self.parsed:
            raw = self.read(target)
            if raw is None:
                raise self._fail(path, where, f"$ref {ref!r} not found ({target}); create it or remove the reference")
            try:
                self.parsed[target] = self.load(decode(raw), target, (*chain, target))
            except InputProblem as e:
                raise self._fail(path, where, f"$ref {ref!r}: {target}:{e.line or 1}:{e.col or 1}: {e}") from None
        return self.parsed[target]

    def _fail(self, path: str, where: tuple[Any, ...], message: str) -> InputProblem:
        from patch_ledger.positions import yaml_line_col

        raw = self.read(path)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        return InputProblem(message, *yaml_line_col(text, where))


def parse(kind: str, raw: bytes | Unreadable, path: str, read: Reader) -> Any:
    """The data of a state file of `kind` from its bytes (see parse_text)."""
    return parse_text(kind, decode(raw), path, read)


def parse_text(kind: str, text: str, path: str, read: Reader) -> Any:
    """The data of a state file of `kind`; objects only (a list of them for an event log)."""
    if kind == "event":
        return parse_jsonl(text)
    data = parse_yaml(text, path, read) if kind in ("config", "plan") else parse_json(text)
    if not isinstance(data, dict):
        raise InputProblem(f"is {_a(data)}, not an object; a state file holds one object", 1, 1)
    return data


def _a(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "empty"}
    return names.get(type(value), type(value).__name__)


def load_checked(root: Any, relpath: str, kind: str) -> dict[str, Any] | None:
    """The YAML document (config or plan) at `relpath` under `root`, valid against its
    schema; None when there is no such file; LedgerError naming the file, line and problem."""
    from patch_ledger import schemas
    from patch_ledger.errors import LedgerError
    from patch_ledger.positions import yaml_line_col

    def read(p: str) -> bytes | None:
        try:
            return (root / p).read_bytes()  # type: ignore[no-any-return]
        except OSError:
            return None

    raw = read(relpath)
    if raw is None:
        return None
    try:
        data = parse(kind, raw, relpath, read)
    except InputProblem as e:
        raise LedgerError(f"{relpath}:{e.line or 1}:{e.col or 1}: {e}") from None
    errors = schemas.validate(kind, data)
    if errors:
        line, col = yaml_line_col(raw.decode("utf-8", "replace"), errors[0].path)
        raise LedgerError(f"{relpath}:{line}:{col}: {errors[0].message}; `ledger check` lists every problem")
    return data  # type: ignore[no-any-return]

