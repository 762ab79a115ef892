"""The JUnit XML the `pytest` gate reads, written inside pytest by a lean plugin of ours
(`pytest -p patch_ledger.gates.junit_writer --ledger-junitxml=PATH`): the part of pytest's
own xunit1 report that gates/junit.read reads, and only that, so that it reads back the
same. pytest's junitxml plugin builds an element tree a test as the reports arrive; this
one keeps a short list and writes the file once. Under xdist only the controller writes:
it sees every worker's reports.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--ledger-junitxml", metavar="PATH", default=None,
                     help="write the JUnit XML (xunit1) that the pytest gate of patch-ledger reads to PATH")


def pytest_configure(config: Any) -> None:
    path = config.getoption("ledger_junitxml")
    if path and not hasattr(config, "workerinput"):  # under xdist the controller sees every report
        config.pluginmanager.register(JUnitWriter(Path(path)), "patch-ledger-junitxml")


class JUnitWriter:
    """Each test's location, time and failure, error or skip, kept as the reports arrive;
    the file written when the session ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cases: list[list[Any]] = []  # [node id, location, seconds, (tag, message, text) or None]
        self.open: dict[str, list[Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        case = self.open.get(report.nodeid)
        if case is None or (case[3] is not None and report.failed and report.when == "teardown"):
            # a test that failed and then errored in its teardown is two cases, as pytest writes it
            case = self.open[report.nodeid] = [report.nodeid, report.location, 0.0, None]
            self.cases.append(case)
        case[2] += report.duration
        if case[3] is None and not report.passed:
            case[3] = _outcome(report)

    def pytest_collectreport(self, report: Any) -> None:
        if not report.passed:
            said = ("error", "collection failure") if report.failed else ("skipped", "collection skipped")
            self.cases.append([report.nodeid, (report.fspath, None, ""), 0.0, (*said, str(report.longrepr))])

    def pytest_sessionfinish(self) -> None:
        suite = ET.Element("testsuite", name="pytest", tests=str(len(self.cases)))
        for nodeid, (file, line, _), seconds, bad in self.cases:
            *classes, name = _xunit_names(nodeid)
            attrs = {"classname": _xml_safe(".".join(classes)), "name": _xml_safe(name), "file": file, "time": f"{seconds:.6f}"}
            if line is not None:
                attrs["line"] = str(line)
            case = ET.SubElement(suite, "testcase", attrs)
            if bad is not None:
                ET.SubElement(case, bad[0], message=_xml_safe(bad[1])).text = _xml_safe(bad[2])
        ET.ElementTree(suite).write(self.path, encoding="utf-8", xml_declaration=True)


def _outcome(report: Any) -> tuple[str, str, str]:
    """(element, message, text) of a test's report that did not pass, as pytest's junitxml
    writes them."""
    if report.skipped:
        return "skipped", str(getattr(report, "wasxfail", "") or "skipped"), ""
    crash = getattr(report.longrepr, "reprcrash", None)
    said = crash.message if crash is not None else str(report.longrepr)
    if report.when == "call":
        return "failure", said, str(report.longrepr)
    return "error", f'failed on {report.when} with "{said}"', str(report.longrepr)  # setup, teardown; xdist's crash: "???"


def _xunit_names(nodeid: str) -> list[str]:
    """tests/test_x.py::TestY::test_z[a::b] -> [tests.test_x, TestY, test_z[a::b]]: the
    classname's parts and the name, as pytest's junitxml mangles them."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return names


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # what XML 1.0 cannot hold


def _xml_safe(text: str) -> str:
    """Characters XML 1.0 cannot hold written as pytest's junitxml writes them (#x1B)."""
    return _NOT_XML.sub(lambda m: f"#x{ord(m.group()):02X}", text)
