"""Patches coming into the ledger: a diff from a file, standard input or the working tree,
or every commit of a range; each read (never rewritten), refused when unsafe, identified by
`git patch-id --stable` and recorded as PENDING. A recorded commit that reverts an applied
patch rolls that patch back."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from patch_ledger import git, ledger, machine
from patch_ledger.errors import LedgerError

MAX_DIFF_BYTES = 32 * 1024 * 1024  # larger is no patch to review; git itself would balk later
# Diffs exactly as the ledger stores them, whatever the user's diff settings (noprefix,
# mnemonicPrefix, renames, textconv would change the bytes, and so the patch id).
DIFF = ("--binary", "--full-index", "--no-ext-diff", "--no-textconv", "--no-color", "-M", "--src-prefix=a/", "--dst-prefix=b/")
# ... and the settings that shape a diff's text from outside its options, given before the command
DIFF_CONFIG = ("-c", "core.quotePath=true", "-c", "diff.algorithm=myers", "-c", "diff.indentHeuristic=true")
# A reverse diff named as a forward one (git swaps the prefixes after -R), so that its
# patch id is the id of the commit that reverts it.
_REVERSED = (*DIFF[:-2], "-R", "--src-prefix=b/", "--dst-prefix=a/")
_HEADER_PATHS = re.compile(rb"^(?:rename|copy) (?:from|to) (.*)$", re.M)


class Intake(NamedTuple):
    diff: bytes
    base: str | None  # the commit the diff applies to


def read_diff(root: Path, source: str | None, base: str | None) -> Intake:
    """The diff to record: from a file, from standard input (`-`), or the working tree's
    changes against `base` (HEAD by default) when no source is given."""
    base_commit = _commit(root, base)
    if source is None:
        if base_commit is None:
            raise LedgerError("the repository has no commits yet: there is nothing to diff against; pass a diff file")
        diff = worktree_diff(root, base_commit)
        where = "the working tree"
    elif source == "-":
        diff = sys.stdin.buffer.read(MAX_DIFF_BYTES + 1)
        where = "standard input"
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > MAX_DIFF_BYTES:
                raise LedgerError(f"{source}: {size} bytes, over the {MAX_DIFF_BYTES}-byte limit of a patch; split it")
            diff = path.read_bytes()
        except OSError as e:
            raise LedgerError(f"{source}: {e.strerror}; pass a readable diff file") from None
        where = source
    if len(diff) > MAX_DIFF_BYTES:
        raise LedgerError(f"{where}: over the {MAX_DIFF_BYTES}-byte limit of a patch; split it")
    if not diff.strip():
        raise LedgerError(f"{where}: no change to record (an empty diff)")
    return Intake(diff, base_commit)


def worktree_diff(root: Path, base: str, reverse: bool = False) -> bytes:
    """Every change of the working tree against `base`, new untracked files too (not the
    ignored ones), through a scratch copy of the index: the user's index is not touched."""
    index = Path(git.run(root, "rev-parse", "--git-path", "index").stdout.decode().strip())
    index = index if index.is_absolute() else root / index
    objects = Path(git.run(root, "rev-parse", "--git-path", "objects").stdout.decode().strip())
    objects = objects if objects.is_absolute() else root / objects
    with tempfile.TemporaryDirectory(prefix="ledger-index-") as scratch:
        # the scratch index's new blobs go to a scratch object store: a refused intake writes nothing
        env = {**git.clean_env(), "GIT_INDEX_FILE": os.path.join(scratch, "index"),
               "GIT_OBJECT_DIRECTORY": os.path.join(scratch, "objects"), "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}
        os.mkdir(env["GIT_OBJECT_DIRECTORY"])  # git recognises a repository by its object store
        if index.is_file():
            shutil.copyfile(index, env["GIT_INDEX_FILE"])
        git.run(root, "add", "-A", env=env)
        return git.run(root, *DIFF_CONFIG, "diff", "--cached", *(_REVERSED if reverse else DIFF), base, env=env).stdout


def _commit(root: Path, rev: str | None) -> str | None:
    commit = git.commit_of(root, rev or "HEAD")
    if rev and commit is None:
        raise LedgerError(f"--base {rev}: not a commit in {root}; pass a branch, tag or commit id")
    return commit


_SECTION = re.compile(rb"^diff --git ", re.M)
# Every `git apply`: the user's apply.whitespace must not change what is applied, nor reject
# a patch for good.
APPLY = ("--whitespace=nowarn",)
BINARY = re.compile(rb"^(?:GIT binary patch|Binary files .* differ)$", re.M)
_INDEX = re.compile(rb"^index [0-9a-f]+\.\.[0-9a-f]+", re.M)


def unidentifiable_binary(diff: bytes) -> bool:
    """Whether a file's binary change comes without its `index A..B` line: git's patch-id hashes
    that line's ids for binary changes, and with none it hashes whatever it last saw."""
    starts = [m.start() for m in _SECTION.finditer(diff)] or [0]
    for begin, end in zip(starts, [*starts[1:], len(diff)]):
        section = diff[begin:end]
        binary = BINARY.search(section)
        if binary is not None:
            index = _INDEX.search(section)
            if index is None or index.start() > binary.start():
                return True
    return False


def paths_of(diff: bytes, where: str, root: Path | None = None) -> list[str]:
    """Every path the diff names, read with unidiff (never rewritten), or LedgerError. With
    `root`, git's own reading of them too (`git apply --numstat`, which strips prefixes as
    `git apply` will): a diff whose headers say one path and git another cannot hide it."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    try:
        files = PatchSet(diff.decode("utf-8", "surrogateescape"))
    except (UnidiffParseError, ValueError, IndexError) as e:
        said = " ".join(str(e).split())[:200]
        raise LedgerError(f"{where}: not a diff git can apply ({said}); record the output of `git diff --binary`") from None
    if not len(files):
        raise LedgerError(f"{where}: no file change found; is it a diff (`git diff --binary`)?")
    paths = []
    for f in files:
        for name in (f.source_file, f.target_file):
            if name and name != "/dev/null":
                name = unquote(name)
                if name[:2] not in ("a/", "b/"):
                    why = path_problem(name) or f"{name!r} has no a/ or b/ prefix"
                    raise LedgerError(f"{where}: {why}; record a diff as `git diff --binary` writes it, inside the repository")
                paths.append(name[2:])
    paths += [unquote(m.decode("utf-8", "surrogateescape")) for m in _HEADER_PATHS.findall(diff)]
    if root is not None:
        paths += _paths_git_applies(root, diff, where)
    return list(dict.fromkeys(paths))


def _paths_git_applies(root: Path, diff: bytes, where: str) -> list[str]:
    proc = git.run(root, "apply", *APPLY, "--numstat", "-z", input=diff, check=False)
    if proc.returncode != 0:
        said = " ".join(proc.stderr.decode("utf-8", "replace").split())[:200]
        raise LedgerError(f"{where}: not a diff git can apply ({said}); record the output of `git diff --binary`")
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    paths, i = [], 0
    while i < len(fields) and fields[i]:
        counts = fields[i].split("\t")
        if len(counts) == 3 and counts[2]:  # added, deleted, path
            paths.append(counts[2])
            i += 1
        else:  # a rename or copy: the counts, then the old and the new path
            paths += fields[i + 1:i + 3]
            i += 3
    return paths


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote(name: str) -> str:
    """A path as git wrote it: C-quoted ("b/\\303\\251.txt") when it holds special bytes."""
    name = name.rstrip("\n")
    if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
        return name
    out, i, body = bytearray(), 0, name[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1:i + 4]):
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, ord(nxt)))
            i += 2
            continue
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def path_problem(path: str) -> str | None:
    """Why a path in a diff is unsafe to apply, or None."""
    parts = path.split("/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
        return f"{path!r} is absolute"
    if ".." in parts:
        return f"{path!r} climbs out of the repository with '..'"
    if "" in parts or "." in parts:
        return f"{path!r} is not in git's plain form (an empty or '.' part)"
    if any(p.lower() == ".git" for p in parts):
        return f"{path!r} is inside .git/"
    if "\0" in path or not path.strip():
        return f"{path!r} is not a usable path"
    return None


def symlink_problems(root: Path, base: str | None, paths: list[str]) -> list[str]:
    """Paths that go through a symlink of the base tree (which would take them elsewhere)."""
    if base is None:
        return []
    parents = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    if not parents:
        return []
    out = git.run(root, "--literal-pathspecs", "ls-tree", "-z", "--full-tree", base, "--", *parents).stdout.decode("utf-8", "surrogateescape")
    links = {entry.split("\t", 1)[1] for entry in out.split("\0") if entry.startswith("120000 ")}
    return [f"{p!r} goes through the symlink {link!r} of the base" for p in paths for link in links if p.startswith(link + "/")]


def check_safe(root: Path, diff: bytes, base: str | None, where: str) -> list[str]:
    """The diff's paths, once it is known to parse and to stay inside the repository."""
    paths = paths_of(diff, where, root)
    if unidentifiable_binary(diff):
        raise LedgerError(f"{where}: a binary change without its `index` line cannot be identified; record `git diff --binary --full-index`")
    _check_paths(paths, where)
    links = symlink_problems(root, base, paths)
    if links:
        raise LedgerError(f"{where}: {links[0]}; a patch may change files inside the repository only")
    return paths


def _check_paths(paths: list[str], where: str) -> None:
    problems = [p for p in map(path_problem, paths) if p]
    if problems:
        raise LedgerError(f"{where}: {problems[0]}; a patch may change files inside the repository only")


def patch_ids(root: Path, stream: bytes) -> list[tuple[str, str]]:
    """(patch id, commit id or zeros) of each patch in `stream`, from `git patch-id --stable`."""
    out = git.run(root, "patch-id", "--stable", input=stream).stdout.decode()
    return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def add(root: Path, source: str | None, base: str | None, task: str | None, actor: str,
        message: str | None) -> tuple[ledger.Patch, bool]:
    """Record one diff as PENDING; (its patch, whether it is new to the ledger)."""
    intake = read_diff(root, source, base)
    where = source or "the working tree"
    check_safe(root, intake.diff, intake.base, where)
    ids = patch_ids(root, intake.diff)
    if len(ids) != 1:
        said = "no change to identify" if not ids else f"{len(ids)} patches (a `commit` or `From` line, or text after a hunk, starts another)"
        raise LedgerError(f"{where}: git reads {said} in it; record one diff, the output of `git diff --binary`")
    inverse = None
    if source is None and intake.base:  # the working tree's reverse diff is at hand: know the revert now
        inverse = next(iter(patch_ids(root, worktree_diff(root, intake.base, reverse=True))), (None,))[0]
    fields = {"base": intake.base, "task": task, "actor": actor, "message": message, "inverse": inverse,
              "reason": f"recorded from {where}"}
    return ledger.record(root, [(ids[0][0], intake.diff, fields)])[0]


class Recorded(NamedTuple):
    patch: ledger.Patch
    created: bool
    commit: str


def record_range(root: Path, revrange: str, actor: str | None, roll_back: bool = True) -> tuple[list[Recorded], list[ledger.Patch]]:
    """Record every non-merge commit of `revrange` (base: its parent); and, with `roll_back`,
    roll back the applied patches that one of them reverts. Both lists, in order. A pull
    request's commits are recorded without it: a revert proposed is not a revert landed."""
    commits = _commits(root, revrange)
    if not commits:
        return [], []
    diffs = _diffs(root, revrange, reverse=False)
    ids = dict((c, p) for p, c in patch_ids(root, b"".join(b"commit " + c.encode() + b"\n" + diffs[c] for c in diffs)))
    reverse = _diffs(root, revrange, reverse=True)
    inverse = dict((c, p) for p, c in patch_ids(root, b"".join(b"commit " + c.encode() + b"\n" + reverse[c] for c in reverse)))
    live = _live_by_inverse(root)  # read before anything is written: bad input writes nothing
    known = ledger.ids_in_ledger(root)
    new, sources = [], []
    for commit, parent, author, subject in commits:
        if commit not in ids:
            continue  # git sees no change (an empty commit): nothing to record
        if ids[commit] not in known:
            if len(diffs[commit]) > MAX_DIFF_BYTES:
                raise LedgerError(f"commit {commit[:12]}: its diff is over the {MAX_DIFF_BYTES}-byte limit of a patch; record a range without it")
            # A commit's paths come from a git tree, which cannot hold a path through a
            # symlink: the path checks suffice, without one ls-tree a commit.
            _check_paths(paths_of(diffs[commit], f"commit {commit[:12]}"), f"commit {commit[:12]}")
        new.append((ids[commit], diffs[commit], {
            "base": parent, "actor": actor or author, "message": subject, "inverse": inverse.get(commit),
            "reason": f"recorded from commit {commit}"}))
        sources.append(commit)
    recorded = [Recorded(p, created, c) for (p, created), c in zip(ledger.record(root, new), sources)]
    if not roll_back:
        return recorded, []
    return recorded, _roll_back_reverted(root, live, [(r.patch.id, f"reverted by commit {r.commit}", r.patch.actor) for r in recorded])


def _commits(root: Path, revrange: str) -> list[tuple[str, str | None, str, str]]:
    if revrange.startswith("-"):
        raise LedgerError(f"{revrange!r} is not a revision range; pass e.g. main..HEAD")
    proc = git.run(root, "log", "--no-merges", "--reverse", "--format=%H%x00%P%x00%an%x00%s", revrange, "--", check=False)
    if proc.returncode != 0:
        raise LedgerError(f"{revrange}: not a revision range of {root}; pass e.g. main..HEAD")
    out = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        commit, parents, author, subject = (line.split("\0") + ["", "", ""])[:4]
        out.append((commit, parents.split()[0] if parents else None, author or "unknown", subject))
    return out


def commit_diffs(root: Path, revrange: str) -> dict[str, bytes]:
    """Each non-merge commit's diff against its parent, as a patch of it is recorded."""
    return _diffs(root, revrange, reverse=False)


def _diffs(root: Path, revrange: str, reverse: bool) -> dict[str, bytes]:
    """Each commit's diff against its parent, as `git diff --binary --full-index` writes it."""
    args = [*DIFF_CONFIG, "log", "--no-merges", "--reverse", "-p", "--format=%x00commit %H", *(_REVERSED if reverse else DIFF), revrange, "--"]
    out = git.run(root, *args).stdout
    diffs = {}
    for chunk in out.split(b"\0commit ")[1:]:
        header, _, body = chunk.partition(b"\n")
        diffs[header.strip().decode()] = body.lstrip(b"\n")
    return diffs


def _live_by_inverse(root: Path) -> dict[str, ledger.Patch]:
    """The patches a revert could roll back (their state may go to ROLLED_BACK), by the id of
    their reverse diff."""
    m = machine.load("patch")
    return {p.inverse: p for p in ledger.read_sound(root).values() if p.inverse and m.is_legal(p.state, "ROLLED_BACK")}


def _roll_back_reverted(root: Path, live: dict[str, ledger.Patch], seen: list[tuple[str, str, str]]) -> list[ledger.Patch]:
    """Roll back each live patch whose revert is among `seen` (patch id, reason, actor)."""
    rolled = []
    for patch_id, reason, actor in seen:
        target = live.pop(patch_id, None)
        if target is not None:
            current = ledger.read_ids(root, [target.id])[target.id]
            if machine.load("patch").is_legal(current.state, "ROLLED_BACK"):
                rolled.append(ledger.move(root, current, "ROLLED_BACK", actor, reason))
    return rolled


def roll_back_reverted(root: Path, actor: str) -> list[ledger.Patch]:
    """Every live patch whose revert is in effect, rolled back: after a sync brought either.
    A revert is in effect when it is itself in a state it could be rolled back from (it was
    applied); one merely recorded or validated, as a pull request proposes it, is not."""
    m = machine.load("patch")
    in_effect = {p.id for p in ledger.read_sound(root).values() if m.is_legal(p.state, "ROLLED_BACK")}
    live = _live_by_inverse(root)
    return _roll_back_reverted(root, live, [(i, f"its revert {i[:12]} is in effect", actor) for i in sorted(in_effect & set(live))])


def report(patch: ledger.Patch, steps: list[ledger.Patch] | None = None) -> dict[str, Any]:
    """The patch in the form of schemas/patch.json (its history when `steps` are given)."""
    doc: dict[str, Any] = {"schema_version": 2, "id": patch.id, "state": patch.state}
    if steps is not None:
        doc["history"] = [{"from": s.source, "to": s.state, "at": s.at, "actor": s.actor, "reason": s.reason} for s in steps]
    optional = {"patch_id": patch.id, "seq": patch.seq, "base": patch.base, "task": patch.task, "actor": patch.actor,
                "message": patch.message, "superseded_by": patch.superseded_by, "gates": patch.gates or None}
    doc.update((k, v) for k, v in optional.items() if v is not None)
    return doc
