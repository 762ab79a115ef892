"""A plan as a graph of tasks: every task with what it runs, what it waits for (workstream
dependencies expanded to their tasks), its priority and limits; refused before anything runs
when an id is duplicated, a dependency or a tool is unknown, a template would hand a task's
text to a shell, or the dependencies form a cycle (named)."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from patch_ledger.errors import LedgerError

PLACEHOLDERS = ("prompt", "task", "workstream", "run", "attempt", "workdir")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox"}
DEFAULT_MAX_ATTEMPTS = 3


class Task(NamedTuple):
    id: str
    workstream: str
    title: str
    run: str | None  # a shell command of the plan's author
    prompt: str | None
    tool: str | None  # fixed by the plan, else chosen by the router from `capabilities`
    capabilities: tuple[str, ...]
    depends_on: tuple[str, ...]  # task ids
    priority: int
    max_attempts: int
    timeout: float | None
    produces_patch: bool | None  # None: as the tool says (edits_code)
    gates: tuple[str, ...]
    retry_delay_s: float
    workflow: Mapping[str, Any] | None = None  # a build-workflow workstream's one task: its phases' tools


class Graph(NamedTuple):
    tasks: dict[str, Task]  # in plan order
    workstreams: dict[str, tuple[str, ...]]  # workstream -> its task ids
    workstream_deps: dict[str, tuple[str, ...]]
    tools: dict[str, Mapping[str, Any]]

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {t: [] for t in self.tasks}
        for task in self.tasks.values():
            for dep in task.depends_on:
                out[dep].append(task.id)
        return out


def build(plan: Mapping[str, Any], config_tools: Mapping[str, Any], where: str) -> Graph:
    """The graph of `plan` (already valid against schemas/plan.json), or LedgerError naming
    `where` (the plan's path) and the entry at fault."""
    tools = {**config_tools, **plan.get("tools", {})}
    for name, tool in tools.items():
        _check_template(name, tool["command"], where)
    defaults = plan.get("defaults", {})
    workstreams: dict[str, tuple[str, ...]] = {}
    ws_deps: dict[str, tuple[str, ...]] = {}
    raw: dict[str, tuple[str, Mapping[str, Any]]] = {}
    flows: dict[str, Mapping[str, Any]] = {}
    for ws in plan["workstreams"]:
        if ws["id"] in workstreams:
            raise LedgerError(f"{where}: workstream {ws['id']!r} appears twice; give each workstream its own id")
        if "workflow" in ws:
            if ws.get("tasks"):
                raise LedgerError(f"{where}: workstream {ws['id']!r} has a workflow and tasks; its workflow is its one task")
            flows[ws["id"]] = {**ws["workflow"], "phases": _phase_tools(ws["id"], ws["workflow"], tools, where)}
            workstreams[ws["id"]] = (ws["id"],)
            ws_deps[ws["id"]] = tuple(ws.get("depends_on", ()))
            continue
        if not ws.get("tasks"):
            raise LedgerError(f"{where}: workstream {ws['id']!r} has no tasks; give it tasks or a workflow")
        workstreams[ws["id"]] = tuple(t["id"] for t in ws.get("tasks", ()))
        ws_deps[ws["id"]] = tuple(ws.get("depends_on", ()))
        for task in ws.get("tasks", ()):
            if task["id"] in raw:
                raise LedgerError(f"{where}: task {task['id']!r} appears twice (in {raw[task['id']][0]!r} and {ws['id']!r}); task ids are unique in a plan")
            raw[task["id"]] = (ws["id"], task)
    clash = sorted(set(raw) & set(workstreams))
    if clash:
        raise LedgerError(f"{where}: {clash[0]!r} is both a task and a workstream; depends_on could not tell them apart, rename one")
    for ws, deps in ws_deps.items():
        for dep in deps:
            if dep not in workstreams:
                raise LedgerError(f"{where}: workstream {ws!r} depends on {dep!r}, which is no workstream of the plan")
    tasks = {tid: _task(tid, ws, spec, defaults, tools, workstreams, ws_deps, raw, where) for tid, (ws, spec) in raw.items()}
    for ws, flow in flows.items():
        deps = tuple(dict.fromkeys(t for dep in ws_deps[ws] for t in workstreams[dep]))
        tasks[ws] = Task(ws, ws, f"{ws}: the build workflow", None, flow["prompt"], None, (), deps, int(defaults.get("priority", 0)),
                         int(defaults.get("max_attempts", DEFAULT_MAX_ATTEMPTS)), defaults.get("timeout"), defaults.get("produces_patch"),
                         tuple(defaults.get("gates", ())), float(defaults.get("retry_delay_s", 1.0)), flow)
    graph = Graph(tasks, workstreams, ws_deps, tools)
    cycle = find_cycle({t.id: t.depends_on for t in tasks.values()})
    if cycle:
        raise LedgerError(f"{where}: the dependencies form a cycle: {' -> '.join(cycle)}; remove one of these depends_on")
    return graph


def _task(tid: str, ws: str, spec: Mapping[str, Any], defaults: Mapping[str, Any], tools: Mapping[str, Any],
          workstreams: Mapping[str, Sequence[str]], ws_deps: Mapping[str, Sequence[str]],
          raw: Mapping[str, Any], where: str) -> Task:
    def get(key: str, default: Any = None) -> Any:
        return spec.get(key, defaults.get(key, default))

    tool = spec.get("tool") or (defaults.get("tool") if not spec.get("run") and not spec.get("capabilities") else None)
    if tool is not None and tool not in tools:
        known = ", ".join(sorted(tools)) or "none: add them under tools: in the plan or .ledger/config.yaml"
        raise LedgerError(f"{where}: task {tid!r} names the tool {tool!r}, which is not defined (tools: {known})")
    capabilities = tuple(spec.get("capabilities", ()))
    if capabilities and not any(set(capabilities) <= set(t.get("capabilities", ())) for t in tools.values()):
        raise LedgerError(f"{where}: task {tid!r} needs {', '.join(capabilities)}, which no tool offers; "
                          "add them to a tool's capabilities")
    if "run" in spec and not spec["run"].strip():
        raise LedgerError(f"{where}: task {tid!r} has a blank run:; give it a command")
    if not spec.get("run") and tool is None and not capabilities:
        raise LedgerError(f"{where}: task {tid!r} has nothing to run; give it run:, or a prompt with a tool or capabilities")
    if spec.get("run") and (tool or capabilities or spec.get("prompt")):
        raise LedgerError(f"{where}: task {tid!r} has run: and a tool; a task either runs a command or hands a prompt to a tool")
    deps: list[str] = []
    for dep in spec.get("depends_on", ()):
        if dep in workstreams:
            deps += workstreams[dep]
        elif dep in raw:
            deps.append(dep)
        else:
            raise LedgerError(f"{where}: task {tid!r} depends on {dep!r}, which is no task or workstream of the plan")
    for ws_dep in ws_deps.get(ws, ()):
        deps += workstreams[ws_dep]
    return Task(tid, ws, spec.get("title", tid), spec.get("run"), spec.get("prompt"), tool, capabilities,
                tuple(dict.fromkeys(deps)), int(get("priority", 0)), int(get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
                get("timeout"), get("produces_patch"), tuple(get("gates", ())), float(get("retry_delay_s", 1.0)))


def _phase_tools(ws: str, flow: Mapping[str, Any], tools: Mapping[str, Any], where: str) -> dict[str, str | None]:
    """phase -> the tool that serves its role (None: no tool does, the phase is handed on)."""
    from patch_ledger import machine

    roles = machine.load("workflow").roles
    chosen = dict(flow.get("tools", {}))
    for role, tool in chosen.items():
        if role not in roles.values():
            raise LedgerError(f"{where}: workstream {ws!r}: {role!r} is no role of the build workflow ({', '.join(roles.values())})")
        if tool not in tools:
            raise LedgerError(f"{where}: workstream {ws!r}: the {role} is tool {tool!r}, which is not defined")
    out: dict[str, str | None] = {}
    for phase, role in roles.items():
        serving = sorted(name for name, t in tools.items() if role in t.get("roles", ()))
        out[phase] = chosen.get(role) or (serving[0] if serving else None)
    if not any(out.values()):
        raise LedgerError(f"{where}: workstream {ws!r}: no tool serves any role of its workflow; list roles under a tool's roles:")
    return out


def _check_template(name: str, command: Sequence[str], where: str) -> None:
    """A tool's command is an argument vector whose {placeholders} are replaced inside one
    argument each: safe, unless a placeholder lands in code that a program runs: the script
    of a shell's -c (wherever the shell appears: `timeout 60 sh -c`, `bash -euc`), or of an
    interpreter's -c or -e. Then a task's text would become code; it must be an argument."""
    for arg in command:
        for found in _PLACEHOLDER.findall(arg):
            if found not in PLACEHOLDERS:
                raise LedgerError(f"{where}: tool {name!r}: {{{found}}} is not a placeholder ({', '.join(PLACEHOLDERS)})")
    for i, arg in enumerate(command):
        program = arg.rsplit("/", 1)[-1]
        flags = "c" if program in _SHELLS or re.fullmatch(r"python[0-9.]*", program) else "ce" if program in _INTERPRETERS else ""
        if not flags:
            continue
        takes_code = False
        for option in command[i + 1:]:
            if takes_code or not option.startswith("-") or option == "--":
                if takes_code and _PLACEHOLDER.search(option):
                    said = "shell syntax" if flags == "c" and program in _SHELLS else "code"
                    raise LedgerError(f"{where}: tool {name!r} puts {option!r} into the code that {program} runs, where a task's "
                                      f"text would become {said}; pass it as an argument after the script (\"$1\", sys.argv[1]) instead")
                break
            takes_code = not option.startswith("--") and any(f in option[1:] for f in flags)


_INTERPRETERS = {"node", "nodejs", "perl", "ruby", "php", "deno", "bun"}


def render(command: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argument vector with each {placeholder} replaced: every value stays inside the
    argument it was written in, whatever characters it holds."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), arg) for arg in command]


# words the shell itself runs (make keeps such a list too): never executed as a program
_SHELL_WORDS = {".", ":", "alias", "break", "case", "cd", "command", "continue", "eval", "exec", "exit", "export",
                "for", "if", "read", "readonly", "return", "set", "shift", "source", "test", "[", "times", "trap",
                "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while", "!", "{", "function"}


def shell_argv(run: str) -> list[str]:
    """A task's `run:`: executed directly when it is a plain command line of a program (as
    make does), through sh -c when it uses the shell's syntax, builtins or assignments."""
    words = run.split()
    if words and words[0] not in _SHELL_WORDS and "=" not in words[0] and re.search(r"[|&;<>()$`\\\"'*?\[\]#~=%{}\n]", run) is None:
        return words
    return ["sh", "-c", run]


def find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One dependency cycle, as [a, b, ..., a], or None: an iterative depth-first search."""
    colour: dict[str, int] = {}
    for start in deps:
        if colour.get(start):
            continue
        colour[start] = 1
        path = [start]
        stack = [iter(deps[start])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not colour.get(child):
                colour[child] = 1
                path.append(child)
                stack.append(iter(deps.get(child, ())))
    return None


def order(graph: Graph) -> list[str]:
    """The order one worker would run the tasks in: ready tasks by priority (higher first),
    then plan order. What --dry-run prints."""
    import heapq

    position = {tid: i for i, tid in enumerate(graph.tasks)}
    waiting = {tid: len(t.depends_on) for tid, t in graph.tasks.items()}
    dependents = graph.dependents()
    ready = [(-t.priority, position[tid], tid) for tid, t in graph.tasks.items() if not t.depends_on]
    heapq.heapify(ready)
    out = []
    while ready:
        _, _, tid = heapq.heappop(ready)
        out.append(tid)
        for child in dependents[tid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (-graph.tasks[child].priority, position[child], child))
    return out
