from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builders import init_repo

# Real git everywhere: an author for commits, and no user or system config leaking in.
os.environ.update({
    "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
})


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty git repository (no commits yet), with an author configured."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return init_repo(tmp_path / "repo")
