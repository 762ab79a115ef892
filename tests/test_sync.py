"""`ledger sync` through a real bare remote and two clones: patches travel, divergent
histories merge by the documented precedence and stay reachable, the push is never forced
and is retried when the remote moved meanwhile (issue 3)."""

from __future__ import annotations

import copy
import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest

from patch_ledger import patches, ledger, machine, schemas, sync
from patch_ledger.errors import LedgerError
from tests.builders import git, init_repo, write


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(path))
    return path


def clone(tmp_path: Path, remote: Path, name: str) -> Path:
    path = init_repo(tmp_path / name)
    git(path, "remote", "add", "origin", str(remote))
    return path


@pytest.fixture
def a(tmp_path: Path, remote: Path) -> Path:
    return clone(tmp_path, remote, "a")


@pytest.fixture
def b(tmp_path: Path, remote: Path) -> Path:
    return clone(tmp_path, remote, "b")


def new_patch(root: Path, text: str = "one") -> ledger.Patch:
    diff = f"diff --git a/{text} b/{text}\nnew file mode 100644\n--- /dev/null\n+++ b/{text}\n@@ -0,0 +1 @@\n+{text}\n".encode()
    ((patch_id, _),) = patches.patch_ids(root, diff)  # its real identity: sync verifies what it moves
    ((patch, _),) = ledger.record(root, [(patch_id, diff, {"actor": "recorder", "reason": "recorded"})])
    return patch


def walk(root: Path, patch: ledger.Patch, states: list[str], actor: str) -> ledger.Patch:
    for state in states:
        patch = ledger.move(root, patch, state, actor, f"to {state}")
    return patch


def refs(repo: Path, prefix: str = ledger.PREFIX) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix).stdout
    return dict(line.split() for line in out.splitlines())


def is_ancestor(repo: Path, old: str, new: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", old, new, check=False).returncode == 0


def hook(repo_git_dir: Path, name: str, body: str) -> Path:
    path = write(repo_git_dir, f"hooks/{name}", "#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def shared(root: Path, states: list[str], other: Path) -> ledger.Patch:
    """A patch walked through `states` in `root`, synced to `other` through the remote."""
    patch = walk(root, new_patch(root), states, "alice")
    sync.sync(root, None)
    sync.sync(other, None)
    return patch


# --- patches travel -----------------------------------------------------------------------


def test_a_patch_recorded_in_one_clone_reaches_the_other(a: Path, b: Path, remote: Path) -> None:
    patch = walk(a, new_patch(a), ["VALIDATING"], "alice")
    first = sync.sync(a, None)
    assert (first.pushed, first.fetched, first.merged) == (1, 0, ())
    second = sync.sync(b, "origin")
    assert (second.fetched, second.fast_forwarded, second.pushed) == (1, 0, 0)
    assert refs(b) == refs(a) == refs(remote) == {patch.ref: patch.tip}
    assert ledger.read_all(b)[0][patch.id] == patch
    assert git(b, "reflog", "show", "--format=%H", patch.ref).stdout.split() == [patch.tip]  # reflogs kept


def test_a_patch_that_moved_on_is_fast_forwarded(a: Path, b: Path) -> None:
    patch = walk(b, shared(a, [], b), ["VALIDATING", "VALIDATED"], "bob")
    assert sync.sync(b, None).pushed == 1
    report = sync.sync(a, None)
    assert (report.fetched, report.fast_forwarded, report.merged, report.pushed) == (0, 1, (), 0)
    assert refs(a) == refs(b) == {patch.ref: patch.tip}


PATCH_STATES = schemas.load("patch")["$defs"]["state"]["enum"]

# --- divergent histories --------------------------------------------------------------------

# (the way both clones share, what A adds, what B adds, the state the merge must resolve to)
DIVERGENCES = {
    "quarantine beats verified": (["VALIDATING", "VALIDATED", "APPLIED"], ["VERIFIED"], ["QUARANTINED"], "QUARANTINED"),
    "rollback beats verified": (["VALIDATING", "VALIDATED", "APPLIED"], ["VERIFIED"], ["ROLLED_BACK"], "ROLLED_BACK"),
    "terminal beats further along": (["VALIDATING", "VALIDATED"], ["EXPIRED"], ["APPLIED", "VERIFIED"], "EXPIRED"),
    "terminal beats terminal by rank": (["VALIDATING", "VALIDATED", "APPLIED"], ["SUPERSEDED"], ["ROLLED_BACK"], "ROLLED_BACK"),
}


@pytest.mark.parametrize("first", ["a", "b"])
@pytest.mark.parametrize("case", DIVERGENCES)
def test_diverged_clones_end_identical_with_both_histories(first: str, case: str, a: Path, b: Path, remote: Path) -> None:
    common, in_a, in_b, resolved = DIVERGENCES[case]
    patch = shared(a, common, b)
    tip_a = walk(a, patch, in_a, "alice")
    tip_b = walk(b, ledger.read_all(b)[0][patch.id], in_b, "bob")
    one, two = (a, b) if first == "a" else (b, a)
    sync.sync(one, None)
    report = sync.sync(two, None)
    sync.sync(one, None)

    assert refs(a) == refs(b) == refs(remote)
    tip = ledger.read_all(a)[0][patch.id]
    assert [m.state for m in report.merged] == [resolved] and report.merged[0].tip == tip.tip
    assert is_ancestor(a, tip_a.tip, tip.tip) and is_ancestor(a, tip_b.tip, tip.tip)
    mine, theirs = (tip_b, tip_a) if first == "a" else (tip_a, tip_b)  # the second to sync merges
    assert git(a, "rev-parse", f"{tip.tip}^1", f"{tip.tip}^2").stdout.split() == [mine.tip, theirs.tip]
    assert (tip.state, tip.source, tip.seq, tip.tree) == (resolved, mine.state, max(mine.seq, theirs.seq) + 1, patch.tree)
    assert tip.reason == f"sync: merged origin/{theirs.tip[:12]} ({mine.state} vs {theirs.state} -> {resolved})"
    steps = {(s.source, s.state) for s in ledger.history(a, tip)}
    assert {(s.source, s.state) for s in (*ledger.history(a, tip_a), *ledger.history(a, tip_b))} <= steps


def test_precedence_names_every_patch_state_once_terminal_first() -> None:
    m = machine.load("patch")
    assert sorted(m.precedence) == sorted(m.states)
    terminal = [s for s in m.precedence if s in m.terminal]
    assert m.precedence[:len(terminal)] == tuple(terminal)  # a terminal state beats any other
    assert m.precedence.index("QUARANTINED") < m.precedence.index("VERIFIED")


@pytest.mark.parametrize("precedence", [["PENDING"], [*PATCH_STATES, "PENDING"], [*PATCH_STATES[1:], "BOGUS"]])
def test_a_precedence_that_does_not_name_every_state_once_is_refused(precedence: list[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = schemas.load

    def changed(name: str) -> dict[str, Any]:
        schema = copy.deepcopy(real(name))
        if name == "patch":
            schema["x-state-machine"]["precedence"] = precedence
        return schema

    monkeypatch.setattr(schemas, "load", changed)
    with pytest.raises(LedgerError, match="precedence must name every state exactly once"):
        machine.load.__wrapped__("patch")  # uncached: the real machine stays as it is


def test_one_sync_takes_new_forwarded_and_diverged_patches_together(a: Path, b: Path, remote: Path) -> None:
    behind, apart, ahead = (walk(a, new_patch(a, t), ["VALIDATING", "VALIDATED"], "alice") for t in ("x", "y", "z"))
    sync.sync(a, None)
    sync.sync(b, None)
    moved_b = {p.id: walk(b, ledger.read_all(b)[0][p.id], ["APPLIED"], "bob") for p in (behind, apart)}
    walk(a, apart, ["EXPIRED"], "alice")
    walk(a, ahead, ["APPLIED"], "alice")
    fresh = new_patch(b, "w")
    sync.sync(b, None)
    report = sync.sync(a, None)
    assert (report.fetched, report.fast_forwarded, report.pushed) == (1, 1, 2)
    assert [(m.id, m.local, m.remote, m.state) for m in report.merged] == [(apart.id, "EXPIRED", "APPLIED", "EXPIRED")]
    assert sync.sync(b, None).fast_forwarded == 2
    assert refs(a) == refs(b) == refs(remote)
    assert is_ancestor(a, moved_b[behind.id].tip, refs(a)[behind.ref]) and fresh.ref in refs(a)


# --- the push ---------------------------------------------------------------------------------


def test_a_no_op_sync_pushes_nothing(a: Path, b: Path, remote: Path) -> None:
    shared(a, ["VALIDATING"], b)
    marker = remote / "pushed"
    hook(remote, "pre-receive", f"cat >/dev/null; touch '{marker}'\n")
    before = refs(remote)
    for clone in (a, b):
        report = sync.sync(clone, None)
        assert (report.fetched, report.fast_forwarded, report.merged, report.pushed, report.attempts) == (0, 0, (), 0, 1)
    assert not marker.exists() and refs(remote) == before


@pytest.mark.parametrize("where", ["client", "server"])
def test_a_push_refused_because_the_remote_moved_is_retried(where: str, a: Path, b: Path, remote: Path) -> None:
    """B pushes between A's fetch and A's push: caught by git before sending (A's fetch is
    stale) or by the remote after it advertised its refs; either way A fetches, merges and
    pushes again."""
    patch = shared(a, ["VALIDATING", "VALIDATED", "APPLIED"], b)
    walk(a, patch, ["VERIFIED"], "alice")
    walk(b, ledger.read_all(b)[0][patch.id], ["QUARANTINED"], "bob")
    marker = remote / "b-pushed"
    push_b = (f"[ -e '{marker}' ] && exit 0; touch '{marker}'\n"
              f"env -i PATH=\"$PATH\" git -C '{b}' push -q origin 'refs/ledger/patches/*:refs/ledger/patches/*'\n")
    if where == "client":  # when A's fetch has written its mirror: A's push is then refused by git
        hook(a / ".git", "reference-transaction", f'lines=$(cat)\n[ "$1" = committed ] || exit 0\n'
             f'case "$lines" in *refs/remotes/*) ;; *) exit 0 ;; esac\n{push_b}')
    else:  # when A's push reaches the remote: it advertised the old tip, then moved
        hook(remote, "pre-receive", f"cat >/dev/null\n{push_b}")
    report = sync.sync(a, None)
    assert marker.exists() and report.attempts == 2 and report.pushed == 1
    assert [(m.local, m.remote, m.state) for m in report.merged] == [("VERIFIED", "QUARANTINED", "QUARANTINED")]
    sync.sync(b, None)
    assert refs(a) == refs(b) == refs(remote)


def test_a_push_refused_for_another_reason_fails_at_once(a: Path, remote: Path) -> None:
    new_patch(a)
    hook(remote, "pre-receive", "cat >/dev/null; echo no >&2; exit 1\n")
    with pytest.raises(LedgerError, match="pushing the ledger to origin failed: .*pre-receive hook declined"):
        sync.sync(a, None)
    assert (remote / "hooks" / "pre-receive").exists() and refs(remote) == {}


def test_a_remote_that_always_moves_meanwhile_is_given_up_on(a: Path, b: Path, remote: Path) -> None:
    patch = shared(a, ["VALIDATING", "VALIDATED", "APPLIED"], b)
    walk(a, patch, ["QUARANTINED"], "alice")
    # each push reaches a remote whose ref has just moved on, by a legal step (release or
    # quarantine again) that another clone pushed meanwhile
    clean = 'env -i PATH="$PATH" GIT_AUTHOR_NAME=r GIT_AUTHOR_EMAIL=r@r GIT_COMMITTER_NAME=r GIT_COMMITTER_EMAIL=r@r'
    hook(remote, "pre-receive", f"""cat >/dev/null
n=$(( $(cat '{remote}/count' 2>/dev/null || echo 0) + 1 )); echo $n > '{remote}/count'
cur=$({clean} git -C '{remote}' rev-parse {patch.ref})
msg=$({clean} git -C '{remote}' log -1 --format=%B $cur)
state=$(printf '%s\\n' "$msg" | sed -n 's/^Ledger-State: //p'); seq=$(printf '%s\\n' "$msg" | sed -n 's/^Ledger-Seq: //p')
if [ "$state" = APPLIED ]; then next=QUARANTINED; else next=APPLIED; fi
msg=$(printf '%s\\n' "$msg" | sed -e "s/^Ledger-State: .*/Ledger-State: $next/" -e "s/^Ledger-From: .*/Ledger-From: $state/" -e "s/^Ledger-Seq: .*/Ledger-Seq: $((seq + 1))/")
new=$({clean} GIT_COMMITTER_DATE="$((1700000000 + n)) +0000" git -C '{remote}' commit-tree -p $cur -m "$msg" "$cur^{{tree}}")
{clean} git -C '{remote}' update-ref {patch.ref} $new $cur
""")
    with pytest.raises(LedgerError, match=f"kept moving through {sync.ATTEMPTS} rounds"):
        sync.sync(a, None)
    assert (remote / "count").read_text().strip() == str(sync.ATTEMPTS)


# --- configuration and bad input -----------------------------------------------------------


def test_configure_remote_makes_plain_fetch_bring_the_ledger(a: Path, b: Path) -> None:
    patch = new_patch(a)
    sync.sync(a, None)
    assert sync.configure_remote(b, "origin") is True
    assert sync.configure_remote(b, "origin") is False  # idempotent
    fetch = git(b, "config", "--get-all", "remote.origin.fetch").stdout.split()
    assert fetch == ["+refs/heads/*:refs/remotes/origin/*", "+refs/ledger/patches/*:refs/remotes/origin/ledger/patches/*",
                     "+refs/ledger/gates/*:refs/remotes/origin/ledger/gates/*"]
    assert git(b, "config", "--get-all", "remote.origin.push", check=False).stdout == ""  # plain push unchanged
    git(b, "fetch", "-q")
    assert refs(b, "refs/remotes/origin/ledger/") == {f"refs/remotes/origin/ledger/patches/{patch.id}": patch.tip}
    assert refs(b) == {}  # fetching never writes the ledger itself


def test_the_remote_comes_from_the_configuration(a: Path, remote: Path) -> None:
    git(a, "remote", "rename", "origin", "upstream")
    write(a, ".ledger/config.yaml", "schema_version: 2\nsync:\n  remote: upstream\n")
    patch = new_patch(a)
    assert sync.sync(a, None).remote == "upstream"
    assert refs(remote) == {patch.ref: patch.tip}
    with pytest.raises(LedgerError, match="no git remote named 'origin'"):
        sync.sync(a, "origin")


@pytest.mark.parametrize("name", ["nowhere", "origin:refs/heads/x", "or*"])
def test_an_unknown_remote_is_named(a: Path, name: str) -> None:
    with pytest.raises(LedgerError, match=f"no git remote named '{name.replace('*', '[*]')}'"):
        sync.sync(a, name)
    with pytest.raises(LedgerError, match="no git remote named"):
        sync.configure_remote(a, name)


def test_a_remote_ref_without_a_ledger_commit_is_refused_and_nothing_written(a: Path, b: Path, remote: Path) -> None:
    garbage = git(remote, "commit-tree", "-m", "not a ledger commit", git(remote, "hash-object", "-w", "-t", "tree", "/dev/null").stdout.strip())
    name = "a" * 40
    git(remote, "update-ref", ledger.PREFIX + name, garbage.stdout.strip())
    with pytest.raises(LedgerError, match=f"refs/remotes/origin/ledger/patches/{name}: .*missing trailer"):
        sync.sync(b, None)
    assert refs(b) == {}


# --- what a review found -------------------------------------------------------------------


def _forge_jump(repo: Path, patch: ledger.Patch, to: str) -> None:
    """A hand-made step that no transition allows, on top of the patch's tip."""
    body = git(repo, "log", "-1", "--format=%B", patch.tip).stdout
    body = body.replace(f"Ledger-State: {patch.state}", f"Ledger-State: {to}").replace(f"Ledger-Seq: {patch.seq}", f"Ledger-Seq: {patch.seq + 1}")
    body = body.replace("Ledger-From: -", f"Ledger-From: {patch.state}").replace(f"Ledger-From: {patch.source}", f"Ledger-From: {patch.state}")
    forged = git(repo, "commit-tree", f"{patch.tip}^{{tree}}", "-p", patch.tip, "-m", body).stdout.strip()
    git(repo, "update-ref", patch.ref, forged, patch.tip)


def test_an_illegal_history_is_neither_pushed_nor_taken(a: Path, b: Path, remote: Path) -> None:
    patch = new_patch(a)
    sync.sync(a, None)
    sync.sync(b, None)
    _forge_jump(a, patch, "VERIFIED")  # PENDING -> VERIFIED by hand
    before = refs(remote)
    with pytest.raises(LedgerError, match="nothing was pushed"):
        sync.sync(a, None)
    assert refs(remote) == before
    git(a, "push", "-q", "--no-verify", "origin", f"+{patch.ref}:{patch.ref}")  # as if pushed past the ledger
    b_before = refs(b)
    with pytest.raises(LedgerError, match="nothing was taken"):
        sync.sync(b, None)
    assert refs(b) == b_before


def test_a_revert_that_arrives_by_sync_rolls_the_patch_back(a: Path, b: Path) -> None:
    applied = shared(a, ["VALIDATING", "VALIDATED", "APPLIED"], b)
    reverse = ledger.patch_bytes(a, applied).decode()
    reverse = reverse.replace("new file mode", "deleted file mode").replace("--- /dev/null", "--- a/one").replace("+++ b/one", "+++ /dev/null").replace("@@ -0,0 +1 @@\n+one", "@@ -1 +0,0 @@\n-one")
    ((reverse_id, _),) = patches.patch_ids(b, reverse.encode())
    ledger.move(a, ledger.read_sound(a)[applied.id], "VERIFIED", "alice", "gates passed")
    ledger.move(b, ledger.read_sound(b)[applied.id], "VERIFIED", "bob", "gates passed")
    sync.sync(b, None)
    # clone b records the revert (as its id, known to the applied patch as its inverse)
    inverse = ledger.move(b, ledger.read_sound(b)[applied.id], "QUARANTINED", "bob", "looks wrong", inverse=reverse_id)
    ((revert, _),) = ledger.record(b, [(reverse_id, reverse.encode(), {"actor": "bob", "reason": "recorded from a revert"})])
    assert inverse.state == "QUARANTINED"
    # a revert only recorded (as a pull request proposes it) is not in effect: nothing rolls back
    sync.sync(b, None)
    sync.sync(a, None)
    assert ledger.read_sound(a)[applied.id].state == "QUARANTINED"
    # once it is applied, the next sync of either clone rolls the patch back
    for to in ("VALIDATING", "VALIDATED", "APPLIED"):
        revert = ledger.move(b, revert, to, "bob", "the revert landed")
    sync.sync(b, None)
    sync.sync(a, None)
    assert ledger.read_sound(a)[applied.id].state == "ROLLED_BACK"
