"""The gate runner: the plugins (the built-ins and the `patch_ledger.gates` entry points),
the configured gates checked against them, each gate run against a patch within its timeout,
and its result recorded in the ledger (patch_ledger.results)."""

from __future__ import annotations

import importlib
import os
import math
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import pluggy

from patch_ledger import config, git, hookspecs, proc, results, schemas
from patch_ledger.errors import LedgerError
from patch_ledger.hookspecs import Failure, Gate, Kind, Outcome, Work

GROUP = "patch_ledger.gates"
BUILTIN = ("configured", "command", "check", "diff_policy", "pytest_gate")
DEFAULT_TIMEOUT_S = 1800.0  # a gate without `timeout:` is stopped after half an hour
MAX_TIMEOUT_S = 7 * 86400.0  # `timeout: .inf` or 1e300 means "no limit"; waits overflow past ~1e9 s
GRACE_S = 5.0  # an in-process plugin still busy this long past its timeout is abandoned
MAX_FAILURES = 1000  # of one result (schemas/gate.json)
MAX_LOG_CHARS = 20_000
MAX_MESSAGE_CHARS = 4_000
_REF_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")  # and not ending in .lock


class Plugins(NamedTuple):
    manager: pluggy.PluginManager
    kinds: dict[str, tuple[Kind, str]]  # kind name -> (the kind, the plugin that provides it)
    broken: dict[str, str]  # plugin name -> why it cannot be used; none of its hooks is called


HOOKS = frozenset(name for name in dir(hookspecs) if name.startswith("ledger_gate_"))


def plugins() -> Plugins:
    """Every gate plugin, each checked as it is registered: the built-ins, then the entry
    points. One that fails to load or to register is set aside with the reason."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN:
        pm.register(importlib.import_module(f"patch_ledger.gates.{name}"), name=name)
    found = Plugins(pm, {}, {})
    for name, value in entry_points(GROUP):
        try:
            plugin = _load(value)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - anyone's code: say what it did
            found.broken[name] = f"could not be loaded ({value}): {type(e).__name__}: {_first_line(e)}"
            continue
        problem = _register(pm, plugin, name)
        if problem:
            found.broken[name] = f"was refused ({value}): {problem}"
    _offer_kinds(found)
    return found


def entry_points(group: str) -> list[tuple[str, str]]:
    """(name, "module:attr") of every entry point in `group` of the installed distributions,
    the first distribution of a name on sys.path winning, as importlib.metadata has it. Read
    straight from each *.dist-info/entry_points.txt: importlib.metadata (and the email
    parser it imports) would cost every gate command ~30 ms, a pytest gate's whole margin."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for dist in names:
            if not dist.endswith((".dist-info", ".egg-info")):
                continue
            key = dist.rsplit(".", 1)[0].split("-", 1)[0].lower().replace("_", "-").replace(".", "-")
            if key in seen:
                continue
            seen.add(key)
            for name, value in _section(os.path.join(entry or ".", dist, "entry_points.txt"), group):
                found.setdefault(name, value)
    return list(found.items())


def _section(path: str, group: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out, inside = [], False
    for line in (raw.strip() for raw in lines):
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            out.append((name.strip(), value.split("[")[0].strip()))  # extras are not ours to check
    return out


def _load(value: str) -> object:
    module, _, attr = value.partition(":")
    loaded: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        loaded = getattr(loaded, part)
    return loaded


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Why `plugin` cannot be registered, or None once it is. Every `ledger_gate_*` function
    of it must be a hook of patch_ledger.hookspecs marked with `hookimpl`: pluggy itself
    ignores an unmarked or misspelled one, and the gate would silently never run."""
    try:
        for attr in sorted(a for a in dir(plugin) if a.startswith("ledger_gate_")):
            if attr not in HOOKS:
                return f"{attr} is not a gate hook (the hooks are {', '.join(sorted(HOOKS))})"
            if pm.parse_hookimpl_opts(plugin, attr) is None:
                return f"{attr} is not marked with @patch_ledger.hookspecs.hookimpl"
        pm.register(plugin, name=name)  # refuses a hook whose parameters the spec does not name
    except Exception as e:  # noqa: BLE001 - pluggy's own refusals span several lines
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    try:
        pm.check_pending()  # refuses a hook the spec does not have (say, via specname=)
    except pluggy.PluginValidationError as e:
        pm.unregister(plugin)
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _offer_kinds(found: Plugins) -> None:
    """Each plugin's kinds, in registration order (the built-ins first, so no plugin takes
    over one of theirs); a plugin that raises, answers garbage or claims a kind another
    provides already is set aside with all its kinds."""
    for impl in found.manager.hook.ledger_gate_kinds.get_hookimpls():  # registration order
        try:
            offered = list(impl.function())
        except Exception as e:  # noqa: BLE001
            _set_aside(found, impl.plugin_name, f"ledger_gate_kinds raised {type(e).__name__}: {_first_line(e)}")
            continue
        for kind in offered:
            if not isinstance(kind, Kind) or not isinstance(kind.name, str):
                _set_aside(found, impl.plugin_name, f"ledger_gate_kinds returned {kind!r:.80}, not a patch_ledger.hookspecs.Kind")
            elif impl.plugin_name not in BUILTIN and _schema_problem(kind.args):  # ours are tested
                _set_aside(found, impl.plugin_name, f"offers the gate kind {kind.name!r:.40}, whose args schema is not a "
                                                    f"JSON Schema: {_schema_problem(kind.args)}")
            elif kind.name in found.kinds:
                _set_aside(found, impl.plugin_name, f"offers the gate kind {kind.name!r}, which {found.kinds[kind.name][1]} provides already")
            else:
                found.kinds[kind.name] = (kind, impl.plugin_name)
            if impl.plugin_name in found.broken:
                break


def _schema_problem(schema: Any) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        return e.message
    return None


def _set_aside(found: Plugins, name: str, why: str) -> None:
    """Plugin `name` is broken: its kinds are withdrawn and none of its hooks is called again."""
    found.broken.setdefault(name, why)
    for kind, (_, provider) in list(found.kinds.items()):
        if provider == name:
            del found.kinds[kind]
    plugin = found.manager.get_plugin(name)
    if plugin is not None:
        found.manager.unregister(plugin)


def configured(root: Path, found: Plugins) -> list[Gate]:
    """The gates to run (config and plugins), each checked against its kind: a gate of no
    known plugin, or with arguments its plugin does not take, is bad input."""
    gates = _collected(root, config.load(root), found)
    seen: set[str] = set()
    for gate in gates:
        where = f"{config.PATH}: gate {gate.name!r}"
        if gate.name in seen:
            raise LedgerError(f"{where} is named twice; give each gate its own name")
        seen.add(gate.name)
        if not _REF_SAFE.match(gate.name) or gate.name.endswith(".lock"):
            raise LedgerError(f"{where}: the name cannot be part of a git ref; use letters, digits, '-', '_' and '.'")
        if gate.plugin not in found.kinds and gate.plugin not in found.broken:
            raise LedgerError(f"{where}: no plugin provides {gate.plugin!r}; available: {', '.join(sorted(found.kinds))}"
                              + _broken_note(found))
        # a built-in kind's args were checked with the gate, against schemas/config.json
        if gate.plugin in found.kinds and found.kinds[gate.plugin][1] not in BUILTIN:
            problem = _args_problem(found.kinds[gate.plugin][0], gate.args)
            if problem:
                raise LedgerError(f"{where} (plugin {gate.plugin}): args: {problem}; `ledger gate list` shows what each plugin takes")
    return gates


def _collected(root: Path, cfg: Mapping[str, Any], found: Plugins) -> list[Gate]:
    """Every plugin's gates (the configuration's first); a plugin whose ledger_gate_collect
    raises or returns what is not a valid gate is set aside, its gates with it."""
    gates: list[Gate] = []
    for impl in found.manager.hook.ledger_gate_collect.get_hookimpls():
        try:
            given = {"root": root, "config": cfg}
            batch = list(impl.function(**{a: given[a] for a in impl.argnames}) or ())
            problem = next(filter(None, map(_gate_problem, batch)), None)
        except Exception as e:  # noqa: BLE001
            problem = f"raised {type(e).__name__}: {_first_line(e)}"
        if problem:
            _set_aside(found, impl.plugin_name, f"ledger_gate_collect {problem}")
        else:
            gates += batch
    return gates


def _gate_problem(gate: Any) -> str | None:
    """What makes `gate` something other than a gate .ledger/config.yaml could declare."""
    if not isinstance(gate, Gate):
        return f"returned {gate!r:.80}, not a patch_ledger.hookspecs.Gate"
    entry = {k: v for k, v in gate._asdict().items() if v is not None and v != ()}
    entry.update({k: dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
                  for k, v in entry.items() if k in ("args", "paths")})
    errors = schemas.validate("config", {"schema_version": schemas.CURRENT_VERSION, "gates": [entry]})
    return f"returned the gate {gate.name!r:.80}, which is not valid: {errors[0].message}" if errors else None


def _broken_note(found: Plugins) -> str:
    return "".join(f"; plugin {name} {why}" for name, why in sorted(found.broken.items()))


def _args_problem(kind: Kind, args: Mapping[str, Any]) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(dict(kind.args)).iter_errors(dict(args)))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    return f"{where + ': ' if where else ''}{error.message}"


def required(root: Path) -> list[str]:
    """The names of the required gates: the configuration's and those plugins add."""
    return [g.name for g in configured(root, plugins()) if g.required]


def select(gates: Sequence[Gate], names: Sequence[str]) -> list[Gate]:
    """The gates named (all when none is), in the order given; an unknown name is bad input."""
    if not names:
        return list(gates)
    by_name = {g.name: g for g in gates}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or f"none; add gates to {config.PATH}"
        raise LedgerError(f"no gate named {unknown[0]!r} in {config.PATH} (gates: {known})")
    return [by_name[n] for n in dict.fromkeys(names)]


def relevant(gate: Gate, paths: Iterable[str]) -> bool:
    return not gate.paths or any(p.startswith(prefix) for p in paths for prefix in gate.paths)


def run_one(found: Plugins, gate: Gate, work: Work) -> Outcome:
    """The gate's outcome, whatever its plugin does: an exception, a hang past the timeout
    or a malformed answer becomes a FAILED outcome naming the plugin."""
    if gate.plugin in found.broken:
        return Outcome("FAILED", f"plugin {gate.plugin} {found.broken[gate.plugin]}")
    provider = found.kinds[gate.plugin][1]
    # Only the provider of the gate's kind is asked: another plugin's bug (say, one that
    # raises for every gate) is not this gate's, and the plugin named is the one that ran.
    others = [p for name, p in found.manager.list_name_plugin() if name != provider]
    hook = found.manager.subset_hook_caller("ledger_gate_run", others)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["outcome"] = hook(gate=gate, work=work)
        except BaseException as e:  # noqa: BLE001 - reported as the gate's result
            box["error"] = e

    thread = threading.Thread(target=call, name=f"gate {gate.name}", daemon=True)
    thread.start()
    try:
        thread.join(work.timeout + GRACE_S)
    except BaseException:  # Ctrl-C: no command of a gate outlives us
        proc.kill_all()
        raise
    if thread.is_alive():
        proc.kill_all()
        return Outcome("FAILED", f"plugin {provider} did not finish within the gate's timeout of {work.timeout:g} s")
    if "error" in box:
        e = box["error"]
        trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return Outcome("FAILED", f"plugin {provider} raised {type(e).__name__}: {_first_line(e)}", log=trace)
    return _checked(box.get("outcome"), provider)


def _checked(outcome: Any, provider: str) -> Outcome:
    """`outcome` when it is a well-formed Outcome (an empty reason filled in), else a FAILED
    one saying what is wrong with it: a plugin's garbage never reaches the ledger."""
    try:
        problem = _malformed(outcome)
    except Exception as e:  # noqa: BLE001 - an object whose attributes raise
        problem = f"an Outcome that could not be read ({type(e).__name__}: {_first_line(e)})"
    if problem:
        return Outcome("FAILED", f"plugin {provider} returned {problem}")
    reason = outcome.reason or ("no reason given" if outcome.state == "SKIPPED" else outcome.state.lower())
    return outcome._replace(reason=reason, counts=dict(outcome.counts), failures=tuple(outcome.failures)[:MAX_FAILURES])


_COUNT_NAME = re.compile(r"[a-z_]+")  # a count's name in the Ledger-Counts trailer


def _malformed(o: Any) -> str | None:
    if not isinstance(o, Outcome):
        return f"{'nothing' if o is None else 'a ' + type(o).__name__}, not a patch_ledger.hookspecs.Outcome"
    if o.state not in results.FINISHED:
        return f"the state {o.state!r:.40}, not PASSED, FAILED or SKIPPED"
    fields = {
        "reason": (isinstance(o.reason, str), "a string"),
        "log": (isinstance(o.log, str), "a string"),
        "workers": (_count(o.workers), "a count"),
        "work_s": (o.work_s is None or _seconds(o.work_s), "None or a finite number of seconds >= 0"),
        "counts": (isinstance(o.counts, Mapping) and all(isinstance(k, str) and _COUNT_NAME.fullmatch(k) and _count(v)
                                                         for k, v in o.counts.items()), "a mapping of names (a-z, _) to counts"),
        "failures": (isinstance(o.failures, (tuple, list)) and all(map(_sound_failure, o.failures)),
                     "a sequence of patch_ledger.hookspecs.Failure (test and message strings, file a string or None, "
                     "line a count or None)"),
    }
    bad = next((name for name, (ok, _) in fields.items() if not ok), None)
    return None if bad is None else f"an Outcome whose {bad} is {getattr(o, bad)!r:.80}, not {fields[bad][1]}"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _sound_failure(f: Any) -> bool:
    return (isinstance(f, Failure) and isinstance(f.test, str) and isinstance(f.message, str)
            and (f.file is None or isinstance(f.file, str)) and (f.line is None or _count(f.line)))


def _first_line(e: BaseException) -> str:
    try:
        text = str(e).strip()
    except Exception:  # noqa: BLE001 - a plugin's exception whose message itself raises
        return "(its message could not be read)"
    return text.splitlines()[0] if text else "(no message)"


# --- running and recording --------------------------------------------------------------


class Target(NamedTuple):
    """A patch checked out: where its gates run."""

    patch: str
    base: str | None
    diff: bytes
    paths: tuple[str, ...]
    checkout: Path


def run(root: Path, found: Plugins, gates: Sequence[Gate], target: Target, shard: tuple[int, int], actor: str,
        on_result: Any = None) -> list[dict[str, Any]]:
    """Run each gate against `target` and record its result: RUNNING when it starts, its
    outcome when it ends (or SKIPPED at once when the patch touches none of its paths). A
    gate that cannot be split runs whole on shard 1 and not at all on the others."""
    done = []
    for gate in gates:
        kind = found.kinds.get(gate.plugin, (Kind(gate.plugin, ""), gate.plugin))[0]
        part = shard if kind.shardable else (1, 1)
        if not kind.shardable and shard[0] != 1:
            continue
        doc = results.begin(target.patch, gate.name, f"{part[0]}/{part[1]}", target.base, gate.plugin, gate.required, actor)
        if not relevant(gate, target.paths):
            doc = results.step(doc, "SKIPPED", actor, f"the patch touches none of its paths ({', '.join(gate.paths)})")
            results.save(root, doc, None)
        else:
            doc = _run_recorded(root, found, gate, target, part, doc, actor)
        done.append(doc)
        _report(found, gate, doc)
        if on_result is not None:
            on_result(doc)
    return done


def _run_recorded(root: Path, found: Plugins, gate: Gate, target: Target, part: tuple[int, int],
                  doc: dict[str, Any], actor: str) -> dict[str, Any]:
    doc = results.step(doc, "RUNNING", actor, "started")
    # a Ctrl-C while RUNNING is being written waits until the handler below is in place
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if _main_thread() else None
    try:
        tip = results.save(root, doc, None)
    except BaseException:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    start = time.monotonic()
    try:  # from the moment it is RUNNING in the ledger
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        timeout = min(float(gate.timeout or DEFAULT_TIMEOUT_S), MAX_TIMEOUT_S)
        log = log_dir(root) / f"{target.patch[:12]}-{gate.name}-{doc['id']}.log"
        work = Work(target.checkout, root, target.patch, target.base, target.diff, target.paths, part, timeout, log,
                    tuple(earlier(root, gate.name)))
        outcome = run_one(found, gate, work)
    except BaseException:  # interrupted: the attempt says so rather than staying RUNNING
        results.save(root, results.step(doc, "FAILED", actor, "interrupted before it finished"), tip)
        raise
    doc = finish(doc, outcome, time.monotonic() - start, actor)
    results.save(root, doc, tip)
    return doc


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")


def finish(doc: Mapping[str, Any], outcome: Outcome, duration_s: float, actor: str) -> dict[str, Any]:
    """The attempt moved to its outcome, with what the outcome says, cut to the ledger's limits."""
    fields: dict[str, Any] = {"duration_s": round(duration_s, 3), "counts": dict(outcome.counts),
                              "failures": [_failure(f) for f in outcome.failures[:MAX_FAILURES]],
                              "log": _cut(outcome.log, MAX_LOG_CHARS), "workers": max(0, int(outcome.workers))}
    if outcome.work_s is not None:
        fields["work_s"] = round(max(0.0, float(outcome.work_s)), 3)
    return results.step(doc, outcome.state, actor, _cut(outcome.reason, MAX_MESSAGE_CHARS), **fields)


def record_finished(root: Path, gate: str, plugin: str, target: Target, shard: tuple[int, int], outcome: Outcome,
                    started_at: str, duration_s: float, actor: str) -> dict[str, Any]:
    """Record a gate that ran outside the runner (the pytest plugin, in someone's CI job):
    one commit holding its whole attempt, started at `started_at`."""
    required = any(g.get("name") == gate and g.get("required") for g in config.load(root).get("gates", []))
    doc = results.begin(target.patch, gate, f"{shard[0]}/{shard[1]}", target.base, plugin, required, actor, started_at)
    doc = results.step(doc, "RUNNING", actor, "started", at=started_at)
    doc = finish(doc, _checked(outcome, plugin), duration_s, actor)
    results.save(root, doc, None)
    return doc


def _failure(f: Failure) -> dict[str, Any]:
    return {"test": _cut(f.test, MAX_MESSAGE_CHARS), "file": None if f.file is None else _cut(f.file, MAX_MESSAGE_CHARS),
            "line": f.line, "message": _cut(f.message, MAX_MESSAGE_CHARS)}


_UNSTORABLE = re.compile("[\0\ud800-\udfff]")


def _cut(text: str, limit: int) -> str:
    """`text` storable in the ledger: valid UTF-8 (a lone surrogate, as os.fsdecode makes of
    undecodable output, becomes U+FFFD), no NUL, at most `limit` characters."""
    text = _UNSTORABLE.sub(lambda m: "" if m.group() == "\0" else "\ufffd", text)
    if len(text) <= limit:
        return text
    half = limit // 2 - 40
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters omitted ...]\n{text[-half:]}"


def _report(found: Plugins, gate: Gate, doc: Mapping[str, Any]) -> None:
    """Every plugin's ledger_gate_report, each on its own: one that raises is named in a
    warning on stderr (stdout may be a JSON report) and the others are still called."""
    for impl in found.manager.hook.ledger_gate_report.get_hookimpls():
        given = {"gate": gate, "result": doc}
        try:
            impl.function(**{a: given[a] for a in impl.argnames})
        except Exception as e:  # noqa: BLE001 - the result is recorded; an observer's failure is not the gate's
            print(f"ledger: warning: plugin {impl.plugin_name}'s ledger_gate_report raised {type(e).__name__}: {_first_line(e)}",
                  file=sys.stderr, flush=True)


def earlier(root: Path, gate: str) -> list[dict[str, Any]]:
    """The gate's newest finished result on any patch for each number of workers it used
    (documents, newest first): the pytest gate compares its latest serial and parallel runs
    to choose the next run's parallelism."""
    found = results.latest(root, gate, 20)
    finished = sorted((r for r in found if r.state in ("PASSED", "FAILED")), key=lambda r: r.id, reverse=True)
    docs = results.documents(root, finished)
    newest: dict[Any, dict[str, Any]] = {}
    for r in finished:
        if r.ref in docs:
            newest.setdefault(docs[r.ref].get("workers", 0), docs[r.ref])
    return list(newest.values())


def log_dir(root: Path) -> Path:
    return git.common_dir(root) / "ledger" / "logs"
