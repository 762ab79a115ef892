from __future__ import annotations

from typing import Sequence

from patch_ledger import schemas
from patch_ledger.errors import CHECK_FAILED, OK
from patch_ledger.migrate import Migrated, migrate
from patch_ledger.report import emit


def run(cwd: str, paths: Sequence[str], dry_run: bool, fmt: str) -> int:
    done = migrate(cwd, paths, dry_run)
    emit(fmt, {"schema_version": schemas.CURRENT_VERSION, "dry_run": dry_run, "files": [m._asdict() for m in done]},
         lambda _: _text(done, dry_run))
    return CHECK_FAILED if dry_run and done else OK


def _text(done: list[Migrated], dry_run: bool) -> str:
    verb = "needs migrating" if dry_run else "migrated"
    lines = [f"{m.path}: {verb} from schema_version {m.old_version} to {schemas.CURRENT_VERSION}" for m in done]
    return "\n".join(lines or [f"ledger migrate: every state file is at schema_version {schemas.CURRENT_VERSION}"])
