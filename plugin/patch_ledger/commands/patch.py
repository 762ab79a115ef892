"""`ledger patch ...` and `ledger log`: each takes plain values, reports, returns an exit code."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from patch_ledger import git, ledger, lifecycle, machine, patches, results
from patch_ledger.commands import actor_of
from patch_ledger.errors import CHECK_FAILED, OK, LedgerError
from patch_ledger.report import emit


def _line(p: ledger.Patch) -> str:
    return f"{p.id[:12]}  {p.state:<11} seq {p.seq:<3} {p.at[:19]}  {p.actor}  {p.message or ''}".rstrip()


def add(cwd: str, source: str | None, base: str | None, task: str | None, actor: str | None, message: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    patch, created = patches.add(root, source, base, task, actor_of(root, actor), message)
    emit(fmt, {**patches.report(patch), "created": created}, lambda _: patch.id)
    return OK


def record(cwd: str, revrange: str, actor: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    recorded, rolled = patches.record_range(root, revrange, actor)
    def text(_: Any) -> str:
        lines = [f"{r.patch.id[:12]}  {r.patch.state:<11} {r.commit[:12]}  {'recorded' if r.created else 'already in the ledger'}  {r.patch.message or ''}".rstrip() for r in recorded]
        lines += [f"{p.id[:12]}  ROLLED_BACK  {p.reason}" for p in rolled]
        return "\n".join(lines or [f"{revrange}: no commit to record"])
    emit(fmt, {"recorded": [{**patches.report(r.patch), "commit": r.commit, "created": r.created} for r in recorded],
               "rolled_back": [patches.report(p) for p in rolled]}, text)
    return OK


def listing(cwd: str, states: Sequence[str], fmt: str) -> int:
    root = git.toplevel(cwd)
    wanted = {s.upper() for s in states}
    unknown = sorted(wanted - set(machine.load("patch").states))
    if unknown:
        raise LedgerError(f"--state {unknown[0]}: not a Patch state ({', '.join(machine.load('patch').states)})")
    found = sorted((p for p in ledger.read_sound(root).values() if not wanted or p.state in wanted), key=lambda p: (p.at, p.id))
    emit(fmt, {"patches": [patches.report(p) for p in found]}, lambda _: "\n".join(map(_line, found)) or "no patch")
    return OK


def show(cwd: str, given: str, fmt: str) -> int:
    root = git.toplevel(cwd)
    patch = ledger.find(root, given)
    steps = ledger.history(root, patch)
    from patch_ledger import gating

    verdicts = results.of_patches(root, [patch], gating.required(root))[patch.id]
    gates = {g: {"state": v.state, "reason": v.reason} for g, v in verdicts.items()}
    def text(_: Any) -> str:
        head = [f"patch {patch.id}", f"state    {patch.state} (seq {patch.seq})", f"base     {patch.base or '-'}",
                f"task     {patch.task or '-'}", f"message  {patch.message or '-'}",
                "gates    " + ("\n         ".join(f"{g} {v['state']}: {v['reason']}" for g, v in gates.items()) or "-")]
        if patch.superseded_by:
            head.append(f"superseded by {patch.superseded_by}")
        return "\n".join(head + ["", *map(_step, steps)])
    # `gates` as the schema has it (name -> state), judged now from refs/ledger/gates/ rather
    # than the snapshot the last transition's trailer kept
    emit(fmt, {**patches.report(patch, steps), **({"gates": {g: v["state"] for g, v in gates.items()}} if gates else {})}, text)
    return OK


def _step(s: ledger.Patch) -> str:
    return f"{s.at}  {s.source or 'new':>11} -> {s.state:<11} {s.actor}: {s.reason}"


def log(cwd: str, given: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    chosen = [ledger.find(root, given)] if given else list(ledger.read_sound(root).values())
    every = ledger.histories(root, [p.tip for p in chosen] if given else ())
    steps = sorted(((p, s) for p in chosen for s in every.get(p.id, [])), key=lambda ps: (ps[1].at, ps[0].id, ps[1].seq))
    emit(fmt, {"transitions": [{"patch": p.id, "seq": s.seq, "from": s.source, "to": s.state, "at": s.at,
                                "actor": s.actor, "reason": s.reason} for p, s in steps]},
         lambda _: "\n".join(f"{p.id[:12]}  {_step(s)}" for p, s in steps) or "the ledger is empty")
    return OK


def move(cwd: str, act: Callable[..., ledger.Patch], fmt: str, *args: Any) -> int:
    """One lifecycle step through `act(root, ...)`, reported as FROM -> TO."""
    root = git.toplevel(cwd)
    patch = act(root, *args)
    emit(fmt, patches.report(patch), lambda _: f"{patch.id[:12]}  {patch.source} -> {patch.state}")
    return OK


def expire(cwd: str, older_than: str, actor: str | None, fmt: str) -> int:
    root = git.toplevel(cwd)
    moved = lifecycle.expire(root, older_than, actor_of(root, actor))
    emit(fmt, {"expired": [patches.report(p) for p in moved]},
         lambda _: "\n".join(f"{p.id[:12]}  {p.source} -> EXPIRED" for p in moved) or "no patch to expire")
    return OK




def sync(cwd: str, remote: str | None, actor: str | None, fmt: str) -> int:
    from patch_ledger import sync as syncing

    root = git.toplevel(cwd)
    report = syncing.sync(root, remote, actor_of(root, actor))
    def text(_: Any) -> str:
        lines = [f"ledger sync with {report.remote}: {report.fetched} new, {report.fast_forwarded} fast-forwarded, "
                 f"{len(report.merged)} merged; gate results: {report.gates_fetched} new, {report.gates_forwarded} "
                 f"fast-forwarded; {report.pushed} ref(s) pushed"]
        lines += [f"  {m.id[:12]}  {m.local} + {m.remote} -> {m.state}" for m in report.merged]
        return "\n".join(lines)
    emit(fmt, {"remote": report.remote, "fetched": report.fetched, "fast_forwarded": report.fast_forwarded,
               "merged": [m._asdict() for m in report.merged], "gates_fetched": report.gates_fetched,
               "gates_forwarded": report.gates_forwarded, "pushed": report.pushed, "attempts": report.attempts}, text)
    return OK


def verify(cwd: str, fmt: str) -> int:
    from patch_ledger import integrity

    root = git.toplevel(cwd)
    problems = integrity.verify_ledger(root)
    listed = git.run(root, "for-each-ref", "--format=%(refname)", ledger.PREFIX, results.PREFIX).stdout.decode().splitlines()
    refs = sum(r.startswith(ledger.PREFIX) for r in listed)
    gates = len(listed) - refs
    emit(fmt, {"ok": not problems, "refs": refs, "gate_refs": gates, "problems": [p._asdict() for p in problems]},
         lambda _: "\n".join(integrity.lines_by_ref(problems)) or f"ledger verify: {refs} patch ref(s) and {gates} gate result(s) sound")
    return CHECK_FAILED if problems else OK
