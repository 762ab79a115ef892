"""dag.py without a process: a plan becomes a task graph (workstream dependencies expanded to
their tasks, priorities, limits), is refused with a message naming the plan and the entry at
fault, and a task's text never becomes shell syntax (render, shell_argv)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patch_ledger import dag
from patch_ledger.errors import LedgerError

WHERE = ".ledger/plans/p.yaml"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plan(*workstreams: dict[str, Any], tools: dict[str, Any] | None = None, **defaults: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"schema_version": 2, "name": "p", "workstreams": list(workstreams)}
    if tools:
        out["tools"] = tools
    if defaults:
        out["defaults"] = defaults
    return out


def ws(wid: str, *tasks: dict[str, Any], depends_on: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"id": wid, "tasks": list(tasks)}
    if depends_on:
        out["depends_on"] = list(depends_on)
    return out


def task(tid: str, *deps: str, **spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tid, "run": "true", **spec}
    if deps:
        out["depends_on"] = list(deps)
    return out


def refused(p: dict[str, Any], tools: dict[str, Any] | None = None) -> str:
    with pytest.raises(LedgerError) as info:
        dag.build(p, tools or {}, WHERE)
    message = str(info.value)
    assert message.startswith(WHERE + ": ") and "\n" not in message, message
    return message


# --- the graph -------------------------------------------------------------------------


def test_workstream_dependencies_are_expanded_to_every_task_of_the_workstream() -> None:
    graph = dag.build(plan(ws("a", task("a1"), task("a2")),
                           ws("b", task("b1"), task("b2", "b1"), depends_on=("a",)),
                           ws("c", task("c1", "a", "b2", "a1"))), {}, WHERE)
    assert graph.tasks["b1"].depends_on == ("a1", "a2")
    assert graph.tasks["b2"].depends_on == ("b1", "a1", "a2")
    assert graph.tasks["c1"].depends_on == ("a1", "a2", "b2")  # a named task of a named workstream once
    assert graph.workstreams == {"a": ("a1", "a2"), "b": ("b1", "b2"), "c": ("c1",)}
    assert graph.dependents()["a1"] == ["b1", "b2", "c1"]


def test_defaults_fill_what_a_task_leaves_out() -> None:
    graph = dag.build(plan(ws("a", task("a1"), task("a2", max_attempts=5, priority=-1)), max_attempts=2,
                           retry_delay_s=0.05, priority=3, timeout=9), {}, WHERE)
    a1, a2 = graph.tasks["a1"], graph.tasks["a2"]
    assert (a1.max_attempts, a1.retry_delay_s, a1.priority, a1.timeout) == (2, 0.05, 3, 9)
    assert (a2.max_attempts, a2.priority) == (5, -1)


def test_order_is_priority_first_then_plan_order_and_never_before_a_dependency() -> None:
    graph = dag.build(plan(ws("a", task("low"), task("high", priority=5), task("after", "low", priority=9),
                              task("plain"))), {}, WHERE)
    assert dag.order(graph) == ["high", "low", "after", "plain"]


def test_a_tool_task_gets_the_default_tool_and_a_run_task_does_not() -> None:
    tools = {"echo": {"command": ["echo", "{prompt}"]}}
    graph = dag.build(plan(ws("a", {"id": "p1", "prompt": "hi"}, task("r1")), tool="echo"), tools, WHERE)
    assert graph.tasks["p1"].tool == "echo" and graph.tasks["r1"].tool is None


# --- cycles ----------------------------------------------------------------------------


def named_cycle(message: str) -> list[str]:
    found = re.search(r"cycle: ([^;]+);", message)
    assert found, message
    return found.group(1).split(" -> ")


def assert_is_cycle(cycle: list[str], deps: dict[str, tuple[str, ...]]) -> None:
    assert cycle[0] == cycle[-1] and len(cycle) >= 2, cycle
    for here, there in zip(cycle, cycle[1:]):
        assert there in deps[here] or here in deps[there], (here, there)


def test_a_cycle_of_tasks_is_refused_naming_each_task_of_it() -> None:
    p = plan(ws("a", task("t1", "t3"), task("t2", "t1"), task("t3", "t2"), task("free")))
    cycle = named_cycle(refused(p))
    assert sorted(set(cycle)) == ["t1", "t2", "t3"]
    assert_is_cycle(cycle, {"t1": ("t3",), "t2": ("t1",), "t3": ("t2",)})


def test_mutually_dependent_workstreams_are_a_cycle() -> None:
    message = refused(plan(ws("x", task("x1"), depends_on=("y",)), ws("y", task("y1"), depends_on=("x",))))
    assert sorted(set(named_cycle(message))) == ["x1", "y1"]


def test_a_task_depending_on_itself_or_its_own_workstream_is_a_cycle() -> None:
    assert named_cycle(refused(plan(ws("a", task("t1", "t1"))))) == ["t1", "t1"]
    assert set(named_cycle(refused(plan(ws("a", task("t1"), task("t2", "a")))))) == {"t2"}


def test_find_cycle_handles_a_long_chain_without_recursion() -> None:
    n = 20000
    deps = {f"t{i}": ((f"t{i - 1}",) if i else ()) for i in range(n)}
    assert dag.find_cycle(deps) is None
    deps["t0"] = (f"t{n - 1}",)
    assert len(dag.find_cycle(deps) or []) == n + 1


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("p, words", [
    (plan(ws("a", task("t1")), ws("b", task("t1"))), ["'t1'", "twice"]),
    (plan(ws("a", task("t1")), ws("a", task("t2"))), ["'a'", "twice"]),
    (plan(ws("a", task("t1", "nope"))), ["'t1'", "'nope'"]),
    (plan(ws("a", task("t1")), ws("b", task("t2")), ws("c", task("t3"), depends_on=("zz",))), ["'c'", "'zz'"]),
    (plan(ws("a", {"id": "t1", "prompt": "x", "tool": "ghost"})), ["'t1'", "'ghost'"]),
    (plan(ws("a", {"id": "t1", "prompt": "x"}), tool="ghost"), ["'t1'", "'ghost'"]),
    (plan(ws("a", {"id": "t1", "prompt": "x", "capabilities": ["fly"]})), ["'t1'", "fly"]),
    (plan(ws("a", {"id": "t1", "prompt": "x"})), ["'t1'", "nothing to run"]),
    (plan(ws("a", task("t1", tool="ghost"))), ["'t1'"]),
    (plan(ws("a", task("a"))), ["'a'", "both a task and a workstream"]),
], ids=["duplicate-task", "duplicate-workstream", "unknown-dependency", "unknown-workstream-dependency",
        "unknown-tool", "unknown-default-tool", "unknown-capability", "nothing-to-run", "run-and-tool", "name-clash"])
def test_a_bad_plan_is_refused_in_one_line_naming_the_entry(p: dict[str, Any], words: list[str]) -> None:
    message = refused(p)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("command", [
    ["sh", "-c", "echo {prompt}"],
    ["/bin/bash", "-c", "run {task} now"],
    ["bash", "-ec", "x={workstream}"],
    ["env", "FOO=1", "sh", "-c", "echo {prompt}"],
    ["/usr/bin/env", "zsh", "-c", "{prompt}"],
    ["sh", "-e", "-c", "echo {run}"],
])
def test_a_template_handing_a_field_to_a_shell_is_refused(command: list[str]) -> None:
    message = refused(plan(ws("a", {"id": "t1", "prompt": "x", "tool": "agent"})), {"agent": {"command": command}})
    assert "'agent'" in message and "shell syntax" in message


@pytest.mark.parametrize("command", [
    ["bash", "-euc", "echo {prompt}"],
    ["timeout", "60", "sh", "-c", "echo {prompt}"],
])
def test_a_template_handing_a_field_to_a_shell_another_way_is_refused(command: list[str]) -> None:
    refused(plan(ws("a", {"id": "t1", "prompt": "x", "tool": "agent"})), {"agent": {"command": command}})


@pytest.mark.parametrize("command", [
    ["sh", "-c", 'echo "$1"', "sh", "{prompt}"],  # the documented safe way: an argument after the script
    ["claude", "-p", "{prompt}", "--cwd", "{workdir}"],
    ["sh", "script.sh", "{prompt}"],
])
def test_a_template_passing_fields_as_arguments_is_accepted(command: list[str]) -> None:
    dag.build(plan(ws("a", {"id": "t1", "prompt": "x", "tool": "agent"})), {"agent": {"command": command}}, WHERE)


def test_an_unknown_placeholder_is_refused() -> None:
    message = refused(plan(ws("a", {"id": "t1", "prompt": "x", "tool": "agent"})),
                      {"agent": {"command": ["agent", "{secret}"]}})
    assert "{secret}" in message and "'agent'" in message


# --- render and shell_argv -------------------------------------------------------------


@SETTINGS
@given(st.text(), st.text(), st.lists(st.sampled_from(["{prompt}", "{task}", "-", "x{prompt}y", "{prompt}{task}"]), min_size=1))
def test_render_keeps_each_value_inside_its_one_argument(prompt: str, tid: str, command: list[str]) -> None:
    argv = dag.render(command, {"prompt": prompt, "task": tid})
    assert argv == [arg.replace("{prompt}", "\0P").replace("{task}", "\0T").replace("\0P", prompt).replace("\0T", tid)
                    for arg in command]


def test_render_does_not_expand_placeholders_or_escapes_inside_a_value() -> None:
    values = {"prompt": "{task} \\1 \\g<0> $(rm -rf /); `id` \"'\n", "task": "t1"}
    assert dag.render(["agent", "--", "{prompt}"], values) == ["agent", "--", values["prompt"]]


def test_a_rendered_prompt_reaches_the_program_byte_for_byte() -> None:
    prompt = "a b; echo INJECTED $(id) `id` | cat > x && exit 3 \\ ' \""
    argv = dag.render(["sh", "-c", 'printf %s "$1"', "sh", "{prompt}"], {"prompt": prompt})
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout == prompt


@pytest.mark.parametrize("run, argv", [
    ("make test", ["make", "test"]),
    ("pytest -q tests/a.py", ["pytest", "-q", "tests/a.py"]),
    ("echo a && echo b", ["sh", "-c", "echo a && echo b"]),
    ("echo $HOME", ["sh", "-c", "echo $HOME"]),
    ("ls *.py", ["sh", "-c", "ls *.py"]),
    ("echo 'a b'", ["sh", "-c", "echo 'a b'"]),
    ("cat < x", ["sh", "-c", "cat < x"]),
])
def test_shell_argv_runs_a_plain_command_directly_and_anything_else_through_sh(run: str, argv: list[str]) -> None:
    assert dag.shell_argv(run) == argv


@pytest.mark.parametrize("run", ["FOO=1 make", "exit 0", "cd sub", ":", "export A=1", " "])
def test_shell_argv_leaves_shell_syntax_to_the_shell(run: str) -> None:
    argv = dag.shell_argv(run)
    assert argv and (argv[:2] == ["sh", "-c"] or subprocess.run(["sh", "-c", f"command -v {argv[0]!r}"],
                                                                capture_output=True).stdout.strip().startswith(b"/"))
