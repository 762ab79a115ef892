"""`ledger demo`: a repository built from the bundled example, where real commits go through
the installed pre-commit hook; the valid changes land and the invalid ones are refused."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from patch_ledger import git, plans
from patch_ledger.commands.init import install_hook, write_config
from patch_ledger.errors import CHECK_FAILED, OK, LedgerError
from patch_ledger.report import emit
from patch_ledger.resources import data_dir, example_dir
from patch_ledger.store import RunStore, path_of

RUN = "demo-run"
ACTOR = "demo"


class Step(NamedTuple):
    title: str
    change: Callable[[Path, RunStore], None]
    accept: bool


class Outcome(NamedTuple):
    title: str
    expected: str
    got: str
    output: list[str]


def run(directory: str | None, fmt: str) -> int:
    from patch_ledger.commands import demo_ledger, demo_run

    root = _prepare(directory)
    outcomes = [_attempt(root, step) for step in STEPS]
    acts = demo_ledger.play(root)
    runs = demo_run.play(root)
    ok = all(o.expected == o.got for o in outcomes) and all(a.expected == a.got for a in (*acts, *runs))
    emit(fmt, {"repository": str(root), "ok": ok, "steps": [o._asdict() for o in outcomes],
               "ledger": [a._asdict() for a in acts], "run": [a._asdict() for a in runs]},
         lambda _: _text(root, outcomes, acts, runs, ok))
    return OK if ok else CHECK_FAILED


def _prepare(directory: str | None) -> Path:
    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    else:
        root = Path(directory).resolve()
        if root.exists() and any(root.iterdir()):
            raise LedgerError(f"{directory}: not empty; give ledger demo a new or empty directory")
    source = example_dir("demo")
    shutil.copytree(source, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("ledger", "__pycache__"))
    shutil.copytree(source / "ledger", root / ".ledger")
    write_config(root)
    _git(root, "init", "-q", "-b", "main")
    for key, value in (("user.name", "ledger demo"), ("user.email", "demo@patch-ledger.invalid"), ("commit.gpgsign", "false")):
        _git(root, "config", key, value)
    hooks = Path(_git(root, "rev-parse", "--git-path", "hooks").strip())
    install_hook(data_dir("hooks") / "pre-commit", (hooks if hooks.is_absolute() else root / hooks) / "pre-commit")
    return root


def _git(root: Path, *args: str, check: bool = True) -> str:
    return git.run(root, *args, env=git.clean_env(), check=check).stdout.decode()


def _attempt(root: Path, step: Step) -> Outcome:
    step.change(root, RunStore(root, RUN))
    _git(root, "add", "-A")
    proc = git.run(root, "commit", "-q", "-m", step.title, env=git.clean_env(), check=False)
    output = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
    got = "accepted" if proc.returncode == 0 else "refused"
    if proc.returncode != 0:
        _git(root, "reset", "-q", "--hard", "HEAD")
        _git(root, "clean", "-q", "-fd")
    return Outcome(step.title, "accepted" if step.accept else "refused", got, [line for line in output if line.strip()])


def _start(root: Path, store: RunStore) -> None:
    plan = plans.load(root, ".ledger/plans/release.yaml")
    store = plans.start_run(root, plan, ".ledger/plans/release.yaml", RUN, ACTOR, at="2026-11-02T09:00:00Z")
    store.move("run", RUN, "RUNNING", ACTOR, "plan accepted", at="2026-11-02T09:00:01Z")
    for ws in ("build",):
        store.move("workstream", ws, "READY", ACTOR, "no dependencies", at="2026-11-02T09:00:02Z")
        store.move("workstream", ws, "RUNNING", ACTOR, "", at="2026-11-02T09:00:03Z")
    _finish(store, "write-code", "2026-11-02T09:01")


def _finish(store: RunStore, task: str, minute: str) -> None:
    store.move("task", task, "QUEUED", ACTOR, "dependencies completed", at=f"{minute}:00Z")
    store.move("task", task, "RUNNING", "worker-1", "attempt 1", at=f"{minute}:10Z", fields={"attempts": 1, "worker": "worker-1"})
    store.move("task", task, "VALIDATING", "worker-1", "gating its patch", at=f"{minute}:40Z")
    store.move("task", task, "COMPLETED", "worker-1", "gates passed", at=f"{minute}:50Z", fields={"progress": 1.0})
    store.refresh_progress()


def _complete_tests(root: Path, store: RunStore) -> None:
    _finish(store, "write-tests", "2026-11-02T09:05")
    store.move("workstream", "build", "COMPLETED", ACTOR, "every task completed", at="2026-11-02T09:06:00Z")


def _edit(kind: str, doc_id: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Path, RunStore], None]:
    def change(root: Path, store: RunStore) -> None:
        path = root / path_of(kind, RUN, doc_id)
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return change


def _jump(doc: dict[str, Any]) -> None:
    doc["history"].append({"from": "PENDING", "to": "COMPLETED", "at": "2026-11-02T10:00:00Z", "actor": "agent-7", "reason": "done, trust me"})
    doc["state"] = "COMPLETED"


def _rewrite(doc: dict[str, Any]) -> None:
    doc["history"][2]["actor"] = "someone-else"


def _reopen(doc: dict[str, Any]) -> None:
    doc["history"].append({"from": "COMPLETED", "to": "RUNNING", "at": "2026-11-02T10:00:00Z", "actor": "agent-7", "reason": "one more thing"})
    doc["state"] = "RUNNING"


def _typo(doc: dict[str, Any]) -> None:
    doc["max_attempts"] = "two"


def _cycle(doc: dict[str, Any]) -> None:
    doc["depends_on"] = ["write-docs"]


def _delete(root: Path, store: RunStore) -> None:
    (root / path_of("task", RUN, "write-docs")).unlink()


STEPS = (
    Step("record the run of plan 'release' (write-code done)", _start, True),
    Step("write-tests completed; workstream 'build' completed", _complete_tests, True),
    Step("write-docs jumps PENDING -> COMPLETED", _edit("task", "write-docs", _jump), False),
    Step("an old history entry of write-code is rewritten", _edit("task", "write-code", _rewrite), False),
    Step("write-code leaves its terminal state COMPLETED", _edit("task", "write-code", _reopen), False),
    Step("max_attempts of write-docs becomes a string", _edit("task", "write-docs", _typo), False),
    Step("write-code now depends on write-docs (a cycle)", _edit("task", "write-code", _cycle), False),
    Step("the file of write-docs (PENDING) is deleted", _delete, False),
)


def _text(root: Path, outcomes: list[Outcome], acts: list[Any], runs: list[Any], ok: bool) -> str:
    lines = [f"ledger demo: a repository at {root}, with the pre-commit hook installed", "",
             "The checker, on every commit:"]
    for i, o in enumerate(outcomes, 1):
        mark = "ok" if o.expected == o.got else "UNEXPECTED"
        lines.append(f"{i}. {o.title}: commit {o.got} [{mark}]")
        if o.got == "refused":
            lines += [f"     {line}" for line in o.output if line.startswith(".ledger/")][:3]
    accepted = sum(o.got == "accepted" for o in outcomes)
    lines += [f"   {accepted} commit(s) accepted, {len(outcomes) - accepted} refused.", "", "The patch ledger, in refs/ledger/patches/:"]
    for title, group, start in (("", acts, len(outcomes) + 1),
                                ("The run of a plan, with ledger run:", runs, len(outcomes) + len(acts) + 1)):
        if title:
            lines += ["", title]
        for i, a in enumerate(group, start):
            mark = "ok" if a.expected == a.got else f"UNEXPECTED, expected {a.expected}"
            lines.append(f"{i}. {a.title}: {a.got} [{mark}]")
            if a.detail:
                lines.append(f"     {a.detail}")
    verdict = "Everything as expected." if ok else "NOT as expected."
    lines += ["", verdict, f"Look around: cd {root} && ledger status && ledger log && ledger check && ledger gate list && git log --oneline"]
    return "\n".join(lines)
