"""`.ledger/config.yaml`, read and validated: defaults when there is none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patch_ledger import documents, schemas

PATH = ".ledger/config.yaml"

def load(root: Path) -> dict[str, Any]:
    """The configuration (defaults when there is none), or LedgerError naming the file, the
    line and what is wrong."""
    return documents.load_checked(root, PATH, "config") or {"schema_version": schemas.CURRENT_VERSION}


def required_gates(config: dict[str, Any]) -> list[str]:
    return [g["name"] for g in config.get("gates", []) if g.get("required")]
