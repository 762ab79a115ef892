"""The only door to git: one short function a call, plumbing with -z where paths flow.

Plain subprocesses keep the hook's start-up small (GitPython costs more to import than
these calls take); later issues that need a long-lived repository object add it here.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

from patch_ledger.errors import LedgerError

class GitFailed(LedgerError):
    pass


def clean_env() -> dict[str, str]:
    """The environment without a running hook's GIT_DIR & co., for git in another repository."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in ("GIT_EXEC_PATH", "GIT_CONFIG_NOSYSTEM")}


def run(root: Path | str, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(("git", "-C", str(root), *args), input=input, capture_output=True, env=env)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(f"git {' '.join(args[:3])} failed: {err[-1] if err else f'exit {proc.returncode}'}")
    return proc


def toplevel(cwd: Path | str) -> Path:
    proc = run(cwd, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise LedgerError(f"{os.path.abspath(cwd)}: not inside a git repository; run this in a checkout (or `git init` first)")
    return Path(proc.stdout.decode().strip())


def common_dir(root: Path) -> Path:
    """The repository's git directory that all its worktrees share (where .git/ledger/ lives)."""
    return _common_dir(os.path.abspath(root))


# asked by each layer in turn (a run's claim, spares, worktrees): one git call a process and
# directory (a repository made anew at the same path within one process is not noticed)
@lru_cache(maxsize=64)
def _common_dir(root: str) -> Path:
    common = Path(run(root, "rev-parse", "--git-common-dir").stdout.decode().strip())
    return (common if common.is_absolute() else Path(root) / common).resolve()


def commit_of(root: Path, rev: str) -> str | None:
    """The commit `rev` names, or None when it names none (e.g. HEAD before the first commit)."""
    proc = run(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False)
    return proc.stdout.decode().strip() or None


@lru_cache(maxsize=None)
def _object_store(root: str) -> tuple[Path, Callable[..., Any]]:
    import hashlib

    out = run(root, "rev-parse", "--git-path", "objects", "--show-object-format").stdout.decode().split("\n")
    objects = Path(out[0]) if os.path.isabs(out[0]) else Path(root) / out[0]
    return objects, (hashlib.sha256 if out[1].strip() == "sha256" else hashlib.sha1)


def object_id(kind: str, payload: bytes, algorithm: Callable[..., Any] | int) -> str:
    """The id git gives an object; `algorithm` is a hashlib constructor, or the length of an
    id of the repository (40: SHA-1, 64: SHA-256)."""
    if isinstance(algorithm, int):
        import hashlib

        algorithm = hashlib.sha1 if algorithm == 40 else hashlib.sha256
    return algorithm(b"%s %d\0" % (kind.encode(), len(payload)) + payload).hexdigest()  # type: ignore[no-any-return]


def hash_objects(root: Path, kind: str, payloads: Sequence[bytes]) -> list[str]:
    """Write objects of `kind` as git's loose objects (the zlib of `kind size\\0payload` under
    its id); their ids, in order. No process and no scratch file: a thousand commits cost
    what a few of git's own `hash-object` runs would. Written to a temporary name, then
    renamed: a reader never sees half an object, and a killed writer leaves none behind."""
    import tempfile
    import zlib

    objects, algorithm = _object_store(str(root))
    ids = []
    for payload in payloads:
        raw = b"%s %d\0" % (kind.encode(), len(payload)) + payload
        oid = object_id(kind, payload, algorithm)
        target = objects / oid[:2] / oid[2:]
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix="tmp_obj_")
            with os.fdopen(handle, "wb") as f:
                f.write(zlib.compress(raw, 1))
            os.chmod(temporary, 0o444)
            os.replace(temporary, target)
        ids.append(oid)
    return ids


def merge_base(root: Path, one: str, other: str) -> str | None:
    proc = run(root, "merge-base", one, other, check=False)
    return proc.stdout.decode().strip() or None


def read_blobs(root: Path, specs: Iterable[str], limit: int) -> dict[str, "bytes | int | None"]:
    """Objects by id (or `rev:path`) from one `cat-file --batch`, streamed: an object over
    `limit` bytes is skipped unread and reported by its size. Ask by id where you can: git
    finds each `rev:path` by walking the tree again."""
    specs = list(specs)
    if not specs:
        return {}
    import threading

    proc = subprocess.Popen(("git", "-C", str(root), "cat-file", "--batch"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    feeder = threading.Thread(target=_feed, args=(proc.stdin, specs), daemon=True)
    feeder.start()  # git answers while we still ask: no deadlock on full pipes
    found: dict[str, bytes | int | None] = {}
    out = proc.stdout
    assert out is not None
    for spec in specs:
        header = out.readline().split()
        if not header or header[-1] in (b"missing", b"ambiguous"):
            found[spec] = None
            continue
        size = int(header[2])
        if header[1] != b"blob" or size > limit:
            _skip(out, size + 1)
            found[spec] = None if header[1] != b"blob" else size
            continue
        found[spec] = out.read(size)
        out.read(1)
    feeder.join()
    proc.wait()
    return found


def _feed(stdin: IO[bytes] | None, specs: list[str]) -> None:
    assert stdin is not None
    try:
        stdin.write("".join(s + "\n" for s in specs).encode())
        stdin.close()
    except BrokenPipeError:
        pass


def _skip(stream: IO[bytes], count: int) -> None:
    while count > 0:
        count -= len(stream.read(min(count, 1 << 20)) or b"\0" * count)


def blob_ids_at(root: Path, rev: str, prefix: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, object id) of every file under `prefix` in commit `rev`: one call."""
    out = run(root, "ls-tree", "-r", "-z", "--full-tree", rev, "--", prefix).stdout
    return _ids(out, mode=0, oid=2)


def index_blob_ids(root: Path, prefix: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, object id) of every file under `prefix` in the index (the first stage)."""
    out = run(root, "ls-files", "-z", "--stage", "--", prefix).stdout
    return _ids(out, mode=0, oid=1)


def _ids(out: bytes, mode: int, oid: int) -> dict[str, tuple[str, str]]:
    ids: dict[str, tuple[str, str]] = {}
    for record in out.decode(errors="surrogateescape").split("\0"):
        if record:
            meta, _, path = record.partition("\t")
            fields = meta.split()
            ids.setdefault(path, (fields[mode], fields[oid]))
    return ids


def changed_paths(root: Path, base: str | None, prefix: str, staged: bool, deleted: bool = False) -> list[str]:
    """Files under `prefix` that differ from `base` (an empty tree when None), in the index
    (staged) or the working tree; only the deleted ones when `deleted`."""
    against = base or empty_tree(root)
    args = ["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--diff-filter=" + ("D" if deleted else "ACMRTUXB")]
    out = run(root, *args, *(["--cached"] if staged else []), against, "--", prefix).stdout
    return [p for p in out.decode(errors="surrogateescape").split("\0") if p]


def empty_tree(root: Path) -> str:
    return run(root, "hash-object", "-t", "tree", "--stdin", input=b"").stdout.decode().strip()
