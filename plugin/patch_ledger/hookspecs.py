"""The gate hooks: the contract between patch-ledger and every gate plugin, ours included.

A gate plugin is a module (or object) with functions named like the specs below, marked
with `hookimpl`. The built-in gates (pytest, command, check, diff-policy) are ordinary
plugins in `patch_ledger.gates`; a third party's is found through the entry-point group
`patch_ledger.gates`:

    # pyproject.toml of a plugin distribution
    [project.entry-points."patch_ledger.gates"]
    licence = "licence_gate"

    # licence_gate.py
    from patch_ledger.hookspecs import Kind, Outcome, hookimpl

    @hookimpl
    def ledger_gate_kinds():
        return [Kind("licence", "every new file carries a licence header",
                     {"type": "object", "properties": {"header": {"type": "string"}}})]

    @hookimpl
    def ledger_gate_run(gate, work):
        if gate.plugin != "licence":
            return None  # another plugin's gate
        missing = [p for p in work.paths if not header_ok(work.checkout / p, gate.args.get("header", "SPDX"))]
        return Outcome("FAILED" if missing else "PASSED", f"{len(missing)} file(s) without a header")

A plugin is checked when it is registered: every `ledger_gate_*` function of it must be
one of these hooks, marked with `hookimpl`, taking only parameters the hook names. One that
fails to import or register, or whose `ledger_gate_kinds` or `ledger_gate_collect` raises or
answers garbage, is set aside and reported by `ledger gate list`; a gate of it (by its
entry-point name) is recorded FAILED naming the plugin. An exception raised inside a hook becomes
that gate's FAILED result with the plugin and the message, never a crash of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

import pluggy

PROJECT = "patch_ledger"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Kind(NamedTuple):
    """A kind of gate a plugin provides: what `plugin:` names in .ledger/config.yaml."""

    name: str
    description: str
    args: Mapping[str, Any] = {"type": "object"}  # JSON Schema of the gate's `args`
    shardable: bool = False  # splits its work by Work.shard; else shard 1 runs it whole


class Gate(NamedTuple):
    """One configured gate (an entry of `gates:` in .ledger/config.yaml)."""

    name: str
    plugin: str
    args: Mapping[str, Any] = {}
    required: bool = False
    timeout: float | None = None  # seconds; None: the default of patch_ledger.gating
    paths: tuple[str, ...] = ()  # prefixes; a patch touching none of them skips the gate


class Work(NamedTuple):
    """What one gate runs against: the patch applied to its base, checked out."""

    checkout: Path  # the directory to run in: the base with the patch applied
    repo: Path  # the repository whose ledger records the result
    patch: str  # the patch id
    base: str | None  # the commit the patch is applied to (None: the empty tree)
    diff: bytes  # the patch, as stored in the ledger
    paths: tuple[str, ...]  # the paths it touches
    shard: tuple[int, int]  # (I, N): run the I-th of N parts of the work, 1-based
    timeout: float  # seconds left for the whole gate; a subprocess must be killed by then
    log: Path  # where the gate may write its full output
    earlier: tuple[Mapping[str, Any], ...] = ()  # this gate's latest finished results (gate.json documents), newest first


class Failure(NamedTuple):
    """One failing unit of a gate's work: a test, a file, a rule."""

    test: str  # e.g. a pytest node id
    message: str
    file: str | None = None
    line: int | None = None


class Outcome(NamedTuple):
    """What a gate concluded. `state` is PASSED, FAILED or SKIPPED (with the reason)."""

    state: str
    reason: str = ""
    counts: Mapping[str, int] = {}
    failures: tuple[Failure, ...] = ()
    log: str = ""  # an excerpt of the output; it is cut to fit the ledger
    workers: int = 0  # processes used (0: in-process)
    work_s: float | None = None  # the sum of the work units' durations, for choosing parallelism


@hookspec
def ledger_gate_kinds() -> list[Kind]:
    """The kinds of gate this plugin provides.

    Results combine by concatenation: every plugin's kinds are offered, and a kind's name
    must be unique (a second plugin claiming one is reported as broken). The `args` schema
    of each kind validates the `args:` of every configured gate of that kind before
    anything runs.

    Example: ``return [Kind("command", "any command; its exit code is the verdict",
    {"type": "object", "required": ["command"]}, shardable=True)]``
    """


@hookspec
def ledger_gate_collect(root: Path, config: Mapping[str, Any]) -> list[Gate]:
    """The gates to run in the repository at `root`, whose configuration is `config`.

    Results combine by concatenation; gate names must be unique. The built-in
    `configured` plugin returns the `gates:` of .ledger/config.yaml; a plugin may add gates
    of its own (say, one that every repository of an organisation must pass).

    Example: ``return [Gate("licence", "licence", {"header": "SPDX"}, required=True)]``
    """


@hookspec(firstresult=True)
def ledger_gate_run(gate: Gate, work: Work) -> Outcome | None:
    """Run `gate` against the patch checked out at `work.checkout`.

    Only the plugin that provides the kind `gate.plugin` is called (kind names are unique),
    so its answer decides; returning None for a gate of another kind stays harmless. A
    shardable kind runs only
    its part `work.shard` of the work; every subprocess must end by `work.timeout` seconds
    (patch_ledger.proc.run_bounded kills a whole process group at its deadline). Raising
    is allowed: the gate is recorded FAILED with the plugin named and the message.

    Example: ``return Outcome("PASSED", "12 files clean", {"files": 12})``
    """


@hookspec
def ledger_gate_report(gate: Gate, result: Mapping[str, Any]) -> None:
    """Called with each result once it is recorded in the ledger: `result` is the attempt's
    document (schemas/gate.json). Every plugin is called; return values are ignored.

    Example: post a chat message when a required gate fails:
    ``if result["state"] == "FAILED" and result.get("required"): notify(result["gate"])``
    """
