"""`ledger run` as a user runs it: real git in a temporary repository, the real CLI in its own
process, real worker processes and real signals (SIGINT, SIGSTOP, SIGKILL).

Every test writes a tiny plan to .ledger/plans/p.yaml, runs it, and reads back what the run
left: the state files, the event log, the tasks' output logs under .git/ledger/, and the
files the tasks themselves wrote (each appends to done/<task>)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from patch_ledger import machine
from patch_ledger.check import check
from patch_ledger.orchestrator import retry_delay
from patch_ledger.router import Router
from tests.builders import git

DEFAULTS = {"max_attempts": 2, "retry_delay_s": 0.05}
DONE = "sh -c 'echo $LEDGER_ATTEMPT >> done/$LEDGER_TASK'"  # a task that says it ran, and which attempt


def sleeper(seconds: float) -> str:
    """A task that records its shell's pid, sleeps, then says it ran."""
    return f"sh -c 'echo $$ >> pids/$LEDGER_TASK; sleep {seconds}; echo $LEDGER_ATTEMPT >> done/$LEDGER_TASK'"


# --- building a repository and running the CLI ------------------------------------------


def setup(repo: Path, *workstreams: dict[str, Any], tools: dict[str, Any] | None = None, **defaults: Any) -> Path:
    """`repo` with the plan .ledger/plans/p.yaml and the directories the tasks write to."""
    plan: dict[str, Any] = {"schema_version": 2, "name": "p", "defaults": {**DEFAULTS, **defaults},
                            "workstreams": list(workstreams)}
    if tools:
        plan["tools"] = tools
    write_plan(repo, yaml.safe_dump(plan, sort_keys=False))
    for name in ("done", "pids", "locks"):
        (repo / name).mkdir(exist_ok=True)
    return repo


def write_plan(repo: Path, text: str) -> None:
    (repo / ".ledger" / "plans").mkdir(parents=True, exist_ok=True)
    (repo / ".ledger" / "plans" / "p.yaml").write_text(text)


def ws(wid: str, *tasks: dict[str, Any], depends_on: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"id": wid, "tasks": list(tasks)}
    if depends_on:
        out["depends_on"] = list(depends_on)
    return out


def task(tid: str, run: str = DONE, *deps: str, **spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tid, "run": run, **spec}
    if deps:
        out["depends_on"] = list(deps)
    return out


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def start(repo: Path, *args: str, session: bool = True) -> subprocess.Popen[str]:
    """`ledger ARGS` started in its own process group (so a test can signal it as a terminal
    would), in a session of its own; or, without `session`, in ours: a process group that
    Ctrl-Z stops (the kernel ignores it in a group with no parent in its session)."""
    group: dict[str, Any] = {} if session else {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    return subprocess.Popen([sys.executable, "-m", "patch_ledger", *args], cwd=repo, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=session, **group)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The process's outcome; one still running after `timeout` is killed (with its workers)
    and fails the test: a run must never hang."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"ledger {' '.join(map(str, proc.args[3:]))} still ran after {timeout} s (a hang)\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ledger(repo: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return finish(start(repo, *args), timeout)


def run_plan(repo: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return ledger(repo, "run", "p", *args, timeout=timeout)


# --- reading what a run left ------------------------------------------------------------


def run_id(repo: Path) -> str:
    runs = sorted(p.name for p in (repo / ".ledger" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def run_dir(repo: Path) -> Path:
    return repo / ".ledger" / "runs" / run_id(repo)


def read(repo: Path, kind: str, doc_id: str = "") -> dict[str, Any]:
    base = run_dir(repo)
    path = base / "run.json" if kind == "run" else base / f"{kind}s" / f"{doc_id}.json"
    return json.loads(path.read_text())


def docs(repo: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir(repo) / f"{kind}s").glob("*.json"))}


def all_events(repo: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir(repo) / "events.jsonl").read_text().splitlines()]


def events(repo: Path) -> list[dict[str, Any]]:
    """The transition events (the log also holds `update` events: fields set without a step)."""
    return [e for e in all_events(repo) if e["type"] == "transition"]


def entered(repo: Path, entity: str, state: str) -> list[str]:
    """The ids of every `entity` transition into `state` in the event log, in order."""
    return [e["id"] for e in events(repo) if e["entity"] == entity and e["to"] == state]


def done_lines(repo: Path, tid: str) -> list[str]:
    path = repo / "done" / tid
    return path.read_text().split() if path.exists() else []


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def problems(repo: Path, base: str | None = None) -> list[str]:
    return [f.text() for f in check(repo, (), base).findings]


def assert_state_is_whole(repo: Path) -> None:
    """Every state file passes `ledger check`, and every file's history is exactly what the
    event log says of its entity, in order, with the log's seq numbers 1, 2, 3, ..."""
    assert problems(repo) == []
    every = all_events(repo)
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    log = events(repo)
    steps: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for e in log:
        steps.setdefault((e["entity"], e["id"]), []).append((e["from"], e["to"], e["at"], e["actor"], e["reason"]))
    files = {("run", read(repo, "run")["id"]): read(repo, "run")}
    for kind in ("task", "workstream", "worker"):
        files.update({(kind, i): d for i, d in docs(repo, kind).items()})
    assert set(files) == set(steps)
    for key, doc in files.items():
        assert [(h["from"], h["to"], h["at"], h["actor"], h["reason"]) for h in doc["history"]] == steps[key], key


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def processes_in(repo: Path) -> list[str]:
    """Every live process whose working directory is in `repo`: the CLI, its workers, their jobs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (cwd == str(repo) or cwd.startswith(str(repo) + "/")) and alive(int(entry.name)):
                found.append(f"{entry.name}: {cmdline}")
    return found


def wait_for(what: Callable[[], Any], timeout: float = 15, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = what()
        except (OSError, ValueError, KeyError, AssertionError):
            value = None
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {timeout} s in vain for {getattr(what, '__name__', what)}")


def no_process_left(repo: Path, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_in(repo) == []


def started(repo: Path, *tids: str) -> bool:
    """Whether the sleepers of `tids` are running: each wrote its pid (a task's file may show it
    only at the run's next checkpoint)."""
    return all((repo / "pids" / t).is_file() and (repo / "pids" / t).read_text().strip() for t in tids)


def logged_start(repo: Path, tid: str) -> bool:
    """Whether the log holds the task's start (a start is written down a moment after the job
    began: at most orchestrator.FLUSH_S later)."""
    if not list((repo / ".ledger" / "runs").glob("*/events.jsonl")):
        return False
    return any(e["id"] == tid and e["to"] == "RUNNING" for e in events(repo))


def task_state(repo: Path, tid: str) -> str:
    return read(repo, "task", tid)["state"]


# --- a plan runs ------------------------------------------------------------------------


def test_a_plan_runs_in_dependency_order_and_every_transition_lands_in_files_and_log(repo: Path) -> None:
    setup(repo, ws("build", task("compile"), task("link", DONE, "compile")),
          ws("check", task("unit"), task("lint", priority=5), depends_on=("build",)),
          ws("docs", task("manual", DONE, "unit")))
    result = run_plan(repo, "--workers", "2")
    assert result.returncode == 0, result.stderr
    rid = run_id(repo)
    assert result.stdout.startswith(f"run {rid}: COMPLETED in ") and "5 COMPLETED" in result.stdout
    assert read(repo, "run")["state"] == "COMPLETED" and read(repo, "run")["progress"] == 1.0
    tasks = docs(repo, "task")
    assert {t: d["state"] for t, d in tasks.items()} == dict.fromkeys(["compile", "link", "lint", "manual", "unit"], "COMPLETED")
    assert all(d["attempts"] == 1 and done_lines(repo, t) == ["1"] for t, d in tasks.items())
    assert tasks["unit"]["depends_on"] == ["compile", "link"]  # the workstream dependency, expanded
    log = events(repo)
    when = {(e["id"], e["to"]): e["seq"] for e in log if e["entity"] == "task"}
    for tid, doc in tasks.items():
        for dep in doc["depends_on"]:
            assert when[(dep, "COMPLETED")] < when[(tid, "RUNNING")], (dep, tid)
    assert {w: d["state"] for w, d in docs(repo, "workstream").items()} == dict.fromkeys(["build", "check", "docs"], "COMPLETED")
    workers = docs(repo, "worker")
    assert sorted(workers) == ["worker-1", "worker-2"] and all(w["state"] == "TERMINATED" for w in workers.values())
    assert all(isinstance(w["pid"], int) and not alive(w["pid"]) for w in workers.values())
    # every task's output is in its worker's log, where its result says
    logs = repo / ".git" / "ledger" / "runs" / rid / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["worker-1.log", "worker-2.log"]
    assert all(doc["result"]["log"]["file"] in (f".git/ledger/runs/{rid}/logs/worker-{n}.log" for n in (1, 2))
               for doc in tasks.values())
    assert_state_is_whole(repo)
    assert not [line for line in git(repo, "status", "--porcelain", "-uall").stdout.splitlines()
                if not line.startswith(("?? .ledger/", "?? done/"))]
    no_process_left(repo)


def test_a_pool_of_n_workers_runs_n_tasks_at_once_and_never_more(repo: Path) -> None:
    setup(repo, ws("a", *(task(f"t{i}", sleeper(0.3)) for i in range(6))))
    result = run_plan(repo, "--workers", "3")
    assert result.returncode == 0, result.stderr
    running, most = set(), 0
    for e in events(repo):
        if e["entity"] == "task" and e["to"] == "RUNNING":
            running.add(e["id"])
        elif e["entity"] == "task" and e["from"] == "RUNNING":
            running.discard(e["id"])
        most = max(most, len(running))
    assert most == 3
    assert len(docs(repo, "worker")) == 3
    for worker in docs(repo, "worker").values():  # each followed the worker machine to the end
        assert [h["to"] for h in worker["history"]][0] == "IDLE" and worker["state"] == "TERMINATED"
        assert "BUSY" in [h["to"] for h in worker["history"]]


# --- failures -----------------------------------------------------------------------------


def test_a_failed_dependency_cancels_its_dependents_and_the_run_still_finishes(repo: Path) -> None:
    setup(repo, ws("a", task("ok"), task("bad", "sh -c 'echo failing; exit 3'"), task("child", DONE, "bad"),
                   task("grandchild", DONE, "child"), task("sibling", DONE, "ok")),
          ws("b", task("later"), depends_on=("a",)),
          ws("c", task("free")))
    result = run_plan(repo)
    assert result.returncode == 1
    states = {t: d["state"] for t, d in docs(repo, "task").items()}
    assert states == {"ok": "COMPLETED", "bad": "FAILED", "child": "CANCELLED", "grandchild": "CANCELLED",
                      "sibling": "COMPLETED", "later": "CANCELLED", "free": "COMPLETED"}
    assert read(repo, "run")["state"] == "FAILED" and read(repo, "run")["progress"] == 1.0
    assert {w: d["state"] for w, d in docs(repo, "workstream").items()} == {"a": "FAILED", "b": "CANCELLED", "c": "COMPLETED"}
    bad = read(repo, "task", "bad")
    assert bad["attempts"] == 2 and bad["result"]["exit_code"] == 3 and "failing" in bad["result"]["output"]
    assert [h["to"] for h in bad["history"]] == ["PENDING", "QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING", "FAILED"]
    assert "bad" in read(repo, "task", "child")["history"][-1]["reason"]
    assert done_lines(repo, "child") == [] and done_lines(repo, "later") == []
    assert_state_is_whole(repo)


def test_a_retry_waits_its_deterministic_backoff_and_is_persisted(repo: Path) -> None:
    flaky = "sh -c 'test -e done/flaky-once || { touch done/flaky-once; exit 1; }'"
    setup(repo, ws("a", task("flaky", flaky, retry_delay_s=0.2, max_attempts=3)))
    assert run_plan(repo).returncode == 0
    doc = read(repo, "task", "flaky")
    assert doc["state"] == "COMPLETED" and doc["attempts"] == 2
    failed, queued = doc["history"][3:5]
    assert (failed["to"], queued["to"]) == ("RETRYING", "QUEUED")
    delay = retry_delay("flaky", 1, 0.2)
    assert 0.2 <= delay <= 0.3
    assert f"again in {delay:.1f} s" in failed["reason"]
    assert epoch(queued["at"]) - epoch(failed["at"]) >= delay - 0.01
    assert abs(epoch(doc["next_retry_at"]) - epoch(failed["at"]) - delay) < 0.05


def test_retry_delay_is_exponential_with_a_jitter_fixed_by_task_and_attempt() -> None:
    for attempt in range(1, 8):
        delay = retry_delay("t1", attempt, 0.5)
        assert 0.5 * 2 ** (attempt - 1) <= delay <= 1.5 * 0.5 * 2 ** (attempt - 1)
        assert retry_delay("t1", attempt, 0.5) == delay
    assert len({retry_delay(f"t{i}", 1, 1.0) for i in range(50)}) == 50  # the jitter spreads retries
    assert 1.0 <= retry_delay("t1", 0, 1.0) <= 1.5  # attempt 0 (never used) is not shorter than the base
    assert retry_delay("t1", 40, 1.0) <= 1.5 * 3600
    code = "from patch_ledger.orchestrator import retry_delay; print(repr(retry_delay('t1', 3, 0.5)))"
    for seed in ("1", "2"):  # the same in another process with another hash seed: a resumed run agrees
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
        assert float(out) == retry_delay("t1", 3, 0.5)


# --- --dry-run and bad plans --------------------------------------------------------------


def test_dry_run_prints_the_order_and_the_routing_and_writes_nothing(repo: Path) -> None:
    tools = {"cheap": {"command": ["echo", "{prompt}"], "capabilities": ["code"], "cost": {"per_run": 1}},
             "dear": {"command": ["echo", "{prompt}"], "capabilities": ["code", "review"], "cost": {"per_run": 5}}}
    setup(repo, ws("a", task("first"), {"id": "write", "prompt": "write it", "capabilities": ["code"], "depends_on": ["first"]},
                   {"id": "review", "prompt": "review it", "capabilities": ["review"], "depends_on": ["write"]},
                   task("urgent", priority=9)), tools=tools)
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if ".git/objects" not in p.as_posix())
    result = run_plan(repo, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["urgent", "first", "write", "review"]
    assert "-> cheap: has code" in lines[2] and "after first" in lines[2]
    assert "-> dear:" in lines[3]
    data = json.loads(run_plan(repo, "--dry-run", "--format", "json").stdout)
    assert [(s["task"], s["tool"]) for s in data["tasks"]] == [("urgent", None), ("first", None), ("write", "cheap"),
                                                                ("review", "dear")]
    after = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if ".git/objects" not in p.as_posix())
    assert after == before
    assert not (repo / ".ledger" / "runs").exists() and not (repo / ".git" / "ledger").exists()


GOOD = {"id": "ok", "run": "touch ran"}
BAD_PLANS = {
    "unknown-tool": ({"workstreams": [{"id": "a", "tasks": [GOOD, {"id": "t9", "prompt": "x", "tool": "ghost"}]}]}, "ghost"),
    "missing-dependency": ({"workstreams": [{"id": "a", "tasks": [GOOD, {"id": "t9", "run": "true", "depends_on": ["nope"]}]}]},
                           "nope"),
    "cycle": ({"workstreams": [{"id": "a", "tasks": [GOOD, {"id": "t8", "run": "true", "depends_on": ["t9"]},
                                                     {"id": "t9", "run": "true", "depends_on": ["t8"]}]}]}, "t8 -> t9"),
    "duplicate-id": ({"workstreams": [{"id": "a", "tasks": [GOOD]}, {"id": "b", "tasks": [dict(GOOD)]}]}, "'ok'"),
    "shell-template": ({"tools": {"agent": {"command": ["sh", "-c", "echo {prompt}"]}},
                        "workstreams": [{"id": "a", "tasks": [GOOD, {"id": "t9", "prompt": "x; rm -rf ~", "tool": "agent"}]}]},
                       "'agent'"),
    "unknown-field": ({"workstreams": [{"id": "a", "tasks": [{**GOOD, "retries": 3}]}]}, "retries"),
}


@pytest.mark.parametrize("case", [*BAD_PLANS, "invalid-yaml"])
def test_a_bad_plan_is_one_line_naming_plan_and_entry_exit_2_and_nothing_runs(repo: Path, case: str) -> None:
    (repo / "done").mkdir()
    if case == "invalid-yaml":
        write_plan(repo, "schema_version: 2\nname: p\nworkstreams:\n  - id: a\n    tasks: [{id: ok, run: touch ran}\n")
        word = ":6:"
    else:
        spec, word = BAD_PLANS[case]
        write_plan(repo, yaml.safe_dump({"schema_version": 2, "name": "p", **spec}))
    result = run_plan(repo)
    assert result.returncode == 2, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("ledger: error: .ledger/plans/p.yaml") and word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (repo / "ran").exists() and not (repo / ".ledger" / "runs").exists()
    assert not (repo / ".git" / "ledger").exists()


def test_resuming_no_such_run_is_a_one_line_error_and_a_finished_run_runs_nothing(repo: Path) -> None:
    setup(repo, ws("a", task("t1")))
    result = ledger(repo, "run", "--resume", "no-such-run")
    assert result.returncode == 2 and "no-such-run" in result.stderr and result.stderr.count("\n") == 1
    assert run_plan(repo).returncode == 0
    run_dir = repo / ".ledger" / "runs" / run_id(repo)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = ledger(repo, "run", "--resume", run_id(repo))
    # a kill that landed after the run's last write leaves a finished run: its resume says so
    # and succeeds, running and writing nothing
    assert again.returncode == 0 and "already finished (COMPLETED)" in again.stdout, again
    assert done_lines(repo, "t1") == ["1"]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# --- routing ------------------------------------------------------------------------------


def breaker(repo: Path, tool: str, state: str = "CLOSED", **fields: Any) -> None:
    """A valid breaker file for `tool`, opened now when `state` is OPEN."""
    doc = machine.new_document("breaker", tool, "tester", fields={"target": tool, "failure_threshold": 3,
                                                                  "consecutive_failures": 0, **fields})
    if state == "OPEN":
        doc = machine.step(doc, "breaker", "OPEN", "tester", "3 failures in a row",
                           fields={"consecutive_failures": 3, "opened_at": machine.now()})
    path = repo / ".ledger" / "breakers" / f"{tool}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def breaker_file(repo: Path, tool: str) -> dict[str, Any]:
    return json.loads((repo / ".ledger" / "breakers" / f"{tool}.json").read_text())


def test_the_router_picks_a_capable_tool_not_open_and_cheapest_by_recorded_cost(repo: Path) -> None:
    from patch_ledger import dag

    tools = {"alpha": {"command": ["a"], "capabilities": ["code", "test"], "cost": {"per_run": 3}},
             "beta": {"command": ["b"], "capabilities": ["code"], "cost": {"per_run": 1}},
             "gamma": {"command": ["c"], "capabilities": ["code"], "cost": {"per_run": 2}},
             "delta": {"command": ["d"], "capabilities": ["docs"]}}
    graph = dag.build({"schema_version": 2, "name": "p", "workstreams": [{"id": "w", "tasks": [
        {"id": "code", "prompt": "x", "capabilities": ["code"]},
        {"id": "both", "prompt": "x", "capabilities": ["code", "test"]},
        {"id": "fixed", "prompt": "x", "tool": "delta"}, {"id": "cmd", "run": "true"}]}]}, tools, "p.yaml")

    def choose(tid: str) -> tuple[Any, ...]:
        return Router(repo, tools).choose(graph.tasks[tid])  # a new router reads the breaker files anew

    assert choose("code")[0] == "beta"
    assert choose("both")[0] == "alpha"
    assert choose("fixed")[:2] == ("delta", "named by the plan")
    assert choose("cmd")[0] is None
    breaker(repo, "beta", "OPEN", cooldown_s=600)
    tool, why, _ = choose("code")
    assert tool == "gamma" and "beta held by the breaker" in why
    breaker(repo, "alpha", runs=10, cost={"money": 1.0})  # measured: 0.1 a run, cheaper than declared
    assert choose("code")[0] == "alpha"
    breaker(repo, "alpha", "OPEN", runs=10, cost={"money": 1.0}, cooldown_s=600)
    breaker(repo, "gamma", "OPEN", cooldown_s=30)
    tool, why, wait = choose("code")
    assert tool is None and "OPEN" in why and 25 < wait <= 30  # held until the first cool-down ends
    assert choose("fixed")[0] == "delta"
    assert problems(repo) == []  # the breaker files written here are valid state


def test_a_task_with_capabilities_runs_on_the_routed_tool_and_the_route_is_recorded(repo: Path) -> None:
    script = ["sh", "-c", 'echo "$0 got: $1" >> done/$LEDGER_TASK']
    tools = {"cheap": {"command": [*script, "cheap", "{prompt}"], "capabilities": ["code"], "cost": {"per_run": 1}},
             "dear": {"command": [*script, "dear", "{prompt}"], "capabilities": ["code"], "cost": {"per_run": 2}},
             "other": {"command": [*script, "other", "{prompt}"], "capabilities": ["docs"], "cost": {"per_run": 0}}}
    setup(repo, ws("a", {"id": "t1", "prompt": "it's $(id); fine", "capabilities": ["code"]}), tools=tools)
    breaker(repo, "cheap", "OPEN", cooldown_s=600)
    assert run_plan(repo).returncode == 0
    assert (repo / "done" / "t1").read_text() == "dear got: it's $(id); fine\n"
    doc = read(repo, "task", "t1")
    assert doc["tool"] == "dear" and "code" in doc["route"] and "cheap" in doc["route"]
    assert breaker_file(repo, "cheap")["state"] == "OPEN"  # still cooling down: never tried
    assert breaker_file(repo, "dear")["runs"] == 1
    assert_state_is_whole(repo)
    assert problems(repo) == []


def test_a_tool_s_breaker_records_its_cost_opens_at_the_threshold_and_probes_after_the_cool_down(repo: Path) -> None:
    flaky = ["sh", "-c", 'echo \'{"ledger_cost": {"tokens": 3, "money": 0.5}}\'; test -e done/ok']
    tools = {"flaky": {"command": flaky, "breaker": {"threshold": 2, "cooldown_s": 0.3}}}
    setup(repo, ws("a", {"id": "t1", "prompt": "x", "tool": "flaky", "max_attempts": 2}),
          ws("b", {"id": "t2", "prompt": "x", "tool": "flaky"}, depends_on=("a",)), tools=tools)
    assert run_plan(repo).returncode == 1  # t1 fails twice: the breaker opens
    opened = breaker_file(repo, "flaky")
    assert opened["state"] == "OPEN" and opened["consecutive_failures"] == 2 and opened["runs"] == 2
    assert opened["cost"] == {"tokens": 6, "money": 1.0}
    assert problems(repo) == []
    (repo / "done" / "ok").touch()
    shutil.rmtree(repo / ".ledger" / "runs")
    time.sleep(0.3)
    assert run_plan(repo).returncode == 0  # after the cool-down one probe goes through and closes it
    closed = breaker_file(repo, "flaky")
    assert [h["to"] for h in closed["history"]] == ["CLOSED", "OPEN", "HALF_OPEN", "CLOSED"]
    assert closed["runs"] == 4 and closed["consecutive_failures"] == 0 and closed["cost"]["money"] == 2.0
    assert problems(repo) == []


# --- tools: output, costs, timeouts, stray children --------------------------------------


def test_output_is_logged_whole_under_git_dir_and_the_result_keeps_a_bounded_excerpt(repo: Path) -> None:
    noisy = "sh -c 'seq 1 30000; echo to-stderr >&2; echo last line'"
    setup(repo, ws("a", task("noisy", noisy)))
    assert run_plan(repo).returncode == 0
    where = read(repo, "task", "noisy")["result"]["log"]
    whole = (repo / where["file"]).read_bytes()
    log = whole[where["offset"]:where["offset"] + where["length"]].decode()
    assert log.startswith("1\n2\n") and "30000\n" in log and "to-stderr\n" in log and log.endswith("last line\n")
    output = read(repo, "task", "noisy")["result"]["output"]
    assert 0 < len(output) <= 4000 and log.endswith(output)
    assert (repo / ".ledger" / "runs" / run_id(repo) / "tasks" / "noisy.json").stat().st_size < 10_000


def test_costs_from_cost_lines_and_patterns_are_summed_per_task_workstream_and_run(repo: Path) -> None:
    line = '{"ledger_cost": {"tokens": 100, "money": 0.25}}'
    tools = {"json": {"command": ["sh", "-c", 'echo working; echo "$1"; test -e done/$LEDGER_TASK-x || '
                                              '{ touch done/$LEDGER_TASK-x; exit 1; }', "sh", line]},
             "regex": {"command": ["echo", "used tokens=40 cost=$1.50"],
                       "cost": {"pattern": r"tokens=(?P<tokens>\d+) cost=\$(?P<money>[0-9.]+)"}}}
    setup(repo, ws("x", {"id": "retried", "prompt": "p", "tool": "json"}, {"id": "plain", "prompt": "p", "tool": "regex"}),
          ws("y", {"id": "again", "prompt": "p", "tool": "regex"}), tools=tools)
    result = run_plan(repo)
    assert result.returncode == 0, result.stderr
    tasks = docs(repo, "task")
    assert tasks["retried"]["attempts"] == 2
    assert tasks["retried"]["cost"] == {"tokens": 200, "money": 0.5}  # both attempts cost
    assert tasks["plain"]["cost"] == {"tokens": 40, "money": 1.5}
    assert read(repo, "workstream", "x")["cost"] == {"tokens": 240, "money": 2.0}
    assert read(repo, "workstream", "y")["cost"] == {"tokens": 40, "money": 1.5}
    assert read(repo, "run")["cost"] == {"tokens": 280, "money": 3.5}
    assert "cost 3.5 (280 tokens)" in result.stdout
    assert_state_is_whole(repo)


@pytest.mark.parametrize("tool", [
    {"command": ["echo", '{"ledger_cost": {"tokens": "many", "money": 1}']},
    {"command": ["echo", '{"ledger_cost": "lots"}']},
    {"command": ["echo", "cost=NaN"], "cost": {"pattern": r"cost=(?P<money>\S+)"}},
], ids=["torn-json", "not-an-object", "pattern-garbage"])
def test_a_garbled_cost_is_recorded_as_a_cost_problem_and_the_task_still_succeeds(repo: Path, tool: dict[str, Any]) -> None:
    setup(repo, ws("a", {"id": "t1", "prompt": "x", "tool": "garbler"}), tools={"garbler": tool})
    result = run_plan(repo)
    assert result.returncode == 0, result.stderr
    doc = read(repo, "task", "t1")
    assert doc["state"] == "COMPLETED" and doc["result"]["cost_problem"]
    assert "cost" not in doc or doc["cost"].get("money", 0) == 0
    assert_state_is_whole(repo)


def test_a_budget_stops_new_tasks_pauses_the_run_and_resume_with_more_completes_it(repo: Path) -> None:
    tools = {"paid": {"command": ["sh", "-c", 'echo x >> done/$LEDGER_TASK; echo \'{"ledger_cost": {"money": 1}}\'']}}
    setup(repo, ws("a", *({"id": f"t{i}", "prompt": "x", "tool": "paid"} for i in range(6))), tools=tools)
    result = run_plan(repo, "--workers", "1", "--budget", "2")
    assert result.returncode == 1
    assert "budget 2 reached" in result.stdout
    run = read(repo, "run")
    assert run["state"] == "PAUSED" and run["budget"] == 2 and run["cost"]["money"] >= 2
    ran = [t for t in (f"t{i}" for i in range(6)) if done_lines(repo, t)]
    assert 2 <= len(ran) < 6
    assert_state_is_whole(repo)
    again = ledger(repo, "run", "--resume", run_id(repo), "--budget", "100")
    assert again.returncode == 0, again.stderr
    assert read(repo, "run")["state"] == "COMPLETED" and read(repo, "run")["cost"]["money"] == 6
    assert all(done_lines(repo, f"t{i}") == ["x"] for i in range(6))
    assert_state_is_whole(repo)


def test_no_task_starts_once_the_budget_is_reached(repo: Path) -> None:
    tools = {"paid": {"command": ["sh", "-c", 'sleep 0.1; echo \'{"ledger_cost": {"money": 1}}\'']}}
    setup(repo, ws("a", *({"id": f"t{i}", "prompt": "x", "tool": "paid"} for i in range(6))), tools=tools)
    assert run_plan(repo, "--workers", "1", "--budget", "2").returncode == 1
    assert len(entered(repo, "task", "RUNNING")) == 2


def test_a_hanging_tool_is_killed_at_its_timeout_with_its_process_group(repo: Path) -> None:
    tools = {"hang": {"command": ["sh", "-c", "sleep 30 & echo $! >> pids/$LEDGER_TASK; echo $$ >> pids/$LEDGER_TASK; wait"]}}
    setup(repo, ws("a", {"id": "slow", "prompt": "x", "tool": "hang", "timeout": 0.3}, task("after", DONE, "slow"),
                   task("other")), tools=tools)
    began = time.monotonic()
    result = run_plan(repo)
    assert result.returncode == 1 and time.monotonic() - began < 15
    doc = read(repo, "task", "slow")
    assert doc["state"] == "FAILED" and doc["attempts"] == 2 and doc["result"]["timed_out"] is True
    assert "timed out after 0.3 s" in doc["history"][-1]["reason"]
    assert task_state(repo, "after") == "CANCELLED" and task_state(repo, "other") == "COMPLETED"
    pids = [int(p) for p in (repo / "pids" / "slow").read_text().split()]
    assert len(pids) == 4 and not any(alive(p) for p in pids)
    assert_state_is_whole(repo)


def test_a_tool_s_own_timeout_is_reported_like_a_task_s(repo: Path) -> None:
    setup(repo, ws("a", {"id": "slow", "prompt": "x", "tool": "hang"}),
          tools={"hang": {"command": ["sleep", "30"], "timeout": 0.3}}, max_attempts=1)
    result = run_plan(repo)
    assert result.returncode == 1, result.stderr
    assert "timed out after 0.3 s" in read(repo, "task", "slow")["history"][-1]["reason"]


def test_a_tool_that_always_fails_is_retried_then_failed_and_recorded(repo: Path) -> None:
    tools = {"broken": {"command": ["sh", "-c", "echo $LEDGER_ATTEMPT >> done/$LEDGER_TASK; echo 'no luck' >&2; exit 7"]}}
    setup(repo, ws("a", {"id": "t1", "prompt": "x", "tool": "broken", "max_attempts": 3}), tools=tools)
    assert run_plan(repo).returncode == 1
    doc = read(repo, "task", "t1")
    assert doc["state"] == "FAILED" and doc["attempts"] == 3 and done_lines(repo, "t1") == ["1", "2", "3"]
    where = doc["result"].pop("log")
    assert doc["result"] == {"exit_code": 7, "timed_out": False, "output": "no luck\n"}
    assert "attempt 3 of 3 failed: exit code 7" in doc["history"][-1]["reason"]
    # the three attempts' output is in the workers' logs; the result points at the last
    logs = (repo / where["file"]).parent
    assert sum(p.read_bytes().count(b"no luck\n") for p in logs.iterdir()) == 3
    whole = (repo / where["file"]).read_bytes()
    assert whole[where["offset"]:where["offset"] + where["length"]] == b"no luck\n"


def test_a_child_that_outlives_its_tool_is_killed(repo: Path) -> None:
    tools = {"forker": {"command": ["sh", "-c", "sleep 30 & echo $! > pids/$LEDGER_TASK; echo started"]}}
    setup(repo, ws("a", {"id": "t1", "prompt": "x", "tool": "forker"}), tools=tools)
    assert run_plan(repo).returncode == 0
    assert task_state(repo, "t1") == "COMPLETED"
    assert not alive(int((repo / "pids" / "t1").read_text()))
    no_process_left(repo)


@pytest.mark.parametrize("spec", [
    {"id": "t1", "run": "no-such-program --flag"},
    {"id": "t1", "run": " "},
    {"id": "t1", "prompt": "a\0b", "tool": "echo"},
], ids=["missing-program", "blank-run", "nul-in-prompt"])
def test_a_task_that_cannot_start_fails_instead_of_hanging(repo: Path, spec: dict[str, Any]) -> None:
    setup(repo, ws("a", spec, task("t2")), tools={"echo": {"command": ["echo", "{prompt}"]}}, max_attempts=1)
    result = run_plan(repo, timeout=3)
    assert result.returncode in (1, 2)
    if result.returncode == 1:
        assert task_state(repo, "t1") == "FAILED" and task_state(repo, "t2") == "COMPLETED"


# --- heartbeats, Ctrl-C, resume ----------------------------------------------------------


def test_a_scheduler_that_stops_beating_is_killed_with_its_jobs_and_resume_makes_a_new_attempt(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(1.5))), max_attempts=3)
    proc = start(repo, "run", "p", "--workers", "1", "--heartbeat", "0.3")
    wait_for(lambda: started(repo, "t1"))
    worker = wait_for(lambda: read(repo, "worker", "worker-1"))  # written at the run's first checkpoint
    assert worker["pid"] == proc.pid  # a worker is a slot of the scheduler's process
    first_job = int((repo / "pids" / "t1").read_text())
    os.kill(proc.pid, signal.SIGSTOP)  # frozen: it beats no more
    stopped = time.time()
    result = finish(proc, timeout=5)
    assert result.returncode == -signal.SIGKILL and time.time() - stopped < 2.0  # its watchdog: two intervals, 0.6 s
    wait_for(lambda: not alive(first_job), timeout=2)  # and its job, at once: a task never runs twice at once
    again = ledger(repo, "run", "--resume", run_id(repo))
    assert again.returncode == 0, again.stderr
    lost = read(repo, "worker", worker["id"])
    assert [h["to"] for h in lost["history"]][-2:] == ["UNHEALTHY", "TERMINATED"]
    assert "missed two heartbeats (0.6 s)" in lost["history"][-2]["reason"]
    doc = read(repo, "task", "t1")
    assert doc["state"] == "COMPLETED" and doc["attempts"] == 2
    assert [h["to"] for h in doc["history"]] == ["PENDING", "QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING",
                                                 "VALIDATING", "COMPLETED"]
    assert done_lines(repo, "t1") == ["2"]  # the first attempt was killed before it finished
    assert not (repo / ".git" / "ledger" / "runs" / run_id(repo) / "lost").exists()  # the note was taken
    assert_state_is_whole(repo)


def test_a_killed_scheduler_s_jobs_die_with_it(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(30)), task("t2", sleeper(30))))
    proc = start(repo, "run", "p", "--workers", "2")
    wait_for(lambda: all((repo / "pids" / t).exists() and (repo / "pids" / t).read_text() for t in ("t1", "t2")))
    jobs = [int((repo / "pids" / t).read_text()) for t in ("t1", "t2")]
    proc.kill()
    finish(proc)
    wait_for(lambda: not any(alive(j) for j in jobs), timeout=2)


def test_killing_the_scheduler_s_process_group_kills_its_jobs_too(repo: Path) -> None:
    """kill -9 -PGID (what ends a shell's job): the watchdog lives in a session of its own and
    outlives it, then cleans up."""
    setup(repo, ws("a", task("t1", sleeper(30))), max_attempts=1)
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t1"))
    job = int((repo / "pids" / "t1").read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    wait_for(lambda: not alive(job), timeout=2)


def kill_with_its_watchdog(proc: subprocess.Popen[str]) -> None:
    """The scheduler and its watchdog killed at once (an OOM killer's sweep, a container's
    end); the jobs, in sessions of their own, are left."""
    watchdog = watchdog_of(proc.pid)
    os.kill(watchdog, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)


def watchdog_of(scheduler: int) -> int:
    def cmdline(pid: str) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""  # a git call that ended meanwhile

    children = Path(f"/proc/{scheduler}/task/{scheduler}/children").read_text().split()
    return next(int(c) for c in children if b"patch_ledger.watchdog" in cmdline(c))


def test_resume_kills_the_jobs_a_dead_scheduler_left_when_its_watchdog_died_too(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(30))), max_attempts=1)
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t1") and logged_start(repo, "t1"))
    job = int((repo / "pids" / "t1").read_text())
    kill_with_its_watchdog(proc)
    assert alive(job)
    plan = repo / ".ledger" / "plans" / "p.yaml"
    plan.write_text(plan.read_text().replace("sleep 30", "sleep 0.01"))
    again = ledger(repo, "run", "--resume", run_id(repo))
    assert again.returncode == 0, again.stderr
    assert not alive(job)
    assert "process(es) of its jobs still running killed" in read(repo, "worker", "worker-1")["history"][-2]["reason"]
    assert done_lines(repo, "t1") == ["2"]


def test_a_run_is_run_by_one_scheduler_at_a_time(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(1))))
    proc = start(repo, "run", "p")
    wait_for(lambda: started(repo, "t1"))
    before = all_events(repo)
    second = ledger(repo, "run", "--resume", run_id(repo))
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0 and f"run {run_id(repo)} is being run by process {proc.pid}" in second.stderr
    assert all_events(repo)[:len(before)] == before
    assert finish(proc).returncode == 0
    assert done_lines(repo, "t1") == ["1"]


def test_a_scheduler_killed_while_it_starts_many_jobs_leaves_none_running(repo: Path) -> None:
    """Each job carries its scheduler's mark from before its exec: one started a moment before
    the kill is found and killed too, not only those the scheduler had written down."""
    setup(repo, ws("a", *(task(f"t{i}", "sh -c 'echo $$ >> pids/all; sleep 30'") for i in range(120))))
    for k in range(3):
        proc = start(repo, "run", *(["p"] if k == 0 else ["--resume", run_id(repo)]), "--workers", "40")
        wait_for(lambda: (repo / "pids" / "all").is_file() and len((repo / "pids" / "all").read_text().split()) > 40 * k,
                 every=0.001)
        proc.kill()  # in the middle of starting 40 jobs
        finish(proc)
        pids = [int(p) for p in (repo / "pids" / "all").read_text().split()]
        wait_for(lambda: not [p for p in pids if alive(p)], timeout=3)


def test_a_job_that_clears_its_environment_still_dies_with_its_killed_scheduler(repo: Path) -> None:
    setup(repo, ws("a", task("t1", "env -i sh -c 'echo $$ > pids/t1; exec sleep 30'")))
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t1"))
    job = int((repo / "pids" / "t1").read_text())
    assert b"LEDGER_SCHEDULER" not in Path(f"/proc/{job}/environ").read_bytes()  # it shed the mark
    proc.kill()
    finish(proc)
    wait_for(lambda: not alive(job), timeout=3)  # found by its session, which the scheduler wrote down


def test_a_run_inside_a_job_keeps_the_outer_mark_and_a_copy_of_the_repository_kills_nothing(repo: Path, tmp_path: Path) -> None:
    setup(repo, ws("a", task("t1", "sh -c 'echo $LEDGER_SCHEDULER > done/mark; echo $$ > pids/t1; sleep 30'")))
    env = {**cli_env(), "LEDGER_SCHEDULER": "outer"}
    proc = subprocess.Popen([sys.executable, "-m", "patch_ledger", "run", "p"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: started(repo, "t1"))
    assert (repo / "done" / "mark").read_text().split(",")[0] == "outer"  # a watchdog of an outer run finds it too
    job = int((repo / "pids" / "t1").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)  # a backup taken mid-run
    (copy / ".ledger" / "plans" / "p.yaml").write_text((copy / ".ledger" / "plans" / "p.yaml").read_text().replace("sleep 30", "sleep 0"))
    assert ledger(copy, "run", "--resume", run_id(repo)).returncode == 0
    assert alive(job)  # the copy's claim knew the mark was not its own
    os.killpg(proc.pid, signal.SIGINT)
    proc.kill()
    finish(proc)


def test_a_resume_that_stops_early_still_kills_what_the_dead_scheduler_left(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(30))), max_attempts=3)
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t1"))
    job = int((repo / "pids" / "t1").read_text())
    kill_with_its_watchdog(proc)
    assert alive(job)
    before = sorted(p.name for p in (repo / ".git" / "ledger" / "runs" / run_id(repo)).iterdir())
    assert ledger(repo, "run", "--resume", run_id(repo), "--dry-run").returncode == 0
    assert alive(job)  # a dry run claims nothing, kills nothing, writes nothing
    assert sorted(p.name for p in (repo / ".git" / "ledger" / "runs" / run_id(repo)).iterdir()) == before
    write_plan(repo, "workstreams: [")  # the resume stops at the plan
    assert ledger(repo, "run", "--resume", run_id(repo)).returncode == 2
    assert not alive(job)  # the claim killed it first


def test_a_closed_terminal_takes_the_jobs_down_with_the_run(repo: Path) -> None:
    setup(repo, ws("a", task("t1", sleeper(30))), max_attempts=3)
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t1"))
    job = int((repo / "pids" / "t1").read_text())
    os.killpg(proc.pid, signal.SIGHUP)  # the scheduler dies of it; its watchdog outlives it, then cleans up
    finish(proc)
    wait_for(lambda: not alive(job), timeout=3)


@pytest.mark.parametrize("stop", [signal.SIGTSTP, signal.SIGTTOU], ids=["ctrl-z", "background-write"])
def test_ctrl_z_then_fg_carries_on(repo: Path, stop: int) -> None:
    """Stopped by the terminal (Ctrl-Z, or a background run writing to it): the scheduler tells
    its watchdog, which counts nothing until the next beat."""
    setup(repo, ws("a", task("t1", sleeper(0.5)), task("t2", sleeper(0.5))))
    proc = start(repo, "run", "p", "--workers", "1", "--heartbeat", "0.3", session=False)
    wait_for(lambda: started(repo, "t1"))
    os.killpg(proc.pid, stop)
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", timeout=2)
    time.sleep(1.5)  # five intervals stopped: its watchdog, told so, counts nothing
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGCONT)
    assert finish(proc).returncode == 0
    assert done_lines(repo, "t1") == done_lines(repo, "t2") == ["1"]


def test_a_job_inherits_no_descriptor_and_no_ignored_signal(repo: Path) -> None:
    setup(repo, ws("a", task("t1", "sh -c 'ls /proc/$$/fd > done/t1; grep SigIgn /proc/$$/status >> done/t1'")))
    r, w = os.pipe()
    inherited = os.dup2(w, 37)
    os.close(w)
    proc = subprocess.Popen([sys.executable, "-m", "patch_ledger", "run", "p"], cwd=repo, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(inherited,))  # e.g. a jobserver's pipe
    os.close(inherited)
    os.close(r)
    assert finish(proc).returncode == 0
    seen = (repo / "done" / "t1").read_text()
    assert "37" not in seen.split() and {"0", "1", "2"} <= set(seen.split()), seen  # the shell's own may be there
    ignored = int(seen.split("SigIgn:")[1].split()[0], 16)
    assert ignored & 0x7FFFFFFF == 0, hex(ignored)  # no signal 1-31 ignored (SIGPIPE, SIGXFSZ...); libc keeps its real-time ones


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_heartbeat_of_no_time_is_refused(repo: Path, value: str) -> None:
    setup(repo, ws("a", task("t1")))
    result = run_plan(repo, "--heartbeat", value)
    assert result.returncode == 2 and "--heartbeat" in result.stderr and result.stderr.count("\n") == 1
    assert not (repo / ".ledger" / "runs").exists()


def test_a_workflow_whose_first_phase_cannot_start_fails_and_the_run_ends(repo: Path) -> None:
    plan = {"schema_version": 2, "name": "p", "defaults": {"max_attempts": 1, "retry_delay_s": 0.05},
            "tools": {"ghost": {"command": ["no-such-program-xyz", "{prompt}"], "roles": ["analyst"]}},
            "workstreams": [{"id": "flow", "workflow": {"prompt": "build it"}}]}
    write_plan(repo, yaml.safe_dump(plan))
    result = run_plan(repo, timeout=10)
    assert result.returncode == 1
    assert task_state(repo, "flow") == "FAILED"


def test_a_plain_success_never_closes_a_half_open_breaker_in_its_probe_s_place(repo: Path) -> None:
    tools = {"flaky": {"command": ["sh", "-c", 'set -- $1; sleep $1; test "$2" = ok', "sh", "{prompt}"],
                       "breaker": {"threshold": 1, "cooldown_s": 0.05}}}
    setup(repo, ws("a", {"id": "slow", "prompt": "0.6 ok", "tool": "flaky", "priority": 9},
                   {"id": "bad", "prompt": "0.1 no", "tool": "flaky", "priority": 8},
                   task("hog", "sleep 0.9", priority=7),
                   {"id": "probe", "prompt": "0 no", "tool": "flaky", "priority": 1}), tools=tools, max_attempts=1)
    run_plan(repo, "--workers", "2")
    steps = [(h["to"], h["reason"]) for h in breaker_file(repo, "flaky")["history"]]
    assert ("CLOSED", "the probe succeeded") not in steps


def test_a_scheduler_busy_on_a_long_computation_is_not_taken_for_frozen(repo: Path) -> None:
    """A cost pattern that backtracks for seconds holds the interpreter's lock, so the beats
    stop; the scheduler is on a CPU, not frozen, and its watchdog lets it be."""
    tools = {"t": {"command": ["sh", "-c", "printf '%s' 1111111111111111111111111; echo \"$1\"", "sh", "{prompt}"],
                   "cost": {"pattern": r"(?P<tokens>(\d+)+)x"}}}
    setup(repo, ws("a", {"id": "t1", "prompt": "y", "tool": "t"}), tools=tools)
    started_at = time.monotonic()
    result = run_plan(repo, "--heartbeat", "0.5", timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started_at > 1.0  # the pattern did outlast two intervals
    assert task_state(repo, "t1") == "COMPLETED"


def test_a_runaway_computation_in_the_scheduler_is_stopped_all_the_same(repo: Path) -> None:
    """On a CPU and silent for ten intervals: no freeze, but no progress either; stopped, so
    that no job outlives its deadline unwatched."""
    tools = {"t": {"command": ["sh", "-c", "printf '%s' 111111111111111111111111111111111111111111; echo \"$1\"", "sh",
                               "{prompt}"], "cost": {"pattern": r"(?P<tokens>(\d+)+)x"}}}
    setup(repo, ws("a", {"id": "t1", "prompt": "y", "tool": "t"}), tools=tools)
    started_at = time.monotonic()
    result = run_plan(repo, "--heartbeat", "0.1", timeout=30)
    assert result.returncode == -signal.SIGKILL and time.monotonic() - started_at < 10
    note = (repo / ".git" / "ledger" / "runs" / run_id(repo) / "lost").read_text()
    assert "busy on a CPU all along (a runaway computation)" in note


def test_ctrl_c_drains_running_tasks_pauses_and_resume_completes(repo: Path) -> None:
    setup(repo, ws("a", *(task(f"t{i}", sleeper(0.6 if i < 2 else 0.01)) for i in range(6))))
    proc = start(repo, "run", "p", "--workers", "2")
    wait_for(lambda: started(repo, "t0", "t1"))
    proc.send_signal(signal.SIGINT)
    result = finish(proc)
    assert result.returncode == 1
    assert "Ctrl-C" in result.stdout
    run = read(repo, "run")
    assert run["state"] == "PAUSED" and f"--resume {run['id']}" in run["history"][-1]["reason"]
    assert task_state(repo, "t0") == task_state(repo, "t1") == "COMPLETED"  # finished, not killed
    assert done_lines(repo, "t0") == done_lines(repo, "t1") == ["1"]
    assert [t for t in (f"t{i}" for i in range(6)) if task_state(repo, t) != "COMPLETED"]  # not everything ran
    # the workers followed their machine: DRAINING on Ctrl-C, then TERMINATED
    assert all([h["to"] for h in w["history"]][-2:] == ["DRAINING", "TERMINATED"] for w in docs(repo, "worker").values())
    assert_state_is_whole(repo)
    git(repo, "add", ".ledger")
    git(repo, "commit", "-qm", "paused run")
    again = ledger(repo, "run", "--resume", run["id"])
    assert again.returncode == 0, again.stderr
    assert all(task_state(repo, f"t{i}") == "COMPLETED" for i in range(6))
    assert sorted(entered(repo, "task", "COMPLETED")) == [f"t{i}" for i in range(6)]
    assert all(done_lines(repo, f"t{i}") == ["1"] for i in range(6))
    assert problems(repo, "HEAD") == []  # against the committed pause: append-only, legal steps
    assert_state_is_whole(repo)


def test_ctrl_c_starts_nothing_new(repo: Path) -> None:
    setup(repo, ws("a", *(task(f"t{i}", sleeper(0.5)) for i in range(3))))
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t0"))
    proc.send_signal(signal.SIGINT)
    result = finish(proc)
    assert "Traceback" not in result.stderr, result.stderr
    assert entered(repo, "task", "RUNNING") == ["t0"]


def test_ctrl_c_at_a_terminal_lets_running_tasks_finish(repo: Path) -> None:
    setup(repo, ws("a", task("t0", sleeper(0.6)), task("t1", sleeper(0.01))))
    proc = start(repo, "run", "p", "--workers", "1")
    wait_for(lambda: started(repo, "t0"))
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    finish(proc)
    assert task_state(repo, "t0") == "COMPLETED" and done_lines(repo, "t0") == ["1"]


def shorten_sleeps(repo: Path) -> None:
    """The plan's `sleep 5` made short, so the resumed run ends at once."""
    plan = repo / ".ledger" / "plans" / "p.yaml"
    plan.write_text(plan.read_text().replace("sleep 5", "sleep 0.01"))


def kill_when(repo: Path, proc: subprocess.Popen[str], ready: Callable[[], Any]) -> None:
    """SIGKILL `ledger run` once `ready` holds, then wait until nothing of it is left."""
    wait_for(ready)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    no_process_left(repo)


def test_resume_after_a_crash_reruns_the_interrupted_task_and_never_a_completed_one(repo: Path) -> None:
    setup(repo, ws("a", task("quick"), task("slow", sleeper(5)), task("next", DONE, "slow")))
    proc = start(repo, "run", "p", "--workers", "2")
    kill_when(repo, proc, lambda: task_state(repo, "slow") == "RUNNING" and task_state(repo, "quick") == "COMPLETED"
              and (repo / "pids" / "slow").exists())
    assert not alive(int((repo / "pids" / "slow").read_text()))
    assert problems(repo) == []
    git(repo, "add", ".ledger")
    git(repo, "commit", "-qm", "crashed run")
    shorten_sleeps(repo)
    result = ledger(repo, "run", "--resume", run_id(repo))
    assert result.returncode == 0, result.stderr
    slow = read(repo, "task", "slow")
    assert slow["attempts"] == 2 and "interrupted" in slow["history"][3]["reason"]
    assert done_lines(repo, "quick") == ["1"] and done_lines(repo, "slow") == ["2"] and done_lines(repo, "next") == ["1"]
    assert entered(repo, "task", "COMPLETED").count("quick") == 1
    assert entered(repo, "run", "RUNNING") == [run_id(repo)]  # still RUNNING when it was killed
    old = [w for w in docs(repo, "worker").values() if w["history"][-1]["reason"] == "its run was interrupted"]
    assert len(old) == 2 and all(w["state"] == "TERMINATED" for w in old)
    assert problems(repo, "HEAD") == []
    assert_state_is_whole(repo)


def test_a_crash_of_the_scheduler_does_not_use_up_a_task_s_attempts(repo: Path) -> None:
    setup(repo, ws("a", task("slow", sleeper(5), max_attempts=1)))
    proc = start(repo, "run", "p", "--workers", "1")
    kill_when(repo, proc, lambda: task_state(repo, "slow") == "RUNNING")
    shorten_sleeps(repo)
    assert ledger(repo, "run", "--resume", run_id(repo)).returncode == 0
    assert task_state(repo, "slow") == "COMPLETED"


def test_resume_rebuilds_a_run_file_the_crash_kept_out(repo: Path) -> None:
    setup(repo, ws("a", task("t1")))
    assert run_plan(repo, "--budget", "0").returncode == 1  # PAUSED before anything started
    (run_dir(repo) / "run.json").unlink()  # as a kill between the log and the files leaves it
    result = ledger(repo, "run", "--resume", run_id(repo), "--budget", "10")
    assert result.returncode == 0, result.stderr
    assert read(repo, "run")["state"] == "COMPLETED" and done_lines(repo, "t1") == ["1"]


def test_a_new_run_never_takes_the_directory_of_another(repo: Path) -> None:
    setup(repo, ws("a", task("t1")))
    now = time.time()
    planted = []
    for ahead in range(4):  # this second and the next ones: the run starts within them
        stamp = datetime.fromtimestamp(now + ahead, timezone.utc).strftime("%Y%m%d-%H%M%S")
        log = repo / ".ledger" / "runs" / f"p-{stamp}" / "events.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text('{"schema_version":2,"seq":1,"at":"2026-01-01T00:00:00Z","type":"transition","entity":"run",'
                       f'"id":"p-{stamp}","from":null,"to":"INITIALIZING","actor":"x","reason":"created"}}\n')
        planted.append(log)
    assert run_plan(repo).returncode == 0
    assert all(len(log.read_text().splitlines()) == 1 for log in planted)


def test_resume_keeps_a_retry_s_persisted_time(repo: Path) -> None:
    flaky = "sh -c 'test -e done/flaky-once || { touch done/flaky-once; exit 1; }'"
    setup(repo, ws("a", task("flaky", flaky, retry_delay_s=0.8)))
    proc = start(repo, "run", "p", "--workers", "1")
    kill_when(repo, proc, lambda: task_state(repo, "flaky") == "RETRYING")
    due = epoch(read(repo, "task", "flaky")["next_retry_at"])
    assert ledger(repo, "run", "--resume", run_id(repo)).returncode == 0
    doc = read(repo, "task", "flaky")
    queued_again = [h for h in doc["history"] if h["from"] == "RETRYING"][0]
    assert epoch(queued_again["at"]) >= due - 0.01
    assert doc["state"] == "COMPLETED" and doc["attempts"] == 2


def test_a_tool_runs_no_more_jobs_at_once_than_its_max_concurrency(repo: Path) -> None:
    # three workers are free, but the tool takes one job at a time: a second one at once
    # would find the tool's lock taken
    tools = {"one": {"command": ["sh", "-c", "flock -n locks/one -c 'sleep 0.2' || { echo overlap >> overlaps; exit 1; }"],
                     "max_concurrency": 1, "capabilities": ["x"]}}
    setup(repo, ws("a", *({"id": f"t{i}", "prompt": "p", "tool": "one"} for i in range(3)),
                   {"id": "c", "prompt": "p", "capabilities": ["x"]}), tools=tools)
    result = ledger(repo, "run", "p", "--workers", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (repo / "overlaps").exists()
    assert all(read(repo, "task", t)["tool"] == "one" for t in ("t0", "t1", "t2", "c"))
    assert_state_is_whole(repo)
