from __future__ import annotations

import sys
from pathlib import Path

from patch_ledger import git
from patch_ledger.errors import OK, LedgerError
from patch_ledger.report import emit
from patch_ledger.resources import PACKAGE, data_dir

CONFIG = ".ledger/config.yaml"


def run(cwd: str, hooks: bool, force: bool, fmt: str) -> int:
    root = git.toplevel(cwd)
    planned = _hook_plan(root, force) if hooks else []  # refuse before writing anything
    created = [CONFIG] if write_config(root) else []
    remote = _sync_remote(root)
    if remote:
        from patch_ledger.sync import configure_remote

        if configure_remote(root, remote):
            created.append(f"remote.{remote}.fetch for refs/ledger/patches/*")
    for source, target in planned:
        created.append(install_hook(source, target))
    emit(fmt, {"created": created, "root": str(root)},
         lambda _: "\n".join([f"created {p}" for p in created] or [f"{CONFIG} exists; nothing to do"]))
    return OK


def _sync_remote(root: Path) -> str | None:
    """The remote the ledger syncs with, when the repository has it (plain `git fetch` then
    brings the ledger too)."""
    from patch_ledger import config

    wanted = config.load(root).get("sync", {}).get("remote", "origin")
    remotes = git.run(root, "remote").stdout.decode().split()
    return wanted if wanted in remotes else None


def write_config(root: Path) -> bool:
    """.ledger/config.yaml with commented defaults, unless there is one already."""
    config = root / CONFIG
    if config.exists():
        return False
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text((PACKAGE / "templates" / "config.yaml").read_text())
    return True


def _hook_plan(root: Path, force: bool) -> list[tuple[Path, Path]]:
    hooks_dir = Path(git.run(root, "rev-parse", "--git-path", "hooks").stdout.decode().strip())
    hooks_dir = hooks_dir if hooks_dir.is_absolute() else root / hooks_dir
    plan = []
    for source in sorted(data_dir("hooks").iterdir()):
        target = hooks_dir / source.name
        legacy = target.with_name(target.name + ".legacy")
        if target.exists() and target.read_text(errors="replace") != _render(source):
            if not force:
                raise LedgerError(f"{target}: a different hook is installed; --force keeps it as {legacy.name} and runs it first")
            if legacy.exists():
                raise LedgerError(f"{legacy}: exists already; merge it with {target.name} by hand, then run ledger init --hooks again")
        plan.append((source, target))
    return plan


def _render(source: Path) -> str:
    return source.read_text().replace("@PYTHON@", sys.executable)


def install_hook(source: Path, target: Path) -> str:
    """Install one hook script, with this interpreter written in so the hook finds us; a
    different hook already there is kept as <hook>.legacy, which ours runs first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    text = _render(source)
    if target.exists() and target.read_text(errors="replace") != text:
        target.replace(target.with_name(target.name + ".legacy"))
    target.write_text(text)
    target.chmod(0o755)
    return str(target)
