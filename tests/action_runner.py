"""A stand-in for the GitHub runner, for the composite action in action.yml: each `run:` step
is written to a script file and run as the runner runs it (`bash --noprofile --norc -eo
pipefail FILE`), with its `env:` evaluated, the runner's `GITHUB_*` variables, and real files
for `GITHUB_OUTPUT` (one a step) and `GITHUB_STEP_SUMMARY`. Only `${{ inputs.* }}`,
`${{ github.* }}` and `${{ steps.<id>.outputs.* }}` are evaluated; any other expression, an
expression inside `run:` or an `if:` on a run step makes the run fail, so a test notices the
day someone adds one. `uses:` steps are skipped with a note (there is no GitHub here)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import yaml

ACTION = Path(__file__).resolve().parent.parent / "action.yml"
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_ALLOWED = re.compile(r"^(inputs|github|steps\.[A-Za-z_][\w-]*\.outputs)\.([A-Za-z_][\w-]*)$")
_HEREDOC = re.compile(r"^([\w-]+)<<(.+)$")


class Refused(AssertionError):
    """The action uses something this runner does not imitate, and GitHub might do differently."""


class Result(NamedTuple):
    code: int  # the exit code of the step that failed, or 0
    stdout: str
    stderr: str
    outputs: dict[str, str]  # the action's outputs
    steps: dict[str, dict[str, str]]  # step id -> its outputs
    notes: list[str]  # what was skipped or reused, and why


def load(path: Path = ACTION) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def evaluate(value: str, context: Mapping[str, Any]) -> str:
    """`value` with each `${{ ... }}` replaced, from `context` (inputs, github, steps)."""
    def one(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        parsed = _ALLOWED.match(expr)
        if not parsed:
            raise Refused(f"expression {expr!r} is not one the test runner evaluates (inputs.*, github.*, steps.*.outputs.*)")
        scope, name = parsed.groups()
        if scope.startswith("steps."):
            return str(context["steps"].get(scope.split(".")[1], {}).get(name, ""))
        return str(context[scope].get(name, ""))
    return _EXPRESSION.sub(one, str(value))


def read_outputs(path: Path) -> dict[str, str]:
    """A step's GITHUB_OUTPUT file: `name=value` lines and `name<<DELIMITER` blocks."""
    lines, out, i = path.read_text().split("\n"), {}, 0
    while i < len(lines):
        heredoc = _HEREDOC.match(lines[i])
        if heredoc:
            name, delimiter = heredoc.groups()
            end = lines.index(delimiter, i + 1)  # ValueError: an unterminated block is a defect
            out[name], i = "\n".join(lines[i + 1:end]), end + 1
            continue
        if "=" in lines[i]:
            name, _, value = lines[i].partition("=")
            out[name] = value
        i += 1
    return out


def inputs_of(action: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    unknown = set(given) - set(action.get("inputs", {}))
    if unknown:
        raise Refused(f"no input {sorted(unknown)} in action.yml")
    return {name: str(given.get(name, spec.get("default", ""))) for name, spec in action.get("inputs", {}).items()}


def _defaults_evaluated(inputs: Mapping[str, str], github: Mapping[str, str]) -> dict[str, str]:
    """An input's default may be an expression (`${{ github.token }}`); a given value never is."""
    return {name: evaluate(value, {"github": github, "inputs": {}, "steps": {}}) for name, value in inputs.items()}


def run(workspace: Path, env: Mapping[str, str], given: Mapping[str, str], github: Mapping[str, str],
        reuse: Callable[[str], dict[str, str] | None] = lambda _: None,
        keep: Callable[[str, dict[str, str]], None] = lambda *_: None) -> Result:
    """Run the action's steps in `workspace` with the runner's `env`. `reuse(step_id)` may
    hand back a step's outputs from an earlier run (the install step, once per session)."""
    action = load()
    defaults = _defaults_evaluated(inputs_of(action, {}), github)
    context: dict[str, Any] = {"inputs": {**defaults, **inputs_of(action, given)}, "github": dict(github), "steps": {}}
    stdout, stderr, notes = [], [], []
    code = 0
    for number, step in enumerate(action["runs"]["steps"]):
        sid = step.get("id", f"step{number}")
        if "uses" in step:
            notes.append(f"skipped {step['uses']} (no GitHub here){' if ' + step['if'] if 'if' in step else ''}")
            continue
        done = reuse(sid)
        if done is not None:
            notes.append(f"reused the outputs of step {sid} from an earlier run")
            context["steps"][sid] = done
            continue
        code, out, err, outputs = _run_step(step, sid, workspace, env, context)
        stdout.append(out)
        stderr.append(err)
        context["steps"][sid] = outputs  # a failed step's outputs count too, as on GitHub
        if code != 0:
            break
        keep(sid, outputs)
    outputs = {name: evaluate(spec["value"], context) for name, spec in action.get("outputs", {}).items()}
    return Result(code, "".join(stdout), "".join(stderr), outputs, context["steps"], notes)


def _run_step(step: Mapping[str, Any], sid: str, workspace: Path, env: Mapping[str, str],
              context: Mapping[str, Any]) -> tuple[int, str, str, dict[str, str]]:
    if step.get("shell") != "bash":
        raise Refused(f"step {sid}: shell {step.get('shell')!r}; the test runner runs bash steps only")
    if "if" in step:
        raise Refused(f"step {sid}: an `if:` on a run step is not evaluated by the test runner")
    if "${{" in step["run"]:
        raise Refused(f"step {sid}: an expression inside run: is a script injection; pass it through env:")
    scratch = Path(env["RUNNER_TEMP"]) / "_steps"
    scratch.mkdir(parents=True, exist_ok=True)
    script, output = scratch / f"{sid}-{os.getpid()}-{id(context)}.sh", scratch / f"{sid}-{id(context)}.out"
    script.write_text(step["run"])
    output.write_text("")
    step_env = {**env, "GITHUB_OUTPUT": str(output), **{k: evaluate(v, context) for k, v in (step.get("env") or {}).items()}}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                          env=step_env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr, read_outputs(output)
