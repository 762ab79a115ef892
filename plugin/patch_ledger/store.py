"""Writing run state durably: every transition goes through the engine (`machine.advance`)
and lands in the run's event log and in the entity's JSON file, so what we write always
passes `ledger check`.

The event log is the write-ahead log. A flush appends the batch's events and fsyncs the log
first: from then on the batch's transitions are durable. Then each changed file is written to
its spare, synced to disk (one syncfs for a large batch, an fsync each for a small one) and
swapped into place atomically. Each event carries the fields its transition set (`data`), so
`RunStore.load` rebuilds a file that a crash left behind the log (or torn, after a power
failure), and drops a torn last line of the log. With `autoflush` (the default) every call
is flushed at once; `ledger run` batches a loop's transitions into one flush of the log
(`flush(files=False)`), and writes the changed files only at checkpoints: the log is what
makes a transition durable, and a task's file rewritten at each of its five steps cost more
than the task (its file is written once a checkpoint instead, whatever it went through).
A run's files may thus be a checkpoint behind its log; `ledger check` and `--resume` read
them through the log (patch_ledger.replay).
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from patch_ledger import machine, replay, schemas
from patch_ledger.layout import LAYOUT, path_of

Doc = dict[str, Any]
_PATTERNS = dict(LAYOUT)
SYNCFS_FROM = 5  # files in a batch from which one syncfs beats an fsync each (~5 ms vs ~1 ms here)


class RunStore:
    """The state files of one run under a repository's top directory, cached in memory."""

    def __init__(self, root: Path, run: str, autoflush: bool = True) -> None:
        self.root, self.run, self.autoflush = Path(root), run, autoflush
        self.events_path = self.root / path_of("event", run, "")
        self._seq = _count_lines(self.events_path)
        self._docs: dict[tuple[str, str], Doc] = {}
        self._dirty: dict[tuple[str, str], None] = {}
        self._events: list[str] = []
        self._spare_dir: Path | None = None
        self._pool: list[Path] = []  # spares holding a file's old text, free to take the next new one
        self._made = 0
        self._unsynced = False  # files written since the last sync (`final` ones)
        self._last_at: str | None = None
        self._present: set[Path] = set()  # files and directories known to exist: spared a stat each write

    def read(self, kind: str, doc_id: str) -> Doc:
        key = (kind, doc_id)
        if key not in self._docs:
            self._docs[key] = json.loads((self.root / path_of(kind, self.run, doc_id)).read_text())
        return self._docs[key]

    def docs(self, kind: str) -> list[Doc]:
        """Every cached document of `kind` (after `load`, all of the run's)."""
        return [d for (k, _), d in self._docs.items() if k == kind]

    def create(self, kind: str, doc_id: str, actor: str, at: str | None = None, fields: Mapping[str, Any] | None = None) -> Doc:
        return self._save(kind, machine.new_document(kind, doc_id, actor, at=at, fields=fields), dict(fields or {}))

    def move(self, kind: str, doc_id: str, to: str, actor: str, reason: str = "", at: str | None = None,
             fields: Mapping[str, Any] | None = None) -> Doc:
        """`doc_id` to state `to`, with `fields` set (a field set to None is removed)."""
        given = dict(fields or {})
        doc, kept = self.read(kind, doc_id), given
        if None in given.values():  # fields to drop
            doc = {k: v for k, v in doc.items() if given.get(k, 0) is not None}
            kept = {k: v for k, v in given.items() if v is not None}
        return self._save(kind, machine.advance(doc, kind, to, actor, reason, at=at, fields=kept), given)

    def update(self, kind: str, doc_id: str, fields: Mapping[str, Any]) -> Doc:
        """Change fields that are not the state (an aggregate such as progress or cost); the
        log gets an `update` event with them, so `load` rebuilds them too."""
        doc = {**self.read(kind, doc_id), **fields}
        if "{run}" in _PATTERNS[kind]:
            self._seq += 1
            # stamped with the last transition's time: an update is no event of its own in
            # time, and a log written with given times (a replay, the demo) stays in order
            event = {"schema_version": schemas.CURRENT_VERSION, "seq": self._seq, "at": self._last_at or machine.now(),
                     "type": "update", "entity": kind, "id": doc_id, "data": dict(fields)}
            self._events.append(_line(event))
        self._keep(kind, doc)
        return doc

    def refresh_progress(self) -> None:
        """Set the progress of every workstream and of the run from their tasks (the run guards' rule)."""
        from patch_ledger.guards import share_done

        tasks = self.docs("task") if not self.autoflush else self._all_tasks()
        by_workstream: dict[str, list[Doc]] = {}
        for t in tasks:
            if "workstream" in t:
                by_workstream.setdefault(t["workstream"], []).append(t)
        for ws, members in sorted(by_workstream.items()):
            share = share_done(members)
            if self.read("workstream", ws).get("progress") != share:
                self.update("workstream", ws, {"progress": share})
        share = share_done(tasks)
        if self.read("run", self.run).get("progress") != share:
            self.update("run", self.run, {"progress": share})

    def _all_tasks(self) -> list[Doc]:
        tasks_dir = (self.root / path_of("task", self.run, "x")).parent
        return [self.read("task", p.stem) for p in sorted(tasks_dir.glob("*.json"))]

    def _save(self, kind: str, doc: Doc, data: Doc) -> Doc:
        if "{run}" not in _PATTERNS[kind]:  # a breaker outlives the run: its file is its own record
            self._keep(kind, doc)
            return doc
        step = doc["history"][-1]
        self._last_at = step["at"]
        self._seq += 1
        event = {"schema_version": schemas.CURRENT_VERSION, "seq": self._seq, "at": step["at"], "type": "transition",
                 "entity": kind, "id": doc["id"], "from": step["from"], "to": step["to"], "actor": step["actor"],
                 "reason": step["reason"]}
        if data:
            event["data"] = data  # what `load` needs to rebuild the file from the log
        self._events.append(_line(event))
        self._keep(kind, doc)
        return doc

    def _keep(self, kind: str, doc: Doc) -> None:
        key = (kind, doc["id"])
        self._docs[key] = doc
        self._dirty[key] = None
        if self.autoflush:
            self.flush()

    def flush(self, files: bool = True, final: Sequence[tuple[str, str]] = ()) -> int:
        """Make every change so far durable: the log, then (unless `files` is False: only a
        checkpoint writes them) the changed files, synced to disk. Without the files, those of
        `final` (entities that will not change again, such as finished tasks) are written all
        the same, after the log and unsynced: the next checkpoint syncs them, and a file
        written once when its entity is done spares a checkpoint the bulk of its work. How
        many files were written."""
        if self._events:
            self.events_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.events_path, "a", encoding="utf-8") as log:
                log.write("".join(self._events))
                log.flush()
                os.fsync(log.fileno())
            self._events.clear()
        if files:
            dirty = list(self._dirty)
            self._dirty.clear()
        else:
            dirty = [key for key in final if self._dirty.pop(key, 0) is None]
        if dirty or (files and self._unsynced):
            self._write_files([(self.root / path_of(kind, self.run, doc_id), self._docs[(kind, doc_id)]) for kind, doc_id in dirty],
                              sync=files)
        return len(dirty)

    def _write_files(self, files: list[tuple[Path, Doc]], sync: bool = True) -> None:
        """Replace each file atomically. A new file is written under .git/ledger/ and renamed
        into place. An existing one gets its new text in a spare from the pool, synced, and
        swapped with the file by one renameat2(RENAME_EXCHANGE): the old text lands in the
        spare, which goes back to the pool, so no block is ever freed. Replacing a file by
        rename frees its blocks, ~2 ms a file where the file system discards on free,
        against ~0.03 ms for the swap; and a pool as large as the largest batch, not a spare
        a file, keeps file creation (slow on such a disk) to one a new file."""
        spares = self._spares()
        staged = []
        for target, doc in files:
            fresh = target not in self._present and not target.exists()
            if fresh or not self._pool:
                self._made += 1
                spare = spares / f"{'new' if fresh else 'spare'}-{self._made}"
            else:
                spare = self._pool.pop()
            staged.append((_stage(spare, doc), target, fresh))
        if not sync:
            self._unsynced = True
        elif len(staged) >= SYNCFS_FROM or self._unsynced:
            _sync_filesystem(spares)
            self._unsynced = False
        else:
            for spare, _, _ in staged:
                fd = os.open(spare, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for spare, target, fresh in staged:
            try:
                if fresh:
                    if target.parent not in self._present:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        self._present.add(target.parent)
                    os.rename(spare, target)
                elif _swap(spare, target):
                    self._pool.append(spare)
            except FileNotFoundError:  # its directory was removed under us (a job's `git clean`): made again
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(spare, target)
            self._present.add(target)

    def _spares(self) -> Path:
        """Where the files' spares live: in the repository's git directory, on the same file
        system as the files and out of `git status`."""
        if self._spare_dir is None:
            from patch_ledger import git

            self._spare_dir = git.common_dir(self.root) / "ledger" / "spares" / self.run
            self._spare_dir.mkdir(parents=True, exist_ok=True)
        return self._spare_dir

    def forget_spares(self) -> None:
        """Remove the spares of a run that will write no more."""
        import shutil

        shutil.rmtree(self._spares(), ignore_errors=True)
        self._spare_dir, self._pool = None, []

    @classmethod
    def load(cls, root: Path, run: str, autoflush: bool = False) -> "RunStore":
        """Every file of the run, brought up to its event log: a transition the log holds
        but a file does not (a crash between the two) is replayed into the file."""
        store = cls(root, run, autoflush)
        base = Path(root)
        for kind in (k for k, pattern in LAYOUT if "{run}" in pattern and "{id}" in pattern and k in machine.MACHINE_KINDS):
            pattern = Path(path_of(kind, run, "*"))
            for path in sorted((base / pattern.parent).glob(pattern.name)):
                if path.name.endswith(".json") and not path.name.startswith("."):
                    try:
                        doc = json.loads(path.read_text())
                    except ValueError:
                        continue  # torn by a power failure: rebuilt from the log below
                    store._docs[(kind, doc["id"])] = doc
        try:
            doc = json.loads((base / path_of("run", run, run)).read_text())
            store._docs[("run", doc["id"])] = doc
        except (OSError, ValueError):
            pass  # missing or torn: rebuilt from the log below
        store._replay(_read_log(store.events_path))
        store._seq = _count_lines(store.events_path)
        return store

    def _replay(self, events: Sequence[Doc]) -> None:
        """The files brought up to the log (patch_ledger.replay), the changed ones rewritten."""
        self._dirty.update(dict.fromkeys(sorted(replay.catch_up(self._docs, events))))
        if self._dirty:
            self.flush()


_compact = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False).encode  # the C encoder
_tight = json.JSONEncoder(separators=(",", ":")).encode  # made once: json.dumps with options makes one a call


def _line(event: Doc) -> str:
    """An event as a line of the log."""
    return _tight(event) + "\n"


def dump(doc: Doc) -> str:
    """A state file's text: one field a line, and one history entry a line (so a transition
    is a one-line diff). Made with json's C encoder; `indent=` would use its Python one,
    ten times slower, which a run of thousands of tasks feels."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            inner = ",\n".join(f"    {_compact(v)}" for v in value)
            lines.append(f"  {_compact(key)}: [\n{inner}\n  ]")
        else:
            lines.append(f"  {_compact(key)}: {_compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _stage(spare: Path, doc: Doc) -> Path:
    data = dump(doc).encode()
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return spare


_EXCHANGE = 2  # RENAME_EXCHANGE
_libc: Any = None


def _swap(spare: Path, target: Path) -> bool:
    """`spare` becomes `target` atomically, `target`'s old text left at `spare`: True; or,
    where the exchange is not available (another OS or file system), `spare` replaces
    `target`: False."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - glibc 2.28 and later
        except (OSError, AttributeError):
            _libc = False
    if _libc and _libc.renameat2(-100, bytes(spare), -100, bytes(target), _EXCHANGE) == 0:
        return True
    os.replace(spare, target)
    return False


def _sync_filesystem(where: Path) -> None:
    """Everything written to the file system of `where`, on disk: Linux's syncfs, else sync."""
    fd = os.open(where, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _read_log(path: Path) -> list[Doc]:
    """The log's events; a torn last line (a crash in the middle of a write) is cut off."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
