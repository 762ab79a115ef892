"""The patch ledger's rows of the benchmark (issue 3, "Speed"), each against its floor: the
bare git command that does the same work, or (for an absolute target) the cost of starting
Python at all.

Run by tests/perf/run.py. Whatever calls patch_ledger in-process (building the ledgers,
the 1,000 transitions of move_many) runs in a subprocess of this file, so that its timings
are clean and its git runs in the benchmark's environment:

    python tests/perf/ledger_cases.py build ROOT COUNT [N:STATE]...
    python tests/perf/ledger_cases.py move-many ROOT ROUNDS
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path[:0] = [str(REPO / "plugin")]  # patch_ledger even when not installed

from bench import Case, Row, Target, git, measure  # noqa: E402

PATCHES, MOVES, COMMITS = 10_000, 1_000, 1_000
BATCH = 2_000  # patches a ledger.record call
# The big ledger is not all PENDING: a status has states to count, `list` more to report.
BIG_WALK = ((3_000, "VALIDATING"), (2_000, "VALIDATED"), (1_000, "APPLIED"), (100, "QUARANTINED"))
APPLIED_WALK = ((MOVES, "VALIDATING"), (MOVES, "VALIDATED"), (MOVES, "APPLIED"))
ROUNDS_READ, ROUNDS_STEP, ROUNDS_MOVES, ROUNDS_RECORD, ROUNDS_SYNC = 10, 20, 7, 5, 10


# The floor: the bare for-each-ref that reads the same trailers, with git's own trailer
# parser. It is fixed here, whatever ledger.read_all asks git for (today the raw body, which
# ledger.py parses itself: see its _FORMAT).
TRAILERS_FLOOR = "%(refname)%00%(objectname)%00%(tree)%00%(trailers:only,unfold,separator=%x1f)"


# ---------------------------------------------------------------- fixtures (subprocess side)

def diff_of(i: int) -> bytes:
    """A small new file's diff, as `git diff --binary --full-index` writes it."""
    content = f"line {i}\n".encode()
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    return (f"diff --git a/f/{i:05d}.txt b/f/{i:05d}.txt\nnew file mode 100644\nindex {'0' * 40}..{blob}\n"
            f"--- /dev/null\n+++ b/f/{i:05d}.txt\n@@ -0,0 +1 @@\n+line {i}\n").encode()


def job_build(root: Path, count: int, walk: list[tuple[int, str]]) -> dict[str, Any]:
    """`count` patches with their real patch ids, recorded by ledger.record in batches, the
    first ones walked on with ledger.move_many, every ref packed. The seconds each took."""
    from patch_ledger import ledger, patches

    diffs = [diff_of(i) for i in range(count)]
    stream = b"".join(b"commit %040x\n" % i + d for i, d in enumerate(diffs))  # one patch-id run for all
    ids = {int(mark, 16): pid for pid, mark in patches.patch_ids(root, stream)}
    spent: dict[str, Any] = {"record": [], "move_many": []}
    for start in range(0, count, BATCH):
        began = time.perf_counter()
        ledger.record(root, [(ids[i], diffs[i], {"actor": "bench", "reason": "bench"}) for i in range(start, min(count, start + BATCH))])
        spent["record"].append(time.perf_counter() - began)
    order = [ids[i] for i in range(count)]
    for n, to in walk:
        current, _ = ledger.read_all(root)
        began = time.perf_counter()
        ledger.move_many(root, [ledger.Step(current[pid], to, "bench", "bench") for pid in order[:n]])
        spent["move_many"].append((n, to, time.perf_counter() - began))
    subprocess.run(["git", "-C", str(root), "pack-refs", "--all"], check=True)
    return spent


def job_move_many(root: Path, rounds: int) -> dict[str, Any]:
    """Each round: 1,000 APPLIED -> QUARANTINED with ledger.move_many (timed), then the floor,
    one `update-ref --stdin` transaction (timed) that puts the same 1,000 refs back where
    they were, with the same expected old values and reflogs: both do 1,000 compare-and-swaps."""
    from patch_ledger import ledger

    applied = sorted((p for p in ledger.read_all(root)[0].values() if p.state == "APPLIED"), key=lambda p: p.id)[:MOVES]
    ours, floor, wrong = [], [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        moved = ledger.move_many(root, [ledger.Step(p, "QUARANTINED", "bench", "bench") for p in applied])
        ours.append(time.perf_counter() - began)
        wrong += sum(m.state != "QUARANTINED" for m in moved)
        lines = ["start", *(f"update {p.ref} {p.tip} {m.tip}" for p, m in zip(applied, moved)), "prepare", "commit", ""]
        began = time.perf_counter()
        subprocess.run(["git", "-C", str(root), "update-ref", "--create-reflog", "--stdin"],
                       input="\n".join(lines).encode(), check=True, capture_output=True)
        floor.append(time.perf_counter() - began)
    return {"ours": ours, "floor": floor, "count": len(applied), "wrong": wrong}


def job(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args[:2])} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- repositories

def new_repo(path: Path, env: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    git(path, env, "init", "-q", "-b", "main")
    git(path, env, "config", "commit.gpgsign", "false")
    return path


def build_ledger(path: Path, env: dict[str, str], count: int, walk: tuple[tuple[int, str], ...]) -> Path:
    new_repo(path, env)
    git(path, env, "commit", "-q", "--allow-empty", "-m", "root")
    spent = job(env, "build", str(path), str(count), *(f"{n}:{to}" for n, to in walk))
    steps = sum(n for n, _ in walk)
    print(f"built {count:,} patches in {path.name}: ledger.record {sum(spent['record']):.1f} s "
          f"({len(spent['record'])} batch(es) of up to {BATCH:,}: {' '.join(f'{s:.1f}' for s in spent['record'])}); "
          f"{steps:,} transitions by ledger.move_many {sum(s for *_, s in spent['move_many']):.1f} s")
    return path


def fast_import_history(path: Path, env: dict[str, str], commits: int) -> str:
    """A repository whose `base..main` holds `commits` small commits (each appends a line to one
    of 50 files), written by one `git fast-import`. Returns the range."""
    new_repo(path, env)
    files = {f"src/m{k:02d}.py": f"# module {k}\n" for k in range(50)}
    out = []

    def commit(n: int, message: str, changes: dict[str, str]) -> None:
        out.append(f"commit refs/heads/main\nmark :{n + 1}\ncommitter Bench <bench@example.com> {1_700_000_000 + n} +0000\n"
                   f"data {len(message)}\n{message}\n")
        out.extend(f"M 100644 inline {p}\ndata {len(c)}\n{c}\n" for p, c in changes.items())

    commit(0, "base", files)
    for n in range(1, commits + 1):
        path_n = f"src/m{n % 50:02d}.py"
        files[path_n] += f"value_{n} = {n}\n"
        commit(n, f"change {n}: value_{n} in {path_n}", {path_n: files[path_n]})
    out.append("reset refs/tags/base\nfrom :1\n\n")
    git(path, env, "fast-import", "--quiet", input="".join(out).encode())
    git(path, env, "reset", "-q", "--hard", "main")
    return "base..main"


def forget_ledger(repo: Path, env: dict[str, str]) -> Callable[[], None]:
    """A preparer that deletes every ledger ref (one transaction), so the next record starts empty."""
    def prepare() -> None:
        refs = git(repo, env, "for-each-ref", "--format=delete %(refname)", "refs/ledger/")
        if refs.strip():
            git(repo, env, "update-ref", "--stdin", input=refs)
    return prepare


# ---------------------------------------------------------------- the rows

def read_rows(big: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    """The whole ledger read: first as the ledger's writes leave it (every object loose, for
    information), then after `git gc` would have packed the objects, as a repository of
    some age holds them: the rows with the target."""
    from patch_ledger import ledger

    floor = ["git", "for-each-ref", f"--format={TRAILERS_FLOOR}", ledger.PREFIX]
    listing = [ledger_bin, "patch", "list", "--format", "json"]
    status = subprocess.run([ledger_bin, "status", "--format", "json"], cwd=big, capture_output=True, text=True, env=env)
    shows_patches = status.returncode == 0 and "patches" in json.loads(status.stdout or "{}")
    ours = [ledger_bin, "status"] if shows_patches else listing
    rows = [measure(Case(f"(c) `ledger {' '.join(ours[1:])}`, {PATCHES:,} patches, packed refs, loose objects / for-each-ref",
                         big, ours, floor, ROUNDS_READ, None), env)]
    git(big, env, "repack", "-a", "-d", "-q")
    name = f"(c) `ledger status`, {PATCHES:,} patches, packed refs and objects / for-each-ref"
    if shows_patches:
        rows.append(measure(Case(name, big, [ledger_bin, "status"], floor, ROUNDS_READ, Target(2.0)), env))
    else:
        rows.append(Row(name, None, None, Target(2.0), "not available yet: `ledger status` reports no patches"))
    # the issue bounds `ledger status`; a full JSON listing of every patch is shown for information
    rows.append(measure(Case("(c) `ledger patch list --format json`, the same", big, listing, floor, ROUNDS_READ, None), env))
    return rows


def step_rows(tmp: Path, big: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    """One transition from the CLI, quarantine and release in turn, in the big ledger and a small one."""
    small = build_ledger(tmp / "ledger-small", env, 10, ((10, "VALIDATING"), (10, "VALIDATED"), (10, "APPLIED")))
    python = [sys.executable, "-c", "pass"]
    rows = []
    for repo, size in ((big, f"{PATCHES:,}"), (small, "10")):
        listed = subprocess.run([ledger_bin, "patch", "list", "--state", "APPLIED", "--format", "json"], cwd=repo,
                                capture_output=True, text=True, env=env, check=True)
        pid = json.loads(listed.stdout)["patches"][0]["id"]
        steps = itertools.cycle([[ledger_bin, "patch", "quarantine", pid, "--reason", "bench"],
                                 [ledger_bin, "patch", "release", pid]])
        ref = "refs/ledger/patches/" + pid
        before = _commits_on(repo, env, ref)
        row = measure(Case(f"(d) one transition from the CLI, ledger of {size} / python -c pass", repo,
                           lambda steps=steps: next(steps), python, ROUNDS_STEP, Target(0.25, seconds=True)), env)
        made = _commits_on(repo, env, ref) - before
        rows.append(row if made == ROUNDS_STEP + 1 else row._replace(note=f"{made} transitions made, not {ROUNDS_STEP + 1}"))
    return rows


def _commits_on(repo: Path, env: dict[str, str], ref: str) -> int:
    return int(git(repo, env, "rev-list", "--count", ref))


def move_many_row(tmp: Path, env: dict[str, str]) -> Row:
    repo = build_ledger(tmp / "ledger-moves", env, MOVES, APPLIED_WALK)
    got = job(env, "move-many", str(repo), str(ROUNDS_MOVES))
    note = "" if got["count"] == MOVES and not got["wrong"] else f"moved {got['count']} patches, {got['wrong']} wrongly"
    return Row(f"(e) {MOVES:,} transitions in-process, ledger.move_many / one update-ref --stdin",
               statistics.median(got["ours"]), statistics.median(got["floor"]), Target(3.0), note)


def record_rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    repo = tmp / "history"
    revrange = fast_import_history(repo, env, COMMITS)
    record = [ledger_bin, "patch", "record", revrange]
    floor = ["git", "log", "--no-merges", "-p", "--binary", "--full-index", revrange, "--"]  # the diffs it must read
    rows = [measure(Case(f"(f) `ledger patch record` of {COMMITS:,} commits / git log -p", repo, record, floor,
                         ROUNDS_RECORD, Target(5.0, seconds=True), prepare=forget_ledger(repo, env)), env)]
    recorded = len(git(repo, env, "for-each-ref", "--format=%(refname)", "refs/ledger/patches/").splitlines())
    if recorded != COMMITS:
        rows[0] = rows[0]._replace(note=f"{recorded} patches recorded, not {COMMITS}")
    rows.append(measure(Case("(f) same again, all recorded already (a no-op)", repo, record, floor, ROUNDS_RECORD, None), env))
    return rows


def sync_row(tmp: Path, big: Path, env: dict[str, str], ledger_bin: str) -> Row:
    """A no-op `ledger sync` (or sync.sync while the command is being written) against a bare
    remote holding the same ledger; the floor is the least git does to learn that nothing
    changed: list the remote's ledger refs (a no-op `git fetch` of them takes longer)."""
    name = f"(g) no-op `ledger sync`, bare remote of {PATCHES:,} patches / git ls-remote"
    if subprocess.run([ledger_bin, "sync", "--help"], capture_output=True, env=env).returncode == 0:
        ours = [ledger_bin, "sync", "origin"]
    elif _has_sync_function():
        name = name.replace("`ledger sync`", "sync.sync() in a fresh process")
        ours = [sys.executable, "-c", "from pathlib import Path; from patch_ledger import sync; sync.sync(Path('.'), 'origin')"]
    else:
        return Row(name, None, None, Target(0.6, seconds=True), "not available yet: no `ledger sync`, no sync.sync")
    remote = tmp / "remote.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(big), str(remote)], check=True, capture_output=True, env=env)
    git(big, env, "remote", "add", "origin", str(remote))
    floor = ["git", "ls-remote", "--refs", "origin", "refs/ledger/patches/*"]
    return measure(Case(name, big, ours, floor, ROUNDS_SYNC, Target(0.6, seconds=True)), env)


def _has_sync_function() -> bool:
    if importlib.util.find_spec("patch_ledger.sync") is None:
        return False
    try:
        from patch_ledger import sync
    except Exception:  # being written: not usable yet
        return False
    return callable(getattr(sync, "sync", None))


def rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    big = build_ledger(tmp / "ledger-big", env, PATCHES, BIG_WALK)
    out = read_rows(big, env, ledger_bin)
    out += step_rows(tmp, big, env, ledger_bin)
    out.append(move_many_row(tmp, env))
    out += record_rows(tmp, env, ledger_bin)
    out.append(sync_row(tmp, big, env, ledger_bin))  # last: it gives the big ledger a remote
    return out


def main(argv: list[str]) -> int:
    what, root = argv[0], Path(argv[1])
    if what == "build":
        walk = [(int(n), to) for n, to in (w.split(":") for w in argv[3:])]
        print(json.dumps(job_build(root, int(argv[2]), walk)))
    elif what == "move-many":
        print(json.dumps(job_move_many(root, int(argv[2]))))
    else:
        raise SystemExit(f"unknown job {what!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
