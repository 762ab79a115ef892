"""Gates end to end: `ledger gate list|run` in real repositories, the built-in gates
(command, check, diff-policy, pytest), results recorded in refs/ledger/gates/, shards,
paths, `ledger patch verify` judging the required gates, and every bad input refused."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from patch_ledger import gating, ledger, proc, results, schemas
from patch_ledger.gates import junit, pytest_gate
from patch_ledger.hookspecs import Work
from tests.builders import commit, git, ledger as cli, task, write

CONFIG = ".ledger/config.yaml"


# --- helpers, shared with test_gate_plugins.py and test_pytest_plugin.py ----------------


def configure(repo: Path, *gates: dict[str, Any], **extra: Any) -> None:
    """.ledger/config.yaml declaring `gates` (JSON is YAML)."""
    write(repo, CONFIG, json.dumps({"schema_version": schemas.CURRENT_VERSION, "gates": list(gates), **extra}, indent=1) + "\n")


def committed(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for path, text in files.items():
        write(repo, path, text)
    assert commit(repo, message).returncode == 0
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def ledger_refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/ledger/").stdout.splitlines()


def gate_refs(repo: Path) -> list[str]:
    return [line for line in ledger_refs(repo) if line.startswith(results.PREFIX)]


def gate_run(repo: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """`ledger gate run --format json ARGS`: its exit code and the results it recorded."""
    ran = cli(repo, "gate", "run", "--format", "json", *args)
    assert ran.returncode in (0, 1) and not ran.stderr, ran.stderr
    return ran.returncode, json.loads(ran.stdout)["results"]


def by_gate(done: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["gate"] + ("" if d["shard"] == "1/1" else f"[{d['shard']}]"): d for d in done}


def reason(doc: dict[str, Any]) -> str:
    return doc["history"][-1]["reason"]


def recorded(repo: Path) -> dict[str, dict[str, Any]]:
    """Every result in the ledger, read back from the refs: attempt id -> its document."""
    found = results.read_sound(repo)
    docs = results.documents(repo, found)
    return {r.id: docs[r.ref] for r in found}


def verdict(repo: Path, patch: str, gate: str, base: str | None) -> results.Verdict:
    return results.verdict([r for r in results.read_sound(repo, [patch]) if r.gate == gate], base)


def refused(repo: Path, *args: str) -> str:
    """Run the CLI expecting bad input: exit 2, one line on stderr, no traceback, nothing written."""
    before = ledger_refs(repo)
    ran = cli(repo, *args)
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert len(ran.stderr.splitlines()) == 1 and ran.stderr.startswith("ledger: error: "), ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    assert ledger_refs(repo) == before
    return ran.stderr


def cmd(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A `command` gate running `sh -c script`."""
    args = {"command": ["sh", "-c", script], **fields.pop("args", {})}
    return {"name": name, "plugin": "command", "args": args, **fields}


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie no reaper collected yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- ledger gate list ---------------------------------------------------------------------


def test_list_shows_the_configured_gates_and_every_builtin_kind(repo: Path) -> None:
    configure(repo, {"name": "tests", "plugin": "pytest", "required": True},
              cmd("lint", "true", timeout=30, paths=["src/"]))
    listed = cli(repo, "gate", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.split()[:4] == ["tests", "pytest", "required", "timeout"] for line in lines)
    assert any(line.split()[:3] == ["lint", "command", "optional"] and "timeout 30 s" in line and "paths: src/" in line
               for line in lines)
    report = json.loads(cli(repo, "gate", "list", "--format", "json").stdout)
    assert [g["name"] for g in report["gates"]] == ["tests", "lint"]
    assert report["gates"][0]["timeout"] == gating.DEFAULT_TIMEOUT_S and report["gates"][1]["paths"] == ["src/"]
    kinds = {p["kind"]: p for p in report["plugins"]}
    assert set(kinds) >= {"pytest", "command", "check", "diff-policy"}
    assert kinds["pytest"]["shardable"] and kinds["command"]["shardable"] and not kinds["check"]["shardable"]
    assert kinds["command"]["args"]["required"] == ["command"]  # each kind says what args it takes
    assert report["broken"] == []


def test_list_without_gates_says_where_to_add_them(repo: Path) -> None:
    listed = cli(repo, "gate", "list")
    assert listed.returncode == 0 and "none configured" in listed.stdout
    committed(repo, {"a.txt": "a\n"})
    ran = cli(repo, "gate", "run")
    assert ran.returncode == 0 and "no gate to run" in ran.stdout and gate_refs(repo) == []


# --- the command gate ---------------------------------------------------------------------


def test_a_command_s_exit_code_is_its_verdict_and_the_result_is_recorded(repo: Path) -> None:
    configure(repo, cmd("good", "echo all fine"), cmd("bad", "echo broken >&2; exit 3"),
              cmd("tolerant", "exit 3", args={"ok_codes": [0, 3]}))
    base = committed(repo, {"a.txt": "a\n"}, "root")
    head = committed(repo, {"b.txt": "b\n"})
    code, done = gate_run(repo)
    assert code == 1  # a gate FAILED: the normal "no"
    got = by_gate(done)
    assert {g: d["state"] for g, d in got.items()} == {"good": "PASSED", "bad": "FAILED", "tolerant": "PASSED"}
    assert "exit code 3" in reason(got["bad"]) and "broken" in got["bad"]["log"]
    assert "all fine" in got["good"]["log"] and got["good"]["workers"] == 1
    # in the ledger: one attempt each, at the commit's parent, with its duration and log
    stored = recorded(repo)
    assert sorted(d["gate"] for d in stored.values()) == ["bad", "good", "tolerant"]
    for doc in stored.values():
        assert doc["base"] == base and doc["shard"] == "1/1" and doc["plugin"] == "command" and doc["duration_s"] >= 0
        assert [h["to"] for h in doc["history"]] == ["PENDING", "RUNNING", doc["state"]]
        assert schemas.validate("gate", doc) == []
    patch = stored[got["good"]["id"]]["patch"]
    assert ledger.read_sound(repo)[patch].base == base  # --rev HEAD recorded the commit's patch
    assert git(repo, "rev-parse", "HEAD").stdout.strip() == head
    assert cli(repo, "verify").returncode == 0
    text = cli(repo, "gate", "run", "good", "bad")  # the text report: one line a gate
    assert text.returncode == 1 and "on " + base[:12] in text.stdout.splitlines()[0]
    assert [line.split()[:2] for line in text.stdout.splitlines()[1:]] == [["good", "PASSED"], ["bad", "FAILED"]]


def test_a_command_sees_its_patch_shard_and_env(repo: Path) -> None:
    show = 'echo "[$LEDGER_GATE $LEDGER_SHARD $LEDGER_SHARD_INDEX $LEDGER_SHARD_COUNT $FOO $LEDGER_PATCH $LEDGER_BASE]"'
    configure(repo, cmd("env", show, args={"env": {"FOO": "bar"}}))
    committed(repo, {"a.txt": "a\n"})
    _, done = gate_run(repo, "--shard", "2/3")
    line = done[0]["log"].strip()
    assert line == f"[env 2/3 2 3 bar {done[0]['patch']} ]"  # a root commit: no base
    assert done[0]["shard"] == "2/3"


def test_a_huge_output_is_cut_to_its_head_and_tail_saying_what_was_left_out(repo: Path) -> None:
    flood = f"{sys.executable} -c \"import sys; [print('line', i) for i in range(200000)]; sys.exit(1)\""
    configure(repo, cmd("flood", flood))
    committed(repo, {"a.txt": "a\n"})
    code, done = gate_run(repo)
    log = done[0]["log"]
    assert code == 1 and len(log) <= gating.MAX_LOG_CHARS
    lines = log.splitlines()
    assert lines[0] == "line 0" and lines[-1] == "line 199999"  # whole lines, first and last
    omitted = [line for line in lines if "omitted" in line]
    assert len(omitted) == 1 and "bytes omitted" in omitted[0]
    whole = Path(omitted[0].split("the whole log is ")[1].rstrip(" .]"))
    assert whole.read_text().count("\n") == 200000  # the full output stays on disk
    assert recorded(repo)[done[0]["id"]]["log"] == log


def test_at_its_timeout_a_command_s_whole_process_group_dies(repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    configure(repo, cmd("hang", 'sleep 300 & echo $! > "$PIDFILE"; wait', timeout=1, args={"env": {"PIDFILE": str(pidfile)}}),
              cmd("after", "true"))
    committed(repo, {"a.txt": "a\n"})
    start = time.monotonic()
    code, done = gate_run(repo)
    assert time.monotonic() - start < 1 + gating.GRACE_S
    got = by_gate(done)
    assert code == 1 and got["hang"]["state"] == "FAILED" and "timed out after 1 s" in reason(got["hang"])
    assert got["after"]["state"] == "PASSED"  # the next gate still runs
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the forked child outlived its gate"


def test_an_unbounded_timeout_means_no_limit(repo: Path) -> None:
    write(repo, CONFIG, "schema_version: 2\ngates:\n  - {name: inf, plugin: command, args: {command: ['true']}, timeout: .inf}\n"
                        "  - {name: huge, plugin: command, args: {command: ['true']}, timeout: 1.0e+300}\n")
    committed(repo, {"a.txt": "a\n"})
    code, done = gate_run(repo)
    assert code == 0 and [d["state"] for d in done] == ["PASSED", "PASSED"]


def test_a_missing_executable_fails_its_gate_saying_so(repo: Path) -> None:
    configure(repo, {"name": "ghost", "plugin": "command", "args": {"command": ["no-such-program-4711", "--x"]}})
    committed(repo, {"a.txt": "a\n"})
    code, done = gate_run(repo)
    assert code == 1 and done[0]["state"] == "FAILED"
    assert "no-such-program-4711" in reason(done[0]) and "No such file" in reason(done[0])


# --- the check and diff-policy gates ------------------------------------------------------


def test_the_check_gate_judges_the_state_files_of_the_patch(repo: Path) -> None:
    configure(repo, {"name": "state", "plugin": "check"})
    committed(repo, {".ledger/runs/r1/tasks/t1.json": json.dumps(task("t1", ["QUEUED"]), indent=2) + "\n"}, "root")
    code, done = gate_run(repo)
    assert code == 0 and done[0]["state"] == "PASSED" and done[0]["counts"]["files"] >= 1
    committed(repo, {".ledger/runs/r1/tasks/t1.json": json.dumps(task("t1", []), indent=2) + "\n"})  # back to PENDING
    code, done = gate_run(repo)
    assert code == 1 and done[0]["state"] == "FAILED" and done[0]["counts"]["problems"] >= 1
    failure = done[0]["failures"][0]
    assert failure["file"] == ".ledger/runs/r1/tasks/t1.json" and isinstance(failure["line"], int)


def test_the_diff_policy_gate_uses_its_args_or_else_the_configured_policy(repo: Path) -> None:
    configure(repo, {"name": "no-secrets", "plugin": "diff-policy", "args": {"forbidden_paths": ["secrets/"]}},
              {"name": "small", "plugin": "diff-policy"}, policy={"max_patch_bytes": 500})
    committed(repo, {"a.txt": "a\n"}, "root")
    committed(repo, {"secrets/key": "x" * 600 + "\n"})
    code, done = gate_run(repo)
    got = by_gate(done)
    assert code == 1 and got["no-secrets"]["state"] == "FAILED" and "secrets/key" in reason(got["no-secrets"])
    assert got["small"]["state"] == "FAILED" and got["small"]["counts"] == {"problems": 1}
    committed(repo, {"b.txt": "b\n"})
    code, done = gate_run(repo)
    assert code == 0 and [d["state"] for d in done] == ["PASSED", "PASSED"]


# --- relevance, shards ----------------------------------------------------------------------


def test_a_gate_whose_paths_the_patch_does_not_touch_is_skipped_with_the_reason(repo: Path) -> None:
    configure(repo, cmd("src-tests", "true", paths=["src/"]), cmd("docs-build", "exit 1", paths=["docs/", "README"]))
    committed(repo, {"src/a.py": "a = 1\n"})
    code, done = gate_run(repo)
    got = by_gate(done)
    assert code == 0 and got["src-tests"]["state"] == "PASSED"
    assert got["docs-build"]["state"] == "SKIPPED" and "docs/, README" in reason(got["docs-build"])
    assert [h["to"] for h in got["docs-build"]["history"]] == ["PENDING", "SKIPPED"]  # it never ran
    assert "duration_s" not in got["docs-build"]


def test_shards_record_their_parts_and_the_gate_passes_only_when_every_shard_did(repo: Path) -> None:
    configure(repo, cmd("split", 'test "$LEDGER_SHARD_INDEX" != "$BAD"', args={"env": {"BAD": "none"}}),
              {"name": "policy", "plugin": "diff-policy"})
    committed(repo, {"a.txt": "a\n"})
    _, first = gate_run(repo, "--shard", "1/2")
    assert sorted(by_gate(first)) == ["policy", "split[1/2]"]  # a gate that cannot split runs whole on shard 1
    assert by_gate(first)["policy"]["shard"] == "1/1"
    patch = first[0]["patch"]
    assert verdict(repo, patch, "split", None).state == "PENDING"
    assert verdict(repo, patch, "policy", None).state == "PASSED"
    _, second = gate_run(repo, "--shard", "2/2")
    assert sorted(by_gate(second)) == ["split[2/2]"]  # and not at all on the others
    final = verdict(repo, patch, "split", None)
    assert final.state == "PASSED" and [a.shard for a in final.attempts] == ["1/2", "2/2"]
    # a failing shard fails the gate; its rerun (the newest attempt of that shard) decides
    configure(repo, cmd("split", 'test "$LEDGER_SHARD_INDEX" != "$BAD"', args={"env": {"BAD": "2"}}))
    assert gate_run(repo, "--shard", "2/2")[0] == 1
    assert verdict(repo, patch, "split", None).state == "FAILED"
    configure(repo, cmd("split", 'test "$LEDGER_SHARD_INDEX" != "$BAD"', args={"env": {"BAD": "none"}}))
    assert gate_run(repo, "--shard", "2/2")[0] == 0
    assert verdict(repo, patch, "split", None).state == "PASSED"


# --- verify ---------------------------------------------------------------------------------


def _applied_commit(repo: Path) -> tuple[ledger.Patch, str]:
    """A root commit, then a commit recorded as a patch and moved to APPLIED: (patch, commit)."""
    base = committed(repo, {"README": "start\n"}, "root")
    change = committed(repo, {"src/a.py": "a = 1\n"}, "add a")
    recorded_ = json.loads(cli(repo, "patch", "record", f"{base}..{change}", "--format", "json").stdout)["recorded"]
    patch = ledger.read_sound(repo)[recorded_[0]["id"]]
    for state in ("VALIDATING", "VALIDATED", "APPLIED"):
        patch = ledger.move(repo, patch, state, "tester", "test")
    assert patch.base == base
    return patch, change


def _verify(repo: Path, patch: ledger.Patch) -> ledger.Patch:
    ran = cli(repo, "patch", "verify", patch.id[:10])
    assert ran.returncode == 0, ran.stderr
    return ledger.read_sound(repo)[patch.id]


def test_verify_passes_when_every_required_gate_passed_or_was_irrelevant(repo: Path) -> None:
    patch, _ = _applied_commit(repo)
    configure(repo, cmd("unit", "true", required=True), cmd("docs", "exit 1", required=True, paths=["docs/"]),
              cmd("optional", "exit 1"))
    code, done = gate_run(repo, "--patch", patch.id[:10])  # applied to its base in a temporary worktree
    assert code == 1 and {d["gate"]: d["state"] for d in done} == {"unit": "PASSED", "docs": "SKIPPED", "optional": "FAILED"}
    assert all(d["base"] == patch.base for d in done)
    verified = _verify(repo, patch)
    assert verified.state == "VERIFIED"
    assert "Ledger-Gates:" in git(repo, "log", "-1", "--format=%B", f"refs/ledger/patches/{patch.id}").stdout
    assert not (repo / ".git/ledger/worktrees").exists() or not any((repo / ".git/ledger/worktrees").iterdir())


def test_verify_quarantines_when_a_required_gate_failed_or_has_not_run(repo: Path) -> None:
    patch, _ = _applied_commit(repo)
    configure(repo, cmd("unit", "exit 1", required=True), cmd("lint", "true", required=True))
    gate_run(repo, "unit", "--patch", patch.id)
    quarantined = _verify(repo, patch)
    assert quarantined.state == "QUARANTINED"
    assert "unit FAILED (sh: exit code 1" in quarantined.reason and "lint PENDING" in quarantined.reason


def test_verify_counts_only_results_at_the_patch_s_base(repo: Path) -> None:
    patch, change = _applied_commit(repo)
    configure(repo, cmd("unit", "true", required=True))
    git(repo, "checkout", "-q", "-b", "elsewhere", f"{patch.base}")
    committed(repo, {"other.txt": "o\n"}, "other base")
    git(repo, "cherry-pick", change)  # the same patch on another base
    _, done = gate_run(repo, "--rev", "HEAD")
    assert done[0]["patch"] == patch.id and done[0]["state"] == "PASSED" and done[0]["base"] != patch.base
    quarantined = _verify(repo, patch)
    assert quarantined.state == "QUARANTINED" and f"unit PENDING (not run on {patch.base[:12]})" in quarantined.reason
    assert cli(repo, "patch", "release", patch.id[:10]).returncode == 0
    _, done = gate_run(repo, "--rev", change)  # its own commit: the patch at its base, in a worktree
    assert done[0]["base"] == patch.base
    assert _verify(repo, patch).state == "VERIFIED"


# --- the pytest gate --------------------------------------------------------------------------

QUIET = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]  # hypothesis's plugin costs half a second a start

FAILING_SUITE = '''\
import pytest


def test_ok():
    pass


def test_fails():
    assert 1 + 1 == 3


class TestGroup:
    def test_method(self):
        raise ValueError("bad value")


@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 1


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_needs_fixture(broken):
    pass
'''


def _def_line(source: str, name: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if line.lstrip().startswith(f"def {name}("))


def test_the_pytest_gate_names_each_failing_test_with_its_file_and_line(repo: Path) -> None:
    configure(repo, {"name": "tests", "plugin": "pytest", "args": {"args": [*QUIET, "tests"], "workers": 0}})
    committed(repo, {"tests/test_mod.py": FAILING_SUITE})
    code, done = gate_run(repo)
    doc = done[0]
    assert code == 1 and doc["state"] == "FAILED" and doc["workers"] == 0
    assert doc["counts"] == {"tests": 6, "passed": 2, "failed": 3, "errors": 1, "skipped": 0}
    failures = {f["test"]: f for f in doc["failures"]}
    path = "tests/test_mod.py"
    assert sorted(failures) == [f"{path}::TestGroup::test_method", f"{path}::test_fails", f"{path}::test_needs_fixture",
                                f"{path}::test_param[2]"]
    lines = {t: (f["file"], f["line"]) for t, f in failures.items()}
    assert lines[f"{path}::test_fails"] == (path, _def_line(FAILING_SUITE, "test_fails"))
    assert lines[f"{path}::TestGroup::test_method"] == (path, _def_line(FAILING_SUITE, "test_method"))
    assert lines[f"{path}::test_param[2]"] == (path, _def_line(FAILING_SUITE, "test_param") - 1)  # pytest: its decorator
    assert "assert (1 + 1) == 3" in failures[f"{path}::test_fails"]["message"]
    assert "bad value" in failures[f"{path}::TestGroup::test_method"]["message"]
    assert "fixture broke" in failures[f"{path}::test_needs_fixture"]["message"]
    assert reason(doc).startswith("4 of 6 tests failed, first tests/test_mod.py::")
    assert doc["work_s"] >= 0 and "workers: 0 from the gate's args" in doc["log"]


def test_the_pytest_gate_survives_a_suite_that_kills_its_workers(repo: Path) -> None:
    suite = "import os\n\n\ndef test_ok():\n    pass\n\n\ndef test_exit():\n    os._exit(3)\n\n\ndef test_kill():\n    os.kill(os.getpid(), 9)\n"
    configure(repo, {"name": "xdist", "plugin": "pytest", "args": {"args": [*QUIET, "tests"], "workers": 2}, "timeout": 120},
              {"name": "serial", "plugin": "pytest", "args": {"args": [*QUIET, "tests"], "workers": 0}, "timeout": 120})
    committed(repo, {"tests/test_crash.py": suite})
    ran = cli(repo, "gate", "run", "--format", "json")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    got = by_gate(json.loads(ran.stdout)["results"])
    xdist = got["xdist"]
    assert xdist["state"] == "FAILED" and xdist["workers"] == 2 and xdist["counts"]["passed"] == 1
    crashed = {f["test"]: f["message"] for f in xdist["failures"]}
    assert set(crashed) == {"tests/test_crash.py::test_exit", "tests/test_crash.py::test_kill"}
    assert all("crashed" in m for m in crashed.values())
    serial = got["serial"]  # pytest itself died: no JUnit XML, said so
    assert serial["state"] == "FAILED" and "exit code 3" in reason(serial) and "JUnit XML" in reason(serial)
    assert {d["state"] for d in recorded(repo).values()} == {"FAILED"}  # nothing left RUNNING


def test_the_pytest_gate_splits_the_tests_between_shards(repo: Path) -> None:
    suite = "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(12))
    configure(repo, {"name": "tests", "plugin": "pytest", "args": {"args": [*QUIET, "tests"], "workers": 0}})
    committed(repo, {"tests/test_many.py": suite})
    _, one = gate_run(repo, "--shard", "1/2")
    _, two = gate_run(repo, "--shard", "2/2")
    assert one[0]["state"] == two[0]["state"] == "PASSED"
    assert one[0]["counts"]["tests"] + two[0]["counts"]["tests"] == 12 and one[0]["counts"]["tests"] not in (0, 12)
    assert verdict(repo, one[0]["patch"], "tests", None).state == "PASSED"


# --- the JUnit reader and the pytest gate's verdict on crafted files ---------------------------


def _work(tmp_path: Path, shard: tuple[int, int] = (1, 1)) -> Work:
    return Work(tmp_path, tmp_path, "0" * 40, None, b"", (), shard, 10.0, tmp_path / "gate.log")


def _finished(tmp_path: Path, code: int, output: str = "pytest said things\n") -> proc.Finished:
    (tmp_path / "gate.log").write_text(output)
    return proc.Finished(code, False, 0.5, tmp_path / "gate.log")


JUNIT = '''<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_x.TestY" name="test_z[1]" file="tests/test_x.py" line="9" time="0.25">
  <failure message="assert 0">long text</failure></testcase>
<testcase classname="tests.test_x" name="test_ok" file="tests/test_x.py" line="2" time="1e400"/>
<testcase classname="tests.test_x" name="test_skip" file="tests/test_x.py" line="bad" time="nan"><skipped/></testcase>
<testcase classname="tests.test_x" name="test_err" time="-4"><error message="boom"/></testcase>
</testsuite></testsuites>
'''


def test_junit_reads_node_ids_files_lines_and_counts(tmp_path: Path) -> None:
    (tmp_path / "r.xml").write_text(JUNIT)
    suite = junit.read(tmp_path / "r.xml")
    assert suite.counts == {"tests": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    first = suite.failures[0]
    assert (first.test, first.file, first.line) == ("tests/test_x.py::TestY::test_z[1]", "tests/test_x.py", 10)
    assert first.message == "assert 0\nlong text"
    assert suite.failures[1].test == "tests.test_x::test_err" and suite.failures[1].line is None
    assert suite.work_s == 0.25  # an infinite, NaN or negative time counts as nothing


@pytest.mark.parametrize("content", ["", "not xml at all <<<", "<html><body/></html>", "\x00\x01garbage",
                                     "<testsuites><testsuite><testcase", None])
def test_garbage_junit_is_a_failed_result_saying_why(tmp_path: Path, content: str | None) -> None:
    xml = tmp_path / "r.xml"
    if content is not None:
        xml.write_text(content)
    with pytest.raises(junit.JUnitError, match="r.xml"):
        junit.read(xml)
    if content is not None:
        xml.write_text(content)
    outcome = pytest_gate.verdict(_finished(tmp_path, 0), xml, _work(tmp_path), 0, "serial")
    assert outcome.state == "FAILED" and "JUnit XML is unreadable" in outcome.reason and "r.xml" in outcome.reason
    assert "pytest said things" in outcome.log
    assert not xml.exists()  # read once, then removed


def test_the_pytest_gate_believes_the_junit_failures_over_the_exit_code(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text(JUNIT)
    outcome = pytest_gate.verdict(_finished(tmp_path, 0), xml, _work(tmp_path), 2, "-n 2")
    assert outcome.state == "FAILED" and outcome.reason.startswith("2 of 4 tests failed, first tests/test_x.py::TestY::test_z[1]")
    xml.write_text('<testsuite><testcase classname="t" name="a" file="t.py" line="0"/></testsuite>')
    assert pytest_gate.verdict(_finished(tmp_path, 0), xml, _work(tmp_path), 0, "serial").state == "PASSED"
    xml.write_text('<testsuite><testcase classname="t" name="a" file="t.py" line="0"/></testsuite>')
    ended = pytest_gate.verdict(_finished(tmp_path, 3), xml, _work(tmp_path), 0, "serial")
    assert ended.state == "FAILED" and "exit code 3 (an internal error)" in ended.reason
    xml.write_text("<testsuite/>")
    empty_shard = pytest_gate.verdict(_finished(tmp_path, 5), xml, _work(tmp_path, (3, 4)), 0, "serial")
    assert empty_shard.state == "SKIPPED" and "shard 3/4" in empty_shard.reason
    xml.write_text("<testsuite/>")
    assert pytest_gate.verdict(_finished(tmp_path, 5), xml, _work(tmp_path), 0, "serial").state == "FAILED"


# --- bad input: one line, exit 2, nothing written -------------------------------------------


@pytest.fixture
def gated(repo: Path) -> Path:
    """A repository with gates and a HEAD commit not yet in the ledger (a run would record it)."""
    configure(repo, cmd("unit", "true"))
    committed(repo, {"a.txt": "a\n"}, "root")
    committed(repo, {"b.txt": "b\n"})
    return repo


@pytest.mark.parametrize(("args", "said"), [
    (["nope"], "no gate named 'nope'"),
    (["--shard", "3/2"], "--shard '3/2'"),
    (["--shard", "0/2"], "--shard '0/2'"),
    (["--shard", "1/0"], "--shard '1/0'"),
    (["--shard", "half"], "--shard 'half'"),
    (["--patch", "abc", "--rev", "HEAD"], "exclude each other"),
    (["--patch", "0123456789"], "no patch 0123456789"),
    (["--rev", "no-such-rev"], "no such commit"),
])
def test_bad_gate_run_arguments_are_refused(gated: Path, args: list[str], said: str) -> None:
    assert said in refused(gated, "gate", "run", *args)


def test_a_merge_commit_is_no_patch_to_gate(gated: Path) -> None:
    git(gated, "checkout", "-q", "-b", "side", "HEAD~1")
    committed(gated, {"c.txt": "c\n"}, "side")
    git(gated, "checkout", "-q", "main")
    git(gated, "merge", "-q", "--no-edit", "side")
    assert "is a merge commit" in refused(gated, "gate", "run", "--rev", "HEAD")


@pytest.mark.parametrize(("gates", "said"), [
    ([{"name": "x", "plugin": "no-such-kind"}], "no plugin provides 'no-such-kind'; available: check, command"),
    # a built-in plugin's args are checked with the configuration, at their line and column
    ([{"name": "x", "plugin": "command", "args": {"cmd": ["true"]}}], ".ledger/config.yaml:7:12: 'command' is required"),
    ([{"name": "x", "plugin": "command", "args": {"command": "true"}}], ".ledger/config.yaml:8:16: command: 'true' is not of type 'array'"),
    ([{"name": "x", "plugin": "pytest", "args": {"workers": -1}}], ".ledger/config.yaml:8:16: workers: -1 is not valid"),
    ([{"name": "x", "plugin": "check"}, {"name": "x", "plugin": "check"}], "'x' is named twice"),
    ([{"name": "x.lock", "plugin": "check"}], "cannot be part of a git ref"),
    ([{"name": "x", "plugin": "check", "timeout": 0}], "timeout"),
])
def test_a_configuration_the_plugins_do_not_accept_is_refused(gated: Path, gates: list[dict[str, Any]], said: str) -> None:
    configure(gated, *gates)
    assert said in refused(gated, "gate", "run")
    assert said in refused(gated, "gate", "list")
    assert CONFIG in refused(gated, "gate", "run", "--shard", "1/2")


def test_a_patch_that_does_not_apply_to_its_base_is_refused(gated: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale.diff"
    stale.write_text("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-not what it says\n+new\n")
    patch = cli(gated, "patch", "add", str(stale)).stdout.strip()
    assert "does not apply to its base" in refused(gated, "gate", "run", "--patch", patch)
    assert not any((gated / ".git/ledger/worktrees").iterdir())  # its worktree is gone


def test_uncommitted_changes_do_not_leak_into_a_gate(gated: Path) -> None:
    configure(gated, cmd("unit", "test -f b.txt"))
    (gated / "b.txt").unlink()  # HEAD's commit added it; the gate tests that commit, not this checkout
    ran = cli(gated, "gate", "run")
    assert ran.returncode == 0 and "in a clean worktree" in ran.stdout.splitlines()[0], ran.stdout
    assert "unit  PASSED" in ran.stdout


def test_outside_a_repository_gate_commands_are_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    for args in (["gate", "list"], ["gate", "run"]):
        ran = cli(tmp_path / "plain", *args)
        assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1 and "Traceback" not in ran.stderr


def test_an_interrupted_run_leaves_no_attempt_running(repo: Path) -> None:
    import signal
    import subprocess

    configure(repo, cmd("slow", "sleep 30"))
    committed(repo, {"a.txt": "a\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    runner = subprocess.Popen([sys.executable, "-m", "patch_ledger", "gate", "run"], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not any(d["state"] == "RUNNING" for d in recorded(repo).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    runner.communicate(timeout=20)
    assert runner.returncode != 0
    states = [(d["state"], reason(d)) for d in recorded(repo).values()]
    assert states == [("FAILED", "interrupted before it finished")]
