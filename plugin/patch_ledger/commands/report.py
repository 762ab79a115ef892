"""`ledger report --html FILE`: the ledger, the gates and the runs as one self-contained page
(patch_ledger.html_report). The page is written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from patch_ledger import git, html_report
from patch_ledger.errors import OK, LedgerError
from patch_ledger.report import emit


def run(cwd: str, html_file: str, fmt: str) -> int:
    target = Path(cwd, html_file)
    _check_target(html_file, target)
    root = git.toplevel(cwd)
    page = html_report.collect(root)
    rendered = html_report.render(page)
    data = rendered.html.encode("utf-8")
    _write(html_file, target, data)
    emit(fmt, {"file": str(target.resolve()), "bytes": len(data), **rendered.counts}, _text)
    return OK


def _check_target(given: str, target: Path) -> None:
    """Refuse before reading anything when FILE cannot be written."""
    if target.is_dir():
        raise LedgerError(f"{given}: is a directory; give --html the path of a file to write")
    if not target.parent.is_dir():
        raise LedgerError(f"{given}: its directory {target.parent} does not exist; create it or choose another path")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise LedgerError(f"{given}: not writable; choose a path you may write")


def _write(given: str, target: Path, data: bytes) -> None:
    """Through a temporary file in the same directory, renamed over FILE: a reader (or a
    failed write) never sees half a page."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as e:
        Path(temporary).unlink(missing_ok=True)
        raise LedgerError(f"{given}: cannot be written ({e.strerror or e}); choose another path") from None


def _text(value: dict[str, Any]) -> str:
    return (f"wrote {value['file']} ({value['bytes']:,} bytes): {value['patches']} patch(es), "
            f"{value['timeline']} in the timeline, {value['gates']} gate verdict(s), {value['runs']} run(s) "
            f"with {value['tasks']} task(s)")
