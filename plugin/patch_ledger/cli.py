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
    """Show the ledger (patches by state, the latest, the quarantined) and the runs under .ledger/."""
    from patch_ledger.commands import status as command

    return command.run(".", fmt)

@cli.command()
@click.option("--html", "html_file", required=True, metavar="FILE",
              help="Write one self-contained HTML page (it loads nothing from the network) to FILE.")
@FORMAT
def report(html_file: str, fmt: str) -> int:
    """The ledger (patches by state, each one's timeline), the gates and each run's DAG of
    tasks, as one HTML page to open in any browser or keep as a CI artifact."""
    from patch_ledger.commands import report as command

    return command.run(".", html_file, fmt)

@cli.command()
@click.option("--dir", "directory", type=click.Path(), help="Build the example here (new or empty) and keep it.")
@FORMAT
def demo(directory: str | None, fmt: str) -> int:
    """Build a repository from the bundled example and show the checker at work."""
    from patch_ledger.commands import demo as command

    return command.run(directory, fmt)

@cli.group()
def patch() -> None:
    """Record patches in the ledger (refs/ledger/patches/) and move them through their life."""


ACTOR = click.option("--actor", help="Who acts (default: git's user.name).")


@patch.command("add")
@click.argument("source", required=False, metavar="[FILE|-]")
@click.option("--base", metavar="REV", help="The commit the diff applies to (default: HEAD).")
@click.option("--task", help="The task the patch belongs to.")
@click.option("--message", help="What the patch does, in a line.")
@ACTOR
@FORMAT
def patch_add(source: str | None, base: str | None, task: str | None, message: str | None, actor: str | None, fmt: str) -> int:
    """Record a diff as PENDING (a file, - for standard input, or the working tree's changes)
    and print its id."""
    from patch_ledger.commands import patch as command

    return command.add(".", source, base, task, actor, message, fmt)


@patch.command("record")
@click.argument("revrange")
@ACTOR
@FORMAT
def patch_record(revrange: str, actor: str | None, fmt: str) -> int:
    """Record every non-merge commit of REVRANGE (e.g. main..HEAD); again is a no-op. A
    recorded revert of an applied patch rolls that patch back."""
    from patch_ledger.commands import patch as command

    return command.record(".", revrange, actor, fmt)


@patch.command("list")
@click.option("--state", "states", multiple=True, metavar="STATE", help="Only patches in this state (repeatable).")
@FORMAT
def patch_list(states: tuple[str, ...], fmt: str) -> int:
    """List the patches of the ledger."""
    from patch_ledger.commands import patch as command

    return command.listing(".", states, fmt)


@patch.command("show")
@click.argument("patch_id", metavar="ID")
@FORMAT
def patch_show(patch_id: str, fmt: str) -> int:
    """Show a patch and its history (a unique id prefix is enough)."""
    from patch_ledger.commands import patch as command

    return command.show(".", patch_id, fmt)


def _lifecycle_command(name: str, doc: str, needs_reason: bool = False) -> None:
    @patch.command(name, help=doc)
    @click.argument("patch_id", metavar="ID")
    @click.option("--reason", required=needs_reason, default="", help="Why (recorded in the ledger).")
    @ACTOR
    @FORMAT
    def step(patch_id: str, reason: str, actor: str | None, fmt: str) -> int:
        from patch_ledger import lifecycle
        from patch_ledger.commands import patch as command

        act = getattr(lifecycle, name)
        return command.move(".", lambda root: act(root, patch_id, command.actor_of(root, actor), reason), fmt)


_lifecycle_command("quarantine", "APPLIED or VERIFIED -> QUARANTINED, with the reason.", needs_reason=True)
_lifecycle_command("release", "QUARANTINED -> APPLIED: to be verified again.")


@patch.command("validate")
@click.argument("patch_id", metavar="ID")
@ACTOR
@FORMAT
def patch_validate(patch_id: str, actor: str | None, fmt: str) -> int:
    """PENDING -> VALIDATING -> VALIDATED or REJECTED (with every reason): the diff parses,
    its paths stay in the repository, the policy holds, and it applies to its base (checked
    in a temporary index: your working tree and index are not touched)."""
    from patch_ledger import validation
    from patch_ledger.commands import patch as command

    return command.move(".", lambda root: validation.validate(root, patch_id, command.actor_of(root, actor)), fmt)


def _applying_command(name: str, doc: str) -> None:
    @patch.command(name, help=doc)
    @click.argument("patch_id", metavar="ID")
    @click.option("--worktree", metavar="DIR", help="Commit in this checkout (e.g. a git worktree) instead of this one.")
    @ACTOR
    @FORMAT
    def step(patch_id: str, worktree: str | None, actor: str | None, fmt: str) -> int:
        from patch_ledger import validation
        from patch_ledger.commands import patch as command

        act = getattr(validation, name)
        return command.move(".", lambda root: act(root, patch_id, command.actor_of(root, actor), worktree), fmt)


_applying_command("apply", "VALIDATED -> APPLIED: the stored bytes applied with git and committed on the current branch; refused when it would conflict.")
_applying_command("rollback", "APPLIED, VERIFIED or QUARANTINED -> ROLLED_BACK: the patch reverse-applied and committed.")


@patch.command("verify")
@click.argument("patch_id", metavar="ID")
@ACTOR
@FORMAT
def patch_verify(patch_id: str, actor: str | None, fmt: str) -> int:
    """APPLIED -> VERIFIED when every required gate passed, otherwise QUARANTINED."""
    from patch_ledger import lifecycle
    from patch_ledger.commands import patch as command

    return command.move(".", lambda root: lifecycle.verify(root, patch_id, command.actor_of(root, actor)), fmt)


@patch.command("supersede")
@click.argument("old", metavar="OLD")
@click.option("--by", "new", required=True, metavar="NEW", help="The patch that replaces OLD.")
@click.option("--reason", default="", help="Why (recorded in the ledger).")
@ACTOR
@FORMAT
def patch_supersede(old: str, new: str, reason: str, actor: str | None, fmt: str) -> int:
    """OLD -> SUPERSEDED by NEW."""
    from patch_ledger import lifecycle
    from patch_ledger.commands import patch as command

    return command.move(".", lambda root: lifecycle.supersede(root, old, new, command.actor_of(root, actor), reason), fmt)


@patch.command("expire")
@click.option("--older-than", required=True, metavar="DURATION", help="e.g. 30m, 12h, 7d, 2w.")
@ACTOR
@FORMAT
def patch_expire(older_than: str, actor: str | None, fmt: str) -> int:
    """EXPIRED for every PENDING or VALIDATED patch that has not moved for DURATION."""
    from patch_ledger.commands import patch as command

    return command.expire(".", older_than, actor, fmt)


@cli.group()
def gate() -> None:
    """Gates decide whether a patch may be verified: list them, run them, record the results."""


@gate.command("list")
@FORMAT
def gate_list(fmt: str) -> int:
    """The gates of .ledger/config.yaml and the plugins that provide gate kinds."""
    from patch_ledger.commands import gate as command

    return command.listing(".", fmt)


@gate.command("run")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--patch", "patch_id", metavar="ID", help="Run on this patch, applied to its base in a temporary worktree.")
@click.option("--rev", metavar="REV", help="Run on the patch of this commit (default: HEAD; recorded if it is not yet).")
@click.option("--shard", metavar="I/N", help="Run the I-th of N parts of each shardable gate (a CI matrix job).")
@ACTOR
@FORMAT
def gate_run(names: tuple[str, ...], patch_id: str | None, rev: str | None, shard: str | None, actor: str | None, fmt: str) -> int:
    """Run the gates NAME... (default: all) and record each result on the patch in the
    ledger. Exit 1 when a gate FAILED."""
    from patch_ledger.commands import gate as command

    return command.run(".", names, patch_id, rev, shard, actor, fmt)


@cli.command("run")
@click.argument("plan", required=False)
@click.option("--workers", "-j", type=int, default=2, show_default=True, help="Worker processes running tasks at once.")
@click.option("--resume", metavar="RUN_ID", help="Continue a run that was interrupted, paused or stopped by its budget.")
@click.option("--dry-run", is_flag=True, help="Print the order and the routing; run nothing, write nothing.")
@click.option("--budget", type=float, metavar="AMOUNT", help="Start no new task once the run's cost reaches AMOUNT.")
@click.option("--heartbeat", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="A worker silent for two of these is UNHEALTHY: killed, its task retried.")
@ACTOR
@FORMAT
def run_plan(plan: str | None, workers: int, resume: str | None, dry_run: bool, budget: float | None, heartbeat: float,
             actor: str | None, fmt: str) -> int:
    """Run PLAN (.ledger/plans/NAME.yaml, or NAME) as a DAG of tasks with a pool of workers;
    its state is committed JSON under .ledger/runs/. Exit 1 when a task failed or the run
    stopped early."""
    from patch_ledger.commands import run as command

    return command.run(".", plan, workers, resume, dry_run, budget, heartbeat, actor, fmt)


@cli.command()
@click.argument("remote", required=False)
@ACTOR
@FORMAT
def sync(remote: str | None, actor: str | None, fmt: str) -> int:
    """Fetch, merge and push the ledger through REMOTE (default: config sync.remote, else
    origin). Diverged histories of a patch are merged, keeping both; nothing is forced."""
    from patch_ledger.commands import patch as command

    return command.sync(".", remote, actor, fmt)


@cli.command("verify")
@FORMAT
def verify_ledger(fmt: str) -> int:
    """Check every ledger ref: well-formed trailers, every step a legal transition, sequence
    numbers and times monotonic, patch bytes matching their id. Exit 1 names each broken ref."""
    from patch_ledger.commands import patch as command

    return command.verify(".", fmt)


@cli.command()
@click.argument("patch_id", required=False, metavar="[ID]")
@FORMAT
def log(patch_id: str | None, fmt: str) -> int:
    """The full transition history of one patch, or of the whole ledger, with actors, times and reasons."""
    from patch_ledger.commands import patch as command

    return command.log(".", patch_id, fmt)


@cli.command("ci")
@click.option("--event-path", metavar="FILE", help="The event's JSON payload (default: $GITHUB_EVENT_PATH).")
@click.option("--gates", multiple=True, metavar="NAME[,NAME...]", envvar="LEDGER_GATES",
              help="Run only these gates (repeatable, or a comma list; default: every configured gate).")
@click.option("--run-gates/--no-run-gates", default=True, envvar="LEDGER_RUN_GATES", show_default=True,
              help="--no-run-gates: run none, only verify from the results other jobs recorded (after a matrix).")
@click.option("--shard", metavar="I/N", envvar="LEDGER_SHARD", help="Run the I-th of N parts of each shardable gate (a matrix job).")
@click.option("--push/--no-push", default=True, envvar="LEDGER_PUSH", show_default=True,
              help="Push the ledger when this job may (never on a pull request from a fork).")
@click.option("--args", "more", metavar="TEXT", help="More options of this command in one string, split as a shell "
              "would (shlex) but never run by one: the action's `args` input.")
@ACTOR
@FORMAT
@click.pass_context
def ci(ctx: click.Context, event_path: str | None, gates: tuple[str, ...], run_gates: bool, shard: str | None, push: bool,
       more: str | None, actor: str | None, fmt: str) -> int:
    """The CI flow for the GitHub event of this job (pull_request, push, merge_group): check
    the state files, record the event's commits as patches, validate and gate them, verify
    them on the default branch, push the ledger; report to the step summary, annotations and
    outputs. Exit 1 when a check or a required gate failed."""
    from patch_ledger.commands import ci as command

    given = dict(event_path=event_path, gates=gates, run_gates=run_gates, shard=shard, push=push, actor=actor, fmt=fmt)
    given.update(_more_options(ctx, more) if more else {})
    return command.run(".", **given)


def _more_options(ctx: click.Context, more: str) -> dict[str, Any]:
    """The options written in `more`, parsed by this same command; they win over the others."""
    import shlex

    from click.core import ParameterSource

    try:
        words = shlex.split(more)
    except ValueError as e:
        raise click.UsageError(f"--args {more!r}: {e}", ctx) from None
    assert ctx.command.name is not None
    sub = ctx.command.make_context(ctx.command.name, words, parent=ctx.parent)
    return {k: v for k, v in sub.params.items() if k != "more" and sub.get_parameter_source(k) == ParameterSource.COMMANDLINE}


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
    except click.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) inside a command
        click.echo("ledger: interrupted", err=True)
        return 130
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

