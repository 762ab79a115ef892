"""Inputs an independent review used to break the checker: each is refused as bad input
(exit 2, one line) or judged normally, never a traceback, never minutes of work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from patch_ledger import documents
from tests.builders import commit, git, ledger, task, write
from tests.test_bad_input import CONFIG, TASK, assert_bad_input, refused


def test_a_symlink_to_a_device_is_refused_unread(repo: Path) -> None:
    target = repo / TASK
    target.parent.mkdir(parents=True)
    os.symlink("/dev/zero", target)
    started = time.monotonic()
    refused(repo, "check", names=TASK, says=("not a regular file",))
    assert time.monotonic() - started < 10


def test_a_symlink_out_of_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(task("a")))
    (repo / TASK).parent.mkdir(parents=True)
    os.symlink(outside, repo / TASK)
    refused(repo, "check", names=TASK, says=("not a regular file",))


def test_a_committed_symlink_is_refused_from_the_index(repo: Path) -> None:
    (repo / TASK).parent.mkdir(parents=True)
    os.symlink("/etc/hostname", repo / TASK)
    git(repo, "add", "-A")
    refused(repo, "check", "--staged", names=TASK, says=("not a regular file",))


def test_nan_is_not_json(repo: Path) -> None:
    write(repo, TASK, json.dumps(task("a") | {"progress": 0.5}).replace("0.5", "NaN"))
    refused(repo, "check", names=TASK, says=("NaN is not JSON",))


def test_a_key_twice_in_one_object_is_refused(repo: Path) -> None:
    text = json.dumps(task("a"), indent=2).replace('"id": "a",', '"id": "a",\n  "state": "DONE",', 1)
    write(repo, TASK, text)
    refused(repo, "check", names=TASK, says=("'state' appears twice",))


def test_yaml_nested_too_deeply_is_refused(repo: Path) -> None:
    write(repo, CONFIG, "schema_version: 2\nx: " + "[" * 2000 + "]" * 2000 + "\n")
    refused(repo, "check", names=CONFIG)


def test_includes_cannot_multiply_into_a_bomb(repo: Path) -> None:
    """Each level includes the next sixty times: parsed once each, and the expanded whole is
    over the limit, refused in well under a second rather than after minutes."""
    for level in (1, 2, 3):
        write(repo, f".ledger/level{level}.yaml", "".join(f"- $ref: level{level + 1}.yaml\n" for _ in range(60)))
    write(repo, ".ledger/level4.yaml", "command: [x]\n")
    write(repo, CONFIG, "schema_version: 2\ngates:\n  $ref: level1.yaml\n")
    started = time.monotonic()
    refused(repo, "check", CONFIG, names=CONFIG, says=("over 100000",))
    assert time.monotonic() - started < 10


def test_a_large_document_that_shares_nothing_is_no_bomb() -> None:
    """Over the limit, an `&` in a command, but no alias: read, not refused as a bomb."""
    text = "".join(f"- {{id: t{i:05d}, run: 'make a && make b'}}\n" for i in range(25_000))
    data = documents.parse_yaml(text, ".ledger/plans/big.yaml", lambda path: None)
    assert len(data) == 25_000 and data[-1]["run"] == "make a && make b"


def test_a_malformed_previous_version_is_no_crash(repo: Path) -> None:
    write(repo, TASK, task("a") | {"state": []})
    commit(repo)  # past the hook
    write(repo, TASK, task("a", ["QUEUED"]))
    proc = ledger(repo, "check")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    (repo / TASK).unlink()
    proc = ledger(repo, "check")
    assert "Traceback" not in proc.stderr and proc.returncode == 1
    assert "was deleted" in proc.stdout


def test_a_branch_behind_main_is_judged_on_its_own_changes(repo: Path) -> None:
    write(repo, TASK, task("a", ["QUEUED"]))
    commit(repo, "base")
    git(repo, "branch", "feature")
    write(repo, TASK, task("a", ["QUEUED", "RUNNING"]))
    commit(repo, "main moves on")
    git(repo, "checkout", "-q", "feature")
    write(repo, "README.md", "unrelated\n")
    commit(repo, "feature work")
    proc = ledger(repo, "check", "--base", "main")
    assert proc.returncode == 0, proc.stdout
    write(repo, TASK, task("a"))  # and its own illegal change is still caught
    assert ledger(repo, "check", "--base", "main").returncode == 1


def test_an_impossible_date_is_refused(repo: Path) -> None:
    doc = task("a", ["QUEUED"])
    doc["history"][1]["at"] = "2026-13-45T10:00:00Z"
    write(repo, TASK, doc)
    proc = ledger(repo, "check")
    assert proc.returncode == 1
    assert "history[1] at 2026-13-45T10:00:00Z is not a real date and time" in proc.stdout


def test_an_unknown_field_is_located_at_its_key(repo: Path) -> None:
    text = json.dumps(task("a") | {"colour": "blue"}, indent=2)
    write(repo, TASK, text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if '"colour"' in l)
    proc = ledger(repo, "check")
    assert f"{TASK}:{line}:" in proc.stdout and "colour: unknown field" in proc.stdout


def test_a_truncated_event_log_says_it_lost_entries(repo: Path) -> None:
    log = ".ledger/runs/r1/events.jsonl"
    event = {"schema_version": 2, "seq": 1, "at": "2026-01-01T00:00:00Z", "type": "note", "data": {}}
    write(repo, log, json.dumps(event) + "\n" + json.dumps(event | {"seq": 2}) + "\n")
    commit(repo)
    write(repo, log, json.dumps(event) + "\n")
    proc = ledger(repo, "check")
    assert proc.returncode == 1 and "the event log lost entries: it had 2 lines, now 1" in proc.stdout
    assert f"{log}:1:" in proc.stdout


def test_migrate_refuses_a_version_that_is_not_a_number(repo: Path) -> None:
    log = ".ledger/runs/r1/events.jsonl"
    event = {"schema_version": 1, "seq": 1, "at": "2026-01-01T00:00:00Z", "type": "note", "data": {}}
    write(repo, log, json.dumps(event) + "\n" + json.dumps(event | {"schema_version": "two"}) + "\n")
    refused(repo, "migrate", names=log, says=("unknown schema_version 'two'",))


def test_migrate_lifts_an_old_config_keeping_its_comments(repo: Path) -> None:
    write(repo, CONFIG, "# our settings\nschema_version: 1  # old\ngates: []  # none yet\n")
    assert_bad_input(ledger(repo, "check"), CONFIG, ("ledger migrate",))
    proc = ledger(repo, "migrate")
    assert proc.returncode == 0, proc.stderr
    assert (repo / CONFIG).read_text() == "# our settings\nschema_version: 2\ngates: []  # none yet\n"
    assert ledger(repo, "check").returncode == 0


def test_file_system_refusals_are_bad_input(repo: Path, tmp_path: Path) -> None:
    (repo / ".ledger").write_text("not a directory")
    proc = ledger(repo, "init")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and ".ledger" in proc.stderr
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    proc = ledger(tmp_path, "demo", "--dir", str(plain))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bare_ledger_prints_help(tmp_path: Path) -> None:
    proc = ledger(tmp_path)
    assert proc.returncode == 0 and "Usage: ledger" in proc.stdout and proc.stderr == ""


def test_json_format_reports_bad_input_as_json(tmp_path: Path) -> None:
    proc = ledger(tmp_path, "check", "--format", "json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"ok": False, "exit_code": 2, "error": proc.stderr.strip().removeprefix("ledger: error: ")}


def test_a_rule_cannot_be_relaxed_to_get_past_its_guard(repo: Path) -> None:
    """A task that used its only attempt cannot raise max_attempts and retry in one edit."""
    write(repo, TASK, task("a", ["QUEUED", "RUNNING"], max_attempts=1))
    commit(repo)
    write(repo, TASK, task("a", ["QUEUED", "RUNNING", "RETRYING", "QUEUED", "RUNNING"], max_attempts=100))
    proc = ledger(repo, "check")
    assert proc.returncode == 1
    assert "max_attempts changed from 1 to 100; it is fixed once set" in proc.stdout


def test_a_changed_include_rechecks_the_config_that_includes_it(repo: Path) -> None:
    write(repo, CONFIG, "schema_version: 2\ngates:\n  $ref: gates.yaml\n")
    write(repo, ".ledger/gates.yaml", "- name: tests\n  plugin: pytest\n")
    commit(repo)
    write(repo, ".ledger/gates.yaml", "- name: tests\n  plugin: 5\n")
    git(repo, "add", "-A")
    proc = ledger(repo, "check", "--staged")
    assert proc.returncode == 1 and f"{CONFIG}:" in proc.stdout and "plugin: 5 is not of type 'string'" in proc.stdout
    assert ledger(repo, "check", ".ledger/gates.yaml").returncode == 1
