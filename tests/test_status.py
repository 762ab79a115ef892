"""`ledger status`: its JSON against schemas/status.json, its tables for people, colour only
on a terminal, and nothing of a patch's text that could drive the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from patch_ledger import ledger, machine, overview, patches, results, schemas
from patch_ledger.commands import status
from patch_ledger.pool import Claim
from tests import builders
from tests.builders import commit, git, write
from tests.builders import ledger as cli

HOSTILE = "fix \x1b[2J\x1b]0;owned\x07 parser\r"


def _patch(repo: Path, line: str, message: str) -> ledger.Patch:
    """A change of README.md recorded from the working tree, then undone."""
    write(repo, "README.md", f"start\n{line}\n")
    patch, _ = patches.add(repo, None, None, None, "alice", message)
    git(repo, "checkout", "--", "README.md")
    return patch


def _gate(repo: Path, patch: ledger.Patch, gate: str, outcome: str) -> None:
    doc = results.begin(patch.id, gate, "1/1", patch.base, "command", True, "ci")
    tip = None
    for state in ("RUNNING", outcome):
        doc = results.step(doc, state, "ci", f"{gate} {state.lower()}")
        tip = results.save(repo, doc, tip)


@pytest.fixture
def busy(repo: Path) -> Iterator[Path]:
    """A ledger with a quarantined patch, gate results, a required gate not yet run, a run
    half done with an unhealthy worker (its scheduler alive: this process holds its claim),
    and an open breaker."""
    write(repo, "README.md", "start\n")
    commit(repo, "root")
    write(repo, ".ledger/config.yaml", "schema_version: 2\ngates:\n  - {name: tests, plugin: pytest, required: true}\n")
    quarantined = _patch(repo, "one", "make parsing faster")
    for state in ("VALIDATING", "VALIDATED", "APPLIED"):
        quarantined = ledger.move(repo, quarantined, state, "ci", f"to {state}")
    _gate(repo, quarantined, "tests", "FAILED")
    ledger.move(repo, quarantined, "QUARANTINED", "ci", "tests failed on main")
    _gate(repo, _patch(repo, "two", HOSTILE), "lint", "PASSED")
    write(repo, ".ledger/runs/r1/run.json", builders.walk("run", "r1", ["RUNNING"], progress=0.5, plan="plans/p.yaml"))
    write(repo, ".ledger/runs/r1/tasks/a.json", builders.task("a", ["QUEUED", "RUNNING", "VALIDATING", "COMPLETED"], duration_s=4.0))
    write(repo, ".ledger/runs/r1/tasks/b.json", builders.task("b", [], depends_on=["a"]))
    write(repo, ".ledger/runs/r1/workers/w1.json", builders.walk("worker", "w1", ["BUSY", "UNHEALTHY"], run="r1"))
    write(repo, ".ledger/breakers/agent.json", builders.walk("breaker", "agent", ["OPEN"], target="agent",
                                                             failure_threshold=3, consecutive_failures=3))
    claim = Claim(repo / ".git" / "ledger" / "runs" / "r1")
    yield repo
    claim.release()


def _status(repo: Path, *args: str) -> dict[str, Any]:
    proc = cli(repo, "status", "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_status_json_is_what_its_schema_documents(busy: Path) -> None:
    report = _status(busy)
    assert schemas.validate("status", report) == []
    assert list(schemas.explain("status", report)) == []  # the reference validator (2020-12) agrees
    p = report["patches"]
    assert (p["total"], p["by_state"]) == (2, {"PENDING": 1, "QUARANTINED": 1})
    assert [(q["state"], q["reason"], q["gates"]["tests"]["state"]) for q in p["quarantined"]] == [
        ("QUARANTINED", "tests failed on main", "FAILED")]
    pending = next(x for x in p["recent"] if x["state"] == "PENDING")
    assert pending["message"] == " ".join(HOSTILE.split()) and set(pending["gates"]) == {"lint", "tests"}
    (run,) = report["runs"]
    assert (run["state"], run["progress"], run["tasks"], run["unhealthy"], run["eta_s"]) == (
        "RUNNING", 0.5, {"COMPLETED": 1, "PENDING": 1}, ["w1"], 4.0)
    assert [(b["id"], b["state"], b["consecutive_failures"]) for b in report["breakers"]] == [("agent", "OPEN", 3)]


def test_an_empty_repository_reports_valid_json(repo: Path) -> None:
    report = _status(repo)
    assert schemas.validate("status", report) == []
    assert report == {"patches": {"total": 0, "by_state": {}, "recent": [], "quarantined": []}, "runs": [], "breakers": []}


@pytest.mark.parametrize(("where", "value"), [
    (("patches", "recent", 0, "state"), "NOT_A_STATE"),
    (("patches", "recent", 0, "gates", "tests", "state"), "GREEN"),
    (("patches", "recent", 0, "id"), "1f3c"),
    (("runs", 0, "tasks", "PENDING"), 0),
    (("breakers", 0, "state"), "CLOSED?"),
    (("patches", "extra"), 1),
])
def test_the_schema_refuses_what_status_never_prints(busy: Path, where: tuple[Any, ...], value: Any) -> None:
    report = _status(busy)
    node = report
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert schemas.validate("status", report) != []


def _columns(header: str) -> list[int]:
    """Where each header word starts."""
    return [i for i in range(len(header)) if header[i] != " " and (i == 0 or header[i - 1] == " ")]


def test_tables_are_aligned_and_plain_when_piped(busy: Path) -> None:
    out = cli(busy, "status").stdout
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out  # nothing reaches a terminal's controls
    lines = out.splitlines()
    head = lines.index(next(line for line in lines if line.lstrip().startswith("PATCH  ")))
    starts = _columns(lines[head])
    for row in lines[head + 1:head + 3]:
        assert all(row[i - 1] == " " and row[i] != " " for i in starts[:4]), (lines[head], row)
    assert "quarantined: 1" in lines and "tests failed on main" in out
    assert "fix ?[2J?]0;owned? parser" in out
    run_head = next(line for line in lines if line.lstrip().startswith("RUN "))
    assert run_head.split() == ["RUN", "STATE", "DONE", "TASKS", "NOTES"]
    assert any("r1" in line and "50%" in line and "ETA 4 s" in line and "unhealthy workers: w1" in line for line in lines)
    assert any(line.split()[:3] == ["agent", "OPEN", "2026-01-01"] for line in lines)


def _in_terminal(repo: Path, **env: str) -> str:
    """`ledger status` with its output on a pseudo-terminal, as a person runs it."""
    import pty

    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "NO_COLOR"}
    proc = subprocess.Popen([sys.executable, "-m", "patch_ledger", "status"], cwd=repo, stdout=follower,
                            stderr=subprocess.PIPE, env={**environ, **env})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color(busy: Path) -> None:
    coloured = _in_terminal(busy)
    assert "\x1b[31mQUARANTINED\x1b[0m" in coloured and "\x1b[32mlint:PASSED\x1b[0m" in coloured
    assert "\x1b[2J" not in coloured  # the patch's own escape sequence still never reaches it
    plain = _in_terminal(busy, NO_COLOR="1")
    assert "\x1b" not in plain and "QUARANTINED" in plain
    assert _in_terminal(busy, NO_COLOR="") == coloured  # set but empty: the convention says colour stays


def test_tones_come_from_the_schemas_and_agree_across_machines() -> None:
    seen: dict[str, str] = {}
    for kind in machine.MACHINE_KINDS:
        m = machine.load(kind)
        assert set(m.tones) <= set(m.states) and set(m.tones.values()) <= {"good", "bad", "busy"}
        for state, t in m.tones.items():
            assert seen.setdefault(state, t) == t, f"{state} is {seen[state]} in one machine and {t} in {kind}"
    assert overview.tone("FAILED") == "bad" and overview.tone("PENDING") == "plain" and overview.tone(None) == "plain"
    assert overview.tone("HALF_OPEN") == "busy" and overview.tone("VERIFIED") == "good"


CONTROL = "\x1b]0;pwn\x07\x1b[2J"  # sets the terminal's title, then clears the screen


def _no_control(out: str) -> None:
    assert not any(c in out for c in "\x1b\x07\r"), repr(out)


def test_no_cell_read_from_a_file_drives_the_terminal(busy: Path) -> None:
    """Ids, states and tool names come from files anyone can push, like messages do."""
    run = builders.walk("run", "r1", ["RUNNING"], progress=0.5, plan="plans/p.yaml")
    write(busy, ".ledger/runs/r1/run.json", {**run, "state": CONTROL})
    write(busy, ".ledger/runs/r1/tasks/c.json", {**builders.task("c", []), "state": CONTROL})
    write(busy, f".ledger/runs/r{CONTROL}/run.json", run)
    worker = builders.walk("worker", "w2", ["BUSY", "UNHEALTHY"], run="r1")
    write(busy, ".ledger/runs/r1/workers/w2.json", {**worker, "id": CONTROL})
    breaker = builders.walk("breaker", "agent", ["OPEN"], target="agent", failure_threshold=3, consecutive_failures=3)
    history = [*breaker["history"][:-1], {**breaker["history"][-1], "at": CONTROL}]
    write(busy, ".ledger/breakers/evil.json", {**breaker, "id": CONTROL, "consecutive_failures": CONTROL, "history": history})
    proc = cli(busy, "status")
    assert proc.returncode == 0, proc.stderr
    _no_control(proc.stdout)
    assert "?]0;pwn??[2J" in proc.stdout


def test_no_cell_of_a_report_drives_the_terminal() -> None:
    """What the ledger holds (gate names and states, patch ids and states) is printed the
    same way, whatever reads it."""
    gates = {CONTROL: {"state": CONTROL, "reason": CONTROL}}
    patch = {"id": CONTROL, "state": CONTROL, "seq": 1, "at": CONTROL, "actor": CONTROL, "message": CONTROL,
             "reason": CONTROL, "gates": gates}
    run = {"id": CONTROL, "state": CONTROL, "progress": None, "tasks": {CONTROL: 1}, "cost": {}, "workers": 0,
           "unhealthy": [CONTROL, None], "eta_s": None, "scheduled": False}
    breaker = {"id": CONTROL, "state": CONTROL, "consecutive_failures": None, "since": CONTROL}
    report = {"patches": {"total": 1, "by_state": {CONTROL: 1}, "recent": [patch], "quarantined": [patch]},
              "runs": [run], "breakers": [breaker]}
    for colour in (False, True):
        out = status.text(report, colour=colour)
        _no_control(re.sub(r"\x1b\[[0-9;]*m", "", out))  # only the colours of our own


@pytest.mark.parametrize("doc", [
    {"state": "OPEN", "history": ["x"]},
    {"state": "OPEN"},
    {"id": 5, "state": "OPEN", "history": "x", "consecutive_failures": "3"},
    {"id": ["a"], "state": "HALF_OPEN", "history": [{"at": 5}], "consecutive_failures": -1},
    {"id": "a", "state": "OPEN", "history": [{}], "consecutive_failures": True},
])
def test_a_malformed_breaker_is_shown_with_what_is_readable(repo: Path, doc: dict[str, Any]) -> None:
    write(repo, ".ledger/breakers/agent.json", doc)
    report = _status(repo)
    assert schemas.validate("status", report) == []
    (b,) = report["breakers"]
    assert b["id"] == (doc["id"] if isinstance(doc.get("id"), str) else None) and b["state"] == doc["state"]
    assert b["consecutive_failures"] is None and b["since"] is None
    proc = cli(repo, "status")
    assert proc.returncode == 0 and "breakers holding work back: 1" in proc.stdout, proc.stderr


def test_workers_counted_live_are_the_worker_machine_s(repo: Path) -> None:
    """IDLE and BUSY, as schemas/worker.json's `assign` joins them; not DRAINING or UNHEALTHY."""
    write(repo, ".ledger/runs/r1/run.json", builders.walk("run", "r1", ["RUNNING"], progress=0.0, plan="plans/p.yaml"))
    for name, states in {"idle": [], "busy": ["BUSY"], "draining": ["DRAINING"], "sick": ["UNHEALTHY"]}.items():
        write(repo, f".ledger/runs/r1/workers/{name}.json", builders.walk("worker", name, states, run="r1", task="a"))
    write(repo, ".ledger/runs/r1/workers/odd.json", {"id": "odd", "state": ["IDLE"]})
    (run,) = _status(repo)["runs"]
    assert run["workers"] == 2


def test_a_run_under_way_is_shown_as_its_log_says_not_as_its_last_checkpoint(repo: Path) -> None:
    """A run's files are written at checkpoints; a run killed before its first has its log alone."""
    from patch_ledger.store import RunStore

    store = RunStore(repo, "r1", autoflush=False)
    store.create("run", "r1", "t", fields={"plan": ".ledger/plans/p.yaml", "progress": 0.0})
    store.create("workstream", "w", "t", fields={"run": "r1", "progress": 0.0})
    for tid in ("a", "b"):
        store.create("task", tid, "t", fields={"run": "r1", "workstream": "w", "attempts": 0, "max_attempts": 1})
    store.move("run", "r1", "RUNNING", "t", "started")
    store.move("task", "a", "QUEUED", "t", "no dependencies")
    store.move("task", "a", "RUNNING", "t", "attempt 1", fields={"attempts": 1})
    store.flush(files=False)
    assert not (repo / ".ledger" / "runs" / "r1" / "run.json").exists()
    (run,) = _status(repo)["runs"]
    assert run["id"] == "r1" and run["state"] == "RUNNING" and run["tasks"] == {"PENDING": 1, "RUNNING": 1}
    with (repo / ".ledger" / "runs" / "r1" / "events.jsonl").open("a") as log:
        log.write('{"torn": ')  # a crash in the middle of a line: what can be read is shown
    assert _status(repo)["runs"][0]["tasks"] == {"PENDING": 1, "RUNNING": 1}


def test_a_run_no_scheduler_runs_says_how_to_continue_it_and_has_no_eta(busy: Path) -> None:
    (run,) = _status(busy)["runs"]  # the fixture holds r1's claim, as its scheduler would
    assert run["scheduled"] is True and run["eta_s"] == 4.0
    write(busy, ".ledger/runs/r2/run.json", builders.walk("run", "r2", ["RUNNING"], progress=0.0, plan="plans/p.yaml"))
    write(busy, ".ledger/runs/r2/tasks/a.json", builders.task("a", ["QUEUED", "RUNNING", "VALIDATING", "COMPLETED"], duration_s=4.0))
    write(busy, ".ledger/runs/r2/tasks/b.json", builders.task("b", []))
    stopped = next(r for r in _status(busy)["runs"] if r["id"] == "r2")
    assert stopped["scheduled"] is False and stopped["eta_s"] is None  # a killed run finishes nothing meanwhile
    assert any("r2" in line and "stopped: `ledger run --resume r2` continues it" in line
               for line in cli(busy, "status").stdout.splitlines())
    assert [r["scheduled"] for r in _status(busy)["runs"] if r["state"] == "COMPLETED"] == []
