"""The patch ledger under stress, with real git and real processes (issue 3, "Reliability"):
many writers at once on the same patches, and writers killed with SIGKILL at random points.
Afterwards every transition that reported success is in the ledger, every ref points at a
commit, and every history is a chain of legal steps."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patch_ledger import git, ledger, machine, patches
from patch_ledger.errors import LedgerError

WORKERS, STEPS, SHARED = 8, 200, 50
KILL_TRIALS, KILL_PATCHES = 50, 8

# One writer: waits for the start signal, then makes its transitions; every outcome is a
# JSON line (a success with the tip it returned, or the refusal it got).
WORKER = r"""
import json, os, random, sys, time
from pathlib import Path
from patch_ledger import ledger
from patch_ledger.errors import LedgerError

root, seed, steps, go, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
flip = {"APPLIED": "QUARANTINED", "QUARANTINED": "APPLIED"}
rng = random.Random(seed)
ids = sorted(ledger.read_all(root)[0])
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
with open(out, "w") as f:
    for k in range(steps):
        pid = rng.choice(ids)
        patch = ledger.read_all(root, ledger.PREFIX + pid)[0][pid]
        try:
            moved = ledger.move(root, patch, flip[patch.state], f"worker-{seed}", f"step {k}")
            f.write(json.dumps({"patch": pid, "tip": moved.tip, "state": moved.state}) + "\n")
        except LedgerError as e:
            f.write(json.dumps({"patch": pid, "refused": str(e)}) + "\n")
"""

# A writer that never stops: batches of transitions, single ones and new patches, until killed.
KILLED_WRITER = r"""
import random, sys, uuid
from pathlib import Path
from patch_ledger import ledger, patches
from patch_ledger.errors import LedgerError

root, rng, ids = Path(sys.argv[1]), random.Random(int(sys.argv[2])), sys.argv[3].split(",")
flip = {"APPLIED": "QUARANTINED", "QUARANTINED": "APPLIED"}
print("ready", flush=True)
while True:
    try:
        action = rng.random()
        if action < 0.4:
            current = ledger.read_all(root)[0]
            ledger.move_many(root, [ledger.Step(current[i], flip[current[i].state], "killed") for i in ids])
        elif action < 0.8:
            pid = rng.choice(ids)
            patch = ledger.read_all(root, ledger.PREFIX + pid)[0][pid]
            ledger.move(root, patch, flip[patch.state], "killed", "one")
        else:
            name = uuid.uuid4().hex
            diff = (f"diff --git a/new/{name} b/new/{name}\nnew file mode 100644\nindex {'0' * 40}..{'1' * 40}\n"
                    f"--- /dev/null\n+++ b/new/{name}\n@@ -0,0 +1 @@\n+{name}\n").encode()
            pid = patches.patch_ids(root, diff)[0][0]
            ledger.record(root, [(pid, diff, {"actor": "killed", "reason": "recorded"})])
    except LedgerError:
        pass
"""


def _diff(i: int, tag: str) -> bytes:
    content = f"{tag} {i}\n".encode()
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    return (f"diff --git a/{tag}/{i}.txt b/{tag}/{i}.txt\nnew file mode 100644\nindex {'0' * 40}..{blob}\n"
            f"--- /dev/null\n+++ b/{tag}/{i}.txt\n@@ -0,0 +1 @@\n+{tag} {i}\n").encode()


def _applied_patches(root: Path, count: int, tag: str) -> list[str]:
    """`count` patches with their real ids, recorded and moved on to APPLIED, a batch a step."""
    diffs = [_diff(i, tag) for i in range(count)]
    marked = {f"{i:040x}": d for i, d in enumerate(diffs)}
    ids = {mark: pid for pid, mark in patches.patch_ids(root, b"".join(b"commit %s\n%s" % (m.encode(), d) for m, d in marked.items()))}
    ordered = [ids[f"{i:040x}"] for i in range(count)]
    ledger.record(root, [(pid, d, {"actor": "setup", "reason": "setup"}) for pid, d in zip(ordered, diffs)])
    for to in ("VALIDATING", "VALIDATED", "APPLIED"):
        current, _ = ledger.read_all(root)
        ledger.move_many(root, [ledger.Step(current[pid], to, "setup") for pid in ordered])
    return ordered


def _illegal(steps: list[ledger.Patch]) -> list[str]:
    """What is wrong with a linear history: its first entry, each step, each sequence number."""
    m = machine.load("patch")
    wrong = []
    if not steps or steps[0].source is not None or steps[0].state != m.initial or steps[0].seq != 1:
        wrong.append(f"first entry {steps[0] if steps else 'missing'}")
    for before, after in zip(steps, steps[1:]):
        if after.source != before.state or not m.is_legal(before.state, after.state) or after.seq != before.seq + 1:
            wrong.append(f"{before.state}#{before.seq} -> {after.source}->{after.state}#{after.seq} at {after.tip[:12]}")
    return wrong


def _integrity_problems(root: Path) -> list[str]:
    """`ledger verify`'s findings."""
    from patch_ledger import integrity

    return [f"{p.ref}: {p.message}" for p in integrity.verify_ledger(root)]


def _refs(root: Path) -> dict[str, str]:
    out = git.run(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/ledger/").stdout.decode()
    return dict(line.split() for line in out.splitlines())


def _not_commits(root: Path, refs: dict[str, str]) -> dict[str, str]:
    """The refs whose object is missing or not a commit, with what git says it is."""
    if not refs:
        return {}
    out = git.run(root, "cat-file", "--batch-check=%(objectname) %(objecttype)",
                  input="".join(f"{oid}\n" for oid in refs.values()).encode()).stdout.decode()
    kinds = dict(line.split(" ", 1) for line in out.splitlines())
    return {ref: kinds.get(oid, "missing") for ref, oid in refs.items() if kinds.get(oid) != "commit"}


def _start(script: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, **kwargs)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_eight_writers_on_fifty_shared_patches_lose_no_transition(repo: Path, tmp_path: Path) -> None:
    ids = _applied_patches(repo, SHARED, "shared")
    go = tmp_path / "go"
    outs = [tmp_path / f"worker-{w}.jsonl" for w in range(WORKERS)]
    workers = [_start(WORKER, str(repo), str(w), str(STEPS), str(go), str(out)) for w, out in enumerate(outs)]
    go.touch()  # all at once
    assert all(w.wait(timeout=300) == 0 for w in workers)

    outcomes = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    wins = [o for o in outcomes if "tip" in o]
    gave_up = [o for o in outcomes if "gave up" in o.get("refused", "")]
    assert len(outcomes) == WORKERS * STEPS
    odd = [o for o in outcomes if "tip" not in o and "another writer moved it" not in o["refused"] and o not in gave_up]
    assert not odd, odd[:3]  # a refusal names the state that won the race, or says it gave up
    assert len({o["tip"] for o in wins}) == len(wins)  # no two writers were told they made the same commit
    current = ledger.read_sound(repo)
    assert sorted(current) == sorted(ids)
    for pid in ids:
        steps = ledger.history(repo, current[pid])
        assert not _illegal(steps), (pid, _illegal(steps))
        mine = {o["tip"] for o in wins if o["patch"] == pid}
        assert mine <= {s.tip for s in steps}  # every success is on the ref's chain: an ancestor of its tip
        assert len(steps) == 4 + len(mine)  # PENDING..APPLIED, then exactly the successes: nothing else, nothing lost
    for o in random.Random(0).sample(wins, min(20, len(wins))):  # and as git itself sees it
        assert git.run(repo, "merge-base", "--is-ancestor", o["tip"], ledger.PREFIX + o["patch"], check=False).returncode == 0
    assert _integrity_problems(repo) == []
    print(f"\n{len(wins)} of {len(outcomes)} transitions succeeded, {len(outcomes) - len(wins) - len(gave_up)} refused "
          f"(another writer's step made them illegal), {len(gave_up)} gave up after 50 lost races")


def test_a_writer_killed_at_random_points_leaves_a_sound_ledger(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "LOCK_WAIT_SECONDS", 0)  # a stale lock is named at once here
    ids = _applied_patches(repo, KILL_PATCHES, "killed")
    scratch = tmp_path / "writer-tmp"  # the writer's TMPDIR: what a kill leaves behind there is counted
    scratch.mkdir()
    rng = random.Random(1)
    checked: dict[str, str] = {}  # ref -> the tip whose history was checked already
    locks: list[str] = []
    for trial in range(KILL_TRIALS):
        writer = _start(KILLED_WRITER, str(repo), str(trial), ",".join(ids), env={**os.environ, "TMPDIR": str(scratch)},
                        start_new_session=True)
        time.sleep(rng.uniform(0, 0.150))
        os.killpg(writer.pid, signal.SIGKILL)  # the writer and the git it is running, as a crash takes them
        writer.wait()
        time.sleep(0.01)  # let the rest of the killed group go

        for lock in sorted((repo / ".git").rglob("*.lock")):  # a killed update-ref leaves its lock behind
            met = _what_a_writer_meets(repo, lock)
            # named, not retried as a race (or the lock of a ref a killed `record` was creating)
            assert met == "its ref does not exist" or (met.startswith("swap: Locked") and lock.name in met), met
            locks.append(f"trial {trial}: {lock.relative_to(repo / '.git')} ({met})")
            lock.unlink()  # as the user would, once told: the next trials test something again
        refs = _refs(repo)
        assert _not_commits(repo, refs) == {}, f"trial {trial}"
        sound = ledger.read_sound(repo)
        assert sorted(r[len(ledger.PREFIX):] for r in refs if r.startswith(ledger.PREFIX)) == sorted(sound)
        for pid, patch in sound.items():
            if checked.get(patch.ref) != patch.tip:
                steps = ledger.history(repo, patch)
                assert not _illegal(steps), (trial, pid, _illegal(steps))
                assert steps[-1].tip == patch.tip and steps[-1].state == patch.state
                checked[patch.ref] = patch.tip
    assert _integrity_problems(repo) == []
    left = sorted(p.name for p in scratch.iterdir())
    garbage = list((repo / ".git/objects").rglob("tmp_obj_*"))
    trials = len({lock.split(":")[0] for lock in locks})
    print(f"\n{KILL_TRIALS} kills; {len(checked)} refs checked, all sound; {len(locks)} stale lock(s) after {trials} kill(s)"
          + "".join(f"\n  {lock}" for lock in locks)
          + f"\nleft in the writer's TMPDIR: {len(left)} {left[:3]}; half-written objects: {len(garbage)}")


def _what_a_writer_meets(root: Path, lock: Path) -> str:
    """What the next compare-and-swap of the locked ref says: a lost race (the caller retries,
    `move` up to 50 times) or an error."""
    ref = str(lock.relative_to(root / ".git"))[: -len(".lock")]
    tip = git.run(root, "rev-parse", "--verify", "--quiet", ref, check=False).stdout.decode().strip()
    if not tip:
        return "its ref does not exist"
    try:
        return "swap: lost race, retried" if not ledger.swap(root, [(ref, tip, tip)]) else "swap went through"
    except Exception as e:  # noqa: BLE001 - what the next writer meets is the finding
        return f"swap: {type(e).__name__}: {e}"


def test_a_lock_left_by_a_killed_writer_is_named_not_retried(repo: Path) -> None:
    """Retrying cannot help with a lock a killed writer left: it is named, within seconds."""
    pid = _applied_patches(repo, 1, "locked")[0]
    (repo / ".git" / (ledger.PREFIX + pid + ".lock")).write_text("")  # what SIGKILL leaves inside update-ref
    patch = ledger.read_sound(repo)[pid]
    began = time.perf_counter()
    with pytest.raises(LedgerError) as refused:
        ledger.move(repo, patch, "QUARANTINED", "next writer", "after a crash")
    assert time.perf_counter() - began < 3 and f"{pid}.lock" in str(refused.value)
