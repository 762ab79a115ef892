"""The command line: the only module that knows click. Each command parses its options,
calls a function of patch_ledger.commands with plain values, and returns its exit code;
`main` maps errors to the exit codes of DESIGN.md."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click

from patch_ledger import __version__
from patch_ledger.errors import BAD_INPUT, INTERNAL, LedgerError

FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="Report as text for people or JSON for scripts.")

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="patch-ledger")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """patch-ledger: where every change came from, whether it passed its gates, and what
    became of it, recorded in git itself.

    Exit codes: 0 success, 1 a check or gate said no, 2 bad input or usage, 3 internal error.
    """

@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--base", metavar="REV", help="Compare with this commit instead of HEAD (in CI: the PR's base).")
@click.option("--staged", is_flag=True, help="Check the index, as a commit would record it (the native hook).")
@FORMAT
def check(paths: tuple[str, ...], base: str | None, staged: bool, fmt: str) -> int:
    """Check state files under .ledger/ against their schemas, their state machines,
    their previous version and the rest of their run.

    With no PATHS, every state file; with --staged, those staged for commit."""
    if base and staged:
        raise click.UsageError("--base and --staged exclude each other: --staged compares the index with HEAD")
    from patch_ledger.commands import check as command

    return command.run(".", paths, base, staged, fmt)

@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--check", "dry_run", is_flag=True, help="Only report what needs migrating (exit 1 if anything does).")
@FORMAT
def migrate(paths: tuple[str, ...], dry_run: bool, fmt: str) -> int:
    """Upgrade state files from an older schema_version, in place."""
    from patch_ledger.commands import migrate as command

    return command.run(".", paths, dry_run, fmt)

@cli.command()
@click.option("--hooks", is_flag=True, help="Also install the native git hooks from hooks/.")
@click.option("--force", is_flag=True, help="Replace an existing hook (kept as <hook>.legacy).")
@FORMAT
def init(hooks: bool, force: bool, fmt: str) -> int:
    """Create .ledger/config.yaml with commented defaults."""
    from patch_ledger.commands import init as command

    return command.run(".", hooks, force, fmt)

@cli.command()
@FORMAT
def status(fmt: str) -> int:
    """Show the runs under .ledger/ and the state of their tasks."""
    from patch_ledger.commands import status as command

    return command.run(".", fmt)

@cli.command()
@click.option("--dir", "directory", type=click.Path(), help="Build the example here (new or empty) and keep it.")
@FORMAT
def demo(directory: str | None, fmt: str) -> int:
    """Build a repository from the bundled example and show the checker at work."""
    from patch_ledger.commands import demo as command

    return command.run(directory, fmt)

def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and "_LEDGER_COMPLETE" not in os.environ:  # bare `ledger`: help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name="ledger")))
        return 0
    try:
        return _exit_code(cli.main(args=args, prog_name="ledger", standalone_mode=False))
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "ledger"
        return _refuse(args, f"{e.format_message()} (see `{where} --help`)")
    except click.ClickException as e:
        return _refuse(args, e.format_message())
    except click.Abort:
        return _refuse(args, "aborted")
    except LedgerError as e:
        return _refuse(args, str(e), e.exit_code)
    except OSError as e:  # the file system said no: name the file, as for any bad input
        return _refuse(args, f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}; check the path and its permissions")
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a defect of ours: exit 3, the traceback only when asked
        if "--debug" in args:
            raise
        click.echo(f"ledger: internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and report it)", err=True)
        return INTERNAL

def _refuse(args: list[str], message: str, code: int = BAD_INPUT) -> int:
    """One line on stderr; under --format json, also an object on stdout for scripts."""
    click.echo(f"ledger: error: {message}", err=True)
    if "json" in args and any(a == "--format" or a == "--format=json" for a in args):
        import json

        click.echo(json.dumps({"ok": False, "exit_code": code, "error": message}))
    return code


def _exit_code(value: Any) -> int:
    return value if isinstance(value, int) else 0

