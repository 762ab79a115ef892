"""What every row of the benchmark shares: a case, its target, timing a command from process
start to exit interleaved with its floor or peer, and the one table they are printed in.
Nothing here asserts a time (see tests/perf/README.md)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, Union

Argv = Union[list[str], Callable[[], list[str]]]  # a command, or a maker of the next one (alternating steps)


class Target(NamedTuple):
    bound: float
    seconds: bool = False  # True: ours under `bound` seconds; False: ours / floor at most `bound`

    def verdict(self, ours: float, floor: float) -> str:
        if self.seconds:
            return f"< {self.bound:.2f} s " + ("met" if ours < self.bound else "MISSED")
        return f"<= {self.bound:.2f}x " + ("met" if ours / floor <= self.bound else "MISSED")


class Case(NamedTuple):
    """A command of ours timed against its floor (or peer), both from process start to exit."""

    name: str
    cwd: Path
    ours: Argv
    floor: list[str]
    rounds: int
    target: Target | None  # None: shown for information
    prepare: Callable[[], None] | None = None  # untimed, before every run of ours (e.g. undo the last one)


class Row(NamedTuple):
    name: str
    ours: float | None  # median seconds; None: not measured (see note)
    floor: float | None
    target: Target | None
    note: str = ""  # shown after the name, e.g. "ledger did not exit 0"


def git_env(home: Path) -> dict[str, str]:
    # Both tools run as installed tools do, from cached bytecode: a PYTHONDONTWRITEBYTECODE
    # left in the shell would make the editable install recompile every module every run,
    # while the peer, installed by pip, has its bytecode already.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.com",
               GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.com")
    return env


def git(repo: Path, env: dict[str, str], *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env, input=input).stdout


def argv_of(ours: Argv) -> list[str]:
    return ours() if callable(ours) else ours


def confirm(case: Case, env: dict[str, str]) -> bool:
    """One run of each, which must exit 0 (it is also the warm-up): a failing command's time means nothing."""
    if case.prepare:
        case.prepare()
    proc = subprocess.run(argv_of(case.ours), cwd=case.cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        print(f"bench: {case.name}: ledger exited {proc.returncode}, not 0; its time means nothing:\n{tail}")
        return False
    floor = subprocess.run(case.floor, cwd=case.cwd, capture_output=True, env=env).returncode
    if floor != 0:
        print(f"bench: {case.name}: the floor {' '.join(case.floor[:3])} exited {floor}, not 0")
        return False
    return True


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def measure(case: Case, env: dict[str, str]) -> Row:
    """Medians of ours and the floor's, interleaved and alternating who goes first, so that
    drift in the machine hits both."""
    sound = confirm(case, env)
    ours: list[float] = []
    floor: list[float] = []

    def run_ours() -> None:
        if case.prepare:
            case.prepare()
        ours.append(timed(argv_of(case.ours), case.cwd, env))

    for i in range(case.rounds):
        pair = (run_ours, lambda: floor.append(timed(case.floor, case.cwd, env)))
        for run in pair if i % 2 == 0 else pair[::-1]:
            run()
    return Row(case.name, statistics.median(ours), statistics.median(floor), case.target,
               "" if sound else "ledger did not exit 0")


def interleaved(argvs: Sequence[list[str]], cwd: Path, env: dict[str, str], rounds: int) -> list[float]:
    """The median of each command's times, every command run once a round and each round
    starting one further along the list, so that drift in the machine hits all of them."""
    times: list[list[float]] = [[] for _ in argvs]
    for i in range(rounds):
        for k in ((i + j) % len(argvs) for j in range(len(argvs))):
            times[k].append(timed(argvs[k], cwd, env))
    return [statistics.median(t) for t in times]


def run_job(script: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """`python SCRIPT ARGS...` (a benchmark file's in-process work, in a clean process): the
    JSON it prints."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {script.name} {' '.join(args[:2])} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def print_table(rows: Sequence[Row]) -> None:
    header = ("case", "ours (s)", "floor/peer (s)", "ratio", "target")
    lines = [header]
    for row in rows:
        name = f"{row.name} [{row.note}]" if row.note else row.name
        if row.ours is None or row.floor is None:
            lines.append((name, "-", "-", "-", "(not measured)"))
            continue
        target = row.target.verdict(row.ours, row.floor) if row.target else "(info)"
        lines.append((name, f"{row.ours:.3f}", f"{row.floor:.3f}", f"{row.ours / row.floor:.2f}x", target))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
