"""The pytest plugin (entry point `pytest11`): an existing `pytest` run records itself as a
gate of the checked-out commit's patch.

Inactive unless asked: `--ledger-gate NAME` records the run's result as gate NAME;
`--ledger-shard I/N` runs only the tests whose node id hashes to shard I of N (the `pytest`
gate uses it too). Under pytest-xdist only the controller records, once, when every worker
has finished. Importing this module costs next to nothing: pytest loads it in every run
where patch-ledger is installed.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("patch-ledger")
    group.addoption("--ledger-gate", metavar="NAME", default=None,
                    help="record this run in the patch ledger as gate NAME for the patch of the checked-out commit")
    group.addoption("--ledger-shard", metavar="I/N", default=None,
                    help="run only shard I of N of the tests (split by node id, the same in every job)")
    group.addoption("--ledger-actor", metavar="NAME", default=None, help="who records the result (default: git's user.name)")


def pytest_configure(config: pytest.Config) -> None:
    shard = config.getoption("ledger_shard")
    if shard is not None:
        shard_of(shard)  # a malformed value stops pytest before it runs anything
    if config.getoption("ledger_gate") and not hasattr(config, "workerinput"):  # xdist's workers never record
        config.pluginmanager.register(Recorder(config), "patch-ledger-recorder")


def shard_of(text: str) -> tuple[int, int]:
    from patch_ledger.results import parse_shard  # only a run given --ledger-shard pays for it

    shard = parse_shard(text)
    if shard is None:
        raise pytest.UsageError(f"--ledger-shard {text!r}: write I/N with 1 <= I <= N, e.g. 2/4")
    return shard


def in_shard(node_id: str, index: int, count: int) -> bool:
    """Deterministic across machines and runs: a hash of the node id, not of the order."""
    return zlib.crc32(node_id.encode()) % count == index - 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = config.getoption("ledger_shard")
    if shard is None:
        return
    index, count = shard_of(shard)
    keep = [item for item in items if in_shard(item.nodeid, index, count)]
    dropped = [item for item in items if not in_shard(item.nodeid, index, count)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _check_recordable(config: pytest.Config, root: Any, name: str) -> None:
    """LedgerError unless this run is the gate `name` of the commit checked out: a gate of
    the configuration (a misspelt name would record a result no `ledger patch verify`
    reads), of the pytest kind, run on committed code, running its tests."""
    from patch_ledger import config as ledger_config, targets
    from patch_ledger.errors import LedgerError

    if config.option.collectonly:
        raise LedgerError("--collect-only runs no test")
    gates = {g["name"]: g for g in ledger_config.load(root).get("gates", [])}
    if name not in gates:
        raise LedgerError(f"no gate named {name!r} in {ledger_config.PATH} (gates: {', '.join(gates) or 'none'})")
    if gates[name]["plugin"] != "pytest":
        raise LedgerError(f"gate {name!r} of {ledger_config.PATH} is a {gates[name]['plugin']} gate, not a pytest one")
    if not targets.clean(root):
        raise LedgerError("the checkout has uncommitted changes to tracked files, so the run tested no commit")


class Recorder:
    """Counts what the run reports (under xdist, the workers' reports reach the controller)
    and records the result when the session ends."""

    def __init__(self, config: pytest.Config) -> None:
        from patch_ledger import machine

        self.config = config
        self.started_at = machine.now()
        self.start = time.monotonic()
        self.counts = dict.fromkeys(("tests", "passed", "failed", "errors", "skipped"), 0)
        self.failures: list[Any] = []
        self.work_s = 0.0
        self.said = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.work_s += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.counts["tests"] += 1
            kind = "passed" if report.passed else "skipped" if report.skipped else "failed" if report.when == "call" else "errors"
            self.counts[kind] += 1
        elif report.when == "teardown" and report.failed:
            self.counts["errors"] += 1
        elif report.failed:  # xdist's report of a test whose worker crashed (when is "???"): it failed, as pytest says
            self.counts["tests"] += 1
            self.counts["failed"] += 1
        if report.failed:
            self._failed(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.counts["errors"] += 1
            self._failed(report)

    def _failed(self, report: Any) -> None:
        from patch_ledger.hookspecs import Failure

        file, line = (report.location[0], report.location[1] + 1 if report.location[1] is not None else None) \
            if getattr(report, "location", None) else (getattr(report, "fspath", None), None)
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr or "")[-2000:]
        self.failures.append(Failure(report.nodeid or str(file), f"{report.when}: {message}" if report.when in ("setup", "teardown") else message,
                                     str(file) if file else None, line))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from patch_ledger import gating, git, targets
        from patch_ledger.commands import actor_of
        from patch_ledger.errors import LedgerError
        from patch_ledger.hookspecs import Outcome

        name = self.config.getoption("ledger_gate")
        shard = shard_of(self.config.getoption("ledger_shard") or "1/1")
        c = self.counts
        said = f"{c['passed']} passed" + "".join(f", {c[k]} {k}" for k in ("failed", "errors", "skipped") if c[k])
        failed = bool(self.failures) or int(exitstatus) not in (0, 5) or (int(exitstatus) == 5 and shard[1] == 1)
        state = "FAILED" if failed else "SKIPPED" if int(exitstatus) == 5 else "PASSED"
        reason = said if state == "PASSED" else f"pytest exit code {int(exitstatus)}; {said}" if not self.failures else \
            f"{len(self.failures)} of {c['tests']} tests failed, first {self.failures[0].test}"
        if state == "SKIPPED":
            reason = f"no tests fell in shard {shard[0]}/{shard[1]}"
        workers = int(getattr(self.config.option, "numprocesses", 0) or 0) if self.config.pluginmanager.hasplugin("dsession") else 0
        outcome = Outcome(state, reason, c, tuple(self.failures), "", workers, self.work_s)
        try:
            root = git.toplevel(self.config.rootpath)
            _check_recordable(self.config, root, name)
            actor = actor_of(root, self.config.getoption("ledger_actor"))
            patch, commit, parent, _ = targets.commit_patch(root, "HEAD", actor)
            target = gating.Target(patch.id, parent, b"", (), root)
            gating.record_finished(root, name, "pytest", target, shard, outcome, self.started_at, time.monotonic() - self.start, actor)
            self.said = f"ledger: recorded gate {name} {state} for patch {patch.id[:12]} (commit {commit[:12]})"
        except LedgerError as e:
            self.said = f"ledger: gate {name} NOT recorded: {e}"
        except Exception as e:  # noqa: BLE001 - a defect of ours must not change pytest's verdict
            self.said = f"ledger: gate {name} NOT recorded: internal error {type(e).__name__}: {e} (please report it)"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.said:
            terminalreporter.write_line(self.said, yellow="NOT recorded" in self.said, bold=True)
