"""One module a command: each `run(...)` takes plain values, reports, and returns an exit code.

What every command that records needs lives here: `ledger run` and the gates load none of
the patch commands' modules for it, and a command that records nothing (the hook's `ledger
check`) loads nothing for it at all."""

from __future__ import annotations

import os
from pathlib import Path


def actor_of(root: Path, given: str | None) -> str:
    """Who acts: --actor, else git's user.name, else the login name."""
    if given and given.strip():
        return given.strip()
    import getpass

    from patch_ledger import git

    name = git.run(root, "config", "user.name", check=False).stdout.decode().strip()
    return name or os.environ.get("LEDGER_ACTOR") or getpass.getuser() or "unknown"
