"""The GitHub Action without GitHub (issue 6): action.yml's steps run as the runner runs them
(tests/action_runner.py), in a workspace cloned shallow from a real bare repository, for a
same-repo pull request, a fork's, a push to main with a revert, and a merge group; each
asserts on the step summary, the annotations, the outputs, the exit code and the ledger refs
that reached the remote. The action's venv is installed for real once per session."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from patch_ledger import github
from tests import action_runner
from tests.builders import git, init_repo, write

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """schema_version: 2
gates:
  - {name: tests, plugin: command, required: true, args: {command: ["python3", "check.py"]}}
  - {name: unit, plugin: pytest, required: true, paths: ["tests/"], args: {args: ["tests/", "-q", "-p", "no:cacheprovider"], workers: 0}}
"""
# a gate that also fails when the action's token reached it
CHECK = ('import base64, os, sys\n'
         'forms = ("s3cret", "t0ken", base64.b64encode(b"x-access-token:s3cret").decode(), '
         'base64.b64encode(b"x-access-token:t0ken").decode())\n'
         'leaked = any(f in v for v in os.environ.values() for f in forms) or any(k.startswith(("GIT_CONFIG_KEY", "GIT_CONFIG_VALUE")) for k in os.environ)\n'
         'sys.exit(1 if leaked or open("value.txt").read().strip() == "bad" else 0)\n')
HOSTILE = "x $(touch {pwned}) `touch {pwned}` ${{{{ github.token }}}} | <b>bold</b>"


# --- the session's action venv: the install step really runs, once ------------------------


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TEMP, shared by the session's xdist workers, where the install step puts the venv."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / "runner-temp"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def installed(runner_temp: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The install step's outputs: from its one real run (by whichever worker came first),
    which is also the first test of the action: an event it does not handle."""
    record = runner_temp / "install.json"
    with open(runner_temp / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            world = tmp_path_factory.mktemp("install")
            init_repo(world / "ws")
            kept: dict[str, dict[str, str]] = {}
            result = action_runner.run(world / "ws", _env(world, runner_temp, "issues", world / "none.json"), {}, {},
                                       keep=lambda sid, out: kept.setdefault(sid, out))
            assert result.code == 0, result.stderr
            assert "issues: nothing to do" in result.stdout and result.outputs["verdict"] == "skipped"
            assert "skipped actions/setup-python" in result.notes[0]
            record.write_text(json.dumps(kept["install"]))
    outputs = json.loads(record.read_text())
    assert Path(outputs["bin"], "ledger").is_file()
    return outputs


def _env(where: Path, runner_temp: Path, event: str, payload: Path, **more: str) -> dict[str, str]:
    """The variables a runner gives a step: nothing of this test process leaks in."""
    (where / "home").mkdir(exist_ok=True)
    summary = where / "summary.md"
    summary.touch()
    return {"PATH": f"{Path(sys.base_prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(where / "home"),
            "LANG": "C.UTF-8", "RUNNER_TEMP": str(runner_temp), "GITHUB_ACTIONS": "true", "CI": "true",
            "GITHUB_EVENT_NAME": event, "GITHUB_EVENT_PATH": str(payload), "GITHUB_WORKSPACE": str(where / "ws"),
            "GITHUB_ACTION_PATH": str(ROOT), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_REPOSITORY": "owner/repo",
            "GITHUB_ACTOR": "octocat", "GIT_CONFIG_NOSYSTEM": "1", **more}


# --- a world: a bare origin, commits made in a scratch clone, a shallow workspace -----------


class World(NamedTuple):
    root: Path
    origin: Path
    work: Path  # where the test makes commits and pushes them
    runner_temp: Path
    installed: dict[str, str]

    def commit(self, name: str, text: str, message: str) -> str:
        write(self.work, name, text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD").stdout.strip()

    def run(self, event: str, payload: dict[str, Any], branch: str, inputs: dict[str, str] | None = None,
            **env: str) -> action_runner.Result:
        """The action on a fresh shallow clone of `branch`, as actions/checkout leaves it."""
        ws = self.checkout(branch)
        path = self.root / "event.json"
        path.write_text(json.dumps(payload))
        (self.root / "summary.md").write_text("")
        variables = {**_env(self.root, self.runner_temp, event, path), "GITHUB_SHA": git(ws, "rev-parse", "HEAD").stdout.strip(), **env}
        return action_runner.run(ws, variables, inputs or {}, {"actor": "octocat", "repository": "owner/repo", "token": "t0ken"},
                                 reuse=lambda sid: self.installed if sid == "install" else None)

    def checkout(self, branch: str) -> Path:
        ws = self.root / "ws"
        subprocess.run(["rm", "-rf", str(ws)], check=True)
        git(self.root, "clone", "-q", "--depth", "1", "--branch", branch, self.origin.as_uri(), str(ws))
        return ws

    @property
    def summary(self) -> str:
        return (self.root / "summary.md").read_text()

    def remote_refs(self, prefix: str = "refs/ledger/") -> list[str]:
        return git(self.origin, "for-each-ref", "--format=%(refname)", prefix).stdout.split()


@pytest.fixture
def world(tmp_path: Path, runner_temp: Path, installed: dict[str, str]) -> World:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    work = init_repo(tmp_path / "work")
    git(work, "remote", "add", "origin", str(origin))
    w = World(tmp_path, origin, work, runner_temp, installed)
    write(work, ".ledger/config.yaml", CONFIG)
    write(work, "check.py", CHECK)
    w.commit("value.txt", "ok\n", "base")
    git(work, "push", "-q", "origin", "main")
    return w


def repo(full_name: str = "owner/repo") -> dict[str, str]:
    return {"full_name": full_name, "default_branch": "main"}


def pull_request(w: World, branch: str, head_repo: str = "owner/repo", title: str = "a change") -> dict[str, Any]:
    base, head = (git(w.work, "rev-parse", ref).stdout.strip() for ref in ("main", branch))
    return {"pull_request": {"number": 7, "title": title, "base": {"sha": base, "ref": "main"},
                             "head": {"sha": head, "ref": branch, "repo": {"full_name": head_repo}}}, "repository": repo()}


def feature(w: World, *changes: tuple[str, str, str]) -> None:
    git(w.work, "checkout", "-q", "-b", "feature", "main")
    for change in changes:
        w.commit(*change)
    git(w.work, "push", "-q", "origin", "feature")
    git(w.work, "checkout", "-q", "main")


def annotations(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("::")]


# --- the events ---------------------------------------------------------------------------


def test_same_repo_pull_request_records_validates_gates_and_pushes(world: World, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    feature(world, ("one.txt", "one\n", "add one"), ("two.txt", "two\n", HOSTILE.format(pwned=pwned)))
    result = world.run("pull_request", pull_request(world, "feature", title=HOSTILE.format(pwned=pwned)), "feature",
                       {"token": "s3cret-token"})
    assert result.code == 0, result.stderr
    assert result.outputs["verdict"] == "success" and result.outputs["patch-count"] == "2"
    assert result.outputs["read-only"] == "false" and json.loads(result.outputs["states"]) == {"VALIDATED": 2}
    ids = result.outputs["patches"].split("\n")  # a multi-line output, through the heredoc form
    assert len(ids) == 2 and all(len(i) == 40 for i in ids)
    assert sorted(world.remote_refs("refs/ledger/patches/")) == sorted(f"refs/ledger/patches/{i}" for i in ids)
    assert len(world.remote_refs("refs/ledger/gates/")) == 4  # tests PASSED and unit SKIPPED, on each patch
    summary = world.summary
    assert "## patch-ledger: ✅ success" in summary and "Ledger pushed to `origin`" in summary
    assert "✅ tests PASSED (required)" in summary and "⏭️ unit SKIPPED (required)" in summary
    assert "```mermaid\nstateDiagram-v2" in summary and "class VALIDATED reached" in summary
    # the hostile title and subject: shown escaped, never run, nothing injected anywhere
    assert not pwned.exists()
    assert "&lt;b&gt;bold&lt;/b&gt;" in summary and "<b>" not in summary and "\\$\\(touch" in summary
    assert annotations(result.stdout) == []


def test_fork_pull_request_runs_read_only_and_pushes_nothing(world: World) -> None:
    feature(world, ("one.txt", "one\n", "add one"))
    result = world.run("pull_request", pull_request(world, "feature", head_repo="someone/fork"), "feature")
    assert result.code == 0, result.stderr
    assert result.outputs["read-only"] == "true" and result.outputs["verdict"] == "success"
    assert world.remote_refs() == []
    assert "**Read-only:** a pull request from a fork" in world.summary
    assert "✅ tests PASSED" in world.summary  # still gated and reported
    ws = world.root / "ws"
    assert git(ws, "for-each-ref", "refs/ledger/gates/").stdout.count("\n") == 2  # kept in the job's clone


def test_failing_gate_and_bad_state_file_fail_with_annotations(world: World) -> None:
    failing = "def test_sum():\n    assert 1 + 1 == 3\n"
    feature(world, (".ledger/runs/r1/run.json", '{"schema_version": 2, "id": "r1", "state": "NOPE"}\n', "a bad run file"),
            ("tests/test_sum.py", failing, "a failing test"), ("value.txt", "bad\n", "break the check"))
    result = world.run("pull_request", pull_request(world, "feature"), "feature", {"args": "--actor 'ci bot'"})
    assert result.code == 1, result.stderr
    assert result.outputs["verdict"] == "failure" and result.outputs["failed-count"] == "2"
    assert int(result.outputs["problem-count"]) >= 1
    found = annotations(result.stdout)
    assert any(a.startswith("::error file=.ledger/runs/r1/run.json,line=1,col=") and "title=ledger check%3A " in a for a in found)
    assert any(a.startswith("::error file=tests/test_sum.py,line=") and "test_sum" in a for a in found), found
    assert any(a.startswith("::error title=gate tests on ") for a in found)
    summary = world.summary
    assert summary.index("❌ failure") < summary.index("| ❌ |") < summary.index("| ✅ |")  # failures first
    assert "### Check:" in summary and "### Gate unit failed" in summary and "Run r1" in summary
    assert "ci bot" in git(world.origin, "log", "-1", "--format=%an", "--glob=refs/ledger/patches/*").stdout


def test_push_to_main_verifies_and_a_revert_rolls_back(world: World) -> None:
    before = git(world.work, "rev-parse", "main").stdout.strip()
    change = world.commit("one.txt", "one\n", "add one")
    git(world.work, "push", "-q", "origin", "main")
    push = {"ref": "refs/heads/main", "before": before, "after": change, "repository": repo()}
    result = world.run("push", push, "main")
    assert result.code == 0, result.stderr
    assert json.loads(result.outputs["states"]) == {"VERIFIED": 1}
    git(world.work, "revert", "--no-edit", "HEAD")
    revert = git(world.work, "rev-parse", "HEAD").stdout.strip()
    git(world.work, "push", "-q", "origin", "main")
    result = world.run("push", {**push, "before": change, "after": revert}, "main")
    assert result.code == 0, result.stderr
    assert json.loads(result.outputs["states"]) == {"ROLLED_BACK": 1, "VERIFIED": 1}
    rolled = result.outputs["patches"].split("\n")[1]
    said = git(world.origin, "log", "-1", "--format=%B", f"refs/ledger/patches/{rolled}").stdout
    assert "Ledger-State: ROLLED_BACK" in said and f"reverted by commit {revert}" in said
    assert "class ROLLED_BACK reached" in world.summary


def test_a_pull_request_proposing_a_revert_rolls_nothing_back(world: World) -> None:
    before = git(world.work, "rev-parse", "main").stdout.strip()
    change = world.commit("one.txt", "one\n", "add one")
    git(world.work, "push", "-q", "origin", "main")
    landed = world.run("push", {"ref": "refs/heads/main", "before": before, "after": change, "repository": repo()}, "main")
    (verified,) = landed.outputs["patches"].split("\n")
    git(world.work, "checkout", "-q", "-b", "feature", "main")
    git(world.work, "revert", "--no-edit", "HEAD")
    git(world.work, "push", "-q", "origin", "feature")
    git(world.work, "checkout", "-q", "main")
    for _ in range(2):  # the second run takes the first one's pushed ledger in, revert patch and all
        result = world.run("pull_request", pull_request(world, "feature"), "feature")
        assert result.code == 0, result.stderr
        # the revert is only proposed: the patch it would undo stays VERIFIED until it lands
        said = git(world.origin, "log", "-1", "--format=%B", f"refs/ledger/patches/{verified}").stdout
        assert "Ledger-State: VERIFIED" in said and "ROLLED_BACK" not in result.outputs["states"]


def test_a_new_branch_records_its_own_commits_from_a_shallow_checkout(world: World) -> None:
    feature(world, ("one.txt", "one\n", "add one"), ("two.txt", "two\n", "add two"))
    head = git(world.work, "rev-parse", "feature").stdout.strip()
    result = world.run("push", {"ref": "refs/heads/feature", "before": "0" * 40, "after": head, "repository": repo()}, "feature")
    assert result.code == 0, result.stderr
    # the branch's two commits since it left main: neither the base's files nor one patch of the whole tree
    ids = result.outputs["patches"].split("\n")
    assert len(ids) == 2 and json.loads(result.outputs["states"]) == {"VALIDATED": 2}
    said = [git(world.origin, "log", "-1", "--format=%B", f"refs/ledger/patches/{i}").stdout for i in ids]
    assert ["Ledger-Message: add one" in said[0], "Ledger-Message: add two" in said[1]] == [True, True], said
    stored = git(world.origin, "show", f"refs/ledger/patches/{ids[0]}:patch.diff").stdout
    assert "one.txt" in stored and "value.txt" not in stored and "check.py" not in stored


def test_merge_group_and_a_refused_push_lose_nothing(world: World) -> None:
    feature(world, ("one.txt", "one\n", "add one"))
    hook = world.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'permission denied to github-actions[bot]' >&2\nexit 1\n")
    hook.chmod(0o755)
    base, head = (git(world.work, "rev-parse", r).stdout.strip() for r in ("main", "feature"))
    payload = {"merge_group": {"base_sha": base, "head_sha": head, "base_ref": "refs/heads/main"}, "repository": repo()}
    result = world.run("merge_group", payload, "feature", {"gates": "tests", "shard": "1/2"})
    assert result.code == 0, result.stderr
    assert result.outputs["read-only"] == "true" and world.remote_refs() == []
    assert "**Read-only:** the ledger could not be pushed to origin" in world.summary
    assert "remote rejected" in world.summary and "nothing of this clone was lost" in world.summary
    ws = world.root / "ws"
    kept = git(ws, "for-each-ref", "--format=%(refname)", "refs/ledger/").stdout.split()
    assert f"refs/ledger/patches/{result.outputs['patches']}" in kept and len(kept) == 2  # the patch, its shard of tests


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload, said", [
    (None, "event.json: cannot read the event payload"),
    ("{not json", "event.json: the event payload is not JSON"),
    ('{"pull_request": {}}', "event.json: the event payload has no repository.full_name"),
])
def test_a_missing_or_malformed_payload_is_bad_input(world: World, payload: str | None, said: str) -> None:
    feature(world, ("one.txt", "one\n", "add one"))
    world.checkout("feature")
    path = world.root / "event.json"
    if payload is not None:
        path.write_text(payload)
    result = _run_raw(world, "pull_request", path)
    assert result.returncode == 2
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert world.remote_refs() == [] and (world.root / "summary.md").read_text() == ""


def _run_raw(world: World, event: str, path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`ledger ci` from the action's venv in the workspace, with a payload file as given."""
    (world.root / "summary.md").write_text("")
    variables = {**_env(world.root, world.runner_temp, event, path), **env}
    return subprocess.run([str(Path(world.installed["bin"]) / "ledger"), "ci"], cwd=world.root / "ws", env=variables,
                          capture_output=True, text=True)


def test_unwritable_runner_files_and_a_missing_base_are_bad_input(world: World) -> None:
    feature(world, ("one.txt", "one\n", "add one"))
    payload = pull_request(world, "feature")
    world.checkout("feature")
    path = world.root / "event.json"
    path.write_text(json.dumps(payload))
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
        proc = _run_raw(world, "pull_request", path, **{name: str(world.root)})  # a directory: cannot be appended to
        assert proc.returncode == 2 and f"{world.root} (${name}): cannot be written" in proc.stderr
    proc = _run_raw(world, "pull_request", path, LEDGER_GATES="tests,nosuch")  # an unknown gate: refused before any write
    assert proc.returncode == 2 and "nosuch" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert git(world.root / "ws", "for-each-ref", "refs/ledger/").stdout == "" and world.summary == ""
    payload["pull_request"]["base"]["sha"] = "1" * 40
    path.write_text(json.dumps(payload))
    proc = _run_raw(world, "pull_request", path)
    assert proc.returncode == 2 and "cannot be fetched from origin" in proc.stderr and "fetch-depth: 0" in proc.stderr
    assert world.remote_refs() == []


def test_inputs_never_reach_a_shell(world: World, tmp_path: Path) -> None:
    feature(world, ("one.txt", "one\n", "add one"))
    pwned = tmp_path / "pwned"
    result = world.run("pull_request", pull_request(world, "feature"), "feature",
                       {"gates": f"$(touch {pwned})", "shard": f"1/1; touch {pwned}", "args": f"--actor \"$(touch {pwned})\""})
    assert result.code == 2 and "--shard '1/1; touch" in result.stderr
    assert not pwned.exists() and world.remote_refs() == []


def test_the_runner_refuses_what_it_does_not_imitate(tmp_path: Path) -> None:
    context = {"inputs": {"x": "1"}, "github": {}, "steps": {"a": {"out": "2"}}}
    assert action_runner.evaluate("${{ inputs.x }}-${{ steps.a.outputs.out }}", context) == "1-2"
    for expr in ("${{ secrets.TOKEN }}", "${{ inputs.x || 'y' }}", "${{ toJSON(github) }}"):
        with pytest.raises(action_runner.Refused):
            action_runner.evaluate(expr, context)
    step = {"shell": "bash", "run": "echo ${{ inputs.x }}"}
    with pytest.raises(action_runner.Refused, match="script injection"):
        action_runner._run_step(step, "s", tmp_path, {"RUNNER_TEMP": str(tmp_path)}, context)


def test_action_yml_keeps_its_promises() -> None:
    action = action_runner.load()
    steps = action["runs"]["steps"]
    assert action["runs"]["using"] == "composite" and {"icon", "color"} <= set(action["branding"])
    assert all(name == name.lower() and "_" not in name for name in (*action["inputs"], *action["outputs"]))
    for step in steps:
        if "uses" in step:
            ref = step["uses"].split("@")[1]
            assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]
        else:
            assert step["shell"] == "bash" and "${{" not in step["run"]
    assert "# v5.6.0" in (ROOT / "action.yml").read_text()


# --- the pieces, without a runner -----------------------------------------------------------


def test_annotations_are_escaped_and_limited() -> None:
    a = github.Annotation("error", "50% done\r\nnext", "a,b:c.py", 3, 4, "t: x")
    assert github.command(a) == "::error file=a%2Cb%3Ac.py,line=3,col=4,title=t%3A x::50%25 done%0D%0Anext"
    lines = github.limited([github.Annotation("error", str(i)) for i in range(13)] + [github.Annotation("warning", "w")])
    assert len(lines) == 12 and lines[-1] == "::notice::3 more annotation(s) not shown; the step summary lists every problem"
    assert lines[10] == "::warning::w"


def test_outputs_and_summary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    github.write_outputs(out, {"one": "a", "many": "x\ny\nledger_"})
    assert action_runner.read_outputs(out) == {"one": "a", "many": "x\ny\nledger_"}
    monkeypatch.setattr(github, "SUMMARY_LIMIT", 100)
    summary = tmp_path / "summary"
    assert github.write_summary(summary, ["a" * 40, "b" * 40, "c" * 40], "(cut)") is False
    assert summary.read_text() == "a" * 40 + "\n" + "b" * 40 + "\n(cut)\n"


def test_the_token_is_git_s_for_a_block_only(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "http.https://github.com/.extraheader"
    git(repo, "commit", "-q", "--allow-empty", "-m", "something to point at")
    spy = repo / ".git" / "hooks" / "reference-transaction"
    spy.write_text(f"#!/bin/sh\nenv > {repo / 'seen'}\n")
    spy.chmod(0o755)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # the job's own entry (say safe.directory) stays
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "ledger.test")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "kept")
    with github.credentials(repo, "s3cret", "https://github.com/"):
        said = git(repo, "config", "--get", key).stdout  # as git sees it, from the environment
        assert said.startswith("AUTHORIZATION: basic ") and "s3cret" not in said
        assert git(repo, "config", "--get", "ledger.test").stdout.strip() == "kept"
        git(repo, "update-ref", "refs/heads/spied", "HEAD")  # a hook the gates may have planted would run here
    assert not (repo / "seen").exists()
    git(repo, "update-ref", "-d", "refs/heads/spied")
    assert (repo / "seen").exists()  # the hook is real: it runs outside the block
    for k in ("GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0"):
        monkeypatch.delenv(k)
    assert git(repo, "config", "--get", key, check=False).returncode == 1 and "GIT_CONFIG_COUNT" not in os.environ
    git(repo, "config", key, "AUTHORIZATION: basic kept")  # actions/checkout's own: left alone
    with github.credentials(repo, "s3cret", "https://github.com"):
        assert "GIT_CONFIG_COUNT" not in os.environ
