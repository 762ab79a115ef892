"""The task router and the adapters' jobs: which tool runs a task, why, and the job a worker
gets (the argument vector, directory, environment, deadline and log).

A task with `tool:` gets that tool; one with `capabilities:` gets the tool that has them all,
whose breaker (.ledger/breakers/<tool>.json) is not OPEN, and that is cheapest by what its
runs cost so far (else by its declared `cost.per_run`), then by name; a `run:` task runs its
command. The choice and its reason are recorded on the task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from patch_ledger import dag
from patch_ledger.store import path_of


class Router:
    def __init__(self, root: Path, tools: Mapping[str, Mapping[str, Any]]) -> None:
        self.root, self.tools = root, tools

    def breaker(self, tool: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.root / path_of("breaker", "", tool)).read_text())
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def price(self, tool: str) -> float:
        """Money a run of `tool` costs: measured (its breaker keeps the sums), else declared."""
        doc = self.breaker(tool) or {}
        runs, money = doc.get("runs", 0), doc.get("cost", {}).get("money")
        if runs and money is not None:
            return float(money) / runs
        return float(self.tools[tool].get("cost", {}).get("per_run", 0.0))

    def choose(self, task: dag.Task) -> tuple[str | None, str]:
        if task.run is not None:
            return None, "runs its own command"
        if task.tool is not None:
            return task.tool, "named by the plan"
        wanted = set(task.capabilities)
        able = sorted(name for name, tool in self.tools.items() if wanted <= set(tool.get("capabilities", ())))
        usable = [name for name in able if (self.breaker(name) or {}).get("state") != "OPEN"]
        if not usable:
            return None, f"every tool with {', '.join(sorted(wanted))} ({', '.join(able)}) has its breaker OPEN"
        best = min(usable, key=lambda name: (self.price(name), name))
        skipped = [name for name in able if name not in usable]
        why = f"has {', '.join(sorted(wanted))}, cheapest at {self.price(best):g} a run of {len(usable)} able"
        return best, why + (f"; {', '.join(skipped)} OPEN" if skipped else "")

    def job_for(self, run: str, root: Path) -> Callable[[dag.Task, dict[str, Any], int], dict[str, Any]]:
        logs = _git_dir(root) / "ledger" / "runs" / run / "logs"

        def job(task: dag.Task, doc: dict[str, Any], attempt: int) -> dict[str, Any]:
            tool_name, _ = self.choose(task)
            env = {"LEDGER_RUN": run, "LEDGER_TASK": task.id, "LEDGER_ATTEMPT": str(attempt), "LEDGER_WORKSTREAM": task.workstream}
            timeout = task.timeout
            if tool_name is None:
                argv = dag.shell_argv(task.run or "true")
                pattern = None
            else:
                tool = self.tools[tool_name]
                values = {"prompt": task.prompt or task.title, "task": task.id, "workstream": task.workstream, "run": run,
                          "attempt": str(attempt), "workdir": str(root)}
                argv = dag.render(tool["command"], values)
                env.update(tool.get("env", {}))
                timeout = timeout or tool.get("timeout")
                pattern = tool.get("cost", {}).get("pattern")
            return {"argv": argv, "cwd": str(root), "env": env, "timeout": timeout, "log": str(logs / f"{task.id}-{attempt}.log"),
                    "cost_pattern": pattern, "tool": tool_name}

        return job


def _git_dir(root: Path) -> Path:
    from patch_ledger import git

    common = Path(git.run(root, "rev-parse", "--git-common-dir").stdout.decode().strip())
    return common if common.is_absolute() else root / common
