"""The GitHub side of `ledger ci`: the event of the workflow run (`GITHUB_EVENT_NAME` and the
payload GitHub wrote at `GITHUB_EVENT_PATH`), the commits it concerns (fetched when the
checkout is shallow, so users need no fetch-depth plumbing), and the runner's channels back:
annotations as workflow commands, outputs in `$GITHUB_OUTPUT`, the step summary."""

from __future__ import annotations

import base64
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from patch_ledger import git, ledger
from patch_ledger.errors import LedgerError

HANDLED = ("pull_request", "push", "merge_group")
ZERO = "0" * 40  # a push's `before` when the branch is new, `after` when it is deleted
DEEPEN = (50, 500)  # commits fetched per round while a shallow checkout lacks the merge base
PER_LEVEL = 10  # annotations shown per severity; GitHub itself keeps only 10 per step
SUMMARY_LIMIT = 1000 * 1024  # GitHub refuses a step summary over 1 MiB; keep a margin


class Event(NamedTuple):
    """What a workflow run is about, from its payload: the commits `base..head`."""

    name: str
    path: str  # the payload file, named in every message about it
    base: str | None  # None: a new branch, only `head` itself is new
    head: str
    branch: str  # the branch the commits go to (a PR's base branch, the pushed branch)
    default_branch: str
    repository: str
    fork: bool  # a pull request from another repository: its token cannot write here
    number: int | None = None
    title: str = ""

    @property
    def lands(self) -> bool:
        """Whether the commits are now on the default branch: merged, no longer proposed."""
        return self.name == "push" and self.branch == self.default_branch


def read_event(env: Mapping[str, str], event_path: str | None = None) -> Event | None:
    """The event of this workflow run, or None when it is not one `ledger ci` handles."""
    name = env.get("GITHUB_EVENT_NAME", "")
    if not name:
        raise LedgerError("GITHUB_EVENT_NAME is not set; run `ledger ci` in a GitHub Actions job "
                          "(or set GITHUB_EVENT_NAME and pass --event-path)")
    if name not in HANDLED:
        return None
    path = event_path or env.get("GITHUB_EVENT_PATH", "")
    if not path:
        raise LedgerError("GITHUB_EVENT_PATH is not set; pass --event-path FILE with the event's JSON payload")
    return _EVENTS[name](_payload(path), path)


def _payload(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8"
        raise LedgerError(f"{path}: cannot read the event payload ({why}); pass the file GitHub wrote (GITHUB_EVENT_PATH)") from None
    try:
        payload = json.loads(text)
    except ValueError as e:
        raise LedgerError(f"{path}: the event payload is not JSON ({e}); pass the file GitHub wrote (GITHUB_EVENT_PATH)") from None
    if not isinstance(payload, dict):
        raise LedgerError(f"{path}: the event payload is not a JSON object; pass the file GitHub wrote (GITHUB_EVENT_PATH)")
    return payload


def _get(payload: Mapping[str, Any], path: str, keys: str, kind: type = str) -> Any:
    """payload[a][b]... for `keys` "a.b...", which must be a `kind`, or LedgerError naming both."""
    value: Any = payload
    for key in keys.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LedgerError(f"{path}: the event payload has no {keys} ({'a number' if kind is int else 'a string'}); "
                          "pass the file GitHub wrote for this event (GITHUB_EVENT_PATH)")
    return value


def _sha(payload: Mapping[str, Any], path: str, keys: str) -> str:
    value = _get(payload, path, keys)
    if not ledger.ID.match(value):
        raise LedgerError(f"{path}: {keys} {value[:80]!r} is not a commit id; pass the file GitHub wrote (GITHUB_EVENT_PATH)")
    return str(value)


def _pull_request(p: Mapping[str, Any], path: str) -> Event:
    repository = _get(p, path, "repository.full_name")
    head_repo = (((p.get("pull_request") or {}).get("head") or {}).get("repo") or {}).get("full_name")
    return Event("pull_request", path, _sha(p, path, "pull_request.base.sha"), _sha(p, path, "pull_request.head.sha"),
                 _get(p, path, "pull_request.base.ref"), _get(p, path, "repository.default_branch"), repository,
                 head_repo != repository,  # a deleted fork has no repo at all: still not ours
                 _get(p, path, "pull_request.number", int), str((p.get("pull_request") or {}).get("title") or ""))


def _push(p: Mapping[str, Any], path: str) -> Event | None:
    ref, after = _get(p, path, "ref"), _sha(p, path, "after")
    if not ref.startswith("refs/heads/") or after == ZERO:  # a tag, or a deleted branch: no commit to record
        return None
    before = _sha(p, path, "before")
    return Event("push", path, None if before == ZERO else before, after, ref.removeprefix("refs/heads/"),
                 _get(p, path, "repository.default_branch"), _get(p, path, "repository.full_name"), False)


def _merge_group(p: Mapping[str, Any], path: str) -> Event:
    return Event("merge_group", path, _sha(p, path, "merge_group.base_sha"), _sha(p, path, "merge_group.head_sha"),
                 _get(p, path, "merge_group.base_ref").removeprefix("refs/heads/"),
                 _get(p, path, "repository.default_branch"), _get(p, path, "repository.full_name"), False)


_EVENTS = {"pull_request": _pull_request, "push": _push, "merge_group": _merge_group}


# --- the commits ------------------------------------------------------------------------


def fetch_commits(root: Path, remote: str, event: Event) -> str | None:
    """The commit the event's commits start from (the merge base of its base and head; None
    for a new branch), every commit in between present: the missing ends are fetched, and a
    shallow checkout is deepened until the merge base is in it."""
    missing = [c for c in dict.fromkeys((event.base, event.head)) if c and git.commit_of(root, c) is None]
    if missing:
        _fetch(root, remote, event, "--depth=1", *missing)
    base = event.base
    if base is None and event.branch != event.default_branch:
        base = _default_tip(root, remote, event)  # a new branch: its commits are those since it left the default one
    if base is None:
        if shallow(root) and git.commit_of(root, f"{event.head}^") is None:
            # a shallow checkout's last commit looks like a root: with its parent, it is recorded as the change it is
            _fetch(root, remote, event, "--deepen=1", event.head)
        return None
    for depth in (*DEEPEN, None):
        found = git.merge_base(root, base, event.head)
        if found or not shallow(root):
            break
        _fetch(root, remote, event, f"--deepen={depth}" if depth else "--unshallow", base, event.head)
    if not found:
        raise LedgerError(f"{event.path}: the base {base[:12]} and the head {event.head[:12]} share no history in {root}; "
                          "check out the repository itself (actions/checkout) rather than an unrelated tree")
    return found


def _default_tip(root: Path, remote: str, event: Event) -> str | None:
    """The remote's default branch's commit (fetched), or None when it has none yet."""
    listed = git.run(root, "ls-remote", "--heads", remote, f"refs/heads/{event.default_branch}", check=False).stdout.split()
    tip = listed[0].decode() if listed else None
    if tip is not None and git.commit_of(root, tip) is None:
        _fetch(root, remote, event, "--depth=1", tip)
    return tip


def shallow(root: Path) -> bool:
    return git.run(root, "rev-parse", "--is-shallow-repository").stdout.strip() == b"true"


def _fetch(root: Path, remote: str, event: Event, *args: str) -> None:
    proc = git.run(root, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", *args[:1],
                   remote, *args[1:], check=False)
    if proc.returncode != 0:
        said = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise LedgerError(f"{event.path}: the {event.name} event's commits {', '.join(c[:12] for c in args[1:])} cannot be "
                          f"fetched from {remote} ({said[-1].strip() if said else 'git fetch failed'}); was the branch "
                          "force-pushed or deleted? Re-run the job, or check out with fetch-depth: 0")


def revrange(root: Path, base: str | None, head: str) -> str:
    """The event's own commits as a revision range: base..head, or head alone when new."""
    if base:
        return f"{base}..{head}"
    parent = git.commit_of(root, f"{head}^")
    return f"{head}^!" if parent else head


@contextmanager
def credentials(root: Path, token: str | None, server: str) -> Iterator[None]:
    """git talks to `server` with `token` inside the block only, through git's environment
    configuration (GIT_CONFIG_COUNT): nothing is written to .git/config, and the gates,
    which run outside the block, never see it. A checkout that kept its own credentials
    (actions/checkout's persist-credentials) is left to them: two headers would clash."""
    key = f"http.{server.rstrip('/')}/.extraheader"
    if not token or git.run(root, "config", "--get-all", key, check=False).stdout.strip():
        yield
        return
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    # The gates ran in this same .git: no hook or fsmonitor they may have configured runs
    # while git holds the token (configuration from the environment overrides the files')
    pairs = [(key, f"AUTHORIZATION: basic {basic}"), ("core.hooksPath", os.devnull), ("core.fsmonitor", "false")]
    count = int(os.environ.get("GIT_CONFIG_COUNT") or 0)  # entries the job set itself stay
    added = {"GIT_CONFIG_COUNT": str(count + len(pairs))}
    for i, (k, v) in enumerate(pairs, start=count):
        added.update({f"GIT_CONFIG_KEY_{i}": k, f"GIT_CONFIG_VALUE_{i}": v})
    before = {k: os.environ.get(k) for k in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- annotations ------------------------------------------------------------------------


class Annotation(NamedTuple):
    level: str  # error, warning or notice
    message: str
    file: str | None = None
    line: int | None = None
    col: int | None = None
    title: str | None = None


def escape_data(text: str) -> str:
    """A workflow command's message: no line break may end it early."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: also no `:` or `,`, which end a property."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(a: Annotation) -> str:
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in
                     (("file", a.file), ("line", a.line), ("col", a.col), ("title", a.title)) if value not in (None, ""))
    return f"::{a.level}{' ' + props if props else ''}::{escape_data(a.message)}"


def limited(annotations: Iterable[Annotation]) -> list[str]:
    """The workflow commands of at most PER_LEVEL annotations of each severity, and one
    notice counting those left out (GitHub would drop them silently)."""
    shown: dict[str, int] = {}
    lines, left = [], 0
    for a in annotations:
        shown[a.level] = shown.get(a.level, 0) + 1
        if shown[a.level] <= PER_LEVEL:
            lines.append(command(a))
        else:
            left += 1
    if left:
        lines.append(command(Annotation("notice", f"{left} more annotation(s) not shown; the step summary lists every problem")))
    return lines


# --- files of the runner ----------------------------------------------------------------


def writable(env: Mapping[str, str], name: str) -> Path | None:
    """The file the runner named in `name`, after checking it can be appended to (writing
    nothing); None when the variable is not set. An unwritable one is bad input."""
    value = env.get(name)
    if not value:
        return None
    try:
        with open(value, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise LedgerError(f"{value} (${name}): cannot be written ({e.strerror}); the runner sets it to a writable file, "
                          f"so unset {name} or point it at one") from None
    return Path(value)


def write_outputs(path: Path, values: Mapping[str, str]) -> None:
    """Step outputs in the runner's multi-line form: name<<DELIMITER, value, DELIMITER,
    with a delimiter that occurs nowhere in the value."""
    chunks = []
    for name, value in values.items():
        delimiter = f"ledger_{secrets.token_hex(16)}"
        while delimiter in value:
            delimiter = f"ledger_{secrets.token_hex(16)}"
        chunks.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(chunks))


def write_summary(path: Path, blocks: Iterable[str], note: str) -> bool:
    """Append markdown `blocks` to the step summary, whole blocks only, within SUMMARY_LIMIT
    bytes; when one does not fit, stop there and append `note`. True when all fitted."""
    out, size, complete = [], 0, True
    reserve = len(note.encode()) + 2
    for block in blocks:
        cost = len(block.encode()) + 1
        if size + cost > SUMMARY_LIMIT - reserve:
            complete = False
            break
        out.append(block)
        size += cost
    if not complete:
        out.append(note)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return complete
