"""`ledger report --html FILE`: the page is whole, escapes what anyone can write, stays small
on a large ledger, refuses a FILE it cannot write; and it renders in a real headless
Chromium without a console error or a single network request, with a screenshot kept as
an artifact (`$LEDGER_TEST_ARTIFACTS`, else test-artifacts/ at the top of the checkout)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import pytest

from patch_ledger import html_report, ledger
from tests.builders import commit, git, write
from tests.builders import ledger as cli

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)> & \"quotes\" </svg>"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1280,900")


def _artifacts() -> Path:
    where = Path(os.environ.get("LEDGER_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


# --- a small client of the DevTools protocol, over a pipe ----------------------------------


class Browser:
    """Headless Chromium driven through `--remote-debugging-pipe`: JSON messages ending in
    NUL, ours on its fd 3, its own on fd 4. No websocket, no extra package."""

    def __init__(self, binary: str, profile: Path) -> None:
        commands, self._to = os.pipe()
        self._from, answers = os.pipe()
        def wire() -> None:  # in the child, before exec: the fds the protocol names
            os.dup2(commands, 3)
            os.dup2(answers, 4)
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=wire, pass_fds=(3, 4))
        os.close(commands)
        os.close(answers)
        self._next, self._buffer, self.events = 0, b"", []  # type: ignore[var-annotated]
        self.session: str | None = None

    def send(self, method: str, deadline: float = 30, **params: Any) -> dict[str, Any]:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": self.session} if self.session else {})}
        os.write(self._to, json.dumps(message).encode() + b"\0")
        for answer in self._messages(time.monotonic() + deadline):
            if answer.get("id") == self._next:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]  # type: ignore[no-any-return]
            self.events.append(answer)
        raise AssertionError(f"{method}: no answer")

    def wait_for(self, event: str, deadline: float = 30) -> dict[str, Any]:
        for message in self._messages(time.monotonic() + deadline):
            self.events.append(message)
            if message.get("method") == event:
                return message
        raise AssertionError(f"no {event} within {deadline} s")

    def _messages(self, until: float) -> Iterator[dict[str, Any]]:
        while time.monotonic() < until:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                yield json.loads(raw)
            ready, _, _ = select.select([self._from], [], [], max(0.0, until - time.monotonic()))
            if ready:
                chunk = os.read(self._from, 1 << 20)
                assert chunk, "chromium closed its end of the pipe (did it start?)"
                self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def screenshot(self) -> bytes:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"])

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and the browser's own error log
        (a refused resource, a policy violation) seen so far."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                out.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                out.append(f"log: {params['entry']['text']}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.session = None
        try:
            self.send("Browser.close", deadline=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":  # CI installs it (.ci/run): its absence there is a failure, not a skip
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium before the tests")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ledger demo`'s repository (patches through their life, gate results, a finished run
    and one under way) and one more patch whose message is markup."""
    root = tmp_path_factory.mktemp("report") / "demo"
    proc = cli(root.parent, "demo", "--dir", str(root), "--format", "json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    write(root, "src/calc.py", (root / "src/calc.py").read_text() + "\n# hostile\n")
    added = cli(root, "patch", "add", "--message", HOSTILE, "--actor", "mallory")
    assert added.returncode == 0, added.stderr
    git(root, "checkout", "--", "src/calc.py")
    return root


@pytest.fixture(scope="module")
def page(demo: Path) -> tuple[Path, dict[str, Any]]:
    out = demo.parent / "report.html"
    proc = cli(demo, "report", "--html", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


# --- the page -----------------------------------------------------------------------------


def test_the_report_says_where_it_wrote_and_what(page: tuple[Path, dict[str, Any]], demo: Path) -> None:
    out, said = page
    runs = list((demo / ".ledger/runs").iterdir())
    assert said["file"] == str(out) and said["bytes"] == out.stat().st_size
    assert (said["patches"], said["timeline"], said["runs"]) == (8, 8, len(runs))
    assert said["tasks"] == sum(len(list((r / "tasks").glob("*.json"))) for r in runs) and said["gates"] >= 6
    assert not list(out.parent.glob(".report.html.*"))  # the temporary file went


def test_the_page_loads_nothing_and_escapes_markup(page: tuple[Path, dict[str, Any]]) -> None:
    text = page[0].read_text()
    parser = Tags()
    parser.feed(text)
    assert parser.tags.count("script") == 1 and "img" not in parser.tags  # only our own script; the patch's are text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; &amp; &quot;quotes&quot;" in text
    assert not any(word in text for word in ("http://", "https://", "//cdn", "@import", "url(http"))
    assert "default-src 'none'" in text and "script-src 'sha256-" in text


def test_the_page_renders_in_chromium(page: tuple[Path, dict[str, Any]], demo: Path, tmp_path: Path) -> None:
    browser = Browser(_chromium(), tmp_path / "profile")
    try:
        browser.open(page[0].as_uri())
        shown = browser.evaluate("document.body.innerText")
        found = browser.evaluate("""JSON.stringify({
            nodes: [...document.querySelectorAll("svg.dag g.node")].map(g => g.querySelector("text").textContent),
            patches: document.querySelectorAll("article.patch").length,
            scripts: document.scripts.length, images: document.images.length,
            dagWidth: document.querySelector("svg.dag").getBoundingClientRect().width})""")
        (_artifacts() / "ledger-report.png").write_bytes(png := browser.screenshot())
        browser.evaluate("const f = document.getElementById('filter'); f.value = 'mallory'; f.dispatchEvent(new Event('input'))")
        visible = browser.evaluate("[...document.querySelectorAll('article.patch')].filter(a => !a.hidden).length")
        problems, requests = browser.problems(), browser.requests()
    finally:
        browser.close()
    assert problems == []
    assert requests == [page[0].as_uri()]  # the page itself, and nothing else
    found = json.loads(found)
    tasks = sorted(p.stem for p in (demo / ".ledger/runs").glob("*/tasks/*.json"))
    assert sorted(found["nodes"]) == tasks and found["dagWidth"] > 100
    assert (found["patches"], found["scripts"], found["images"]) == (8, 1, 0)
    assert visible == 1  # the script ran (its hash is in the page's policy) and filters the timeline
    for expected in ("Add negate()", "QUARANTINED", "ROLLED_BACK", "tests", "policy", "ship-demo", "demo-run", HOSTILE):
        assert expected in shown, expected
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


# --- large ledgers, the DAG's layout, bad input --------------------------------------------


def test_a_large_ledger_is_capped_and_the_page_stays_small(repo: Path) -> None:
    write(repo, "README.md", "start\n")
    commit(repo, "root")
    count = html_report.TIMELINE + 50
    ledger.record(repo, [(f"{i:040x}", f"diff {i}\n".encode(), {"actor": "bot", "message": f"change {i} " + "x" * 400})
                         for i in range(count)])
    out = repo / "report.html"
    proc = cli(repo, "report", "--html", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    said, text = json.loads(proc.stdout), out.read_text()
    assert (said["patches"], said["timeline"]) == (count, html_report.TIMELINE)
    assert text.count('<article class="patch"') == html_report.TIMELINE
    assert f"The {html_report.TIMELINE} patches that moved last, of {count}" in text
    assert len(text) < 2 * html_report.TIMELINE * 2_000  # messages clipped: a few KiB a patch at most


def test_sections_past_their_byte_budget_are_summarised(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(repo, "README.md", "start\n")
    commit(repo, "root")
    ledger.record(repo, [(f"{i:040x}", f"diff {i}\n".encode(), {"actor": "bot", "message": '"' * 500}) for i in range(30)])
    for run in ("r1", "r2", "r3"):
        write(repo, f".ledger/runs/{run}/tasks/a.json", {"id": "a", "state": "PENDING", "depends_on": []})
    monkeypatch.setattr(html_report, "TIMELINE_BYTES", 12_000)
    monkeypatch.setattr(html_report, "RUNS_BYTES", 1)
    rendered = html_report.render(html_report.collect(repo))
    shown = rendered.counts["timeline"]
    assert 0 < shown < 30 and rendered.html.count('<article class="patch"') == shown
    assert f"The {shown} patches that moved last, of 30" in rendered.html
    assert rendered.html.count("<svg class=\"dag\"") == 1 and rendered.html.count("Not drawn: the runs above filled the page") == 2


def test_depths_and_layout_follow_the_dependencies() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d", "a", "missing"], "x": ["y"], "y": ["x"]}
    assert html_report.depths(deps) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3, "x": 4, "y": 4}
    boxes = {b.task["id"]: b for b in html_report.layout([{"id": t, "depends_on": d} for t, d in deps.items()])}
    assert boxes["a"].x < boxes["b"].x == boxes["c"].x < boxes["d"].x < boxes["e"].x
    assert boxes["b"].y != boxes["c"].y and boxes["a"].y == boxes["b"].y


def test_a_run_too_large_to_draw_shows_its_counts(repo: Path) -> None:
    detail = [{"id": f"t{i}", "state": "PENDING", "title": None, "workstream": None, "depends_on": []}
              for i in range(html_report.DAG_LIMIT + 1)]
    run = {"id": "big", "state": "RUNNING", "progress": 0.0, "tasks": {"PENDING": len(detail)}, "tasks_detail": detail}
    text = html_report._run(run)
    assert "<svg" not in text and f"{len(detail)} tasks: too many to draw" in text


@pytest.mark.parametrize("target", ["a-directory", "missing/report.html"])
def test_a_file_that_cannot_be_written_is_refused_naming_it(repo: Path, target: str) -> None:
    (repo / "a-directory").mkdir()
    before = sorted(p.name for p in repo.iterdir())
    proc = cli(repo, "report", "--html", target)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"ledger: error: {target}: ") and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in repo.iterdir()) == before and not list((repo / "a-directory").iterdir())
