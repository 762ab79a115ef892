"""The gates' rows of the benchmark, each against its floor: the `pytest` gate on a real
third-party suite against plain pytest (serial and with xdist), and the gates' bookkeeping
(recording a result, reading every result) against the bare git that does the same work.

Run by tests/perf/run.py. The suite is python-dateutil's, from its source distribution
(downloaded once into a cache under the system's temporary directory); the package and its
test requirements come from the `perf` extra. Whatever calls patch_ledger in-process runs in
a subprocess of this file, so that its timings are clean:

    python tests/perf/gate_cases.py results ROOT           # two gate results on every patch
    python tests/perf/gate_cases.py record ROOT ROUNDS     # one result recorded, and its floor
    python tests/perf/gate_cases.py read ROOT ROUNDS       # results.read_all, and its floor
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[2] / "plugin")]  # patch_ledger even when not installed

from bench import Case, Row, Target, git, interleaved, measure, run_job  # noqa: E402
from ledger_cases import TRAILERS_FLOOR, build_ledger, new_repo  # noqa: E402

SUITE, VERSION = "python-dateutil", "2.9.0.post0"  # the perf extra pins the same version
# dateutil's setup.cfg makes every warning an error. Two are not its tests' business: pytest 9
# deprecates the generator one test module passes to parametrize, and its conftest marks tests
# `no_cover`, a marker that pytest-cov (not needed here) registers.
SUITE_ARGS = ["tests", "-W", "ignore::pytest.PytestRemovedIn10Warning", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
CACHE = Path(tempfile.gettempdir()) / "patch-ledger-bench"
ROUNDS_SUITE, ROUNDS_RECORD, ROUNDS_READ = 7, 20, 10
WARM_UPS = (0, 2)  # the gate's `workers:` in its runs before the measured ones
PATCHES, GATES = 1_000, ("tests", "lint")


# ---------------------------------------------------------------- jobs (subprocess side)

def job_results(root: Path, limit: int = 0) -> dict[str, Any]:
    """Two finished results (gates `tests` and `lint`) on every patch of the ledger (on the
    first `limit` of them, when given), every
    tenth `tests` FAILED: the documents the runner makes (gating.finish), checked and written
    as results.save writes them, but all in one ref transaction (2,000 saves would take
    10-15 s, each with its own update-ref)."""
    from patch_ledger import gating, git, ledger, results, schemas
    from patch_ledger.hookspecs import Failure, Outcome

    began = time.perf_counter()
    passed = Outcome("PASSED", "40 passed", {"tests": 40, "passed": 40}, log="log", work_s=1.5)
    failed = Outcome("FAILED", "1 of 40 tests failed", {"tests": 40, "passed": 39, "failed": 1},
                     (Failure("tests/test_a.py::test_b", "assert 1 == 2", "tests/test_a.py", 3),), "log")
    docs = []
    chosen = sorted(ledger.read_all(root)[0].values(), key=lambda p: p.id)
    for n, patch in enumerate(chosen[:limit] if limit else chosen):
        for gate in GATES:
            doc = results.begin(patch.id, gate, "1/1", patch.base, "pytest", gate == "tests", "bench")
            outcome = failed if gate == "tests" and n % 10 == 0 else passed
            docs.append(gating.finish(results.step(doc, "RUNNING", "bench", "started"), outcome, 2.0, "bench"))
    invalid = next((e for doc in docs for e in schemas.validate("gate", doc)), None)
    if invalid is not None:
        raise SystemExit(f"bench: a result is not valid: {invalid.message}")
    blobs = git.hash_objects(root, "blob", [json.dumps(d, indent=2, ensure_ascii=False).encode() + b"\n" for d in docs])
    trees = git.hash_objects(root, "tree", [ledger.tree_object(b, results.DOC) for b in blobs])
    commits = git.hash_objects(root, "commit", [ledger.commit_object(t, [], d["history"][-1], results.render(d))
                                                for t, d in zip(trees, docs)])
    if not ledger.swap(root, [(results.ref_of(d["patch"], d["gate"], d["id"]), c, None) for d, c in zip(docs, commits)]):
        raise SystemExit("bench: another writer made the results' refs first")
    return {"seconds": time.perf_counter() - began}


def job_record(root: Path, rounds: int) -> dict[str, Any]:
    """Each round: one result recorded as the runner records it (begin, RUNNING saved, its
    outcome saved: two commits on a new ref), timed; then the floor, the two `update-ref
    --stdin` transactions that write the same ref to commits prepared beforehand."""
    from patch_ledger import gating, git as ledger_git, ledger, results
    from patch_ledger.hookspecs import Outcome

    patch = next(iter(ledger.read_all(root)[0].values()))
    ours, floor = [], []
    for i in range(rounds):
        began = time.perf_counter()
        doc = results.begin(patch.id, "bench", "1/1", patch.base, "command", False, "bench")
        doc = results.step(doc, "RUNNING", "bench", "started")
        tip = results.save(root, doc, None)
        results.save(root, gating.finish(doc, Outcome("PASSED", "true: exit code 0", workers=1), 0.01, "bench"), tip)
        ours.append(time.perf_counter() - began)
        ref, zero = f"refs/ledger/bench/{i}", "0" * len(patch.tip)
        began = time.perf_counter()
        for new, old in ((patch.tip, zero), (tip, patch.tip)):
            ledger_git.run(root, "update-ref", "--create-reflog", "--stdin",
                           input=f"start\nupdate {ref} {new} {old}\nprepare\ncommit\n".encode())
        floor.append(time.perf_counter() - began)
    ledger_git.run(root, "update-ref", "--stdin", input="".join(f"delete refs/ledger/bench/{i}\n" for i in range(rounds)).encode())
    return {"ours": ours, "floor": floor}


def job_read(root: Path, rounds: int) -> dict[str, Any]:
    """Each round: results.read_all of the whole ledger (timed, the call), and the floor: the
    bare for-each-ref that reads the same trailers of refs/ledger/gates/."""
    from patch_ledger import results

    ours, floor, count = [], [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        found, broken = results.read_all(root)
        ours.append(time.perf_counter() - began)
        count = len(found) if not broken else -len(broken)
        began = time.perf_counter()
        subprocess.run(["git", "-C", str(root), "for-each-ref", f"--format={TRAILERS_FLOOR}", results.PREFIX],
                       check=True, capture_output=True)
        floor.append(time.perf_counter() - began)
    return {"ours": ours, "floor": floor, "count": count}


# ---------------------------------------------------------------- the suite

def suite_source() -> Path:
    """The unpacked source distribution of the suite, downloaded into the cache once."""
    tree = CACHE / f"{SUITE}-{VERSION}"
    if tree.is_dir():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                              "--dest", scratch, f"{SUITE}=={VERSION}"], capture_output=True, text=True)
        archives = list(Path(scratch).glob("*.tar.gz"))
        if got.returncode != 0 or len(archives) != 1:
            raise SystemExit(f"bench: could not download the source of {SUITE}=={VERSION}:\n{got.stderr.strip()[-500:]}")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        Path(scratch, archives[0].name.removesuffix(".tar.gz")).rename(tree)
    return tree


def suite_missing(env: dict[str, str]) -> str | None:
    """What keeps the suite from running in this environment, or None."""
    probe = "import dateutil, freezegun, hypothesis, xdist; print(dateutil.__version__)"
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if got.returncode != 0 or got.stdout.strip() != VERSION:
        return f"needs {SUITE}=={VERSION}, freezegun, hypothesis and pytest-xdist: pip install -e '.[perf]'"
    return None


def configure(repo: Path, env: dict[str, str], workers: Any, message: str) -> None:
    gate = {"name": "tests", "plugin": "pytest", "args": {"args": SUITE_ARGS, "workers": workers}}
    (repo / ".ledger").mkdir(exist_ok=True)
    (repo / ".ledger" / "config.yaml").write_text(json.dumps({"schema_version": 2, "gates": [gate]}, indent=1) + "\n")
    git(repo, env, "add", ".ledger/config.yaml")
    git(repo, env, "commit", "-q", "--no-verify", "-m", message)


def suite_repo(tmp: Path, env: dict[str, str], ledger_bin: str, plain: list[list[str]]) -> tuple[Path, list[bool]]:
    """The suite committed as its sdist ships it, and run by each `plain` command first (each
    must exit 0; the first run also compiles the tests, which would make the gate's first
    run look slow); its gate run serial, then with two workers (so that the gate's history
    holds both), each on a commit of its own; then `workers: auto` and a small change: the
    patch gated. The repository, and whether each plain run passed."""
    repo = new_repo(tmp / "gate-suite", env)
    shutil.copytree(suite_source(), repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".hypothesis"))
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "--no-verify", "-m", f"{SUITE} {VERSION}, as its source distribution ships it")
    sound = [subprocess.run(c, cwd=repo, capture_output=True, env=env).returncode == 0 for c in plain]
    for workers in WARM_UPS:
        configure(repo, env, workers, f"gate tests, workers: {workers}")
        subprocess.run([ledger_bin, "gate", "run", "tests"], cwd=repo, capture_output=True, env=env)
    configure(repo, env, "auto", "gate tests, workers: auto")
    with open(repo / "tests" / "test_easter.py", "a") as f:
        f.write("\n\ndef test_easter_2027():\n    assert easter(2027) == date(2027, 3, 28)\n")
    git(repo, env, "commit", "-q", "--no-verify", "-am", "test: Easter 2027")
    return repo, sound


def gate_docs(repo: Path, env: dict[str, str], count: int) -> list[dict[str, Any]]:
    """The `count` newest results of gate `tests` (documents, newest first)."""
    trees = git(repo, env, "for-each-ref", "--sort=-committerdate", f"--count={count}", "--format=%(tree)",
                "refs/ledger/gates/*/tests/*").decode().split()
    return [json.loads(git(repo, env, "cat-file", "blob", f"{tree}:gate.json")) for tree in trees]


def suite_rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    name = f"(h) `ledger gate run tests`, the pytest gate on {SUITE} {VERSION}'s tests"
    missing = suite_missing(env)
    if missing:
        return [Row(name, None, None, Target(1.05), missing)]
    plain = [sys.executable, "-m", "pytest", *SUITE_ARGS]
    commands = [[ledger_bin, "gate", "run", "tests"], plain, [*plain, "-n", "2"]]
    repo, sound = suite_repo(tmp, env, ledger_bin, commands[1:])
    gate, serial, spread = interleaved(commands, repo, env, ROUNDS_SUITE)
    docs = gate_docs(repo, env, ROUNDS_SUITE + len(WARM_UPS))
    report_choice(docs[ROUNDS_SUITE:], docs[:ROUNDS_SUITE], gate)
    docs = docs[:ROUNDS_SUITE]
    tests = docs[0]["counts"]["tests"] if docs else 0
    note = "; ".join([*([] if all(sound) else ["plain pytest did not exit 0"]),
                      *([] if all(d["state"] == "PASSED" for d in docs) else ["a gate run did not pass"])])
    return [Row(f"{name} ({tests:,} tests) / plain `python -m pytest` (serial)", gate, serial, None, note),
            Row("(h) same / plain `python -m pytest -n 2`", gate, spread, None, note),
            Row("(h) same / the faster of the two", gate, min(serial, spread), Target(1.05), note)]


def report_choice(warm: list[dict[str, Any]], docs: list[dict[str, Any]], wall: float) -> None:
    """What the gate chose in the measured runs, and why (the first line of its log), after
    its warm-up runs; and where its time went: pytest inside it (duration_s), the tests
    themselves (work_s), and the rest, the ledger's own (the CLI's start, its git calls,
    recording the result). Documents newest first."""
    if not docs:
        return
    modes = Counter(d["log"].split(":", 1)[0].lstrip("[") for d in docs)
    print("gate: " + ", ".join(f"{mode} {n} of {len(docs)} times" for mode, n in modes.most_common())
          + "; its runs, oldest first (pytest's time, the gate's choice):")
    for n, doc in enumerate(reversed([*docs, *warm])):
        print(f"  {'warm-up' if n < len(warm) else 'measured'} {doc['state']} {doc['duration_s']:6.3f} s  {doc['log'].splitlines()[0]}")
    inside = statistics.median(d["duration_s"] for d in docs)
    print(f"gate: {wall:.3f} s in all (median), its pytest {inside:.3f} s (duration_s), the tests' own time "
          f"{statistics.median(d.get('work_s', 0) for d in docs):.3f} s (work_s); the ledger's own ~{wall - inside:.3f} s")


# ---------------------------------------------------------------- the bookkeeping

def record_rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    repo = build_ledger(tmp / "gate-small", env, 10, ())
    got = run_job(HERE, env, "record", str(repo), str(ROUNDS_RECORD))
    rows = [Row("(i) one result recorded in-process (results.begin, step, save twice) / two update-ref --stdin",
                statistics.median(got["ours"]), statistics.median(got["floor"]), Target(3.0))]
    (repo / ".ledger").mkdir(exist_ok=True)
    (repo / ".ledger" / "config.yaml").write_text('schema_version: 2\ngates:\n  - {name: noop, plugin: command, args: {command: ["true"]}}\n')
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "--no-verify", "-m", "a trivial gate")
    rows.append(measure(Case("(i) `ledger gate run noop`, a command gate running `true` / `true`", repo,
                             [ledger_bin, "gate", "run", "noop"], ["true"], ROUNDS_RECORD, Target(0.25, seconds=True)), env))
    return rows


def read_rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    """1,000 patches with two results each, refs packed and objects repacked (as (c) reads them)."""
    repo = build_ledger(tmp / "gate-results", env, PATCHES, ())
    spent = run_job(HERE, env, "results", str(repo))["seconds"]
    print(f"recorded {PATCHES * len(GATES):,} gate results on {PATCHES:,} patches in {spent:.1f} s")
    git(repo, env, "pack-refs", "--all")
    git(repo, env, "repack", "-a", "-d", "-q")
    got = run_job(HERE, env, "read", str(repo), str(ROUNDS_READ))
    count = f"{PATCHES * len(GATES):,} results"
    note = "" if got["count"] == PATCHES * len(GATES) else f"read {got['count']} results, not {PATCHES * len(GATES)}"
    rows = [Row(f"(j) results.read_all in-process, {count} on {PATCHES:,} patches / for-each-ref of refs/ledger/gates/",
                statistics.median(got["ours"]), statistics.median(got["floor"]), Target(2.0), note)]
    shown = subprocess.run([ledger_bin, "status", "--format", "json"], cwd=repo, capture_output=True, text=True, env=env)
    reads_gates = '"gates": {"' in shown.stdout
    floor = ["git", "for-each-ref", f"--format={TRAILERS_FLOOR}", "refs/ledger/"]
    # at 1,000 patches the floor is ~25 ms, less than Python's start and imports: info only
    rows.append(measure(Case(f"(j) `ledger status`, the same ledger / for-each-ref of refs/ledger/", repo, [ledger_bin, "status"],
                             floor, ROUNDS_READ, None), env))
    if not reads_gates:
        rows[-1] = rows[-1]._replace(note="status shows no gate results yet")
    # the ledger issue's budget is set on a ledger of 10,000 patches: the same, with results
    big = build_ledger(tmp / "gate-results-10k", env, 10 * PATCHES, ())
    run_job(HERE, env, "results", str(big), str(PATCHES))
    git(big, env, "pack-refs", "--all")
    git(big, env, "repack", "-a", "-d", "-q")
    rows.append(measure(Case(f"(j) `ledger status`, {10 * PATCHES:,} patches, {count} on {PATCHES:,} of them / for-each-ref of refs/ledger/",
                             big, [ledger_bin, "status"], floor, ROUNDS_READ, Target(2.0)), env))
    return rows


def rows(tmp: Path, env: dict[str, str], ledger_bin: str) -> list[Row]:
    return [*suite_rows(tmp, env, ledger_bin), *record_rows(tmp, env, ledger_bin), *read_rows(tmp, env, ledger_bin)]


JOBS = {"results": job_results, "record": job_record, "read": job_read}


def main(argv: list[str]) -> int:
    what, root, *numbers = argv
    if what not in JOBS:
        raise SystemExit(f"unknown job {what!r}; the jobs: {', '.join(JOBS)}")
    print(json.dumps(JOBS[what](Path(root), *map(int, numbers))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
