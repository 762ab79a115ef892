"""The benchmark, side by side in one run: `ledger check` against check-jsonschema (the peer),
the patch ledger's commands against their floors (tests/perf/ledger_cases.py), the gates
against plain pytest and their floors (tests/perf/gate_cases.py), and `ledger run` of a DAG
against `make -j2` of the same DAG (tests/perf/run_cases.py).

    python tests/perf/run.py [check] [ledger] [gate] [run]      # every group when none is named

Builds real git repositories in a temporary directory and times each command from process
start to exit, ours and the peer's (or the floor's) interleaved so that drift in the machine
hits both. For `ledger check`: a run's state files are committed, then changed; the peer
validates the same task files against a self-contained bundle of schemas/task.json (it
cannot fetch our `$ref`s' host); ours also checks the state machines, the transition from
HEAD and the whole run. Prints one table of medians and ratios; never asserts a time (see
tests/perf/README.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]  # tests.builders; patch_ledger even when not installed

import gate_cases  # noqa: E402  (beside this file)
import ledger_cases  # noqa: E402
import run_cases  # noqa: E402
from bench import Case, Row, Target, git, git_env, measure, print_table  # noqa: E402
from patch_ledger import machine, schemas  # noqa: E402
from tests.builders import stamp, walk  # noqa: E402

BIN = Path(sys.executable).parent
LEDGER, PEER = BIN / "ledger", BIN / "check-jsonschema"
RUN = "bench"
ROUNDS_ONE, ROUNDS_MANY = 15, 5
BIG_TASKS, BIG_WORKSTREAMS = 2000, 20
SMALL_TASKS, SMALL_WORKSTREAMS = 20, 2

# Each task's base walk (5-6 history entries, none terminal) and the one legal step the
# change appends to it; two of the five end terminal, so the run's progress moves too.
WALKS = (
    (("QUEUED", "RUNNING", "VALIDATING", "RETRYING", "QUEUED"), "RUNNING"),
    (("BLOCKED", "PENDING", "QUEUED", "RUNNING", "VALIDATING"), "COMPLETED"),
    (("QUEUED", "RUNNING", "RETRYING", "QUEUED"), "RUNNING"),
    (("QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING"), "FAILED"),
    (("QUEUED", "RUNNING", "VALIDATING", "RETRYING"), "QUEUED"),
)


# ---------------------------------------------------------------- documents

def task_id(i: int) -> str:
    return f"t-{i:04d}"


def ws_id(w: int) -> str:
    return f"ws-{w:02d}"


def base_task(i: int, n_tasks: int, n_ws: int) -> dict[str, Any]:
    per_ws = n_tasks // n_ws
    w = i // per_ws
    deps = [task_id(j) for j in (i - 1, i - 3) if j >= w * per_ws]
    states, _ = WALKS[i % len(WALKS)]
    return walk("task", task_id(i), list(states), start=(i * 7) % 1200, run=RUN, workstream=ws_id(w),
                title=f"Task {i}: change module {i % 97} and its tests", depends_on=deps,
                attempts=0, max_attempts=3, worker=f"worker-{i % 8}")


def changed_task(doc: dict[str, Any], i: int) -> dict[str, Any]:
    """`doc` with one more legal history entry, a minute after its last one."""
    to = WALKS[i % len(WALKS)][1]
    extra: dict[str, Any] = {"attempts": doc["attempts"] + 1} if to == "RUNNING" else {}
    if to == "COMPLETED":
        extra.update(patch=hashlib.sha1(doc["id"].encode()).hexdigest(), result={"summary": "tests pass"})
    at = stamp((i * 7) % 1200 + len(doc["history"]))
    return {**machine.step(doc, "task", to, "worker", f"step {len(doc['history'])}", at=at), **extra}


def share_done(tasks: list[dict[str, Any]]) -> float:
    terminal = machine.load("task").terminal
    return sum(t["state"] in terminal for t in tasks) / len(tasks) if tasks else 0.0


def run_files(tasks: list[dict[str, Any]], n_ws: int) -> dict[str, Any]:
    """Every state file of the run, with the run's and workstreams' progress derived from `tasks`."""
    base = f".ledger/runs/{RUN}"
    files: dict[str, Any] = {f"{base}/tasks/{t['id']}.json": t for t in tasks}
    for w in range(n_ws):
        mine = [t for t in tasks if t["workstream"] == ws_id(w)]
        deps = [ws_id(w - 1)] if w else []
        files[f"{base}/workstreams/{ws_id(w)}.json"] = walk(
            "workstream", ws_id(w), ["READY", "RUNNING"], run=RUN, title=f"Workstream {w}",
            depends_on=deps, progress=share_done(mine))
    files[f"{base}/run.json"] = walk("run", RUN, ["RUNNING"], plan=".ledger/plans/bench.yaml",
                                     title="Benchmark run", progress=share_done(tasks))
    return files


# ---------------------------------------------------------------- repositories

def write_all(repo: Path, files: dict[str, Any]) -> None:
    for rel, doc in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")


def build_repo(repo: Path, env: dict[str, str], n_tasks: int, n_ws: int, changed: range) -> list[str]:
    """A committed run of `n_tasks`, then tasks `changed` advanced one step (staged, as a
    commit would see them). Returns the task files' paths."""
    tasks = [base_task(i, n_tasks, n_ws) for i in range(n_tasks)]
    repo.mkdir(parents=True)
    git(repo, env, "init", "-q", "-b", "main")
    git(repo, env, "config", "commit.gpgsign", "false")
    write_all(repo, run_files(tasks, n_ws))
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "--no-verify", "-m", "base")
    after = [changed_task(t, i) if i in changed else t for i, t in enumerate(tasks)]
    write_all(repo, run_files(after, n_ws))
    git(repo, env, "add", "-A")
    return [f".ledger/runs/{RUN}/tasks/{t['id']}.json" for t in tasks]


# ---------------------------------------------------------------- the peer's schema

def bundled_task_schema() -> dict[str, Any]:
    """schemas/task.json with common.json's $defs inlined, every ref local to the document."""
    common = copy.deepcopy(schemas.load("common")["$defs"])
    task = copy.deepcopy(schemas.load("task"))
    task.pop("$id", None)
    prefix = "common.json#/$defs/"

    def rewrite(node: Any, own: str) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v, own) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str):
                if ref.startswith(prefix):
                    out["$ref"] = "#/$defs/common." + ref[len(prefix):]
                elif ref.startswith("#/$defs/") and own == "common":
                    out["$ref"] = "#/$defs/common." + ref[len("#/$defs/"):]
                elif not ref.startswith("#/"):
                    raise SystemExit(f"bench: cannot bundle $ref {ref!r}; teach bundled_task_schema about it")
            return out
        if isinstance(node, list):
            return [rewrite(v, own) for v in node]
        return node

    task = rewrite(task, "task")
    task["$defs"].update({f"common.{k}": rewrite(v, "common") for k, v in common.items()})
    return task


def confirm_peer(tmp: Path, env: dict[str, str], schema: Path, good: Path) -> None:
    """The peer passes a valid file and fails broken ones, so it is really doing the work
    (the broken timestamp sits behind two bundled refs)."""
    doc = json.loads(good.read_text())
    broken = {"bad-timestamp": lambda d: d["history"][-1].update(at="yesterday"),
              "unknown-field": lambda d: d.update(colour="blue")}
    if peer_exit(env, schema, good) != 0:
        raise SystemExit(f"bench: check-jsonschema fails the valid {good}; the bundled schema is wrong")
    for name, breaking in broken.items():
        bad = copy.deepcopy(doc)
        breaking(bad)
        path = tmp / f"broken-{name}.json"
        path.write_text(json.dumps(bad, indent=2) + "\n")
        if peer_exit(env, schema, path) == 0:
            raise SystemExit(f"bench: check-jsonschema passes {path} ({name}); it is not validating")
    print(f"peer confirmed: exit 0 on a valid task, non-zero on {len(broken)} broken copies ({', '.join(broken)})")


def peer_exit(env: dict[str, str], schema: Path, path: Path) -> int:
    return subprocess.run([str(PEER), "--schemafile", str(schema), str(path)], capture_output=True, env=env).returncode


def check_rows(tmp: Path, env: dict[str, str]) -> list[Row]:
    schema = tmp / "task.bundled.json"
    schema.write_text(json.dumps(bundled_task_schema(), indent=2) + "\n")
    small, big = tmp / "small", tmp / "big"
    small_paths = build_repo(small, env, SMALL_TASKS, SMALL_WORKSTREAMS, range(0, 1))
    big_paths = build_repo(big, env, BIG_TASKS, BIG_WORKSTREAMS, range(BIG_TASKS))
    confirm_peer(tmp, env, schema, small / small_paths[0])
    peer = [str(PEER), "--schemafile", str(schema)]
    cases = [
        Case(f"(a) 1 changed task, `ledger check FILE` (run of {SMALL_TASKS}) / check-jsonschema", small,
             [str(LEDGER), "check", small_paths[0]], [*peer, small_paths[0]], ROUNDS_ONE, Target(0.5)),
        Case(f"(a) same, inside the run of {BIG_TASKS} (all changed)", big,
             [str(LEDGER), "check", big_paths[0]], [*peer, big_paths[0]], ROUNDS_ONE, None),
        Case(f"(b) {BIG_TASKS} changed tasks, `ledger check` (whole run) / check-jsonschema", big,
             [str(LEDGER), "check"], [*peer, *big_paths], ROUNDS_MANY, Target(0.6)),
    ]
    return [measure(case, env) for case in cases]


def versions(env: dict[str, str], groups: list[str]) -> str:
    def first_line(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]

    peer = f"{first_line([str(PEER), '--version'])}; " if "check" in groups else ""
    peer += f"{first_line(['make', '--version'])}; " if "run" in groups else ""
    return (f"{first_line([str(LEDGER), '--version'])}; {peer}Python {platform.python_version()}; "
            f"{first_line(['git', '--version'])}; {os.cpu_count()} CPU(s)")


def main(argv: list[str]) -> int:
    groups = argv or ["check", "ledger", "gate", "run"]
    unknown = sorted(set(groups) - {"check", "ledger", "gate", "run"})
    if unknown:
        print(f"bench: no group {', '.join(unknown)}; name check, ledger, gate or run (none: all four)", file=sys.stderr)
        return 2
    missing = [p.name for p in (LEDGER, *([PEER] if "check" in groups else [])) if not os.access(p, os.X_OK)]
    if missing:
        print(f"bench: {', '.join(missing)} not found in {BIN}; install the peer with `pip install -e '.[perf]'` "
              f"(and patch-ledger itself) into the environment of {sys.executable}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as name:
        tmp = Path(name)
        env = git_env(tmp / "home")
        (tmp / "home").mkdir()
        print(versions(env, groups))
        rows = check_rows(tmp, env) if "check" in groups else []
        if "ledger" in groups:
            rows += ledger_cases.rows(tmp, env, str(LEDGER))
        if "gate" in groups:
            rows += gate_cases.rows(tmp, env, str(LEDGER))
        if "run" in groups:
            rows += run_cases.rows(tmp, env, str(LEDGER))
        print("medians, process start to exit (the in-process row: of the call); ratio = ours / floor or peer; "
              "rounds and floors in tests/perf/README.md")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
