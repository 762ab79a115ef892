"""The step summary of `ledger ci`, from a `ciflow.Ran` built by hand: what anyone who can
push or open a pull request writes (titles, subjects, branches, test names, paths, task
files) is shown as itself, never as markdown, and never stops the summary being written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from patch_ledger import ledger, machine, overview, results, summary
from patch_ledger.ciflow import Ran, Row
from patch_ledger.github import Event
from tests.builders import write

LINK = "[x](https://evil)"
IMAGE = "![i](https://evil/p.png)"


def _patch(state: str = "VALIDATED", message: str = "a change") -> ledger.Patch:
    return ledger.Patch("ab" * 20, "c" * 40, "d" * 40, 2, state, "PENDING", "2026-01-01T00:00:00Z", "ci", "why",
                        "e" * 40, None, message, {}, None, None)


def _ran(event: Event, rows: list[Row] = (), attempts: list[dict[str, Any]] = (), runs: list[str] = ()) -> Ran:
    return Ran(event, "f" * 40, "origin", [], 3, list(rows), list(attempts), 1, None, list(runs))


def _push(branch: str = "main") -> Event:
    return Event("push", "event.json", "1" * 40, "2" * 40, branch, "main", "owner/repo", False)


def _failed_attempt(test: str, file: str) -> dict[str, Any]:
    return {"state": "FAILED", "gate": "unit", "patch": "ab" * 20, "shard": "1/1",
            "history": [{"reason": "1 test failed"}],
            "failures": [{"test": test, "file": file, "line": 3, "message": "assert 1 == 2"}]}


def _summary(ran: Ran, root: Path) -> str:
    return "\n".join(summary.blocks(ran, root))


def _code_spans(markdown: str) -> list[str]:
    return re.findall(r"<code>(.*?)</code>", markdown)


@pytest.mark.parametrize("hostile", [LINK, IMAGE, "*b* _i_ ~s~ $x$ \\ `t` <b> &amp; a|b", "two\nlines"])
def test_code_shows_markdown_literally(hostile: str) -> None:
    """GitHub parses markdown inside an HTML <code>: every character that means something
    there is an entity, so a test name or a path cannot become a link or an image."""
    shown = summary.code(hostile)
    (inner,) = _code_spans(shown)
    assert not re.search(r"[\[\]()*_!~$\\`<>|\n]", inner) and not re.search(r"&(?!#\d+;)", inner), inner
    assert re.sub(r"&#(\d+);", lambda m: chr(int(m.group(1))), inner) == " ".join(hostile.split())


def test_test_names_and_paths_of_a_failed_gate_are_no_links(tmp_path: Path) -> None:
    shown = _summary(_ran(_push(), attempts=[_failed_attempt(LINK, IMAGE)]), tmp_path)
    assert "](" not in shown and "![" not in shown
    assert "&#91;x&#93;&#40;https://evil&#41;" in shown and "&#33;&#91;i&#93;" in shown


def test_a_branch_and_a_remote_in_code_are_not_backslash_escaped(tmp_path: Path) -> None:
    """Backslash escapes do not work inside a code span: `release-1_0` must not read
    `release\\-1\\_0`."""
    ran = _ran(_push("release-1_0"))._replace(remote="my_origin")
    shown = _summary(ran, tmp_path)
    assert "push to `release-1_0`" in shown and "Ledger pushed to `my_origin`" in shown
    assert "\\_" not in shown and "\\-" not in shown


@pytest.mark.parametrize(("value", "shown"), [
    ("release-1_0", "`release-1_0`"),
    ("a`b", "``a`b``"),
    ("`x``", "``` `x`` ```"),
    ("[x](https://evil)\n<b>", "`[x](https://evil) <b>`"),
])
def test_a_code_span_holds_any_text(value: str, shown: str) -> None:
    """Its fence is longer than any run of backticks inside, so nothing ends it early."""
    assert summary.span(value) == shown


def test_text_outside_code_is_escaped_everywhere_it_enters(tmp_path: Path) -> None:
    title = f"{LINK} {IMAGE} `x` <b>"
    event = _push()._replace(name="pull_request", number=7, title=title)
    row = Row(_patch(message=title), "2" * 40, {LINK: results.Verdict("PASSED", "ok", ())}, (), title)
    attempt = {**_failed_attempt("t", "f.py"), "gate": LINK, "history": [{"reason": title}], "shard": IMAGE}
    shown = _summary(_ran(event, [row], [attempt]), tmp_path)
    assert "](" not in shown and "![" not in shown and "<b>" not in shown
    assert "\\[x\\]\\(https://evil\\)" in shown


def test_a_gate_s_icon_is_its_state_s_tone(tmp_path: Path) -> None:
    """Every gate state has an icon, BLOCKED too, from the tones in schemas/gate.json."""
    states = machine.load("gate").states
    gates = {s.lower(): results.Verdict(s, "", ()) for s in states}
    shown = _summary(_ran(_push(), [Row(_patch(), "2" * 40, gates, (), "")]), tmp_path)
    icons = {"good": "✅", "bad": "❌", "busy": "⏳"}
    for state in states:
        icon = icons.get(overview.tone(state), "⏭️" if state in machine.load("gate").terminal else "⏳")
        assert f"{icon} {state.lower()} {state}" in shown
    assert "❌ blocked BLOCKED" in shown


def _task(root: Path, name: str, doc: Any) -> None:
    write(root, f".ledger/runs/r1/tasks/{name}.json", doc)


def test_malformed_task_files_still_draw_the_run(tmp_path: Path) -> None:
    """Dependencies that are no list, or hold other things than ids, are ignored, as the
    other reports ignore them (overview.task_detail): the summary is still written."""
    _task(tmp_path, "a", {"id": "a", "state": "COMPLETED", "depends_on": 5})
    _task(tmp_path, "b", {"id": "b", "state": "PENDING", "depends_on": [[1], {"x": 1}, 7, "a"]})
    _task(tmp_path, "c", {"id": ["c"], "state": {"s": 1}, "depends_on": ["b"]})
    _task(tmp_path, "d", "not json {")
    shown = _summary(_ran(_push(), runs=["r1"]), tmp_path)
    assert "Run r1: 4 task(s)" in shown
    nodes = dict(re.findall(r'    (t\d+)\["([^<]*)<br/>', shown))
    edges = {(nodes[a], nodes[b]) for a, b in re.findall(r"    (t\d+) --> (t\d+)", shown)}
    assert edges == {("a", "b"), ("b", "c")}
    assert sorted(nodes.values()) == ["a", "b", "c", "d"]
