"""`.ledger/config.yaml`, read and validated: defaults when there is none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patch_ledger import documents, schemas
from patch_ledger.errors import LedgerError

PATH = ".ledger/config.yaml"


def load(root: Path) -> dict[str, Any]:
    """The configuration, or LedgerError naming the file, the line and what is wrong."""
    def read(p: str) -> bytes | None:
        try:
            return (root / p).read_bytes()
        except OSError:
            return None

    raw = read(PATH)
    if raw is None:
        return {"schema_version": schemas.CURRENT_VERSION}
    try:
        data = documents.parse("config", raw, PATH, read)
    except documents.InputProblem as e:
        raise LedgerError(f"{PATH}:{e.line or 1}:{e.col or 1}: {e}") from None
    errors = schemas.validate("config", data)
    if errors:
        from patch_ledger.positions import yaml_line_col

        line, col = yaml_line_col(raw.decode("utf-8", "replace"), errors[0].path)
        raise LedgerError(f"{PATH}:{line}:{col}: {errors[0].message}; `ledger check` lists every problem")
    return data


def required_gates(config: dict[str, Any]) -> list[str]:
    return [g["name"] for g in config.get("gates", []) if g.get("required")]
