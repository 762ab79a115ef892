"""The task router, the tools' circuit breakers, and the adapters' jobs.

A task with `tool:` gets that tool; one with `capabilities:` gets a tool that has them all,
whose breaker is not OPEN, and that is cheapest by what its runs cost so far (else by its
declared `cost.per_run`), then by name; a `run:` task runs its own command. The choice and
its reason are recorded on the task.

A tool's breaker (.ledger/breakers/<tool>.json, schemas/breaker.json) outlives a run: it
opens after `breaker.threshold` consecutive failures (default 3), lets one probe through
after `breaker.cooldown_s` (default 60), and closes when the probe succeeds or opens again
when it fails. It also keeps the sums of what the tool's runs cost: the router's price.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from patch_ledger import dag, machine
from patch_ledger.store import RunStore

DEFAULT_THRESHOLD = 3
DEFAULT_COOLDOWN_S = 60.0
FULL_WAIT_S = 0.05  # a task whose tools all run their max_concurrency looks again this soon


class Router:
    def __init__(self, root: Path, tools: Mapping[str, Mapping[str, Any]], store: RunStore | None = None) -> None:
        self.root, self.tools = root, tools
        self.store = store if store is not None else RunStore(root, "-", autoflush=False)
        self.probing: set[str] = set()  # tools whose one HALF_OPEN probe is out

    # --- breakers ---------------------------------------------------------------------

    def breaker(self, tool: str) -> dict[str, Any]:
        """The tool's breaker, CLOSED and new when it has none yet."""
        try:
            return self.store.read("breaker", tool)
        except FileNotFoundError:
            settings = self.tools[tool].get("breaker", {})
            return self.store.create("breaker", tool, "ledger run", fields={
                "target": tool, "failure_threshold": settings.get("threshold", DEFAULT_THRESHOLD),
                "consecutive_failures": 0, "cooldown_s": settings.get("cooldown_s", DEFAULT_COOLDOWN_S), "runs": 0})

    def available(self, tool: str) -> tuple[bool, float]:
        """(whether a task may go to `tool` now, seconds until it may when not): OPEN waits
        out its cool-down, then lets one probe through (HALF_OPEN)."""
        doc = self.breaker(tool)
        if doc["state"] == "CLOSED":
            return True, 0.0
        if doc["state"] == "HALF_OPEN":
            return tool not in self.probing, 1.0
        left = doc.get("cooldown_s", DEFAULT_COOLDOWN_S) - (time.time() - machine.seconds(doc.get("opened_at") or doc["history"][-1]["at"]))
        return left <= 0, max(left, 0.05)

    def dispatched(self, tool: str) -> None:
        """A task went to `tool`: after an OPEN breaker's cool-down, as its probe."""
        doc = self.breaker(tool)
        if doc["state"] == "OPEN":
            self.store.move("breaker", tool, "HALF_OPEN", "ledger run", f"cool-down of {doc.get('cooldown_s', DEFAULT_COOLDOWN_S):g} s passed; one probe")
        if self.breaker(tool)["state"] == "HALF_OPEN":
            self.probing.add(tool)

    def record(self, tool: str, ok: bool, cost: Mapping[str, Any] | None) -> None:
        """A finished run of `tool`: its cost summed in, and its breaker moved."""
        doc = self.breaker(tool)
        spent = dict(doc.get("cost", {}))
        for key, value in (cost or {}).items():
            spent[key] = round(spent.get(key, 0) + value, 6) if key == "money" else spent.get(key, 0) + value
        fields: dict[str, Any] = {"runs": doc.get("runs", 0) + 1, **({"cost": spent} if spent else {})}
        self.probing.discard(tool)
        state, failures = doc["state"], doc["consecutive_failures"]
        if ok:
            if state == "HALF_OPEN":
                self.store.move("breaker", tool, "CLOSED", "ledger run", "the probe succeeded", fields={**fields, "consecutive_failures": 0})
            else:
                self.store.update("breaker", tool, {**fields, "consecutive_failures": 0})
        elif state == "HALF_OPEN":
            self.store.move("breaker", tool, "OPEN", "ledger run", "the probe failed",
                            fields={**fields, "consecutive_failures": failures + 1, "opened_at": machine.now()})
        elif state == "CLOSED" and failures + 1 >= doc["failure_threshold"]:
            self.store.move("breaker", tool, "OPEN", "ledger run", f"{failures + 1} failures in a row",
                            fields={**fields, "consecutive_failures": failures + 1, "opened_at": machine.now()})
        else:
            self.store.update("breaker", tool, {**fields, "consecutive_failures": failures + (state == "CLOSED")})

    # --- routing ----------------------------------------------------------------------

    def price(self, tool: str) -> float:
        """Money a run of `tool` costs: measured (its breaker keeps the sums), else declared."""
        doc = self.breaker(tool)
        runs, money = doc.get("runs", 0), doc.get("cost", {}).get("money")
        if runs and money is not None:
            return float(money) / runs
        return float(self.tools[tool].get("cost", {}).get("per_run", 0.0))

    def choose(self, task: dag.Task, full: frozenset[str] = frozenset()) -> tuple[str | None, str, float]:
        """(the tool, why, 0) or, when every tool that could take it is held by its breaker or
        runs its `max_concurrency` already (`full`), (None, why, seconds to wait). A `run:`
        task's tool is None."""
        if task.run is not None:
            return None, "runs its own command", 0.0
        if task.workflow is not None:
            phases = task.workflow["phases"]
            return None, "build workflow: " + ", ".join(f"{p.lower()} {t}" for p, t in phases.items() if t), 0.0
        if task.tool is not None:
            if task.tool in full:
                return None, f"{task.tool} runs its max_concurrency already", FULL_WAIT_S
            ok, wait = self.available(task.tool)
            return (task.tool, "named by the plan", 0.0) if ok else (None, f"{task.tool}'s breaker is OPEN", wait)
        wanted = set(task.capabilities)
        able = sorted(name for name, tool in self.tools.items() if wanted <= set(tool.get("capabilities", ())))
        waits = {name: (False, FULL_WAIT_S) if name in full else self.available(name) for name in able}
        usable = [name for name in able if waits[name][0]]
        if not usable:
            return None, f"every tool with {', '.join(sorted(wanted))} is held (breaker OPEN or max_concurrency reached)", \
                min(w for _, w in waits.values())
        best = min(usable, key=lambda name: (self.price(name), name))
        held = [name for name in able if name not in usable]
        why = f"has {', '.join(sorted(wanted))}; cheapest of {len(usable)} ({self.price(best):g} a run)"
        return best, why + (f"; {', '.join(held)} held by the breaker" if held else ""), 0.0

    def job(self, run: str, task: dag.Task, tool_name: str | None, attempt: int, workdir: Path) -> dict[str, Any]:
        """What a worker runs for one attempt of `task`."""
        env = {"LEDGER_RUN": run, "LEDGER_TASK": task.id, "LEDGER_ATTEMPT": str(attempt), "LEDGER_WORKSTREAM": task.workstream}
        timeout, pattern = task.timeout, None
        if tool_name is None:
            argv = dag.shell_argv(task.run or "true")
        else:
            tool = self.tools[tool_name]
            values = {"prompt": task.prompt or task.title, "task": task.id, "workstream": task.workstream, "run": run,
                      "attempt": str(attempt), "workdir": str(workdir)}
            argv = dag.render(tool["command"], values)
            env.update(tool.get("env", {}))
            timeout = timeout or tool.get("timeout")
            pattern = tool.get("cost", {}).get("pattern")
        return {"argv": argv, "cwd": str(workdir), "env": env, "timeout": timeout, "cost_pattern": pattern}

