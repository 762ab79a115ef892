"""Third-party gate plugins, as a user installs them: distributions built by hand as wheels,
installed with pip into a directory on PYTHONPATH, found through the `patch_ledger.gates`
entry-point group by the real CLI. Good ones are listed and run; broken ones are listed
with the reason, their gates recorded FAILED naming the plugin, and the others still run."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from patch_ledger import gating
from tests.builders import ledger as cli
from tests.test_gates import by_gate, cmd, committed, configure, gate_refs, gate_run, reason, recorded

pytestmark = pytest.mark.slow  # installs packages


def build_wheel(where: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """A pure-Python wheel of `modules` (name -> source) declaring `entry_points` (name ->
    module) in the group patch_ledger.gates: what any build backend would produce."""
    name = dist.replace("-", "_")
    info = f"{name}-0.1.dist-info"
    files = {
        **{f"{module}.py": source for module, source in modules.items()},
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": "[patch_ledger.gates]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()),
    }
    record = "".join(f"{path},sha256={_digest(text)},{len(text.encode())}\n" for path, text in files.items())
    wheel = where / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in {**files, f"{info}/RECORD": record + f"{info}/RECORD,,\n"}.items():
            archive.writestr(path, text)
    return wheel


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def install(site: Path, *wheels: Path) -> Path:
    """pip of the test interpreter installs the wheels into `site`, as `pip install --target` does for a user."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", "--quiet",
                    "--disable-pip-version-check", "--target", str(site), *map(str, wheels)], check=True, capture_output=True)
    return site


LICENCE = '''\
"""Every file a patch touches must start with a licence header."""
import os

from patch_ledger.hookspecs import Failure, Kind, Outcome, hookimpl


@hookimpl
def ledger_gate_kinds():
    return [Kind("licence", "every touched file starts with a licence header",
                 {"type": "object", "additionalProperties": False, "properties": {"header": {"type": "string"}}})]


@hookimpl
def ledger_gate_run(gate, work):
    header = gate.args.get("header", "SPDX")
    sources = [p for p in work.paths if p.endswith(".py") and (work.checkout / p).is_file()]
    missing = [p for p in sources if not (work.checkout / p).read_text().startswith(header)]
    return Outcome("FAILED" if missing else "PASSED", f"{len(missing)} of {len(sources)} file(s) without {header}",
                   {"files": len(sources), "missing": len(missing)},
                   tuple(Failure(p, f"does not start with {header}", p, 1) for p in missing))


@hookimpl
def ledger_gate_report(gate, result):
    with open(os.environ["LICENCE_REPORT"], "a") as f:
        f.write(f"{result['gate']} {result['state']} {result['id']}\\n")
'''


@pytest.fixture(scope="module")
def licence_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("licence")
    return install(where / "site", build_wheel(where, "ledger-licence-gate", {"licence_gate": LICENCE}, {"licence": "licence_gate"}))


def test_an_installed_plugin_distribution_is_discovered_and_run(repo: Path, licence_site: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(licence_site))
    monkeypatch.setenv("LICENCE_REPORT", str(tmp_path / "reports.txt"))
    configure(repo, {"name": "licence", "plugin": "licence", "args": {"header": "# SPDX"}, "required": True})
    listed = json.loads(cli(repo, "gate", "list", "--format", "json").stdout)
    kinds = {p["kind"]: p for p in listed["plugins"]}
    assert kinds["licence"]["provider"] == "licence" and kinds["licence"]["args"]["properties"] == {"header": {"type": "string"}}
    assert listed["broken"] == [] and "licence" in kinds and "pytest" in kinds  # beside the built-ins
    committed(repo, {"a.py": "# SPDX: MIT\n", "b.py": "print('no header')\n"})
    code, done = gate_run(repo)
    assert code == 1 and done[0]["state"] == "FAILED" and done[0]["plugin"] == "licence"
    assert done[0]["failures"] == [{"test": "b.py", "file": "b.py", "line": 1, "message": "does not start with # SPDX"}]
    assert done[0]["counts"] == {"files": 2, "missing": 1}
    committed(repo, {"b.py": "# SPDX: MIT\nprint('now with one')\n"})
    code, again = gate_run(repo)
    assert code == 0 and again[0]["state"] == "PASSED" and reason(again[0]) == "0 of 1 file(s) without # SPDX"
    assert {d["state"] for d in recorded(repo).values()} == {"FAILED", "PASSED"}
    # its ledger_gate_report hook saw each result once it was recorded
    reports = (tmp_path / "reports.txt").read_text().splitlines()
    assert reports == [f"licence FAILED {done[0]['id']}", f"licence PASSED {again[0]['id']}"]
    configure(repo, {"name": "licence", "plugin": "licence", "args": {"header": 5}})  # its args schema is enforced
    bad = cli(repo, "gate", "run")
    assert bad.returncode == 2 and "(plugin licence): args: header: 5 is not of type 'string'" in bad.stderr


# --- broken plugins ------------------------------------------------------------------------

def zoo_module(hooks: str, *kinds: str) -> str:
    """A plugin module offering the gate kinds `kinds` (Kind(...) expressions), with `hooks`."""
    return ("import time\n\nfrom patch_ledger.hookspecs import Failure, Kind, Outcome, hookimpl\n\n\n"
            f"@hookimpl\ndef ledger_gate_kinds():\n    return [{', '.join(kinds)}]\n\n\n{hooks}")


GARBAGE = '''\
ANSWERS = {
    "string": "PASSED",
    "nothing": None,
    "state": Outcome("GREAT", "all good"),
    "line": Outcome("PASSED", "ok", failures=(Failure("t", "m", "f.py", True),)),
    "workers": Outcome("PASSED", "ok", workers="many"),
    "counts": Outcome("PASSED", "ok", {"tests run": 3}),
    "undecodable": Outcome("FAILED", "output \\udcff\\x00 undecodable", log="\\udcff log"),
}


@hookimpl
def ledger_gate_run(gate, work):
    return ANSWERS[gate.args["answer"]]
'''
ZOO = {
    "zoo_explode": 'raise RuntimeError("the licence server is down")\n',
    # careless: raises for every gate, not only its own
    "zoo_raiser": zoo_module('@hookimpl\ndef ledger_gate_run(gate, work):\n    raise ValueError(f"the widget of {gate.name} is cracked")\n',
                             "Kind('raiser', 'always breaks')")
    + "\n\n@hookimpl\ndef ledger_gate_report(gate, result):\n    raise LookupError('no chat server')\n",
    "zoo_typo": zoo_module("@hookimpl\ndef ledger_gate_runn(gate, work):\n    return Outcome('PASSED')\n", "Kind('typo', 'misspelt')"),
    "zoo_unmarked": zoo_module("def ledger_gate_run(gate, work):\n    return Outcome('PASSED')\n", "Kind('unmarked', 'no @hookimpl')"),
    "zoo_wrongparam": zoo_module("@hookimpl\ndef ledger_gate_run(gate, job):\n    return Outcome('PASSED')\n",
                                 "Kind('wrongparam', 'a parameter the spec does not name')"),
    "zoo_usurper": zoo_module("@hookimpl\ndef ledger_gate_run(gate, work):\n    return Outcome('PASSED', 'the usurper ran it')\n",
                              "Kind('usurper', 'takes over')", "Kind('command', 'mine now')"),
    "zoo_badschema": zoo_module("", "Kind('badschema', 'its args schema is no schema', {'type': 'nonsense'})"),
    "zoo_collector": zoo_module("@hookimpl\ndef ledger_gate_collect(root, config):\n"
                                "    raise OSError(\"the organisation's gate list is unreachable\")\n", "Kind('collector', 'adds gates')"),
    "zoo_hang": zoo_module("@hookimpl\ndef ledger_gate_run(gate, work):\n    time.sleep(600)\n", "Kind('hang', 'never answers')"),
    "zoo_garbage": zoo_module(GARBAGE, "Kind('garbage', 'answers nonsense', {'type': 'object', 'required': ['answer'], "
                                       "'properties': {'answer': {'type': 'string'}}})"),
}
BROKEN = {  # entry point -> what `ledger gate list` says of it
    "explode": "could not be loaded (zoo_explode): RuntimeError: the licence server is down",
    "typo": "was refused (zoo_typo): ledger_gate_runn is not a gate hook (the hooks are ledger_gate_collect, ",
    "unmarked": "was refused (zoo_unmarked): ledger_gate_run is not marked with @patch_ledger.hookspecs.hookimpl",
    "wrongparam": "Argument(s) {'job'} are declared in the hookimpl but can not be found in the hookspec",
    "usurper": "offers the gate kind 'command', which command provides already",
    "badschema": "offers the gate kind 'badschema', whose args schema is not a JSON Schema: 'nonsense' is not valid",
    "collector": "ledger_gate_collect raised OSError: the organisation's gate list is unreachable",
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("zoo")
    return install(where / "site", build_wheel(where, "ledger-gate-zoo", ZOO, {m.split("_", 1)[1]: m for m in ZOO}))


def test_broken_plugins_are_listed_and_their_gates_fail_while_the_others_run(repo: Path, zoo: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(zoo))
    garbage = ["string", "nothing", "state", "line", "workers", "counts", "undecodable"]
    configure(repo, *({"name": name, "plugin": name} for name in [*BROKEN, "raiser"]), cmd("builtin", "echo the builtin ran"),
              *({"name": f"garbage-{g}", "plugin": "garbage", "args": {"answer": g}} for g in garbage))
    listed = cli(repo, "gate", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    broken = {b["plugin"]: b["reason"] for b in report["broken"]}
    assert set(broken) == set(BROKEN)
    for name, said in BROKEN.items():
        assert said in broken[name], name
    providers = {p["kind"]: p["provider"] for p in report["plugins"]}
    assert providers["command"] == "command" and providers["raiser"] == "raiser" and providers["garbage"] == "garbage"
    assert not set(providers) & {"typo", "unmarked", "wrongparam", "usurper", "badschema", "collector"}  # none of a broken plugin's kinds
    text = cli(repo, "gate", "list").stdout
    assert "broken plugin explode: could not be loaded" in text

    committed(repo, {"a.txt": "a\n"})
    ran = cli(repo, "gate", "run", "--format", "json")
    got = by_gate(json.loads(ran.stdout)["results"])  # stdout stays JSON
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    # a plugin's ledger_gate_report that raises is a warning on stderr, once a result
    warning = "ledger: warning: plugin raiser's ledger_gate_report raised LookupError: no chat server"
    assert ran.stderr.splitlines() == [warning] * len(got)
    assert got["builtin"]["state"] == "PASSED" and "the builtin ran" in got["builtin"]["log"]  # not the raiser's, not the usurper's
    for name, said in BROKEN.items():
        assert got[name]["state"] == "FAILED" and reason(got[name]).startswith(f"plugin {name} ") and said in reason(got[name])
    assert reason(got["raiser"]) == "plugin raiser raised ValueError: the widget of raiser is cracked"
    assert "Traceback" in got["raiser"]["log"] and "zoo_raiser.py" in got["raiser"]["log"]
    expected = {
        "string": "plugin garbage returned a str, not a patch_ledger.hookspecs.Outcome",
        "nothing": "plugin garbage returned nothing, not a patch_ledger.hookspecs.Outcome",
        "state": "plugin garbage returned the state 'GREAT', not PASSED, FAILED or SKIPPED",
        "line": "plugin garbage returned an Outcome whose failures is ",
        "workers": "plugin garbage returned an Outcome whose workers is 'many', not a count",
        "counts": "plugin garbage returned an Outcome whose counts is {'tests run': 3}, not a mapping of names",
    }
    for answer, said in expected.items():
        assert got[f"garbage-{answer}"]["state"] == "FAILED" and reason(got[f"garbage-{answer}"]).startswith(said), answer
    undecodable = got["garbage-undecodable"]  # a sound answer with text git cannot store as is: stored, made valid
    assert undecodable["state"] == "FAILED" and reason(undecodable) == "output \ufffd undecodable" and undecodable["log"] == "\ufffd log"
    stored = recorded(repo)
    assert len(stored) == len(got) == len(gate_refs(repo)) and {d["state"] for d in stored.values()} == {"PASSED", "FAILED"}
    assert cli(repo, "verify").returncode == 0  # the ledger stays sound


def test_a_plugin_that_hangs_fails_its_gate_after_the_timeout(repo: Path, zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(zoo))
    configure(repo, {"name": "stuck", "plugin": "hang", "timeout": 1}, cmd("next", "true"))
    committed(repo, {"a.txt": "a\n"})
    start = time.monotonic()
    ran = cli(repo, "gate", "run", "--format", "json")  # stderr: the raiser's warnings
    took = time.monotonic() - start
    assert 1 <= took < 1 + gating.GRACE_S + 3
    got = by_gate(json.loads(ran.stdout)["results"])
    assert ran.returncode == 1 and got["stuck"]["state"] == "FAILED"
    assert reason(got["stuck"]) == "plugin hang did not finish within the gate's timeout of 1 s"
    assert got["next"]["state"] == "PASSED"
