"""`ledger ci`: the CI flow for one GitHub event, reported to the runner (annotations on
standard output, outputs, the step summary) and to the log. Exit 1 when a check or a
required gate failed, so branch protection can require the job."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from patch_ledger import ciflow, git, github, patches, summary
from patch_ledger.commands.gate import parse_shard
from patch_ledger.errors import CHECK_FAILED, OK
from patch_ledger.report import emit


def run(cwd: str, event_path: str | None, gates: Sequence[str], run_gates: bool, shard: str | None, push: bool,
        actor: str | None, fmt: str, env: Mapping[str, str] = os.environ) -> int:
    # Everything that can be bad input is refused before anything is fetched or written.
    outputs, step_summary = github.writable(env, "GITHUB_OUTPUT"), github.writable(env, "GITHUB_STEP_SUMMARY")
    part = parse_shard(shard)
    event = github.read_event(env, event_path)
    root = git.toplevel(cwd)
    if event is None:
        return _nothing_to_do(env.get("GITHUB_EVENT_NAME", ""), outputs, step_summary, fmt)
    who = actor or (f"ledger ci ({env['GITHUB_ACTOR']})" if env.get("GITHUB_ACTOR") else "ledger ci")
    names = tuple(n for given in gates for n in given.replace(",", " ").split())
    # the token leaves the environment before any gate can inherit it
    token = os.environ.pop("LEDGER_TOKEN", None) if env is os.environ else env.get("LEDGER_TOKEN")
    server = env.get("GITHUB_SERVER_URL") or "https://github.com"
    ran = ciflow.run(root, event, ciflow.Options(names, run_gates, part, push, who, token, server))
    lines = github.limited(summary.annotations(ran))
    print("\n".join(lines), file=sys.stdout if fmt == "text" else sys.stderr, flush=True)  # stdout stays JSON
    if step_summary:
        github.write_summary(step_summary, summary.blocks(ran, root), summary.truncation_note(ran))
    if outputs:
        github.write_outputs(outputs, _outputs(ran))
    emit(fmt, _report(ran), lambda _: _text(ran))
    return CHECK_FAILED if ran.failed else OK


def _nothing_to_do(name: str, outputs: Path | None, step_summary: Path | None, fmt: str) -> int:
    said = f"{name}: nothing to do; ledger ci handles {', '.join(github.HANDLED)} (and no tag push or branch deletion)"
    if step_summary:
        github.write_summary(step_summary, [f"## patch-ledger: nothing to do\n\n{summary.text(said)}"], "")
    if outputs:
        github.write_outputs(outputs, {"verdict": "skipped", "patches": "", "patch-count": "0", "failed-count": "0",
                                       "problem-count": "0", "read-only": "true", "states": "{}"})
    emit(fmt, {"ok": True, "exit_code": OK, "event": name, "verdict": "skipped"}, lambda _: f"ledger ci: {said}")
    return OK


def _outputs(ran: ciflow.Ran) -> dict[str, str]:
    return {"verdict": "failure" if ran.failed else "success",
            "patches": "\n".join(r.patch.id for r in ran.rows),
            "patch-count": str(len(ran.rows)), "failed-count": str(sum(r.failed for r in ran.rows)),
            "problem-count": str(len(ran.findings)), "read-only": "true" if ran.read_only else "false",
            "states": json.dumps(dict(sorted(Counter(r.patch.state for r in ran.rows).items())))}


def _report(ran: ciflow.Ran) -> dict[str, Any]:
    e = ran.event
    rows = [{**patches.report(r.patch), "commit": r.commit, "failed": r.failed, "note": r.note,
             "gates": {g: {"state": v.state, "reason": v.reason} for g, v in r.gates.items()}} for r in ran.rows]
    return {"ok": not ran.failed, "exit_code": CHECK_FAILED if ran.failed else OK, "verdict": _outputs(ran)["verdict"],
            "event": e.name, "base": ran.base, "head": e.head, "branch": e.branch, "patches": rows,
            "findings": [f._asdict() for f in ran.findings], "gate_results": ran.attempts,
            "pushed": ran.pushed, "read_only": ran.read_only}


def _text(ran: ciflow.Ran) -> str:
    e = ran.event
    lines = [f"ledger ci: {e.name} {(ran.base or '')[:12]}..{e.head[:12]} on {e.branch}: "
             f"{'failure' if ran.failed else 'success'}; {len(ran.findings)} check problem(s)"]
    lines += [f"  {r.patch.id[:12]}  {r.patch.state:<11} {'FAILED ' if r.failed else ''}{r.note}" for r in ran.rows]
    lines.append(f"  read-only: {ran.read_only}" if ran.read_only else f"  ledger pushed: {ran.pushed} ref(s)")
    return "\n".join(lines)
