"""Reading the JUnit XML that pytest writes (`-o junit_family=xunit1`, which keeps each
test's file and line): counts, every failing test with its node id, and the time tests took."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

from patch_ledger.hookspecs import Failure


class JUnitError(Exception):
    """The file is missing, not XML, or not a JUnit report."""


class Suite(NamedTuple):
    counts: dict[str, int]  # tests, passed, failed, errors, skipped
    failures: tuple[Failure, ...]
    work_s: float  # the sum of the tests' own times


def read(path: Path) -> Suite:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise JUnitError(f"{path.name}: {e}") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite")) if root.tag == "testsuites" else None
    if suites is None:
        raise JUnitError(f"{path.name}: the root element is <{root.tag}>, not <testsuites> or <testsuite>")
    counts = dict.fromkeys(("tests", "passed", "failed", "errors", "skipped"), 0)
    failures: list[Failure] = []
    work = 0.0
    for case in (c for s in suites for c in s.iter("testcase")):
        counts["tests"] += 1
        work += _seconds(case.get("time"))
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            failures.append(_failure(case, bad))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return Suite(counts, tuple(failures), work)


def node_id(case: ET.Element) -> str:
    """The pytest node id (tests/test_x.py::TestY::test_z[1]) from xunit1's attributes."""
    name, file, classname = case.get("name", "?"), case.get("file"), case.get("classname", "")
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file[:-3].replace("/", ".").replace("\\", ".") if file.endswith(".py") else None
    classes = classname[len(module) + 1:].split(".") if module and classname.startswith(module + ".") else []
    return "::".join([file, *filter(None, classes), name])


def _failure(case: ET.Element, bad: ET.Element) -> Failure:
    line = case.get("line")
    summary, detail = (bad.get("message") or "").strip(), (bad.text or "").strip()
    message = "\n".join(part for part in (summary, detail) if part) or bad.tag
    return Failure(node_id(case), message, case.get("file"), int(line) + 1 if line and line.isdigit() else None)


def _seconds(text: str | None) -> float:
    """A test's time; a negative, infinite or NaN one (a hand-made or broken file) counts as
    nothing, so the sum stays a number the ledger can store."""
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0
