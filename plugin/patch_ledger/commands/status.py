"""`ledger status`: the ledger, the runs and the breakers (collected by patch_ledger.overview),
as aligned tables for people or as JSON (schemas/status.json) for scripts."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence, Union

from patch_ledger import git, overview
from patch_ledger.errors import OK
from patch_ledger.report import emit

# A cell of a table: plain text, or pieces of (text, state) each coloured by its state's tone.
Cell = Union[str, Sequence[tuple[str, str]]]

_COLOURS = {"good": "32", "bad": "31", "busy": "33", "plain": "", "head": "1"}


def run(cwd: str, fmt: str) -> int:
    root = git.toplevel(cwd)
    emit(fmt, overview.status_report(root), lambda report: text(report, colour=_wants_colour()))
    return OK


def _wants_colour() -> bool:
    """Colour for a person at a terminal only; NO_COLOR (set and not empty) turns it off."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def text(report: dict[str, Any], colour: bool = False) -> str:
    lines = _patches(report["patches"], colour)
    lines += _runs(report["runs"], colour)
    if report["breakers"]:
        lines.append(f"breakers holding work back: {len(report['breakers'])}")
        lines += _table(["TOOL", "STATE", "SINCE", "FAILURES IN A ROW"],
                        [[b["id"] or "?", [(b["state"], b["state"])], _when(b["since"]), _known(b["consecutive_failures"])]
                         for b in report["breakers"]], colour)
    return "\n".join(lines)


def _patches(p: dict[str, Any], colour: bool) -> list[str]:
    counts = _printable(", ".join(f"{n} {s}" for s, n in p["by_state"].items()))
    lines = [f"patches: {p['total']}" + (f" ({counts})" if p["total"] else "")]
    lines += _table(["PATCH", "STATE", "AT", "ACTOR", "GATES", "MESSAGE"],
                    [[x["id"][:12], [(x["state"], x["state"])], _when(x["at"]), x["actor"], _gates(x), x["message"] or ""]
                     for x in p["recent"]], colour)
    if p["quarantined"]:
        lines.append(f"quarantined: {len(p['quarantined'])}")
        lines += _table(["PATCH", "SINCE", "REASON"], [[x["id"][:12], _when(x["at"]), x["reason"]]
                                                      for x in p["quarantined"]], colour)
    return lines


def _gates(patch: dict[str, Any]) -> Cell:
    return _joined([(f"{g}:{v['state']}", v["state"]) for g, v in patch["gates"].items()], " ")


def _joined(pieces: list[tuple[str, str]], separator: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for piece in pieces:
        out += [(separator, ""), piece] if out else [piece]
    return out


def _runs(runs: list[dict[str, Any]], colour: bool) -> list[str]:
    if not runs:
        return ["runs: none under .ledger/runs (ledger demo shows one)"]
    rows = [[r["id"], [(r["state"] or "no run.json", r["state"] or "")], _share(r["progress"]),
             _joined([(f"{n} {s}", s) for s, n in r["tasks"].items()], ", ") or "no tasks", _extra(r)] for r in runs]
    return [f"runs: {len(runs)}", *_table(["RUN", "STATE", "DONE", "TASKS", "NOTES"], rows, colour)]


def _share(progress: Any) -> str:
    return f"{progress:.0%}" if isinstance(progress, (int, float)) else "?"


def _extra(r: dict[str, Any]) -> str:
    notes = [f"ETA {r['eta_s']:g} s" if r["eta_s"] is not None else "",
             f"stopped: `ledger run --resume {r['id']}` continues it" if r["scheduled"] is False else "",
             f"cost {r['cost'].get('money', 0):g} ({r['cost'].get('tokens', 0)} tokens)" if r["cost"] else "",
             f"unhealthy workers: {', '.join(map(str, r['unhealthy']))}" if r["unhealthy"] else ""]
    return "; ".join(n for n in notes if n)


def _when(stamp: str | None) -> str:
    return (stamp or "-")[:19].replace("T", " ")


def _known(value: Any) -> str:
    return "?" if value is None else str(value)


def _printable(value: str) -> str:
    """Every cell comes from a file or the ledger, which anyone who can push writes: no
    control character of theirs (an escape sequence, a carriage return) reaches the
    terminal. One "?" a character, so the columns stay aligned."""
    return "".join(c if c.isprintable() else "?" for c in value)


def _table(header: list[str], rows: list[list[Cell]], colour: bool) -> list[str]:
    """Rows under a header, every column as wide as its widest cell (the last one unpadded);
    every piece of text made printable here, so no cell can be forgotten."""
    cells = [[[(h, "head")] for h in header], *([_pieces(c) for c in row] for row in rows)]
    widths = [max(sum(len(t) for t, _ in row[i]) for row in cells) for i in range(len(header))]
    return ["  " + "  ".join(_cell(c, widths[i] if i < len(row) - 1 else 0, colour) for i, c in enumerate(row)).rstrip()
            for row in cells]


def _pieces(cell: Cell) -> list[tuple[str, str]]:
    return [(_printable(t), state) for t, state in ([(cell, "")] if isinstance(cell, str) else cell)]


def _cell(pieces: list[tuple[str, str]], width: int, colour: bool) -> str:
    shown = "".join(_paint(t, s, colour) for t, s in pieces)
    return shown + " " * (width - sum(len(t) for t, _ in pieces))


def _paint(piece: str, state: str, colour: bool) -> str:
    code = _COLOURS["head"] if state == "head" else _COLOURS[overview.tone(state)] if state else ""
    return f"\x1b[{code}m{piece}\x1b[0m" if colour and code and piece else piece
