"""The gates of `.ledger/config.yaml` (its `gates:` list, already checked against
schemas/config.json when the configuration was loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from patch_ledger.hookspecs import Gate, hookimpl


@hookimpl
def ledger_gate_collect(root: Path, config: Mapping[str, Any]) -> list[Gate]:
    return [Gate(g["name"], g["plugin"], g.get("args", {}), bool(g.get("required", False)), g.get("timeout"),
                 tuple(g.get("paths", ()))) for g in config.get("gates", [])]
