"""What `ledger ci` tells people: the step summary (markdown blocks: the verdict, a table of
patches with their states and gates, failures first, the problems, and Mermaid diagrams of
the patch lifecycle and of each run's tasks inside <details>), and the annotations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from patch_ledger import machine, overview, report
from patch_ledger.ciflow import Ran, Row
from patch_ledger.github import Annotation

SHOWN_FINDINGS = 50  # in the summary; every one is in the annotations' count and `ledger check`
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~>$-])")  # $: GitHub renders $...$ as math
# What GitHub still reads as markdown or HTML inside a <code> tag: shown as entities instead.
_IN_CODE = re.compile(r"[\[\]()*_!~$\\`<>&|]")
_TONE_ICONS = {"good": "✅", "bad": "❌", "busy": "⏳"}  # tones: x-state-machine.tones in schemas/


def text(value: str) -> str:
    """Untrusted text (a commit subject, a PR title, a message) shown as itself in markdown:
    HTML and markdown syntax escaped, on one line."""
    value = " ".join(value.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN.sub(r"\\\1", value)


def code(value: str) -> str:
    """Untrusted text as code, on one line: an HTML tag, since backslash escapes do not work
    inside backticks; GitHub parses markdown inside the tag, so a name like `[x](url)` would
    be a link there: its markdown and HTML characters are entities."""
    return f"<code>{_IN_CODE.sub(lambda m: f'&#{ord(m.group())};', ' '.join(value.split()))}</code>"


def span(value: str) -> str:
    """Untrusted text as a markdown code span, on one line, outside a table (where `|` would
    still end the cell): nothing inside one is markup, and no escape works there either, so
    the fence is one backtick longer than the longest run of them in the text."""
    value = " ".join(value.split())
    fence = "`" * (max(map(len, re.findall("`+", value)), default=0) + 1)
    pad = " " if not value or value[0] == "`" or value[-1] == "`" else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def blocks(ran: Ran, root: Path) -> list[str]:
    """The step summary as blocks, most important first, so a cut keeps what matters; a
    block that is not a row of the table starts with a blank line."""
    out = [_headline(ran), *_patch_table(ran.rows), *_findings(ran), *_failures(ran.attempts),
           _lifecycle({r.patch.state for r in ran.rows})]
    return out + [_run_graph(root, run) for run in ran.runs]


def truncation_note(ran: Ran) -> str:
    return (f"\n> **Truncated** to stay under GitHub's 1 MiB limit of a step summary: {len(ran.rows)} patch(es) and "
            f"{len(ran.findings)} problem(s) in all; `ledger status` and `ledger check --base {(ran.base or 'HEAD^')[:12]}` show everything.")


def _headline(ran: Ran) -> str:
    e = ran.event
    what = f"pull request #{e.number}: {text(e.title)}" if e.number is not None else f"{text(e.name)} to {span(e.branch)}"
    verdict = "❌ failure" if ran.failed else "✅ success"
    failed = sum(r.failed for r in ran.rows)
    lines = [f"## patch-ledger: {verdict}", "",
             f"{what} · {len(ran.rows)} patch(es), {failed} failed · check: {len(ran.findings)} problem(s) in {ran.checked} state file(s)"]
    if ran.read_only:
        lines += ["", f"> **Read-only:** {text(ran.read_only)}. Nothing was pushed; everything above was still checked and reported."]
    elif ran.pushed is not None:
        lines += ["", f"Ledger pushed to {span(ran.remote)}: {ran.pushed} ref(s) updated."]
    return "\n".join(lines)


def _patch_table(rows: list[Row]) -> list[str]:
    if not rows:
        return ["\nNo commit of this event changes anything: no patch to record."]
    head = "\n| | patch | state | commit | gates | message | note |\n|---|---|---|---|---|---|---|"
    return [head, *(_row(r) for r in rows)]


def _row(r: Row) -> str:
    gates = "<br>".join(f"{_icon(v.state)} {text(g)} {text(v.state)}{' (required)' if g in r.required else ''}"
                        for g, v in r.gates.items()) or "none"
    commit = code(r.commit[:12]) if r.commit else ""
    return (f"| {'❌' if r.failed else '✅'} | {code(r.patch.id[:12])} | **{text(r.patch.state)}** | {commit} | {gates} | "
            f"{text(r.patch.message or '')} | {text(r.note)} |")


def _icon(state: str) -> str:
    """A gate state's icon, from its tone; one with no tone is waiting (⏳) until it is final,
    then passed over (⏭️, SKIPPED)."""
    tone = overview.tone(state)
    if tone in _TONE_ICONS:
        return _TONE_ICONS[tone]
    return "⏭️" if state in machine.load("gate").terminal else "⏳"


def _findings(ran: Ran) -> list[str]:
    if not ran.findings:
        return []
    lines = ["", f"### Check: {len(ran.findings)} problem(s)", ""]
    lines += [f"- {code(f'{f.path}:{f.line}:{f.col}')} {text(f.message)}" for f in ran.findings[:SHOWN_FINDINGS]]
    if len(ran.findings) > SHOWN_FINDINGS:
        lines.append(f"- … and {len(ran.findings) - SHOWN_FINDINGS} more: `ledger check` lists them all")
    return ["\n".join(lines)]


def _failures(attempts: Iterable[Mapping[str, Any]]) -> list[str]:
    failed = [a for a in attempts if a["state"] == "FAILED"]
    out = []
    for a in failed:
        lines = ["", f"### Gate {text(a['gate'])} failed on {code(a['patch'][:12])} (shard {text(str(a['shard']))})", "",
                 text(a["history"][-1]["reason"])]
        lines += [f"- {code(f['test'])}{_where(f)}: {text(f['message'][:500])}" for f in a.get("failures", [])[:SHOWN_FINDINGS]]
        out.append("\n".join(lines))
    return out


def _where(f: Mapping[str, Any]) -> str:
    return f" ({code(str(f['file']) + ':' + str(f['line']))})" if f.get("file") and f.get("line") else ""


def _details(title: str, body: list[str]) -> str:
    return "\n".join(["", f"<details><summary>{title}</summary>", "", *body, "", "</details>"])


def _lifecycle(reached: set[str]) -> str:
    """The patch machine as docs/state-machines.md draws it (report.mermaid draws both), the
    states this event's patches are in highlighted."""
    marks = ["    classDef reached fill:#dbeafe,stroke:#1d4ed8,stroke-width:2px",
             *(f"    class {s} reached" for s in sorted(reached))] if reached else []
    return _details("Patch lifecycle (the states of this event's patches highlighted)",
                    ["```mermaid", *report.mermaid(machine.load("patch")), *marks, "```"])


def _run_graph(root: Path, run: str) -> str:
    """A run's tasks as a graph: each task with its state, an edge from each dependency
    (read as `ledger report` reads them, so a malformed task file cannot stop the summary)."""
    tasks = {t["id"]: t for t in overview.read_tasks(root, run)}
    node = {tid: f"t{i}" for i, tid in enumerate(tasks)}
    lines = ["```mermaid", "flowchart LR"]
    lines += [f'    {node[t]}["{_label(t)}<br/>{_label(d["state"])}"]' for t, d in tasks.items()]
    lines += [f"    {node[dep]} --> {node[t]}" for t, d in tasks.items() for dep in d["depends_on"] if dep in node]
    return _details(f"Run {text(run)}: {len(tasks)} task(s)", [*lines, "```"])


def _label(value: str) -> str:
    """Text inside a Mermaid label, on one line: its quotes and markup as entities."""
    return re.sub(r'["<>&#`]', lambda m: f"#{ord(m.group())};", " ".join(value.split()))[:80]


def annotations(ran: Ran) -> list[Annotation]:
    """Check errors at the positions the checker computed, then failing tests at theirs,
    then gates that failed without a test to point at, then rejected patches."""
    out = [Annotation("error", f.message, f.path, f.line, f.col, f"ledger check: {f.rule}") for f in ran.findings]
    required = {g for r in ran.rows for g in r.required}
    for a in ran.attempts:
        if a["state"] != "FAILED":
            continue
        level = "error" if a["gate"] in required else "warning"
        title = f"gate {a['gate']} on {a['patch'][:12]}"
        tests = a.get("failures", [])
        out += [Annotation(level, f"{f['test']}: {f['message']}", f.get("file"), f.get("line"), None, title) for f in tests]
        if not tests:
            out.append(Annotation(level, a["history"][-1]["reason"], None, None, None, title))
    out += [Annotation("error", r.patch.reason, None, None, None, f"patch {r.patch.id[:12]} rejected")
            for r in ran.rows if r.patch.state == "REJECTED"]
    return out
