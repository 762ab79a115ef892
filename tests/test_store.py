"""RunStore on real files in a real repository: transitions batched into flushes (the event log
first), `load` bringing files up to the log after a crash (a file behind it, a torn file, a
torn last log line), and the spare/exchange writes leaving nothing stray in the working tree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from patch_ledger import store as store_module
from patch_ledger.check import check
from patch_ledger.store import RunStore, path_of
from tests.builders import git

RUN = "r1"
ACTOR = "tester"


def new_run(repo: Path, tasks: tuple[str, ...] = ("t1", "t2"), autoflush: bool = False) -> RunStore:
    store = RunStore(repo, RUN, autoflush=autoflush)
    store.create("run", RUN, ACTOR, fields={"plan": ".ledger/plans/p.yaml", "progress": 0.0})
    store.create("workstream", "w", ACTOR, fields={"run": RUN, "progress": 0.0})
    for tid in tasks:
        store.create("task", tid, ACTOR, fields={"run": RUN, "workstream": "w", "attempts": 0, "max_attempts": 3})
    return store


def complete(store: RunStore, tid: str, worker: str = "worker-1") -> None:
    store.move("task", tid, "QUEUED", ACTOR, "no dependencies")
    store.move("task", tid, "RUNNING", worker, "attempt 1", fields={"attempts": 1, "worker": worker})
    store.move("task", tid, "VALIDATING", worker, "exit code 0", fields={"result": {"exit_code": 0}})
    store.move("task", tid, "COMPLETED", ACTOR, "its command succeeded", fields={"progress": 1.0})


def files(repo: Path) -> dict[str, dict[str, Any]]:
    """Every state file of the run, by its path under the run's directory."""
    base = repo / ".ledger" / "runs" / RUN
    return {p.relative_to(base).as_posix(): json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))}


def all_events(repo: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (repo / path_of("event", RUN, "")).read_text().splitlines()]


def events(repo: Path) -> list[dict[str, Any]]:
    """The transition events (the log also holds `update` events: fields set without a step)."""
    return [e for e in all_events(repo) if e["type"] == "transition"]


def problems(repo: Path) -> list[str]:
    return [f.text() for f in check(repo).findings]


def test_nothing_is_written_before_a_flush_and_a_flush_writes_the_log_then_every_file(repo: Path) -> None:
    store = new_run(repo)
    store.move("run", RUN, "RUNNING", ACTOR, "started")
    assert not (repo / ".ledger").exists()
    assert store.flush() == 4  # run, workstream, two tasks: each once, however often it moved
    assert [(e["seq"], e["entity"], e["id"], e["from"], e["to"]) for e in events(repo)] == [
        (1, "run", RUN, None, "INITIALIZING"), (2, "workstream", "w", None, "PENDING"),
        (3, "task", "t1", None, "PENDING"), (4, "task", "t2", None, "PENDING"), (5, "run", RUN, "INITIALIZING", "RUNNING")]
    assert files(repo)["run.json"] == store.read("run", RUN)
    assert store.flush() == 0 and len(events(repo)) == 5  # nothing new: nothing written


def test_a_run_directory_removed_under_the_store_is_made_again(repo: Path) -> None:
    """A job may remove the run's files (a `git clean` in the repository); the next write puts
    them back, it does not stop the run."""
    store = new_run(repo)
    store.flush()
    shutil.rmtree(repo / ".ledger" / "runs" / RUN)
    complete(store, "t1")
    store.create("task", "t3", ACTOR, fields={"run": RUN, "workstream": "w", "attempts": 0, "max_attempts": 3})
    store.flush()
    assert files(repo)["tasks/t1.json"]["state"] == "COMPLETED" and files(repo)["tasks/t3.json"]["state"] == "PENDING"


def test_autoflush_writes_every_call_at_once(repo: Path) -> None:
    store = new_run(repo, autoflush=True)
    assert files(repo)["tasks/t2.json"]["state"] == "PENDING"
    store.move("task", "t1", "QUEUED", ACTOR, "ready")
    assert files(repo)["tasks/t1.json"]["state"] == "QUEUED" and events(repo)[-1]["to"] == "QUEUED"


def test_a_field_moved_to_none_is_removed_and_the_event_says_so(repo: Path) -> None:
    store = new_run(repo)
    store.create("worker", "worker-1", ACTOR, fields={"run": RUN, "pid": 1})
    store.move("worker", "worker-1", "BUSY", "worker-1", "runs t1", fields={"task": "t1"})
    store.move("worker", "worker-1", "IDLE", "worker-1", "finished t1", fields={"task": None})
    store.flush()
    assert "task" not in files(repo)["workers/worker-1.json"]
    assert events(repo)[-1]["data"] == {"task": None}


def test_load_replays_the_transitions_a_crash_kept_out_of_the_files(repo: Path) -> None:
    store = new_run(repo)
    store.move("run", RUN, "RUNNING", ACTOR, "started")
    store.flush()
    behind = {p: p.read_bytes() for p in (repo / ".ledger" / "runs" / RUN).rglob("*.json")}
    complete(store, "t1")
    store.create("worker", "worker-1", ACTOR, fields={"run": RUN, "pid": 7})
    store.move("task", "t2", "QUEUED", ACTOR, "no dependencies")
    store.flush()
    expected = files(repo)
    for path, data in behind.items():  # the crash: the log got the batch, the files did not
        path.write_bytes(data)
    (repo / path_of("worker", RUN, "worker-1")).unlink()
    loaded = RunStore.load(repo, RUN)
    assert files(repo) == expected
    assert loaded.read("task", "t1") == expected["tasks/t1.json"]
    assert sorted(d["id"] for d in loaded.docs("task")) == ["t1", "t2"]
    assert len(events(repo)) == 11  # replaying writes no event twice


def test_load_after_a_crash_mid_batch_leaves_files_that_pass_ledger_check(repo: Path) -> None:
    """The orchestrator's own batches mix transitions with aggregates set by `update`
    (progress, cost): after a crash that kept the batch out of the files, what `load` writes
    must still pass `ledger check`."""
    store = new_run(repo, tasks=("t1",))
    store.move("run", RUN, "RUNNING", ACTOR, "started")
    store.flush()
    assert problems(repo) == []
    behind = {p: p.read_bytes() for p in (repo / ".ledger" / "runs" / RUN).rglob("*.json")}
    complete(store, "t1")
    store.move("workstream", "w", "READY", ACTOR, "a task is under way")
    store.move("workstream", "w", "RUNNING", ACTOR, "a task started")
    store.refresh_progress()
    store.move("workstream", "w", "COMPLETED", ACTOR, "every task completed")
    store.move("run", RUN, "COMPLETED", ACTOR, "every task completed")
    store.flush()
    assert problems(repo) == []
    for path, data in behind.items():
        path.write_bytes(data)
    RunStore.load(repo, RUN)
    assert files(repo)["run.json"]["state"] == "COMPLETED"
    assert problems(repo) == [], "replay kept the transitions but dropped the progress set with them"


def test_the_state_a_crash_leaves_between_log_and_files_passes_ledger_check(repo: Path) -> None:
    store = new_run(repo, tasks=("t1",))
    store.flush()
    behind = {p: p.read_bytes() for p in (repo / ".ledger" / "runs" / RUN).rglob("*.json")}
    store.move("run", RUN, "RUNNING", ACTOR, "started")
    store.move("task", "t1", "QUEUED", ACTOR, "no dependencies")
    store.create("task", "t2", ACTOR, fields={"run": RUN, "workstream": "w", "attempts": 0, "max_attempts": 3})
    store.flush()
    for path, data in behind.items():
        path.write_bytes(data)
    (repo / path_of("task", RUN, "t2")).unlink()
    # the log is the write-ahead log: files behind it by the batch a crash cut are the run as
    # its log says it is (issue 5: every state a crash leaves passes `ledger check`)
    assert problems(repo) == []
    # but a step the log holds that does not continue its file is still a mismatch
    t1 = repo / path_of("task", RUN, "t1")
    doc = json.loads(t1.read_text())
    doc["history"].append({"from": "PENDING", "to": "CANCELLED", "at": doc["history"][-1]["at"], "actor": ACTOR, "reason": "edited"})
    doc["state"] = "CANCELLED"
    t1.write_text(json.dumps(doc))
    found = problems(repo)
    assert any("PENDING -> QUEUED" in p and "matches no entry" in p for p in found), found
    assert any("PENDING -> CANCELLED" in p and "has no transition event" in p for p in found), found


def test_a_torn_last_line_of_the_log_is_dropped_and_the_log_continues(repo: Path) -> None:
    store = new_run(repo)
    store.flush()
    log = repo / path_of("event", RUN, "")
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"schema_version":2,"seq":5,"at":"2026-')
    loaded = RunStore.load(repo, RUN)
    assert log.read_bytes() == whole
    loaded.move("task", "t1", "QUEUED", ACTOR, "no dependencies")
    loaded.flush()
    assert [e["seq"] for e in all_events(repo)] == list(range(1, len(all_events(repo)) + 1))
    assert problems(repo) == []


def test_a_torn_state_file_is_rebuilt_from_the_log(repo: Path) -> None:
    store = new_run(repo)
    store.move("run", RUN, "RUNNING", ACTOR, "started")
    complete(store, "t1")
    store.flush()
    expected = files(repo)
    for name in ("tasks/t1.json", "run.json"):
        path = repo / ".ledger" / "runs" / RUN / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    RunStore.load(repo, RUN)
    assert files(repo) == expected


def test_a_missing_run_file_is_rebuilt_from_the_log(repo: Path) -> None:
    store = new_run(repo)
    store.flush()
    expected = files(repo)
    (repo / path_of("run", RUN, RUN)).unlink()
    loaded = RunStore.load(repo, RUN)
    assert files(repo) == expected and loaded.read("run", RUN)["state"] == "INITIALIZING"


def test_a_flush_of_the_log_alone_writes_no_file_but_a_final_one_and_the_checkpoint_syncs_them(repo: Path) -> None:
    store = new_run(repo, tasks=("t1", "t2"))
    store.flush()
    before = files(repo)
    complete(store, "t1")
    complete(store, "t2")
    store.refresh_progress()
    assert store.flush(files=False) == 0
    assert files(repo) == before  # the log holds the steps; the files wait for a checkpoint
    assert [e["id"] for e in events(repo) if e.get("to") == "COMPLETED"] == ["t1", "t2"]
    assert problems(repo) == []  # the checker reads the files through the log
    assert store.flush(files=False, final=[("task", "t1")]) == 1
    assert files(repo)["tasks/t1.json"]["state"] == "COMPLETED" and files(repo)["tasks/t2.json"]["state"] != "COMPLETED"
    assert store.flush() == 3  # the checkpoint: t2, the run and its workstream written, and everything synced
    assert files(repo)["tasks/t2.json"]["state"] == "COMPLETED"
    assert problems(repo) == []


def test_the_spares_live_under_git_dir_and_leave_nothing_stray_in_the_working_tree(repo: Path) -> None:
    store = new_run(repo, tasks=tuple(f"t{i}" for i in range(8)))
    store.flush()
    for i in range(8):
        complete(store, f"t{i}")
        # checkpoints, flushes of the log alone, and flushes writing a finished task's file early
        store.flush(files=i % 2 == 0, final=[("task", f"t{i}")] if i % 3 == 0 else ())
    store.refresh_progress()
    store.flush()
    status = git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored").stdout.splitlines()
    run_dir = f".ledger/runs/{RUN}/"
    expected = {f"?? {run_dir}{name}" for name in ["run.json", "events.jsonl", "workstreams/w.json",
                                                     *(f"tasks/t{i}.json" for i in range(8))]}
    assert set(status) == expected
    spares = repo / ".git" / "ledger" / "spares" / RUN
    assert spares.is_dir() and all(p.is_file() for p in spares.iterdir())
    assert {p.name for p in (repo / ".ledger" / "runs" / RUN / "tasks").iterdir()} == {f"t{i}.json" for i in range(8)}
    assert problems(repo) == []
    for i in range(8):
        assert files(repo)[f"tasks/t{i}.json"]["state"] == "COMPLETED"


def test_a_swapped_file_is_whole_even_when_its_spare_held_a_longer_text(repo: Path) -> None:
    store = new_run(repo, tasks=("t1",))
    store.update("task", "t1", {"title": "x" * 5000})
    store.flush()
    store.flush()
    store.update("task", "t1", {"title": "short"})
    store.flush()
    store.update("task", "t1", {"title": "shorter"})  # written over the 5000-character spare
    store.flush()
    assert files(repo)["tasks/t1.json"]["title"] == "shorter"


def test_the_state_file_text_has_one_history_entry_a_line_and_reads_back(repo: Path) -> None:
    store = new_run(repo, tasks=("t1",))
    complete(store, "t1")
    doc = store.read("task", "t1")
    text = store_module.dump(doc)
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert sum('"from": ' in line for line in lines) == len(doc["history"]) == 5


def test_the_store_works_in_a_linked_worktree(repo: Path, tmp_path: Path) -> None:
    (repo / "f").write_text("x")
    git(repo, "add", "f")
    git(repo, "commit", "-qm", "init")
    other = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(other))
    store = new_run(other)
    complete(store, "t1")
    store.flush()
    assert files(other)["tasks/t1.json"]["state"] == "COMPLETED"
    assert (repo / ".git" / "ledger" / "spares" / RUN).is_dir()  # the common git directory
    assert subprocess.run(["git", "-C", str(other), "status", "--porcelain", "-uall"], capture_output=True,
                          text=True).stdout.count("\n") == 5
    shutil.rmtree(other)


def test_load_keeps_a_field_a_later_transition_set_over_an_earlier_update(repo: Path) -> None:
    # a failed attempt's cost is an update; the next attempt's transition sets the cost again:
    # replaying the log over files that already hold both must end at the transition's value
    store = new_run(repo, tasks=("t1",))
    store.move("task", "t1", "QUEUED", ACTOR, "no dependencies")
    store.move("task", "t1", "RUNNING", "worker-1", "attempt 1", fields={"attempts": 1})
    store.update("task", "t1", {"cost": {"tokens": 10}})
    store.move("task", "t1", "RETRYING", ACTOR, "exit code 1")
    store.move("task", "t1", "QUEUED", ACTOR, "again")
    store.move("task", "t1", "RUNNING", "worker-1", "attempt 2", fields={"attempts": 2})
    store.move("task", "t1", "VALIDATING", "worker-1", "exit code 0", fields={"cost": {"tokens": 25}})
    store.flush()
    loaded = RunStore.load(repo, RUN)
    assert loaded.read("task", "t1")["cost"] == {"tokens": 25}
    assert files(repo)["tasks/t1.json"]["cost"] == {"tokens": 25}
    assert problems(repo) == []
