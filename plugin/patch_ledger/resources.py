"""Where the data shipped with the package lives: schemas/, hooks/ and the examples.

An installed wheel carries `schemas/` and `hooks/` under `patch_ledger/_data/`; a source
checkout (an editable install, or the tests run from the tree) has them at the top level.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def data_dir(name: str) -> Path:
    for candidate in (PACKAGE / "_data" / name, PACKAGE.parent.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"patch-ledger is installed without its {name}/ directory; reinstall it")


def example_dir(name: str) -> Path:
    return PACKAGE / "examples" / name
