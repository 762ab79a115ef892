"""Reading state as it stands now (the working tree, or the index with --staged) and as
it stood at a base commit: each a batch of reads, never one git process per file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from patch_ledger import git
from patch_ledger.errors import LedgerError
from patch_ledger.documents import MAX_BYTES, Raw, Unreadable, too_large
from patch_ledger.layout import ROOT, classify, is_include


class Snapshot:
    """The files of one version of the repository (the working tree, the index, or a
    commit): listed once, read in bulk, then served from memory."""

    def __init__(self, root: Path, rev: str | None, staged: bool = False) -> None:
        self.root, self.rev, self.staged = root, rev, staged
        self._cache: dict[str, Raw] = {}
        self._ids: dict[str, tuple[str, str]] | None = None  # path -> (mode, blob id)

    @property
    def in_git(self) -> bool:
        return self.staged or self.rev is not None

    def _blob_ids(self) -> dict[str, tuple[str, str]]:
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
        regular = {p: ids[p][1] for p in wanted if p in ids and ids[p][0] in _REGULAR}
        blobs = git.read_blobs(self.root, set(regular.values()), MAX_BYTES)
        for p in wanted:
            if p in regular:
                blob = blobs[regular[p]]
                self._cache[p] = too_large(blob) if isinstance(blob, int) else blob
            else:
                self._cache[p] = Unreadable(_NOT_REGULAR) if p in ids else None

    def read(self, path: str) -> Raw:
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


_REGULAR = ("100644", "100755")
_NOT_REGULAR = "is not a regular file (a symlink, a device, a submodule?); state files are plain files"


def _read_file(path: Path) -> Raw:
    """A regular file's bytes, never more than the limit allows: a symlink or a device is
    refused unread, whatever it points at."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return Unreadable(_NOT_REGULAR)
        if info.st_size > MAX_BYTES:
            return too_large(info.st_size)
        with open(path, "rb") as f:
            data = f.read(info.st_size + 1)  # sized reads: a 16 MiB buffer a file would cost more
            if len(data) > info.st_size:  # it grew since lstat
                data += f.read(MAX_BYTES + 1 - len(data))
        return too_large(len(data)) if len(data) > MAX_BYTES else data
    except (FileNotFoundError, NotADirectoryError):
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
        absolute = os.path.realpath(os.path.join(cwd, given))
        rel = os.path.relpath(absolute, root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
            raise LedgerError(f"{given}: outside the repository at {root}; ledger reads files inside it only")
        if classify(rel) or is_include(rel):
            yield rel
            continue
        listed = listed if listed is not None else now.files(ROOT)
        inside = [p for p in listed if p.startswith(rel.rstrip("/") + "/") or rel == "."]
        if not inside or not any(map(classify, inside)):
            raise LedgerError(f"{given}: not a ledger state file (they live under .ledger/, see docs/data-model.md)")
        yield from inside
