"""The demo as the README runs it, and the files generated from schemas/ and the layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from patch_ledger import generate
from tests.builders import ledger

TOP = Path(__file__).resolve().parent.parent


def test_demo_accepts_the_valid_and_refuses_the_invalid(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    proc = ledger(tmp_path, "demo", "--dir", str(target), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert [s["got"] for s in report["steps"]] == ["accepted"] * 2 + ["refused"] * 6
    assert all(s["expected"] == s["got"] for s in report["steps"])
    assert [a["got"] for a in report["ledger"]] == ["PENDING PENDING", "PENDING", "VERIFIED", "REJECTED", "APPLIED", "ROLLED_BACK",
                                                    "QUARANTINED", "ROLLED_BACK", "sound"]
    assert "tests FAILED" in report["ledger"][6]["detail"] and "test_power" in report["ledger"][6]["detail"]
    # act 3: ledger run of ship.yaml: a retried step, an agent's change gated as a patch
    assert [a["got"] for a in report["run"]] == ["COMPLETED", "COMPLETED after 2 attempts", "COMPLETED with a patch"]
    assert ledger(target, "verify").returncode == 0
    # the kept repository is sound, and its history holds the two accepted commits
    assert ledger(target, "check").returncode == 0
    log = subprocess.run(["git", "-C", str(target), "log", "--format=%s"], capture_output=True, text=True).stdout.splitlines()
    # 2 checked commits, the patch, its revert, the breaking patch, its roll-back
    assert len(log) == 6 and log[3] == "add subtract()" and log[2].startswith("Revert") and log[0].startswith("Roll back")
    assert (target / "tests" / "test_calc.py").is_file()
    # the demo repository is where `pytest --ledger-gate NAME` can be tried: it records HEAD's patch
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ledger-gate", "tests", "tests/"],
                          cwd=target, capture_output=True, text=True)
    assert proc.returncode == 0 and "ledger: recorded gate tests PASSED" in proc.stdout, proc.stdout + proc.stderr


def test_demo_text_shows_each_refusal_with_its_location(tmp_path: Path) -> None:
    proc = ledger(tmp_path, "demo", "--dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 commit(s) accepted, 6 refused." in proc.stdout and "Everything as expected." in proc.stdout
    assert "tasks/write-code.json:8:17: task dependency cycle: write-code -> write-docs -> write-code" in proc.stdout


def test_demo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    proc = ledger(tmp_path, "demo", "--dir", str(tmp_path / "busy"))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["file"]


def test_generated_files_are_fresh() -> None:
    assert generate.stale(TOP) == [], "run `python -m patch_ledger.generate` and commit the result"


def test_generate_check_fails_when_a_file_is_stale(tmp_path: Path) -> None:
    def generate_in(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "patch_ledger.generate", *args], cwd=tmp_path, capture_output=True, text=True)

    assert generate_in().returncode == 0
    assert generate_in("--check").returncode == 0
    (tmp_path / "docs/state-machines.md").write_text("old\n")
    validators = tmp_path / generate.VALIDATORS
    validators.write_text("# schemas/ digest: 0000\n" + validators.read_text().split("\n", 1)[1])
    stale = generate_in("--check")
    assert stale.returncode == 1
    assert "docs/state-machines.md: stale" in stale.stderr and "validators.py: stale" in stale.stderr


def test_generated_validators_agree_with_a_fresh_compile() -> None:
    """The shipped validators are what fastjsonschema makes of today's schemas."""
    import fastjsonschema

    from patch_ledger import schemas
    from tests.builders import task

    fresh = fastjsonschema.compile(schemas._private("task"), handlers={"https": schemas._by_uri}, use_default=False)
    for doc in (task("a"), task("a", ["QUEUED"]) | {"attempts": "x"}, task("a") | {"id": "a\n"}, {"id": 1}):
        assert schemas.is_valid("task", doc) == _accepts(fresh, doc)


def _accepts(validate: object, doc: object) -> bool:
    from fastjsonschema import JsonSchemaValueException

    try:
        validate(doc)  # type: ignore[operator]
    except JsonSchemaValueException:
        return False
    return True


def test_every_machine_has_a_diagram_with_every_transition() -> None:
    from patch_ledger import machine

    text = (TOP / "docs/state-machines.md").read_text()
    for kind in machine.MACHINE_KINDS:
        m = machine.load(kind)
        for (source, target), name in m.transitions.items():
            assert f"    {source} --> {target} : {name}" in text
