"""`ledger report --html`: one self-contained HTML page of the ledger (patches by state and
each one's timeline of transitions), the gates, and each run's DAG of tasks.

The page loads nothing: styles and its one small script are inline, and its
Content-Security-Policy forbids every fetch and allows only that script (by its hash), so
an injected tag could neither load nor run anything. Every text from the repository (patch
messages, reasons, actors, task titles: anyone who can push writes them) goes through
`html.escape`. The DAG is inline SVG laid out here, by depth, with no script library.
"""

from __future__ import annotations

import base64
import hashlib
import html
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from patch_ledger import ledger, machine, overview, results

TIMELINE = 200  # the latest patches shown in full; the page of a ledger of 10,000 stays small
STEPS = 12  # the latest transitions of one patch drawn; earlier ones are counted
DAG_LIMIT = 400  # the tasks of one run drawn as a graph; a larger run shows its counts only
TEXT_LIMIT = 200  # characters of one message, reason or title
# Bytes each section may take before the rest is summarised: whatever a ledger holds (long
# histories, texts of quotes that escape to six bytes each, hundreds of runs), the page
# stays a few MiB that a browser opens at once and CI keeps as an artifact.
GATES_BYTES, TIMELINE_BYTES, RUNS_BYTES = 512 << 10, 1536 << 10, 1536 << 10

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 190, 46, 60, 16, 12


class Page(NamedTuple):
    """Everything the page shows, read from the repository once."""

    repository: str
    generated_at: str
    ledger: overview.Ledger
    histories: dict[str, list[ledger.Patch]]  # of ledger.latest: patch id -> transitions, oldest first
    runs: list[dict[str, Any]]  # overview.read_runs(with_tasks=True)
    breakers: list[dict[str, Any]]


def collect(root: Path) -> Page:
    """The ledger and its gates (two for-each-refs), the latest patches' histories (one git
    log of their refs), the runs and the breakers."""
    found = overview.read_ledger(root, TIMELINE)
    histories = ledger.histories(root, [p.tip for p in found.latest]) if found.latest else {}
    return Page(root.resolve().name, machine.now(), found, histories, overview.read_runs(root, with_tasks=True),
                overview.read_breakers(root))


class Rendered(NamedTuple):
    html: str
    counts: dict[str, int]  # what the page holds, for `ledger report --format json`


# --- the page -----------------------------------------------------------------------------


def render(page: Page) -> Rendered:
    gates, gates_shown = _gates_section(page.ledger)
    timeline, patches_shown = _timeline_section(page)
    body = [f"<header><h1>patch-ledger: {_e(page.repository)}</h1><p class=\"muted\">generated {_e(page.generated_at)}"
            f" · {page.ledger.total} patch(es) · {len(page.runs)} run(s)</p></header>",
            _states_section(page.ledger), gates, timeline, _runs_section(page.runs), _breakers_section(page.breakers)]
    counts = {"patches": page.ledger.total, "timeline": patches_shown, "gates": gates_shown, "runs": len(page.runs),
              "tasks": sum(len(r["tasks_detail"]) for r in page.runs)}
    return Rendered(_document(page.repository, body), counts)


def _document(repository: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_policy()}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>patch-ledger report: {_e(repository)}</title>", f"<style>{STYLE}</style></head>",
        "<body><main>", *filter(None, body), "</main>", f"<script>{SCRIPT}</script>", "</body></html>", ""])


def _policy() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
            "base-uri 'none'; form-action 'none'")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _clip(value: str | None, limit: int = TEXT_LIMIT) -> str:
    text = value or ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _chip(state: str | None, label: str | None = None) -> str:
    return f'<span class="chip tone-{overview.tone(state)}">{_e(label or state or "none")}</span>'


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


# --- patches by state ---------------------------------------------------------------------


def _states_section(found: overview.Ledger) -> str:
    if not found.total:
        return _section("patches", "Patches", '<p class="muted">No patch in the ledger yet (refs/ledger/patches/).</p>')
    return _section("patches", f"Patches: {found.total}", _state_bar(found.by_state, found.total),
                    '<ul class="legend">' + "".join(f"<li>{_chip(s)} {n}</li>" for s, n in found.by_state.items()) + "</ul>")


def _state_bar(by_state: dict[str, int], total: int) -> str:
    """One bar split by state, in the patch machine's order of states."""
    order = machine.load("patch").states
    x, rects = 0.0, []
    for state in sorted(by_state, key=lambda s: order.index(s) if s in order else len(order)):
        width = 1000 * by_state[state] / total
        rects.append(f'<rect class="tone-{overview.tone(state)}" x="{x:.1f}" y="0" width="{width:.1f}" height="18">'
                     f"<title>{_e(state)}: {by_state[state]}</title></rect>")
        x += width
    return f'<svg class="bar" viewBox="0 0 1000 18" preserveAspectRatio="none" role="img" aria-label="patches by state">{"".join(rects)}</svg>'


# --- gates --------------------------------------------------------------------------------


def _gates_section(found: overview.Ledger) -> tuple[str, int]:
    """The section, and how many verdicts it shows."""
    gated = [(p, g) for p in found.latest if (g := overview.shown_gates(found, p))]
    rows, left = _budgeted((_gate_rows(p, g) for p, g in gated), GATES_BYTES)
    if not rows:
        return _section("gates", "Gates", '<p class="muted">No gate result for the patches shown.</p>'), 0
    head = "<tr><th>patch</th><th>gate</th><th>verdict</th><th>shards</th><th>time</th><th>tests</th><th>reason</th></tr>"
    more = f'<p class="note">The gates of {left} more patch(es) are left out to keep the page small.</p>' if left else ""
    return _section("gates", "Gates", '<p class="muted">Each gate\'s verdict for a patch at its base '
                    "(refs/ledger/gates/).</p>", f'<table class="gates"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>',
                    more), sum(len(g) for _, g in gated[:len(rows)])


def _budgeted(blocks: Iterable[str], budget: int) -> tuple[list[str], int]:
    """The blocks that fit in `budget` bytes (at least one), and how many did not."""
    kept: list[str] = []
    used = left = 0
    for block in blocks:
        if kept and used + len(block) > budget:
            left += 1
            continue
        kept.append(block)
        used += len(block)
    return kept, left


def _gate_rows(p: ledger.Patch, gates: dict[str, results.Verdict]) -> str:
    """One row a gate, the patch named once beside them all."""
    cells = [_gate_cells(g, v) for g, v in gates.items()]
    patch = f'<td rowspan="{len(cells)}"><code title="{_e(p.id)}">{_e(p.id[:12])}</code> {_e(_clip(p.message, 80))}</td>'
    return "".join(f"<tr>{patch if i == 0 else ''}{c}</tr>" for i, c in enumerate(cells))


def _gate_cells(gate: str, v: results.Verdict) -> str:
    took = sum(r.duration_s or 0 for r in v.attempts)
    tests = ", ".join(f"{n} {k}" for k, n in sorted(_summed(r.counts for r in v.attempts).items()) if n)
    return (f"<td>{_e(gate)}</td>"
            f"<td>{_chip(v.state)}</td><td>{len(v.attempts)}</td><td>{f'{took:.1f} s' if v.attempts else ''}</td>"
            f"<td>{_e(tests)}</td><td>{_e(_clip(v.reason))}</td>")


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            total[k] = total.get(k, 0) + n
    return total


# --- the timeline -------------------------------------------------------------------------


def _timeline_section(page: Page) -> tuple[str, int]:
    """The section, and how many patches it shows."""
    found = page.ledger
    if not found.latest:
        return "", 0
    items, left = _budgeted((_patch_item(p, page.histories.get(p.id, [p])) for p in found.latest), TIMELINE_BYTES)
    note = (f'<p class="note">The {len(items)} patches that moved last, of {found.total}; '
            "<code>ledger patch list</code> lists them all.</p>" if found.total > len(items) else "")
    search = '<input id="filter" type="search" placeholder="filter by id, state, actor or message" aria-label="filter patches">'
    quarantined = _quarantined(found, len(items))
    return _section("timeline", "Timeline", note, search, *items, quarantined), len(items)


def _patch_item(p: ledger.Patch, steps: Sequence[ledger.Patch]) -> str:
    hidden = len(steps) - STEPS
    shown = steps[-STEPS:] if hidden > 0 else steps
    words = " ".join([p.id, p.state, p.actor, p.message or "", *(s.actor for s in shown)]).lower()
    earlier = f'<li class="earlier">{hidden} earlier step(s)</li>' if hidden > 0 else ""
    return (f'<article class="patch" data-text="{_e(_clip(words, 2 * TEXT_LIMIT))}"><h3><code title="{_e(p.id)}">{_e(p.id[:12])}</code> '
            f"{_chip(p.state)} {_e(_clip(p.message))}</h3>"
            f'<ol class="steps">{earlier}{"".join(map(_step, shown))}</ol></article>')


def _step(s: ledger.Patch) -> str:
    why = f'<span class="why">{_e(_clip(s.reason))}</span>' if s.reason else ""
    return (f'<li>{_chip(s.state)}<time datetime="{_e(s.at)}">{_e(s.at[:19].replace("T", " "))}</time>'
            f'<span class="actor">{_e(_clip(s.actor, 80))}</span>{why}</li>')


def _quarantined(found: overview.Ledger, limit: int) -> str:
    """The quarantined patches and why, as many as the timeline shows patches."""
    if not found.quarantined:
        return ""
    rows = "".join(f'<tr><td><code title="{_e(p.id)}">{_e(p.id[:12])}</code></td><td>{_e(p.at[:19].replace("T", " "))}</td>'
                   f"<td>{_e(_clip(p.reason))}</td></tr>" for p in found.quarantined[:limit])
    left = len(found.quarantined) - limit
    more = f'<p class="note">and {left} more: <code>ledger patch list --state QUARANTINED</code></p>' if left > 0 else ""
    return (f"<h3>Quarantined: {len(found.quarantined)}</h3><table><thead><tr><th>patch</th><th>since</th><th>reason</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>{more}")


# --- runs ---------------------------------------------------------------------------------


def _runs_section(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return _section("runs", "Runs", '<p class="muted">No run under .ledger/runs/.</p>')
    blocks, used = [], 0
    for r in runs:  # every run is listed; the DAGs are drawn while the budget lasts
        blocks.append(_run(r, draw=used < RUNS_BYTES))
        used += len(blocks[-1])
    return _section("runs", f"Runs: {len(runs)}", *blocks)


def _run(r: dict[str, Any], draw: bool = True) -> str:
    share = f"{r['progress']:.0%}" if r["progress"] is not None else "?"
    tasks = " ".join(f"{_chip(s, f'{n} {s}')}" for s, n in r["tasks"].items()) or "no tasks"
    head = f'<h3>{_e(r["id"])} {_chip(r["state"], r["state"] or "no run.json")} <span class="muted">{share} done</span></h3>'
    detail = r["tasks_detail"]
    if len(detail) > DAG_LIMIT:
        graph = f'<p class="note">{len(detail)} tasks: too many to draw (at most {DAG_LIMIT}); their counts are above.</p>'
    elif not draw:
        graph = '<p class="note">Not drawn: the runs above filled the page; their counts are above.</p>'
    else:
        graph = dag_svg(detail)
    return f'<div class="run">{head}<p>{tasks}</p>{graph}</div>'


class Box(NamedTuple):
    """A task placed in the drawing: its column is its depth, its row its place there."""

    task: dict[str, Any]
    x: int
    y: int


def depths(deps: dict[str, list[str]]) -> dict[str, int]:
    """task -> the length of its longest chain of dependencies (0: it depends on nothing),
    in one pass in topological order. Dependencies outside `deps` are ignored; tasks on a
    cycle (which `ledger check` refuses) go in a last column rather than stopping the page."""
    waiting = {t: len({d for d in ds if d in deps and d != t}) for t, ds in deps.items()}
    dependents: dict[str, list[str]] = {}
    for t, ds in deps.items():
        for d in {d for d in ds if d in deps and d != t}:
            dependents.setdefault(d, []).append(t)
    ready = sorted(t for t, n in waiting.items() if n == 0)
    depth = {t: 0 for t in ready}
    while ready:
        t = ready.pop()
        for after in dependents.get(t, ()):
            depth[after] = max(depth.get(after, 0), depth[t] + 1)
            waiting[after] -= 1
            if waiting[after] == 0:
                ready.append(after)
    last = max(depth.values(), default=-1) + 1
    return {t: depth.get(t, last) if waiting[t] == 0 else last for t in deps}


def layout(tasks: Sequence[dict[str, Any]]) -> list[Box]:
    """Columns by depth; within a column, each task near the mean row of its dependencies
    (one pass, left to right), which keeps most edges short and few crossing."""
    deps = {t["id"]: t["depends_on"] for t in tasks}
    depth = depths(deps)
    row: dict[str, float] = {}
    boxes = []
    for column in range(max(depth.values(), default=-1) + 1):
        here = [t for t in tasks if depth[t["id"]] == column]
        here.sort(key=lambda t: (_mean(row[d] for d in t["depends_on"] if d in row), t["id"]))
        for i, t in enumerate(here):
            row[t["id"]] = i
            boxes.append(Box(t, PAD + column * (NODE_W + GAP_X), PAD + i * (NODE_H + GAP_Y)))
    return boxes


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else 0.0


def dag_svg(tasks: Sequence[dict[str, Any]]) -> str:
    if not tasks:
        return '<p class="muted">No task file.</p>'
    boxes = layout(tasks)
    at = {b.task["id"]: b for b in boxes}
    width = max(b.x for b in boxes) + NODE_W + PAD
    height = max(b.y for b in boxes) + NODE_H + PAD
    edges = [_edge(at[d], b) for b in boxes for d in b.task["depends_on"] if d in at and d != b.task["id"]]
    return (f'<div class="dag"><svg class="dag" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="tasks and their dependencies"><defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" '
            'markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>'
            f'{"".join(edges)}{"".join(map(_node, boxes))}</svg></div>')


def _edge(source: Box, target: Box) -> str:
    x1, y1, x2, y2 = source.x + NODE_W, source.y + NODE_H // 2, target.x, target.y + NODE_H // 2
    bend = (x2 - x1) / 2 if x2 > x1 else GAP_X  # a back edge (a cycle) loops rather than crossing its own box
    return f'<path class="edge" d="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" marker-end="url(#arrow)"/>'


def _node(b: Box) -> str:
    t = b.task
    about = " · ".join(_clip(str(v)) for v in (t["id"], t["state"], t["title"], t["workstream"]) if v)
    return (f'<g class="node tone-{overview.tone(t["state"])}" transform="translate({b.x},{b.y})"><title>{_e(about)}</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/><text x="10" y="19" class="name">{_e(_clip(t["id"], 24))}</text>'
            f'<text x="10" y="36" class="state">{_e(t["state"])}</text></g>')


def _breakers_section(breakers: list[dict[str, Any]]) -> str:
    if not breakers:
        return ""
    rows = "".join(f"<tr><td>{_e(b['id'])}</td><td>{_chip(b['state'])}</td><td>{_e(b['since'] or '')}</td>"
                   f"<td>{_e(b['consecutive_failures'])}</td></tr>" for b in breakers)
    return _section("breakers", "Breakers holding work back", "<table><thead><tr><th>tool</th><th>state</th><th>since</th>"
                    f"<th>failures in a row</th></tr></thead><tbody>{rows}</tbody></table>")


# The one script: filter the timeline as you type. Allowed by its hash in the page's policy.
SCRIPT = """
document.getElementById("filter")?.addEventListener("input", function (event) {
  var wanted = event.target.value.trim().toLowerCase();
  document.querySelectorAll("article.patch").forEach(function (item) {
    item.hidden = wanted !== "" && item.dataset.text.indexOf(wanted) < 0;
  });
});
"""

STYLE = """
:root { --good: #1a7f37; --bad: #cf222e; --busy: #9a6700; --plain: #57606a; --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 0; } h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 14px; margin: 14px 0 6px; font-weight: 600; }
code, time, svg text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.muted { color: var(--plain); } .note { background: #fff8c5; border: 1px solid #d4a72c66; padding: 6px 10px; border-radius: 6px; }
.chip { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; white-space: nowrap; }
.chip.tone-good { background: var(--good); } .chip.tone-bad { background: var(--bad); }
.chip.tone-busy { background: var(--busy); } .chip.tone-plain { background: var(--plain); }
svg.bar { width: 100%; height: 18px; border-radius: 4px; display: block; }
svg.bar rect { stroke: #fff; stroke-width: 2; vector-effect: non-scaling-stroke; }
rect.tone-good { fill: var(--good); } rect.tone-bad { fill: var(--bad); } rect.tone-busy { fill: var(--busy); } rect.tone-plain { fill: var(--plain); }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 14px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
#filter { width: 100%; max-width: 420px; padding: 5px 8px; margin: 6px 0 10px; border: 1px solid var(--line); border-radius: 6px; }
article.patch { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px 8px; margin-bottom: 8px; }
ol.steps { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 0; }
ol.steps li { display: flex; flex-direction: column; align-items: flex-start; padding: 2px 22px 2px 0; position: relative; max-width: 260px; font-size: 12px; }
ol.steps li + li::before { content: "→"; position: absolute; left: -18px; top: 0; color: var(--plain); }
ol.steps li + li { padding-left: 4px; margin-left: 14px; }
.actor { color: var(--plain); } .why { color: #1f2328; overflow-wrap: anywhere; } .earlier { color: var(--plain); font-style: italic; }
div.dag { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; background: var(--soft); }
g.node rect { fill: #fff; stroke-width: 2; } g.node.tone-good rect { stroke: var(--good); } g.node.tone-bad rect { stroke: var(--bad); }
g.node.tone-busy rect { stroke: var(--busy); } g.node.tone-plain rect { stroke: var(--plain); }
g.node text.name { font-size: 12px; font-weight: 600; fill: #1f2328; } g.node text.state { font-size: 11px; fill: var(--plain); }
path.edge { fill: none; stroke: #8c959f; stroke-width: 1.5; } marker path { fill: #8c959f; }
"""
