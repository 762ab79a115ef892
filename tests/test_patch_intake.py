"""`ledger patch add` and the ids of `ledger patch ...` as a user meets them: bad input exits 2
with one line naming the file or id and what to do, never a traceback, and writes nothing
(no ref, no object); a diff from a file, standard input or the working tree is recorded
PENDING against the right base, once. The intake is fuzzed with hypothesis."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patch_ledger import integrity, ledger, patches
from patch_ledger.errors import LedgerError
from tests.builders import commit, git, ledger as cli, write
from tests.test_bad_input import assert_bad_input

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def new_file(path: str, line: str = "x") -> bytes:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{line}\n".encode()


def quoted_new_file(path: str) -> bytes:
    """A diff as git writes one for a path it must quote: C-style, in double quotes."""
    return (f'diff --git "a/{path}" "b/{path}"\nnew file mode 100644\n--- /dev/null\n+++ "b/{path}"\n'
            "@@ -0,0 +1 @@\n+x\n").encode()


def adding(line: str) -> bytes:
    return f"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1,2 @@\n a\n+{line}\n".encode()


@pytest.fixture
def base(repo: Path, tmp_path: Path) -> Path:
    """A repository whose HEAD has a file `f` and a symlink `link` out of the repository."""
    (tmp_path / "outside").mkdir()
    write(repo, "f", "a\n")
    os.symlink(tmp_path / "outside", repo / "link")
    commit(repo, "base")
    return repo


def written(repo: Path) -> tuple[str, str]:
    """What a write would change: every ref, and git's count of objects."""
    return git(repo, "for-each-ref").stdout, git(repo, "count-objects", "-v").stdout


def diff_file(repo: Path, content: bytes, name: str = "change.diff") -> str:
    path = repo.parent / name
    path.write_bytes(content)
    return str(path)


def refused(repo: Path, *args: str, names: str, says: tuple[str, ...] = (), input: str | None = None) -> None:
    before = written(repo)
    assert_bad_input(cli(repo, *args, input=input), names, says)
    assert written(repo) == before


def add_json(repo: Path, *args: str, input: str | None = None) -> dict:
    proc = cli(repo, "patch", "add", "--format", "json", *args, input=input)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- bad diffs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content, says", [
    pytest.param(b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1,3 +1,9 @@\n a\n+b\n", "not a diff", id="corrupt-hunk"),
    pytest.param(random.Random(3).randbytes(4096), "is it a diff", id="binary-garbage"),
    pytest.param(b"hello, I am no diff\n", "is it a diff", id="prose"),
    pytest.param(new_file("../outside/evil"), "climbs out of the repository", id="dot-dot"),
    pytest.param(new_file("src/../../evil"), "climbs out of the repository", id="dot-dot-inside"),
    pytest.param(b"--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "is absolute", id="absolute"),
    pytest.param(new_file("/abs/evil"), "is absolute", id="absolute-after-prefix"),
    pytest.param(new_file(".git/hooks/post-checkout"), "inside .git/", id="dot-git"),
    pytest.param(new_file("sub/.GIT/config"), "inside .git/", id="dot-git-any-case"),
    pytest.param(b"diff --git a/f b/g\nsimilarity index 100%\nrename from f\nrename to ../g\n", "climbs out", id="rename-out"),
])
def test_an_unsafe_or_unreadable_diff_is_refused(base: Path, content: bytes, says: str) -> None:
    source = diff_file(base, content)
    refused(base, "patch", "add", source, names=source, says=(says,))


def test_a_parser_error_quoting_the_diff_stays_one_line(base: Path) -> None:
    """unidiff's message ends in the offending line and its newline: still one line out."""
    source = diff_file(base, b"diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ /abs/x\n@@ -0,0 +1 @@\n+x\n")
    refused(base, "patch", "add", source, names=source)


@pytest.mark.parametrize("path", ["\\056\\056/evil", "\\056git/hooks/post-checkout", "\\057etc/evil"])
def test_a_quoted_unsafe_path_is_refused(base: Path, path: str) -> None:
    """git unquotes `"b/\\056\\056/evil"` to ../evil (see `git apply --numstat`): so must the intake."""
    source = diff_file(base, quoted_new_file(path))
    refused(base, "patch", "add", source, names=source, says=("a patch may change files inside the repository only",))


@pytest.mark.parametrize("base_args", [["--base", "HEAD"], []], ids=["explicit-base", "default-base"])
def test_a_path_through_a_symlink_of_the_base_is_refused(base: Path, base_args: list[str]) -> None:
    """The base is HEAD unless told (`--help`), so the symlink check holds for a plain FILE too."""
    source = diff_file(base, new_file("link/evil"))
    refused(base, "patch", "add", *base_args, source, names=source, says=("goes through the symlink 'link'",))


@pytest.mark.parametrize("between", [b"commit " + b"1" * 40 + b"\n", b"-- \n2.39.0\n"], ids=["commit-line", "stray-line"])
def test_bytes_git_reads_as_several_patches_are_refused(base: Path, between: bytes) -> None:
    """`git patch-id` starts a new patch at a `commit <id>` line, or after any stray line that
    follows a finished hunk: the first id would be recorded for bytes that hold more."""
    source = diff_file(base, adding("one") + between + new_file("other"))
    assert len(patches.patch_ids(base, Path(source).read_bytes())) == 2
    refused(base, "patch", "add", source, names=source)


def test_a_binary_change_without_its_index_line_is_refused(base: Path) -> None:
    """git's patch-id hashes uninitialised memory for a binary change with no `index A..B` line
    before it (builtin/patch-id.c, pre_oid_str): the same file would get a new id each time."""
    source = diff_file(base, b"diff --git a/b.dat b/b.dat\nnew file mode 100644\nGIT binary patch\nliteral 1\n"
                             b"IcmZPo00031\n\nliteral 0\nHcmV?d00001\n\n")
    refused(base, "patch", "add", source, names=source)


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"], ids=["empty", "blank"])
def test_an_empty_diff_is_refused(base: Path, content: bytes) -> None:
    source = diff_file(base, content)
    refused(base, "patch", "add", source, names=source, says=("empty diff",))
    refused(base, "patch", "add", "-", input=content.decode(), names="standard input", says=("empty diff",))


def test_an_unchanged_working_tree_is_refused(base: Path) -> None:
    refused(base, "patch", "add", names="the working tree", says=("empty diff",))


def test_a_100_mb_diff_is_refused_from_a_file_and_from_stdin(base: Path) -> None:
    line = b"+" + b"x" * 1023 + b"\n"
    big = base.parent / "big.diff"
    big.write_bytes(b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1,102400 @@\n a\n" + line * (100 * 1024))
    refused(base, "patch", "add", str(big), names=str(big), says=("limit", "split it"))
    before = written(base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    with open(big, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "patch_ledger", "patch", "add", "-"], cwd=base, stdin=stdin,
                              capture_output=True, text=True, env=env)
    assert_bad_input(proc, "standard input", ("limit",))
    assert written(base) == before


def test_a_working_tree_change_too_big_to_record_writes_nothing(base: Path) -> None:
    """Read through a scratch index, the working tree's change must not leave its blobs behind."""
    write(base, "big.txt", ("y" * 99 + "\n") * 340_000)
    refused(base, "patch", "add", names="the working tree", says=("limit",))


@pytest.mark.parametrize("args, names", [
    (["patch", "add", "no-such.diff"], "no-such.diff"),
    (["patch", "add", ".git"], ".git: Is a directory"),
    (["patch", "add", "--base", "no-such-branch", "-"], "--base no-such-branch"),
])
def test_a_missing_source_or_base_is_refused(base: Path, args: list[str], names: str) -> None:
    refused(base, *args, names=names, input=adding("x").decode())


# --- bad ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["patch", "show"], ["patch", "quarantine", "--reason", "r"], ["log"]])
def test_an_invalid_patch_id_is_refused(base: Path, command: list[str]) -> None:
    """Ids that would make another ref name, or none, or are too short to be a prefix."""
    patches.add(base, diff_file(base, adding("one")), "HEAD", None, "tester", None)
    for given in ("../../x", "zz", "abc", "refs/heads/main", "ab\ncd", "HEAD"):
        refused(base, *command, given, names=repr(given), says=("is not a patch id", "hexadecimal"))


def test_an_unknown_patch_id_is_refused(base: Path) -> None:
    patches.add(base, diff_file(base, adding("one")), "HEAD", None, "tester", None)
    refused(base, "patch", "show", "0000", names="0000", says=("ledger patch list",))


def test_an_ambiguous_prefix_is_refused(base: Path) -> None:
    one, other = colliding(base)
    for i, diff in enumerate((one, other)):
        patches.add(base, diff_file(base, diff, f"{i}.diff"), "HEAD", None, "tester", None)
    prefix = patches.patch_ids(base, one)[0][0][:4]
    refused(base, "patch", "show", prefix, names=prefix, says=("start of 2 patch ids", "give more digits"))
    refused(base, "patch", "quarantine", prefix, "--reason", "r", names=prefix, says=("give more digits",))


def colliding(repo: Path) -> tuple[bytes, bytes]:
    """Two diffs whose patch ids share their first four digits, from one `git patch-id` run."""
    diffs = [adding(f"line {i}") for i in range(2000)]
    stream = b"".join(b"commit %040x\n" % (i + 1) + d for i, d in enumerate(diffs))
    seen: dict[str, int] = {}
    for pid, mark in patches.patch_ids(repo, stream):
        i = int(mark, 16) - 1
        if pid[:4] in seen:
            return diffs[seen[pid[:4]]], diffs[i]
        seen[pid[:4]] = i
    raise AssertionError("no two of 2,000 patch ids share four digits")


# --- what is recorded -------------------------------------------------------------------------


def test_adding_the_same_diff_twice_is_a_no_op(base: Path) -> None:
    source = diff_file(base, adding("one"))
    first = add_json(base, source)
    assert first["created"] is True and first["state"] == "PENDING"
    before = written(base)
    again = add_json(base, source)
    assert (again["id"], again["created"], again["seq"]) == (first["id"], False, 1)
    assert written(base) == before


def test_a_diff_from_stdin_is_recorded_pending_on_head(base: Path) -> None:
    report = add_json(base, "-", "--message", "from a pipe", input=adding("piped").decode())
    head = git(base, "rev-parse", "HEAD").stdout.strip()
    assert (report["state"], report["message"], report["created"]) == ("PENDING", "from a pipe", True)
    assert report["id"] == patches.patch_ids(base, adding("piped"))[0][0]
    assert report.get("base") == head, "`ledger patch add --help`: --base defaults to HEAD"


def test_the_working_tree_is_recorded_pending_on_its_base(base: Path) -> None:
    write(base, "g", "one\n")
    commit(base, "second")
    write(base, "f", "a\nchanged\n")
    write(base, "untracked.txt", "new\n")
    status = git(base, "status", "--porcelain").stdout
    report = add_json(base, "--task", "t1", "--actor", "someone")
    tracked = git(base, "diff", "--binary", "--full-index", "HEAD").stdout.encode()
    assert (report["state"], report["task"], report["actor"]) == ("PENDING", "t1", "someone")
    assert report["base"] == git(base, "rev-parse", "HEAD").stdout.strip()
    stored = ledger.patch_bytes(base, ledger.read_sound(base)[report["id"]])
    assert stored.startswith(tracked) and b"+++ b/untracked.txt\n" in stored  # new files too
    assert report["id"] == patches.patch_ids(base, stored)[0][0]
    assert git(base, "status", "--porcelain").stdout == status  # the working tree and index are untouched
    older = add_json(base, "--base", "HEAD~1")
    assert older["base"] == git(base, "rev-parse", "HEAD~1").stdout.strip() and older["id"] != report["id"]
    assert integrity.verify_ledger(base) == []


# --- fuzzing the intake -----------------------------------------------------------------------


HOSTILE_LINES = [
    b"--- a/../evil", b"+++ b/../evil", b"+++ /etc/passwd", b"--- /dev/null", b"+++ b/.git/config",
    b"+++ b/link/evil", b"diff --git a/.git/x b/.git/x", b"rename from f", b"rename to ../g", b"copy to .git/x",
    b"@@ -1,999 +1 @@", b"@@ -0,0 +1 @@", b"GIT binary patch", b"literal 5", b"delta 3", b"zcmV?d00001",
    b"new file mode 120000", b"old mode 100644", b"new mode 100755", b"index 0000000..1111111 100644",
    b"commit " + b"1" * 40, b"\\ No newline at end of file", b"", b"+\x00\xff\xfe", b"Binary files a/x and b/x differ",
]


@pytest.fixture
def seeds(base: Path) -> list[bytes]:
    """Real diffs from git: a change, a new file, a binary file, and all of them with a renamed symlink."""
    write(base, "f", "a\nb\n")
    write(base, "new.txt", "new\n")
    write(base, "bin.dat", bytes(range(256)) * 4)
    git(base, "mv", "link", "moved-link")
    git(base, "add", "-A")
    out = [git(base, "diff", "--cached", "--binary", "--full-index", "HEAD", "--", p).stdout.encode()
           for p in ("f", "new.txt", "bin.dat")]
    out.append(git(base, "diff", "--cached", "-M", "--binary", "--full-index", "HEAD").stdout.encode())
    git(base, "reset", "-q", "--hard")
    return [d for d in out if d]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    lines = draw(st.sampled_from(seeds)).split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["drop", "repeat", "hostile", "bytes", "truncate"]))
        if how == "drop":
            del lines[i]
        elif how == "repeat":
            lines.insert(i, lines[i])
        elif how == "hostile":
            lines.insert(i, draw(st.sampled_from(HOSTILE_LINES)))
        elif how == "bytes":
            lines[i] = draw(st.binary(max_size=12)) + lines[i][draw(st.integers(0, len(lines[i]))):]
        else:
            lines = lines[: i + 1]
        if not lines:
            lines = [b""]
    return b"\n".join(lines)


def intake_holds(repo: Path, diff: bytes) -> None:
    """patches.add either records a sound PENDING patch whose paths git too finds safe, or
    raises LedgerError having written nothing; never anything else."""
    before = written(repo)
    try:
        patch, created = patches.add(repo, diff_file(repo, diff, "fuzz.diff"), "HEAD", None, "fuzz", None)
    except LedgerError:
        assert written(repo) == before
        return
    assert patch.state == "PENDING" and ledger.read_sound(repo)[patch.id].tip == patch.tip
    assert (written(repo) != before) == created
    unsafe = [p for p in git_paths(repo, diff) if unsafe_path(p)]
    assert not unsafe, f"recorded a diff git reads as touching {unsafe}"
    assert [p for p in integrity.verify_ledger(repo) if p.ref == patch.ref] == []


def git_paths(repo: Path, diff: bytes) -> list[str]:
    """The paths `git apply` would touch (empty when git cannot read the diff)."""
    proc = subprocess.run(["git", "-C", str(repo), "apply", "--numstat", "-z", "-"], input=diff, capture_output=True)
    if proc.returncode:
        return []
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    return [f.split("\t")[-1] for f in fields if f.split("\t")[-1]]


def unsafe_path(path: str) -> bool:
    parts = path.split("/")
    return path.startswith("/") or ".." in parts or any(p.lower() == ".git" for p in parts) or path.startswith("link/")


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=3000))
def test_random_bytes_never_break_the_intake(base: Path, diff: bytes) -> None:
    intake_holds(base, diff)


@FUZZ
@given(st.data())
def test_mutated_real_diffs_never_break_the_intake(seeds: list[bytes], base: Path, data: st.DataObject) -> None:
    intake_holds(base, data.draw(mutated(seeds), label="diff"))


@settings(FUZZ, max_examples=6)
@given(st.data())
def test_mutated_diffs_through_the_cli_exit_0_or_2_in_one_line(seeds: list[bytes], base: Path, data: st.DataObject) -> None:
    before = written(base)
    proc = cli(base, "patch", "add", "--base", "HEAD", diff_file(base, data.draw(mutated(seeds), label="diff"), "cli.diff"))
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and proc.returncode in (0, 2), output
    assert len(output.strip().splitlines()) == 1, output
    if proc.returncode == 2:
        assert written(base) == before
