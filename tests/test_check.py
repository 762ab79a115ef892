"""`ledger check` end to end: real repositories, real git, the real CLI in its own process."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from patch_ledger import machine
from tests.builders import commit, git, ledger, stamp, task, walk, write

RUN = ".ledger/runs/r1"
WS1 = f"{RUN}/workstreams/ws1.json"
RUN_JSON = f"{RUN}/run.json"
EVENTS = f"{RUN}/events.jsonl"


def tpath(task_id: str, run: str = "r1") -> str:
    return f".ledger/runs/{run}/tasks/{task_id}.json"


class Run:
    """One run's documents and an event log that matches their histories, written as files.

    The standard run: r1 RUNNING with workstream ws1 RUNNING and its tasks a (COMPLETED),
    b (RUNNING, after a) and c (PENDING, after b); progress 1/3 everywhere."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.docs: dict[str, tuple[str, dict[str, Any]]] = {}  # path -> (kind, document)
        self.events: list[dict[str, Any]] = []

    @classmethod
    def standard(cls, repo: Path) -> "Run":
        run = cls(repo)
        run.docs = {
            RUN_JSON: ("run", walk("run", "r1", ["RUNNING"], progress=1 / 3)),
            WS1: ("workstream", walk("workstream", "ws1", ["READY", "RUNNING"], run="r1", progress=1 / 3)),
            tpath("a"): ("task", task("a", ["QUEUED", "RUNNING", "VALIDATING", "COMPLETED"], workstream="ws1")),
            tpath("b"): ("task", task("b", ["QUEUED", "RUNNING"], start=10, workstream="ws1", depends_on=["a"],
                                      progress=0.5)),
            tpath("c"): ("task", task("c", [], start=20, workstream="ws1", depends_on=["b"])),
        }
        steps = sorted(((h["at"], kind, doc["id"], h) for kind, doc in run.docs.values() for h in doc["history"]),
                       key=lambda s: s[0])
        for _, kind, doc_id, entry in steps:
            run.log(kind, doc_id, entry)
        return run

    def doc(self, path: str) -> dict[str, Any]:
        return self.docs[path][1]

    def log(self, kind: str, doc_id: str, entry: dict[str, Any]) -> None:
        """Append the transition event of one history entry."""
        self.events.append({"schema_version": 2, "seq": len(self.events) + 1, "at": entry["at"], "type": "transition",
                            "entity": kind, "id": doc_id, "from": entry["from"], "to": entry["to"],
                            "actor": entry["actor"], "reason": entry["reason"]})

    def step(self, path: str, to: str, minute: int, logged: bool = True, **fields: Any) -> dict[str, Any]:
        """A legal transition of the entity at `path`, with its event unless `logged` is False."""
        kind, doc = self.docs[path]
        doc = machine.step(doc, kind, to, "tester", f"to {to}", at=stamp(minute), fields=fields)
        self.docs[path] = (kind, doc)
        if logged:
            self.log(kind, doc["id"], doc["history"][-1])
        return doc

    def force(self, path: str, to: str, minute: int, **fields: Any) -> None:
        """Append a step the engine would refuse (illegal or leaving a terminal state), logged."""
        kind, doc = self.docs[path]
        entry = {"from": doc["state"], "to": to, "at": stamp(minute), "actor": "tester", "reason": "forced"}
        doc = {**doc, **fields, "state": to, "history": [*doc["history"], entry]}
        self.docs[path] = (kind, doc)
        self.log(kind, doc["id"], entry)

    def derive(self) -> None:
        """Set run and workstream progress from the tasks, as the run guards require."""
        tasks = [d for k, d in self.docs.values() if k == "task"]
        terminal = machine.load("task").terminal
        for kind, doc in self.docs.values():
            if kind in ("run", "workstream"):
                mine = [t for t in tasks if kind == "run" or t.get("workstream") == doc["id"]]
                doc["progress"] = sum(t["state"] in terminal for t in mine) / len(mine)

    def save(self) -> "Run":
        for path, (_, doc) in self.docs.items():
            write(self.repo, path, doc)
        write(self.repo, EVENTS, events_text(self.events))
        return self


def events_text(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def check(cwd: Path, *args: str) -> dict[str, Any]:
    """`ledger check ARGS --format json`, its report parsed, after the basic promises."""
    proc = ledger(cwd, "check", *args, "--format", "json")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["exit_code"] == proc.returncode
    assert report["ok"] is (proc.returncode == 0)
    return report


def findings(report: dict[str, Any], path: str | None = None, rule: str | None = None) -> list[dict[str, Any]]:
    return [f for f in report["findings"]
            if (path is None or f["path"] == path) and (rule is None or f["rule"] == rule)]


def one(report: dict[str, Any], path: str, rule: str | None = None, contains: str = "") -> dict[str, Any]:
    """The single finding in `path` (of `rule`) whose message contains `contains`."""
    matching = [f for f in findings(report, path, rule) if contains in f["message"]]
    assert len(matching) == 1, f"expected one {rule or ''} finding in {path} with {contains!r}: {report['findings']}"
    return matching[0]


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def line_col_of(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """Line and column (1-based) of the nth occurrence of `needle`, counted by hand."""
    offset = -1
    for _ in range(nth):
        offset = text.index(needle, offset + 1)
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


@pytest.fixture
def committed(repo: Path) -> Run:
    """The standard run, committed: checks compare with it through HEAD."""
    run = Run.standard(repo).save()
    assert commit(repo, "run r1").returncode == 0
    return run


# --- a consistent run --------------------------------------------------------------------


def test_a_consistent_run_checks_clean_as_new_files(repo: Path) -> None:
    Run.standard(repo).save()

    proc = ledger(repo, "check")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "ledger check: 6 state file(s) OK, checked as new files (no base commit)\n"
    assert proc.stderr == ""


def test_a_consistent_run_checks_clean_against_head_in_json(committed: Run) -> None:
    report = check(committed.repo)

    assert report == {
        "ok": True,
        "exit_code": 0,
        "base": head(committed.repo),
        "checked": sorted([EVENTS, RUN_JSON, WS1, tpath("a"), tpath("b"), tpath("c")]),
        "findings": [],
    }
    text = ledger(committed.repo, "check")
    summary = f"ledger check: 6 state file(s) OK, checked against {head(committed.repo)[:12]}\n"
    assert (text.returncode, text.stdout) == (0, summary)


# --- schema errors -------------------------------------------------------------------------

BAD_TASK = """\
{
  "schema_version": 2,
  "id": "a",
  "state": "PENDING",
  "run": "r1",
  "attempts": 0,
  "max_attempts": 0,
  "history": [
    {
      "from": null,
      "to": "PENDING",
      "at": "yesterday",
      "actor": "tester",
      "reason": "created"
    }
  ]
}
"""


def test_a_schema_error_points_at_the_offending_value(repo: Path) -> None:
    write(repo, tpath("a"), BAD_TASK)

    report = check(repo)

    assert report["exit_code"] == 1
    located = {(f["pointer"], f["line"], f["col"], f["rule"]) for f in report["findings"]}
    assert located == {("/max_attempts", 7, 19, "schema"), ("/history/0/at", 12, 13, "schema")}
    assert all(f["path"] == tpath("a") for f in report["findings"])
    text = ledger(repo, "check").stdout.splitlines()
    assert any(line.startswith(f"{tpath('a')}:7:19: ") and "max_attempts" in line for line in text)
    assert any(line.startswith(f"{tpath('a')}:12:13: ") and "yesterday" in line for line in text)


def test_a_schema_error_in_one_task_blames_only_that_task(committed: Run) -> None:
    """A task that fails its schema takes no part in the cross-file checks; that must not make
    the run's and workstream's (correct) progress look wrong."""
    committed.doc(tpath("b"))["max_attempts"] = 0
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    assert {f["path"] for f in report["findings"]} == {tpath("b")}, report["findings"]


# --- against the previous version --------------------------------------------------------


def test_appending_a_legal_step_passes(committed: Run) -> None:
    committed.step(tpath("b"), "VALIDATING", 30)
    committed.save()

    report = check(committed.repo)

    assert report["findings"] == []
    assert report["exit_code"] == 0


def test_rewriting_an_old_history_entry_is_refused(committed: Run) -> None:
    committed.doc(tpath("b"))["history"][1]["actor"] = "someone-else"
    text = json.dumps(committed.doc(tpath("b")), indent=2) + "\n"
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("b"), "change", "rewritten")
    assert found["pointer"] == "/history/1"
    assert "append-only" in found["message"]
    history = text.index('"history"')
    assert (found["line"], found["col"]) == line_col_of(text, "{", text[:history].count("{") + 2)
    assert findings(report, rule="change") == [found]


def test_an_illegal_jump_is_refused_naming_both_states(committed: Run) -> None:
    committed.force(tpath("c"), "COMPLETED", 30)
    committed.derive()
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("c"), "state", "PENDING -> COMPLETED")
    assert found["pointer"] == "/history/1"
    assert "not a Task transition" in found["message"]


def test_leaving_a_terminal_state_is_refused(committed: Run) -> None:
    committed.force(tpath("a"), "RUNNING", 30, attempts=2)
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("a"), "change", "terminal state COMPLETED")
    assert found["pointer"] == "/state"
    assert "RUNNING" in found["message"]


def test_progress_going_down_is_refused(committed: Run) -> None:
    committed.doc(tpath("b"))["progress"] = 0.25
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("b"), "change", "went down from 0.5 to 0.25")
    assert found["pointer"] == "/progress"
    assert len(report["findings"]) == 1


def test_base_compares_with_that_commit(committed: Run) -> None:
    first = head(committed.repo)
    committed.doc(tpath("b"))["history"][2]["reason"] = "edited after the fact"
    committed.save()
    assert commit(committed.repo, "rewrite b").returncode == 0

    against_head = check(committed.repo)
    against_first = check(committed.repo, "--base", first)
    by_name = check(committed.repo, "--base", "HEAD~1")

    assert (against_head["exit_code"], against_head["base"]) == (0, head(committed.repo))
    assert (against_first["exit_code"], against_first["base"]) == (1, first)
    assert one(against_first, tpath("b"), "change", "rewritten")["pointer"] == "/history/2"
    assert by_name == against_first


@pytest.mark.parametrize("staged_is_bad", [True, False], ids=["bad-staged", "bad-in-worktree"])
def test_staged_checks_the_index_not_the_worktree(committed: Run, staged_is_bad: bool) -> None:
    repo = committed.repo
    good = Run.standard(repo)
    good.step(tpath("b"), "VALIDATING", 30)
    bad = Run.standard(repo)
    bad.doc(tpath("b"))["history"][1]["actor"] = "someone-else"
    first, second = (bad, good) if staged_is_bad else (good, bad)
    first.save()
    git(repo, "add", "-A")
    second.save()

    staged = check(repo, "--staged")
    worktree = check(repo)

    assert staged["exit_code"] == (1 if staged_is_bad else 0), staged["findings"]
    assert worktree["exit_code"] == (0 if staged_is_bad else 1), worktree["findings"]
    refused = staged if staged_is_bad else worktree
    assert one(refused, tpath("b"), "change", "rewritten")["pointer"] == "/history/1"
    assert staged["base"] == head(repo)


def test_base_and_staged_together_is_a_usage_error(committed: Run) -> None:
    proc = ledger(committed.repo, "check", "--staged", "--base", "HEAD")

    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "--staged" in proc.stderr


# --- across the files of a run ------------------------------------------------------------


def test_an_unknown_dependency_is_refused(committed: Run) -> None:
    committed.doc(tpath("c"))["depends_on"] = ["b", "zz"]
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("c"), "run", "'zz'")
    assert found["pointer"] == "/depends_on/1"
    assert "not in run r1" in found["message"]
    assert len(report["findings"]) == 1


def test_a_dependency_cycle_is_named_in_order(repo: Path) -> None:
    for task_id, dep in (("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")):
        write(repo, tpath(task_id, "r2"), task(task_id, run="r2", depends_on=[dep]))

    report = check(repo)

    assert report["exit_code"] == 1
    cycles = [f for f in report["findings"] if "cycle" in f["message"]]
    assert len(cycles) == 1, report["findings"]
    assert cycles[0]["message"] == "task dependency cycle: a -> b -> c -> a"
    assert cycles[0]["path"] == tpath("a", "r2")


def test_workstream_progress_must_agree_with_its_tasks(committed: Run) -> None:
    committed.doc(WS1)["progress"] = 0.9
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, WS1, "run", "0.9")
    assert found["pointer"] == "/progress"
    assert "0.3333" in found["message"]
    assert len(report["findings"]) == 1


def test_a_completed_run_needs_its_workstreams_finished(committed: Run) -> None:
    committed.step(RUN_JSON, "COMPLETED", 30)
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, RUN_JSON, "run", "COMPLETED")
    assert found["pointer"] == "/state"
    assert "ws1" in found["message"]


def test_an_event_without_a_history_entry_is_refused(committed: Run) -> None:
    # an event the file lacks, followed by a step the file holds: not a file that lags the log
    entry = {"from": "RUNNING", "to": "VALIDATING", "at": stamp(30), "actor": "tester", "reason": ""}
    committed.log("task", "b", entry)
    seq = len(committed.events)
    committed.step(tpath("b"), "VALIDATING", 40)
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, EVENTS, "run", f"event {seq} ")
    assert "task b RUNNING -> VALIDATING" in found["message"]
    assert (found["pointer"], found["line"]) == (f"/{seq - 1}", seq)
    assert len(report["findings"]) == 1


def test_a_file_behind_its_run_s_log_is_the_run_as_the_log_says(committed: Run) -> None:
    # the log is the write-ahead log: a crash between it and the files leaves this state, and
    # the run is judged as its log says it is (the step replayed, then every other check)
    entry = {"from": "RUNNING", "to": "VALIDATING", "at": stamp(30), "actor": "tester", "reason": ""}
    committed.log("task", "b", entry)
    committed.save()
    assert check(committed.repo)["findings"] == []
    illegal = {"from": "VALIDATING", "to": "QUEUED", "at": stamp(31), "actor": "tester", "reason": ""}
    committed.log("task", "b", illegal)  # no transition of the task machine: not replayed, reported
    committed.save()
    found = one(check(committed.repo), EVENTS, "run", f"event {len(committed.events)} ")
    assert "task b VALIDATING -> QUEUED" in found["message"]


def test_a_history_entry_without_an_event_is_refused(committed: Run) -> None:
    committed.step(tpath("b"), "VALIDATING", 30, logged=False)
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("b"), "run", "no transition event")
    assert "task b RUNNING -> VALIDATING" in found["message"]
    assert EVENTS in found["message"]
    assert found["pointer"] == "/history/3"
    assert len(report["findings"]) == 1


def test_the_event_log_is_append_only(committed: Run) -> None:
    committed.events[1]["reason"] = "edited"
    committed.save()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    found = one(report, EVENTS, "change", "rewritten")
    assert "line 2" in found["message"]
    assert (found["line"], found["pointer"]) == (2, "/1")


def test_deleting_the_event_log_is_refused(committed: Run) -> None:
    (committed.repo / EVENTS).unlink()

    report = check(committed.repo)

    assert report["exit_code"] == 1
    assert "deleted" in one(report, EVENTS, "change")["message"]


def test_an_id_must_match_its_file_name(repo: Path) -> None:
    write(repo, tpath("x", "r2"), task("y", run="r2"))

    report = check(repo)

    assert report["exit_code"] == 1
    found = one(report, tpath("x", "r2"), "run", "'y'")
    assert found["pointer"] == "/id"
    assert "'x'" in found["message"]


# --- deleted files -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["worktree", "staged"])
def test_deleting_an_unfinished_task_is_refused_a_finished_one_is_not(repo: Path, how: str) -> None:
    write(repo, tpath("open", "r2"), task("open", ["QUEUED"], run="r2"))
    write(repo, tpath("done", "r2"), task("done", ["QUEUED", "RUNNING", "VALIDATING", "COMPLETED"], run="r2"))
    assert commit(repo).returncode == 0
    args = ["--staged"] if how == "staged" else []

    def delete(task_id: str) -> None:
        if how == "staged":
            git(repo, "rm", "-q", tpath(task_id, "r2"))
        else:
            (repo / tpath(task_id, "r2")).unlink()

    delete("done")
    finished = check(repo, *args)
    delete("open")
    unfinished = check(repo, *args)

    assert finished["exit_code"] == 0, finished["findings"]
    assert tpath("done", "r2") in finished["checked"]
    assert unfinished["exit_code"] == 1
    found = one(unfinished, tpath("open", "r2"), "change", "deleted")
    assert "QUEUED" in found["message"]
    assert len(unfinished["findings"]) == 1


# --- one path, the whole run's invariants ------------------------------------------------


def test_checking_one_file_still_checks_the_rest_of_its_run(committed: Run) -> None:
    committed.doc(WS1)["progress"] = 0.9
    committed.save()

    report = check(committed.repo, tpath("b"))

    assert report["checked"] == [tpath("b")]
    assert report["exit_code"] == 1
    assert one(report, WS1, "run", "0.9")["pointer"] == "/progress"


def test_a_relative_path_from_inside_the_run(committed: Run) -> None:
    committed.step(tpath("b"), "VALIDATING", 30, logged=False)
    committed.save()

    report = check(committed.repo / RUN, "tasks/b.json")

    assert report["checked"] == [tpath("b")]
    assert report["exit_code"] == 1
    assert one(report, tpath("b"), "run", "no transition event")["pointer"] == "/history/3"


# --- the native hook ----------------------------------------------------------------------


def test_staged_before_the_first_commit_checks_everything_as_new(repo: Path) -> None:
    Run.standard(repo).save()
    git(repo, "add", "-A")

    report = check(repo, "--staged")

    assert report["findings"] == []
    assert (report["exit_code"], report["base"]) == (0, None)
    assert len(report["checked"]) == 6


def test_as_a_native_pre_commit_hook(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m patch_ledger check --staged\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    run = Run.standard(repo).save()

    first = commit(repo, "run r1", verify=True)
    assert first.returncode == 0, first.stdout + first.stderr
    before = head(repo)
    run.doc(tpath("b"))["history"][1]["actor"] = "someone-else"
    run.save()
    refused = commit(repo, "rewrite", verify=True)

    assert refused.returncode != 0
    assert f"{tpath('b')}:" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert head(repo) == before
