"""Gate results in `refs/ledger/gates/`: `ledger sync` carries them between clones (created or
fast-forwarded, never merged nor forced: a diverged attempt is refused), and `ledger verify`
checks every commit of every attempt — its trailers, its gate.json against the schema and
the gate machine, its history against the previous commit's, the patch it names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from patch_ledger import integrity, ledger, results, sync
from patch_ledger.errors import LedgerError
from tests.builders import commit, git, ledger as cli, write
from tests.test_ledger_verify import only, plumb, verify_processes
from tests.test_sync import a, b, hook, new_patch, refs, remote  # noqa: F401  (fixtures)

GATES = results.PREFIX
UNKNOWN_PATCH = "ab" * 20


def attempt(root: Path, patch: str, states: Sequence[str] = ("RUNNING", "PASSED"), gate: str = "lint",
            shard: str = "1/1", doc: dict[str, Any] | None = None, tip: str | None = None) -> tuple[dict[str, Any], str]:
    """An attempt of `gate` on `patch` (or `doc`, continued from `tip`), one commit a step, as
    the gate runner writes it: its document and its tip."""
    doc = doc or results.begin(patch, gate, shard, None, "command", True, "alice")
    for state in states:
        doc = results.step(doc, state, "alice", "" if state != "SKIPPED" else "not relevant")
        tip = results.save(root, doc, tip)
    assert tip is not None
    return doc, tip


def forge(root: Path, doc: dict[str, Any], parent: str | None = None, message: str | None = None,
          text: str | None = None, ref: str | None = None, extra: str = "") -> str:
    """A gate commit made by hand with git plumbing: `doc` as gate.json (or the bytes `text`),
    `render(doc)` as its message (or `message`), on `ref` (by default the attempt's)."""
    blob = plumb(root, "hash-object", "-w", "--stdin", input=json.dumps(doc) if text is None else text)
    tree = plumb(root, "mktree", input=f"100644 blob {blob}\t{results.DOC}\n{extra}")
    parents = ["-p", parent] if parent else []
    oid = plumb(root, "commit-tree", tree, *parents, "-F", "-", input=results.render(doc) if message is None else message)
    plumb(root, "update-ref", ref or results.ref_of(doc["patch"], doc["gate"], doc["id"]), oid)
    return oid


def entry(doc: dict[str, Any], to: str) -> dict[str, Any]:
    """`doc` with one more history entry to `to`, whatever the machine says."""
    last = doc["history"][-1]
    return {**doc, "state": to, "history": [*doc["history"], {**last, "from": last["to"], "to": to, "reason": "forged"}]}


def found(root: Path) -> dict[str, str]:
    """attempt ref -> state, of every result the clone holds (all well-formed)."""
    sound, broken = results.read_all(root)
    assert broken == []
    return {r.ref: r.state for r in sound}


# --- sync carries them ---------------------------------------------------------------------------


def test_gate_results_travel_both_ways_and_move_on(a: Path, b: Path, remote: Path) -> None:
    patch = new_patch(a)
    first, first_tip = attempt(a, patch.id, ["RUNNING"])
    sync.sync(a, None)
    report = sync.sync(b, None)
    assert (report.fetched, report.gates_fetched, report.gates_forwarded) == (1, 1, 0)
    assert found(b) == {results.ref_of(patch.id, "lint", first["id"]): "RUNNING"}

    attempt(a, patch.id, ["PASSED"], doc=first, tip=first_tip)  # A finishes its attempt: B is behind
    second, _ = attempt(b, patch.id, ["SKIPPED"], shard="1/1")  # B adds an attempt of its own
    assert sync.sync(a, None).pushed == 1
    report = sync.sync(b, None)
    assert (report.gates_fetched, report.gates_forwarded, report.pushed) == (0, 1, 1)
    assert sync.sync(a, None).gates_fetched == 1

    assert refs(a, GATES) == refs(b, GATES) == refs(remote, GATES) and len(refs(a, GATES)) == 2
    assert found(a) == {results.ref_of(patch.id, "lint", first["id"]): "PASSED",
                        results.ref_of(patch.id, "lint", second["id"]): "SKIPPED"}
    assert results.verdict(results.read_sound(a), None).state == "SKIPPED"  # the newest attempt decides
    assert integrity.verify_ledger(a) == integrity.verify_ledger(b) == []


def test_a_gate_result_alone_is_not_a_no_op(a: Path, b: Path, remote: Path) -> None:
    """The no-op check compares gate refs too: a new attempt is pushed, then nothing is."""
    patch = new_patch(a)
    sync.sync(a, None)
    sync.sync(b, None)
    attempt(b, patch.id)
    assert sync.sync(b, None).pushed == 1
    marker = remote / "pushed"
    hook(remote, "pre-receive", f"cat >/dev/null; touch '{marker}'\n")
    assert sync.sync(a, None).gates_fetched == 1
    assert sync.sync(b, None) == sync.SyncReport("origin", 0, 0, (), 0, 1)
    assert not marker.exists() and refs(a, GATES) == refs(remote, GATES)


def test_ledger_gate_run_in_one_clone_is_seen_in_the_other(a: Path, b: Path) -> None:
    write(a, ".ledger/config.yaml", "schema_version: 2\ngates:\n"
          "  - {name: lint, plugin: command, args: {command: [sh, -c, 'exit 0']}}\n")
    write(a, "f.txt", "hello\n")
    commit(a, "add f")
    ran = cli(a, "gate", "run", "--rev", "HEAD")
    assert ran.returncode == 0, ran.stderr
    assert cli(a, "sync").returncode == 0
    synced = cli(b, "sync")
    assert synced.returncode == 0, synced.stderr
    (result,) = results.read_sound(b)
    assert (result.gate, result.state) == ("lint", "PASSED")
    assert result.patch in ledger.read_sound(b)


# --- what sync refuses ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["moved apart", "unrelated"])
def test_a_diverged_gate_ref_is_refused_and_nothing_lost(how: str, a: Path, b: Path, remote: Path) -> None:
    patch = new_patch(a)
    doc = results.begin(patch.id, "lint", "1/1", None, "command", True, "alice")
    if how == "moved apart":  # both clones hold the RUNNING commit, then each finishes it its own way
        doc, tip = attempt(a, patch.id, ["RUNNING"], doc=doc)
        sync.sync(a, None)
        sync.sync(b, None)
        attempt(a, patch.id, ["PASSED"], doc=doc, tip=tip)
        attempt(b, patch.id, ["FAILED"], doc=doc, tip=tip)
    else:  # the same attempt written from nothing in each clone: no common commit
        sync.sync(a, None)
        sync.sync(b, None)
        attempt(a, patch.id, ["RUNNING"], doc=doc)
        attempt(b, patch.id, ["SKIPPED"], doc=doc)
    new_patch(a, "two")  # taken in the same round as the refused one: so not taken either
    sync.sync(a, None)
    before_b, before_remote = refs(b, "refs/ledger/"), refs(remote, "refs/ledger/")

    proc = cli(b, "sync")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    ref = results.ref_of(patch.id, "lint", doc["id"])
    assert ref in line and "diverged" in line
    assert refs(b, "refs/ledger/") == before_b and refs(remote, "refs/ledger/") == before_remote

    # what the message asks: delete the wrong one where it is (B's own; or A's, pushed already)
    wrong, kept = ([b], refs(a, GATES)[ref]) if how == "moved apart" else ([remote, a], refs(b, GATES)[ref])
    for where in wrong:
        git(where, "update-ref", "-d", ref)
    sync.sync(b, None)
    sync.sync(a, None)
    assert refs(a, "refs/ledger/") == refs(b, "refs/ledger/") == refs(remote, "refs/ledger/")
    assert refs(a, GATES)[ref] == kept


def test_a_remote_gate_ref_that_is_broken_is_refused_and_nothing_taken(a: Path, b: Path, remote: Path) -> None:
    patch = new_patch(a)
    doc, tip = attempt(a, patch.id)
    forge(a, entry(doc, "RUNNING"), parent=tip)  # PASSED -> RUNNING
    git(a, "push", "-q", "--no-verify", "origin", "refs/ledger/*:refs/ledger/*")  # past the ledger's checks
    with pytest.raises(LedgerError, match=f"refs/remotes/origin/ledger/gates/{patch.id}/lint/.*terminal.*nothing was taken"):
        sync.sync(b, None)
    assert refs(b, "refs/ledger/") == {}


def test_a_broken_gate_ref_of_this_clone_is_not_pushed(a: Path, remote: Path) -> None:
    patch = new_patch(a)
    doc, _ = attempt(a, patch.id, ["RUNNING"])
    forge(a, {**doc, "state": "PASSED"})  # state and history disagree
    with pytest.raises(LedgerError, match=f"{GATES}{patch.id}/lint/.*nothing was pushed"):
        sync.sync(a, None)
    assert refs(remote, "refs/ledger/") == {}


def test_configure_remote_brings_gate_results_into_the_mirror(a: Path, b: Path) -> None:
    patch = new_patch(a)
    _, tip = attempt(a, patch.id)
    sync.sync(a, None)
    assert sync.configure_remote(b, "origin") is True
    assert sync.configure_remote(b, "origin") is False  # idempotent
    assert git(b, "config", "--get-all", "remote.origin.fetch").stdout.split()[1:] == [
        "+refs/ledger/patches/*:refs/remotes/origin/ledger/patches/*", "+refs/ledger/gates/*:refs/remotes/origin/ledger/gates/*"]
    git(b, "fetch", "-q")
    assert list(refs(b, "refs/remotes/origin/ledger/gates/").values()) == [tip]
    assert refs(b, "refs/ledger/") == {}  # fetching never writes the ledger itself


# --- ledger verify ------------------------------------------------------------------------------


@pytest.fixture
def patch(repo: Path) -> ledger.Patch:
    return new_patch(repo)


def test_gate_results_written_by_the_ledger_are_sound(repo: Path, patch: ledger.Patch) -> None:
    attempt(repo, patch.id)
    attempt(repo, patch.id, ["RUNNING", "FAILED"], gate="tests", shard="1/2")
    attempt(repo, patch.id, ["SKIPPED"], gate="tests", shard="2/2")
    attempt(repo, patch.id, ["BLOCKED", "PENDING", "RUNNING"], gate="docs")
    whole = results.begin(patch.id, "once", "1/1", None, "pytest", False, "ci")  # one commit, three entries
    whole = results.step(results.step(whole, "RUNNING", "ci", "started"), "PASSED", "ci", "ok", duration_s=1.5, counts={"passed": 3})
    results.save(repo, whole, None)
    assert integrity.verify_ledger(repo) == []


def test_verify_reads_gate_results_in_bulk(repo: Path, patch: ledger.Patch) -> None:
    """One more git process (the documents' cat-file) for 2 attempts as for 12."""
    alone = verify_processes(repo)
    for i in range(2):
        attempt(repo, patch.id, gate=f"g{i}")
    few = verify_processes(repo)
    for i in range(2, 12):
        attempt(repo, patch.id, ["RUNNING", "FAILED"], gate=f"g{i}")
    assert verify_processes(repo) == few == alone + 1


def test_a_tampered_gate_json_is_named(repo: Path, patch: ledger.Patch) -> None:
    attempt(repo, patch.id, gate="sound")
    doc, tip = attempt(repo, patch.id, ["RUNNING"])
    bad = {**results.step(doc, "PASSED", "alice"), "counts": {"passed": -1}}
    oid = forge(repo, bad, parent=tip)
    (problem,) = only(repo, results.ref_of(patch.id, "lint", doc["id"]), "is not valid against schemas/gate.json")
    assert problem.commit == oid and "counts" in problem.message


@pytest.mark.parametrize("text, says", [("{not json", "invalid JSON"), ('{"a": 1, "a": 2}', "appears twice"), ("[]", "not valid")])
def test_a_gate_json_that_is_not_a_document_is_named(repo: Path, patch: ledger.Patch, text: str, says: str) -> None:
    doc, tip = attempt(repo, patch.id, ["RUNNING"])
    forge(repo, results.step(doc, "PASSED", "alice"), parent=tip, text=text)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), says)


def test_a_history_rewritten_between_commits_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc, tip = attempt(repo, patch.id, ["RUNNING"])
    rewritten = {**doc, "history": [doc["history"][0], {**doc["history"][1], "actor": "mallory"}]}
    forge(repo, results.step(rewritten, "PASSED", "mallory"), parent=tip)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), "history[1] was rewritten")


def test_a_commit_that_adds_no_transition_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc, tip = attempt(repo, patch.id)
    forge(repo, {**doc, "log": "changed afterwards"}, parent=tip)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), "adds no transition")


@pytest.mark.parametrize("field, value, trailer", [("state", "PASSED", "Ledger-State"), ("base", "c" * 40, "Ledger-Base"),
                                                   ("shard", "2/2", "Ledger-Shard"), ("reason", "all fine", "Ledger-Reason"),
                                                   ("actor", "mallory", "Ledger-Actor"), ("at", "2030-01-01T00:00:00Z", "Ledger-At")])
def test_trailers_that_disagree_with_the_document_are_named(repo: Path, patch: ledger.Patch, field: str, value: str,
                                                            trailer: str) -> None:
    doc, tip = attempt(repo, patch.id, ["RUNNING"])
    failed = results.step(doc, "FAILED", "alice", "1 failed")
    said = {**failed, field: value} if field in failed else {**failed, "history": [*failed["history"][:-1], {**failed["history"][-1], field: value}]}
    forge(repo, failed, parent=tip, message=results.render(said))
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), f"{trailer} says")


def test_an_illegal_transition_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc, tip = attempt(repo, patch.id)
    forge(repo, entry(doc, "RUNNING"), parent=tip)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), "leaves the terminal state PASSED")


def test_a_skip_without_its_reason_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc = results.begin(patch.id, "lint", "1/1", None, "command", True, "alice")
    skipped = entry(doc, "SKIPPED")
    skipped["history"][-1]["reason"] = ""
    forge(repo, skipped)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), "reason")


def test_a_result_of_a_patch_not_in_the_ledger_is_named(repo: Path, patch: ledger.Patch) -> None:
    attempt(repo, patch.id, gate="sound")
    doc, _ = attempt(repo, UNKNOWN_PATCH)
    only(repo, results.ref_of(UNKNOWN_PATCH, "lint", doc["id"]), f"patch {UNKNOWN_PATCH[:12]}, which is not in the ledger")


def test_a_gate_ref_that_is_not_a_commit_is_named(repo: Path, patch: ledger.Patch) -> None:
    attempt(repo, patch.id, gate="sound")
    ref = f"{GATES}{patch.id}/lint/nothing"
    plumb(repo, "update-ref", ref, plumb(repo, "hash-object", "-w", "--stdin", input=b"not a commit\n"))
    only(repo, ref, "points at a blob")


def test_a_gate_ref_whose_name_is_not_its_attempt_is_named(repo: Path, patch: ledger.Patch) -> None:
    _, tip = attempt(repo, patch.id)
    ref = f"{GATES}{patch.id}/lint/another"
    plumb(repo, "update-ref", ref, tip)
    only(repo, ref, "not the one the ref's name says")


def test_a_gate_merge_commit_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc, tip = attempt(repo, patch.id, ["RUNNING"])
    passed = results.step(doc, "PASSED", "alice")
    other = forge(repo, passed, parent=tip, ref="refs/heads/other")
    oid = plumb(repo, "commit-tree", plumb(repo, "rev-parse", f"{other}^{{tree}}"), "-p", tip, "-p", other, "-F", "-",
                input=results.render(passed))
    plumb(repo, "update-ref", results.ref_of(patch.id, "lint", doc["id"]), oid)
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), "2 parents")


def test_a_gate_tree_holding_more_than_gate_json_is_named(repo: Path, patch: ledger.Patch) -> None:
    doc = results.step(results.begin(patch.id, "lint", "1/1", None, "command", True, "alice"), "RUNNING", "alice")
    blob = plumb(repo, "hash-object", "-w", "--stdin", input=b"extra\n")
    forge(repo, doc, extra=f"100644 blob {blob}\textra.txt\n")
    only(repo, results.ref_of(patch.id, "lint", doc["id"]), f"more than the one file {results.DOC}")


def test_ledger_verify_names_a_broken_gate_ref(repo: Path, patch: ledger.Patch) -> None:
    doc, tip = attempt(repo, patch.id)
    forge(repo, entry(doc, "RUNNING"), parent=tip)
    proc = cli(repo, "verify")
    assert proc.returncode == 1 and results.ref_of(patch.id, "lint", doc["id"]) in proc.stdout + proc.stderr


def test_a_stale_lock_of_a_gate_ref_is_named(repo: Path, patch: ledger.Patch) -> None:
    import os
    import time

    ref = results.ref_of(patch.id, "lint", "20260101T000000.000000Z-00000000")
    lock = repo / ".git" / f"{ref}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    past = time.time() - integrity.STALE_LOCK_SECONDS - 5
    os.utime(lock, (past, past))
    (problem,) = integrity.verify_ledger(repo)
    assert problem.ref == ref and "killed writer" in problem.message
