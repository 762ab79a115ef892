"""`ledger gate list` and `ledger gate run`: plain values in, a report out, an exit code."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping, Sequence

from patch_ledger import gating, git, results, targets
from patch_ledger.commands import actor_of
from patch_ledger.errors import CHECK_FAILED, OK, LedgerError
from patch_ledger.report import emit


def listing(cwd: str, fmt: str) -> int:
    root = git.toplevel(cwd)
    found = gating.plugins()
    gates = gating.configured(root, found)
    report = {
        "gates": [{"name": g.name, "plugin": g.plugin, "required": g.required, "timeout": g.timeout or gating.DEFAULT_TIMEOUT_S,
                   "paths": list(g.paths), "args": dict(g.args)} for g in gates],
        "plugins": [{"kind": k.name, "provider": provider, "description": k.description, "shardable": k.shardable, "args": dict(k.args)}
                    for k, provider in sorted(found.kinds.values())],
        "broken": [{"plugin": name, "reason": why} for name, why in sorted(found.broken.items())],
    }
    emit(fmt, report, _list_text)
    return OK


def _list_text(report: Mapping[str, Any]) -> str:
    lines = ["gates (.ledger/config.yaml):" if report["gates"] else "gates: none configured; add some to .ledger/config.yaml"]
    width = max((len(g["name"]) for g in report["gates"]), default=0)
    for g in report["gates"]:
        paths = f"  paths: {', '.join(g['paths'])}" if g["paths"] else ""
        lines.append(f"  {g['name']:<{width}}  {g['plugin']:<12} {'required' if g['required'] else 'optional':<8}  "
                     f"timeout {g['timeout']:g} s{paths}")
    lines.append("plugins:")
    width = max(len(p["kind"]) for p in report["plugins"])
    lines += [f"  {p['kind']:<{width}}  {p['description']}  [{p['provider']}{', shardable' if p['shardable'] else ''}]"
              for p in report["plugins"]]
    lines += [f"broken plugin {b['plugin']}: {b['reason']}" for b in report["broken"]]
    return "\n".join(lines)


def run(cwd: str, names: Sequence[str], patch: str | None, rev: str | None, shard: str | None, actor: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    if patch and rev:
        raise LedgerError("--patch and --rev exclude each other: name the patch, or the commit whose patch it is")
    part = parse_shard(shard)
    found = gating.plugins()
    gates = gating.select(gating.configured(root, found), names)
    who = actor_of(root, actor)
    where: AbstractContextManager[gating.Target] = targets.of_patch(root, patch) if patch else targets.of_commit(root, rev or "HEAD", who)
    printed = fmt == "text"
    with where as target:
        if printed:
            print(f"patch {target.patch[:12]} on {target.base[:12] if target.base else 'the empty tree'}"
                  + ("" if target.checkout == root else f", in a clean worktree ({target.checkout})"), flush=True)
        width = max((len(g.name) for g in gates), default=0) + (6 if part[1] > 1 else 0)
        done = gating.run(root, found, gates, target, part, who, on_result=(lambda d: _print_result(d, width)) if printed else None)
    if not printed:
        emit(fmt, {"patch": target.patch, "base": target.base, "shard": f"{part[0]}/{part[1]}", "results": done}, str)
    elif not done:
        print("no gate to run" + (f" on shard {part[0]}/{part[1]}" if part[1] > 1 else "")
              + ("" if gates else "; add gates to .ledger/config.yaml"))
    return CHECK_FAILED if any(d["state"] == "FAILED" for d in done) else OK


def _print_result(doc: Mapping[str, Any], width: int) -> None:
    took = f"{doc['duration_s']:.1f} s" if "duration_s" in doc else "-"
    name = doc["gate"] + (f" [{doc['shard']}]" if doc["shard"] != "1/1" else "")
    print(f"  {name:<{width}}  {doc['state']:<7} {took:>8}  {doc['history'][-1]['reason']}", flush=True)
    for f in doc.get("failures", [])[:10]:
        where = f"{f['file']}:{f['line']}: " if f.get("file") and f.get("line") else ""
        print(f"    {f['test']}  {where}{f['message'].splitlines()[0] if f['message'] else ''}"[:200], flush=True)
    if len(doc.get("failures", [])) > 10:
        print(f"    ... and {len(doc['failures']) - 10} more (--format json lists them all)", flush=True)


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (1, 1)
    shard = results.parse_shard(text)
    if shard is None or shard[1] > 1000:
        raise LedgerError(f"--shard {text!r}: write I/N with 1 <= I <= N <= 1000, e.g. 2/4")
    return shard


