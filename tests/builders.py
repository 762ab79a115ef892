"""Builders for tests: real git repositories and valid state documents made with the
engine itself, so a test states only what it changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from patch_ledger import machine

T0 = "2026-01-01T00:00:00Z"


def stamp(minute: int) -> str:
    return f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check)


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test Author")
    git(path, "config", "user.email", "author@example.com")
    git(path, "config", "commit.gpgsign", "false")
    return path


def commit(repo: Path, message: str = "change", *, verify: bool = False) -> subprocess.CompletedProcess[str]:
    git(repo, "add", "-A")
    return git(repo, "commit", "-q", "-m", message, *([] if verify else ["--no-verify"]), check=False)


def walk(kind: str, doc_id: str, states: list[str], start: int = 0, **fields: Any) -> dict[str, Any]:
    """A document that entered each of `states` in turn (after the initial one), a minute apart."""
    doc = machine.new_document(kind, doc_id, "tester", at=stamp(start), fields=fields)
    for i, state in enumerate(states, 1):
        extra = {"attempts": doc.get("attempts", 0) + 1} if kind == "task" and state == "RUNNING" else {}
        doc = machine.step(doc, kind, state, "tester", f"step {i}", at=stamp(start + i), fields=extra)
    return doc


def task(doc_id: str, states: list[str] = (), run: str = "r1", **fields: Any) -> dict[str, Any]:
    fields = {"run": run, "attempts": 0, "max_attempts": 3, **fields}
    return walk("task", doc_id, list(states), **fields)


def write(repo: Path, relpath: str, value: Any) -> Path:
    path = repo / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, (bytes, str)):
        path.write_bytes(value if isinstance(value, bytes) else value.encode())
    else:
        path.write_text(json.dumps(value, indent=2) + "\n")
    return path


def ledger(cwd: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a real process, as a user or a hook runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run([sys.executable, "-m", "patch_ledger", *args], cwd=cwd, capture_output=True,
                          text=True, input=input, env=env)


def shortest_paths(m: machine.Machine) -> dict[str, list[str]]:
    """Every state reachable from the initial one -> the states entered after it, fewest first."""
    paths: dict[str, list[str]] = {m.initial: []}
    queue = deque([m.initial])
    while queue:
        source = queue.popleft()
        for target in m.targets(source):
            if target not in paths:
                paths[target] = [*paths[source], target]
                queue.append(target)
    return paths
