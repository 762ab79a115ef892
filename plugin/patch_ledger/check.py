"""`ledger check`: state files against their schemas, their machines, their previous
version and the rest of their run. Plain values in, a Report out; the CLI only prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from patch_ledger import consistency, documents, git, guards, machine, schemas
from patch_ledger.documents import InputProblem
from patch_ledger.errors import BAD_INPUT, CHECK_FAILED, OK, LedgerError
from patch_ledger.findings import Finding, pointer
from patch_ledger.layout import ROOT, StateFile, classify, is_include
from patch_ledger.migrate import upgrade
from patch_ledger.positions import json_offset, line_col, yaml_line_col
from patch_ledger.source import Snapshot, state_paths


class Report(NamedTuple):
    checked: list[str]
    findings: list[Finding]
    base: str | None

    @property
    def exit_code(self) -> int:
        if any(f.rule == "input" for f in self.findings):
            return BAD_INPUT
        return CHECK_FAILED if self.findings else OK


class Loaded(NamedTuple):
    file: StateFile
    text: str
    data: Any
    valid: bool  # parsed, current version and matching its schema


def check(cwd: Path | str, paths: Sequence[str] = (), base: str | None = None, staged: bool = False) -> Report:
    root = git.toplevel(cwd)
    base_commit = _base(root, base)
    now = Snapshot(root, None, staged)
    old = Snapshot(root, base_commit) if base_commit else None
    targets, deleted = _targets(root, Path(cwd), paths, base_commit, now)
    runs = sorted({f.run for f in (*targets, *deleted) if f.run})
    members = [f for run in runs for f in _classified(now.files(f"{ROOT}/runs/{run}"))]
    now.prefetch(f.path for f in (*targets, *members))
    if old:
        old.prefetch(f.path for f in (*targets, *deleted))
    findings: list[Finding] = []
    loaded: dict[str, Loaded] = {}
    for f in targets:
        findings.extend(_check_file(f, now, old, loaded))
    for f in members:
        if f.path not in loaded:
            loaded[f.path] = _load_quietly(f, now)
    retired: dict[str, list[tuple[str, str]]] = {}
    for f in deleted:
        problems = _check_deleted(f, old, deleted)
        findings.extend(problems)
        if not problems and f.run and f.kind in machine.MACHINE_KINDS:
            retired.setdefault(f.run, []).append((f.kind, f.id or f.run))
    for run in runs:
        members_of_run = [l for l in loaded.values() if l.file.run == run]
        findings.extend(consistency.findings(run, members_of_run, _locate, retired.get(run, [])))
    return Report([f.path for f in (*targets, *deleted)], sorted(set(findings)), base_commit)


def _base(root: Path, base: str | None) -> str | None:
    if base is None:
        return git.commit_of(root, "HEAD")  # None before the first commit: everything is new
    commit = git.commit_of(root, base)
    head = git.commit_of(root, "HEAD")
    if commit is None:
        why = "" if head else " (the repository has no commits yet)"
        raise LedgerError(f"--base {base}: not a commit in {root}{why}; pass a branch, tag or commit id")
    # Compare with where this branch left `base`: a branch behind main changed only its own files.
    return (git.merge_base(root, commit, head) if head else None) or commit


def _classified(paths: Iterable[str]) -> list[StateFile]:
    return [f for f in map(classify, paths) if f is not None]


def _targets(root: Path, cwd: Path, paths: Sequence[str], base: str | None,
             now: Snapshot) -> tuple[list[StateFile], list[StateFile]]:
    """The state files to check, and the state files deleted since `base`."""
    deleted = _classified(git.changed_paths(root, base, ROOT, now.staged, deleted=True)) if base else []
    gone = {f.path for f in deleted}
    if paths:
        wanted = [p for p in state_paths(root, cwd, paths, now) if p not in gone]
    elif now.staged:
        wanted = git.changed_paths(root, base, ROOT, staged=True)
    else:
        wanted = now.files(ROOT)
    if any(map(is_include, wanted)):  # an included file changed: recheck whatever may include it
        wanted = [*wanted, *(p for p in now.files(ROOT) if (f := classify(p)) and f.kind in ("config", "plan"))]
    return _classified(dict.fromkeys(wanted)), deleted


def _check_file(f: StateFile, now: Snapshot, old: Snapshot | None, loaded: dict[str, Loaded]) -> list[Finding]:
    raw = now.read(f.path)
    if raw is None:
        return [Finding(f.path, 1, 1, "input", "does not exist; pass a file that is there, or commit its deletion")]
    try:
        text = documents.decode(raw)
        data = documents.parse_text(f.kind, text, f.path, now.read)
        _require_current(f, data)
    except InputProblem as e:
        return [Finding(f.path, e.line or 1, e.col or 1, "input", str(e))]
    problems = list(_schema_problems(f, data))
    loaded[f.path] = Loaded(f, text, data, not problems)
    if not problems:
        problems = list(_entity_problems(f, data))
        problems += _change_problems(f, data, text, old)
    return [Finding(f.path, *_locate(f, text, parts), rule, message, pointer(parts)) for rule, parts, message in problems]


def _load_quietly(f: StateFile, now: Snapshot) -> Loaded:
    """A member of a run that was not asked for: used for cross-file checks if it is sound."""
    raw = now.read(f.path)
    try:
        if raw is None or isinstance(raw, documents.Unreadable):
            return Loaded(f, "", None, False)
        text = documents.decode(raw)
        data = documents.parse_text(f.kind, text, f.path, now.read)
        _require_current(f, data)
    except InputProblem:
        return Loaded(f, "", None, False)
    valid = all(schemas.is_valid(f.kind, d) for d in _records(f, data))
    return Loaded(f, text, data, valid)


def _records(f: StateFile, data: Any) -> list[Any]:
    return data if f.kind == "event" else [data]


def _require_current(f: StateFile, data: Any) -> None:
    for i, record in enumerate(_records(f, data)):
        version = record.get("schema_version")
        line = i + 1 if f.kind == "event" else None
        if version == schemas.CURRENT_VERSION or version is None:
            continue
        if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < schemas.CURRENT_VERSION:
            raise InputProblem(f"schema_version {version} is older than {schemas.CURRENT_VERSION}; run `ledger migrate {f.path}`", line)
        raise InputProblem(f"unknown schema_version {version!r}; this patch-ledger reads 1 to {schemas.CURRENT_VERSION} (upgrade patch-ledger?)", line)


Problem3 = tuple[str, tuple[Any, ...], str]  # rule, JSON pointer parts, message


def _schema_problems(f: StateFile, data: Any) -> Iterator[Problem3]:
    if f.kind == "event":
        for i, event in enumerate(data):
            for e in schemas.validate("event", event):
                yield "schema", (i, *e.path), e.message
        return
    for e in schemas.validate(f.kind, data):
        yield "schema", e.path, e.message


def _entity_problems(f: StateFile, data: Any) -> Iterator[Problem3]:
    if f.kind not in machine.MACHINE_KINDS:
        return
    if f.id is not None and data["id"] != f.id:
        yield "run", ("id",), f"id is {data['id']!r} but the file is named for {f.id!r}; rename one of them"
    if f.kind == "run" and data["id"] != f.run:
        yield "run", ("id",), f"id is {data['id']!r} but the run's directory is {f.run!r}"
    if f.kind != "run" and "run" in data and data["run"] != f.run:
        yield "run", ("run",), f"run is {data['run']!r} but the file is in run {f.run!r}"
    m = machine.load(f.kind)
    yield from (("state", p.path, p.message) for p in machine.history_problems(m, data))
    yield from (("state", p.path, p.message) for p in guards.document_problems(m, data))


def _change_problems(f: StateFile, data: Any, text: str, old: Snapshot | None) -> list[Problem3]:
    before = _previous(f, old)
    if before is None:
        return []
    if f.kind == "event":
        if data[:len(before)] == before:
            return []
        line = next((i for i, (a, b) in enumerate(zip(before, data)) if a != b), None)
        if line is None:
            return [("change", (max(len(data) - 1, 0),), f"the event log lost entries: it had {len(before)} lines, now {len(data)}; it is append-only")]
        return [("change", (line,), f"the event log was rewritten from line {line + 1}; it is append-only")]
    if f.kind not in machine.MACHINE_KINDS:
        return []
    return [("change", p.path, p.message) for p in machine.change_problems(machine.load(f.kind), before, data)]


def _previous(f: StateFile, old: Snapshot | None) -> Any:
    """The file at the base (migrated to the current version), or None when new or unreadable."""
    raw = old.read(f.path) if old else None
    if raw is None or isinstance(raw, documents.Unreadable):
        return None
    try:
        data = documents.parse(f.kind, raw, f.path, old.read)  # type: ignore[union-attr]
        return [upgrade(f.kind, d) for d in data] if f.kind == "event" else upgrade(f.kind, data)
    except (InputProblem, LedgerError):
        return None


def _check_deleted(f: StateFile, old: Snapshot | None, deleted: list[StateFile]) -> list[Finding]:
    """A deleted file is fine when its entity had finished; an event log may go only
    with its run, and only once the run had finished."""
    if f.kind == "event":
        run_file = next((d for d in deleted if d.kind == "run" and d.run == f.run), None)
        run_doc = _previous(run_file, old) if run_file else None
        if isinstance(run_doc, dict) and _terminal("run", run_doc.get("state")):
            return []
        return [Finding(f.path, 1, 1, "change", "the event log was deleted; it is append-only (it may go only with its finished run)")]
    before = _previous(f, old)
    if not isinstance(before, dict) or f.kind not in machine.MACHINE_KINDS:
        return []
    state = before.get("state")
    if _terminal(f.kind, state):
        return []
    return [Finding(f.path, 1, 1, "change", f"was deleted while {state}, not a terminal state; finish or cancel the {f.kind} first")]


def _terminal(kind: str, state: Any) -> bool:
    return isinstance(state, str) and state in machine.load(kind).terminal


def _locate(f: StateFile, text: str, parts: Sequence[Any]) -> tuple[int, int]:
    if not text:
        return 1, 1
    if f.kind in ("config", "plan"):
        return yaml_line_col(text, parts)
    if f.kind == "event":
        lines = text.split("\n")
        index = parts[0] if parts and isinstance(parts[0], int) and parts[0] < len(lines) else 0
        return index + 1, line_col(lines[index], json_offset(lines[index], parts[1:]))[1]
    return line_col(text, json_offset(text, parts))
