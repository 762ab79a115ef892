"""The action, the project's own workflows and its dependabot.yml, linted the way their CI job
lints them: zizmor with every audit, check-jsonschema with its vendored GitHub schemas (also on
the example workflows in docs/), and our own rules — every `uses:` local or pinned by commit,
and no `${{ }}` inside a `run:` (issue 6). Each linter is also shown a file that must fail, so
a lint that silently checks nothing fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import yaml

TOP = Path(__file__).resolve().parent.parent
ACTION = TOP / "action.yml"
WORKFLOWS = TOP / ".github" / "workflows"
DEPENDABOT = TOP / ".github" / "dependabot.yml"  # keeps the pins moving
# Every audit (the auditor persona is the widest), no configuration, no ignore comments honoured,
# and a file that does not parse is an error rather than a warning and a skip.
ZIZMOR = ["--offline", "--persona", "auditor", "--no-config", "--no-ignores", "--strict-collection", "--format", "json"]
PINNED = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\b")


class Uses(NamedTuple):
    path: Path
    where: str  # e.g. "jobs.tests.steps[0]"
    ref: str


def tool(name: str) -> str:
    """A linter from the test extra, next to this interpreter (the extra is the one place it is declared)."""
    found = Path(sys.executable).parent / name
    if not found.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'")
    return str(found)


def action_file() -> Path:
    if not ACTION.is_file():
        pytest.fail(f"{ACTION} is missing: the composite action (issue 6) must be at the repository root")
    return ACTION


def workflow_files() -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, f"no workflow in {WORKFLOWS}"
    return files


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)  # strings only: `on:` stays a key


def relative(path: Path) -> str:
    return str(path.relative_to(TOP)) if path.is_relative_to(TOP) else str(path)


def zizmor(*paths: Path) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run([tool("zizmor"), *ZIZMOR, *map(relative, paths)], cwd=TOP, capture_output=True, text=True)
    findings = json.loads(done.stdout) if done.stdout.strip() else []
    return done.returncode, findings, done.stderr


def describe(finding: dict[str, Any]) -> str:
    location = next(loc for loc in finding["locations"] if loc["symbolic"]["kind"] == "Primary")
    path = location["symbolic"]["key"]["Local"]["verbatim_path"]
    row = location["concrete"]["location"]["start_point"]["row"] + 1
    return f"{path}:{row}: {finding['ident']} ({finding['determinations']['severity']}): {location['symbolic']['annotation']}"


def check_jsonschema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    command = [tool("check-jsonschema"), "--builtin-schema", f"vendor.{schema}", *map(str, paths)]
    return subprocess.run(command, cwd=TOP, capture_output=True, text=True)


def steps_of(path: Path, document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every step, and every job that calls a reusable workflow, with where it is."""
    if path.name in ("action.yml", "action.yaml"):
        for index, step in enumerate(document.get("runs", {}).get("steps", [])):
            yield f"runs.steps[{index}]", step
        return
    for name, job in document.get("jobs", {}).items():
        yield f"jobs.{name}", job
        for index, step in enumerate(job.get("steps", [])):
            yield f"jobs.{name}.steps[{index}]", step


def uses_of(path: Path) -> list[Uses]:
    return [Uses(path, where, step["uses"]) for where, step in steps_of(path, load(path)) if "uses" in step]


def is_local(ref: str) -> bool:
    # `$/` is GitHub's self-repository form: this repository at the commit being run (zizmor's
    # self-repository audit asks for it in place of the workspace-relative `./`).
    return ref.startswith(("./", "$/"))


def unpinned(uses: Uses) -> str | None:
    """Why this reference may move under us, or None: local, or an action at a full commit."""
    if is_local(uses.ref) or PINNED.fullmatch(uses.ref):
        return None
    return f"{uses.path.name}: {uses.where} uses {uses.ref!r}: pin it to a full 40-hex commit with a '# vX.Y.Z' comment"


def lines_using(path: Path, ref: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if re.search(rf"\buses:\s*['\"]?{re.escape(ref)}\b", line)]


def everything() -> list[Path]:
    return [action_file(), *workflow_files()]


# -- zizmor -------------------------------------------------------------------------------------


def test_zizmor_finds_nothing_in_the_action_and_workflows() -> None:
    code, findings, stderr = zizmor(action_file(), WORKFLOWS, DEPENDABOT)
    assert not findings, "zizmor:\n" + "\n".join(map(describe, findings))
    assert code == 0, stderr
    audited = set(re.findall(r"completed (\S+)", stderr))
    expected = {"action.yml", ".github/dependabot.yml", *(f".github/workflows/{p.name}" for p in workflow_files())}
    assert expected <= audited, stderr


def test_zizmor_as_run_here_reports_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: bad\non: pull_request_target\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo \"${{ github.event.pull_request.title }}\"\n"
    )
    code, findings, _ = zizmor(bad)
    found = {finding["ident"] for finding in findings}
    assert {"unpinned-uses", "template-injection", "excessive-permissions", "artipacked"} <= found, found
    assert code >= 10  # zizmor's "findings" codes: 10 + the highest severity


# -- check-jsonschema ---------------------------------------------------------------------------


def test_the_action_matches_the_github_actions_schema() -> None:
    done = check_jsonschema("github-actions", action_file())
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflows_match_the_github_workflows_schema() -> None:
    done = check_jsonschema("github-workflows", *workflow_files())
    assert done.returncode == 0, done.stdout + done.stderr


def test_dependabot_updates_the_pinned_actions() -> None:
    done = check_jsonschema("dependabot", DEPENDABOT)
    assert done.returncode == 0, done.stdout + done.stderr
    ecosystems = [update["package-ecosystem"] for update in load(DEPENDABOT)["updates"]]
    assert "github-actions" in ecosystems, ecosystems


def test_check_jsonschema_as_run_here_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")  # no runs-on
    done = check_jsonschema("github-workflows", broken)
    assert done.returncode == 1 and "broken.yml" in done.stdout + done.stderr, done.stdout + done.stderr


def example_workflows(into: Path) -> list[Path]:
    """Each complete workflow the docs show users (a yaml block with `jobs:` at its top), as a file."""
    found = []
    for doc in sorted((TOP / "docs").glob("*.md")):
        blocks = re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(), re.S | re.M)
        for number, block in enumerate(b for b in blocks if re.search(r"^jobs:", b, re.M)):
            found.append(into / f"{doc.stem}-{number + 1}.yml")
            found[-1].write_text(block)
    return found


def test_the_workflows_in_the_docs_match_the_github_workflows_schema(tmp_path: Path) -> None:
    # Users copy these: one that does not parse fails in their repository, not ours.
    examples = example_workflows(tmp_path)
    assert examples, "docs/ shows no complete workflow (docs/github-action.md should)"
    done = check_jsonschema("github-workflows", *examples)
    assert done.returncode == 0, "docs/NAME.md's Nth workflow is NAME-N.yml:\n" + done.stdout + done.stderr


# -- our own rules ------------------------------------------------------------------------------


def test_every_uses_is_local_or_pinned_to_a_commit() -> None:
    problems = [why for path in everything() for uses in uses_of(path) if (why := unpinned(uses))]
    assert not problems, "\n".join(problems)


def test_every_pinned_uses_names_its_version() -> None:
    pinned = [uses for path in everything() for uses in uses_of(path) if PINNED.fullmatch(uses.ref)]
    bare = [f"{u.path.name}: {u.where}: {line.strip()}" for u in pinned
            for line in lines_using(u.path, u.ref) if not VERSION_COMMENT.search(line)]
    assert not bare, "a pin needs a '# vX.Y.Z' comment so a reader knows what it is:\n" + "\n".join(bare)


def test_one_action_one_pin_across_the_action_and_workflows() -> None:
    # One commit per action: the workflows exercise the same actions the action gives users.
    pins: dict[str, dict[str, set[str]]] = {}
    for path in everything():
        for uses in uses_of(path):
            name, _, commit = uses.ref.partition("@")
            pins.setdefault(name, {}).setdefault(commit, set()).add(path.name)
    split = [f"{name}: {commits}" for name, commits in pins.items() if len(commits) > 1]
    assert not split, "one action, two pins:\n" + "\n".join(split)


@pytest.mark.parametrize("ref, pinned", [
    ("./", True),
    ("./.github/actions/setup", True),
    ("$/", True),
    ("actions/checkout@34e114876b0b11c390a56381ad16ebd13914f8d5", True),
    ("owner/repo/sub/dir@34e114876b0b11c390a56381ad16ebd13914f8d5", True),
    ("actions/checkout@v4", False),
    ("actions/checkout@34e1148", False),
    ("actions/checkout@main", False),
    ("actions/checkout", False),
    ("docker://alpine:3", False),
    ("owner/repo/.github/workflows/w.yml@34E114876B0B11C390A56381AD16EBD13914F8D5", False),
])
def test_the_pin_rule_itself(ref: str, pinned: bool) -> None:
    assert (unpinned(Uses(Path("w.yml"), "jobs.x.steps[0]", ref)) is None) is pinned


def test_no_expression_inside_a_run_block() -> None:
    # Expressions in `run:` are pasted into the script before the shell sees it: an attacker's
    # PR title becomes code. Values reach scripts through `env:` only.
    runs = [(path, where, step["run"]) for path in everything()
            for where, step in steps_of(path, load(path)) if "run" in step]
    assert runs, "no run: step found at all"
    bad = [f"{path.name}: {where}" for path, where, script in runs if "${{" in script]
    assert not bad, "${{ }} inside run: (pass it through env:):\n" + "\n".join(bad)


def test_the_workflows_give_this_action_only_inputs_it_declares() -> None:
    # The runner only warns about an unknown input; a misspelt or removed one would be silently
    # dropped (a `token` the action never reads means a ledger that is never pushed).
    inputs = load(action_file()).get("inputs", {})
    required = {name for name, spec in inputs.items() if spec.get("required") in (True, "true") and "default" not in spec}
    calls = [(path.name, where, step.get("with", {})) for path in workflow_files()
             for where, step in steps_of(path, load(path)) if step.get("uses") in ("./", "$/")]
    assert calls, "no workflow uses this repository's own action"
    for name, where, given in calls:
        assert set(given) <= set(inputs), f"{name}: {where} gives {sorted(set(given) - set(inputs))}, not inputs of action.yml"
        assert required <= set(given), f"{name}: {where} lacks required inputs {sorted(required - set(given))}"


def test_every_workflow_job_has_a_timeout_and_its_own_permissions() -> None:
    for path in workflow_files():
        document = load(path)
        assert "permissions" in document, f"{path.name}: no top-level permissions (use permissions: {{}})"
        for name, job in document["jobs"].items():
            assert "timeout-minutes" in job or "uses" in job, f"{path.name}: job {name} has no timeout-minutes"
            assert "permissions" in job, f"{path.name}: job {name} does not say which permissions it needs"


def test_the_lint_job_runs_zizmor_as_this_file_does() -> None:
    lint = load(WORKFLOWS / "ci.yml")["jobs"]["lint"]
    (command,) = [step["run"].split() for step in lint["steps"] if step.get("run", "").startswith("zizmor ")]
    flags = ZIZMOR[:ZIZMOR.index("--format")]
    assert command[1:1 + len(flags)] == flags, command
    assert {"action.yml", ".github/workflows/", ".github/dependabot.yml"} <= set(command), command


def test_the_tests_job_runs_ci_run_from_the_oldest_supported_python() -> None:
    tests = load(WORKFLOWS / "ci.yml")["jobs"]["tests"]
    versions = tests["strategy"]["matrix"]["python"]
    floor = re.search(r'requires-python\s*=\s*">=(\d+\.\d+)"', (TOP / "pyproject.toml").read_text())
    assert floor and floor.group(1) in versions and len(versions) >= 2, versions
    runs = [step for step in tests["steps"] if "run" in step]
    assert [step["run"].strip() for step in runs] == ["bash .ci/run"] and runs[0]["env"]["CI"] == "true"
