"""Reading state as it stands now (the working tree, or the index with --staged) and as
it stood at a base commit: each a batch of reads, never one git process per file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from patch_ledger import git
from patch_ledger.errors import LedgerError
from patch_ledger.documents import MAX_BYTES
from patch_ledger.layout import ROOT, classify


class Snapshot:
    """The files of one version of the repository (the working tree, the index, or a
    commit): listed once, read in bulk, then served from memory."""

    def __init__(self, root: Path, rev: str | None, staged: bool = False) -> None:
        self.root, self.rev, self.staged = root, rev, staged
        self._cache: dict[str, bytes | int | None] = {}
        self._ids: dict[str, str] | None = None

    @property
    def in_git(self) -> bool:
        return self.staged or self.rev is not None

    def _blob_ids(self) -> dict[str, str]:
        if self._ids is None:
            if self.staged:
                self._ids = git.index_blob_ids(self.root, ROOT)
            else:
                self._ids = git.blob_ids_at(self.root, self.rev, ROOT)  # type: ignore[arg-type]
        return self._ids

    def prefetch(self, paths: Iterable[str]) -> None:
        wanted = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if not self.in_git:
            for p in wanted:
                self._cache[p] = _read_file(self.root / p)
            return
        ids = self._blob_ids()
        blobs = git.read_blobs(self.root, {ids[p] for p in wanted if p in ids}, MAX_BYTES)
        self._cache.update((p, blobs[ids[p]] if p in ids else None) for p in wanted)

    def read(self, path: str) -> bytes | int | None:
        if path not in self._cache:
            self.prefetch([path])
        return self._cache.get(path)

    def files(self, prefix: str = ROOT) -> list[str]:
        """Every file under `prefix` in this version."""
        if self.in_git:
            return [p for p in self._blob_ids() if p.startswith(prefix.rstrip("/") + "/")]
        return _walk(self.root, prefix)


def worktree(root: Path) -> Snapshot:
    return Snapshot(root, None)


def _read_file(path: Path) -> bytes | int | None:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return size
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _walk(root: Path, prefix: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root / prefix):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        out.extend(f"{rel}/{name}" for name in sorted(filenames))
    return out


def state_paths(root: Path, cwd: Path, paths: Sequence[str], now: Snapshot) -> Iterator[str]:
    """Repository-relative state files named by `paths` (files or directories, relative to `cwd`)."""
    listed = None
    for given in paths:
        absolute = os.path.normpath(os.path.join(os.path.realpath(cwd), given))
        rel = os.path.relpath(absolute, root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
            raise LedgerError(f"{given}: outside the repository at {root}; ledger reads files inside it only")
        if classify(rel):
            yield rel
            continue
        listed = listed if listed is not None else now.files(ROOT)
        inside = [p for p in listed if p.startswith(rel.rstrip("/") + "/") or rel == "."]
        if not inside or not any(map(classify, inside)):
            raise LedgerError(f"{given}: not a ledger state file (they live under .ledger/, see docs/data-model.md)")
        yield from inside
