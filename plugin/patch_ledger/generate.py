"""Files derived from schemas/ and the layout: written by `python -m patch_ledger.generate`,
and compared by a test that fails when one is stale (`--check` does the same)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from patch_ledger import guards, machine
from patch_ledger.layout import LAYOUT, files_regex

HEADER = "<!-- Generated from schemas/ by `python -m patch_ledger.generate`; do not edit by hand. -->"


def state_machines_md() -> str:
    parts = [HEADER, "", "# State machines", "",
             "Every machine below is read from the `x-state-machine` block of its schema in `schemas/`;",
             "its states are that schema's `$defs/state`. A terminal state is never left. Guards are the",
             "named rules of `patch_ledger/guards.py` that the schema lists for the machine.", ""]
    for kind in machine.MACHINE_KINDS:
        parts.extend(_machine_section(machine.load(kind)))
    return "\n".join(parts)


def _machine_section(m: machine.Machine) -> list[str]:
    terminal = ", ".join(s for s in m.states if s in m.terminal) or "none"
    lines = [f"## {m.name} (`schemas/{m.kind}.json`)", "",
             f"Initial: {m.initial}. Terminal: {terminal}.", "", "```mermaid", "stateDiagram-v2",
             f"    [*] --> {m.initial}"]
    lines += [f"    {source} --> {target} : {name}" for (source, target), name in m.transitions.items()]
    lines += [f"    {state} --> [*]" for state in m.states if state in m.terminal]
    lines += ["```", ""]
    if m.roles:
        lines += ["| phase | role |", "|---|---|", *(f"| {p} | {r} |" for p, r in m.roles.items()), ""]
    for name in m.guards:
        fn = guards.DOCUMENT_GUARDS.get(name) or guards.RUN_GUARDS[name]
        lines.append(f"- guard `{name}`: {' '.join((fn.__doc__ or '').split())}")
    return lines + ([""] if m.guards else [])


def precommit_hooks_yaml() -> str:
    kinds = ", ".join(kind for kind, _ in LAYOUT)
    return f"""# Generated from patch_ledger/layout.py by `python -m patch_ledger.generate`; do not edit by hand.
- id: ledger-check
  name: ledger check
  description: "Check .ledger/ state files ({kinds}) against their schemas, state machines, previous version and run."
  entry: ledger check
  language: python
  files: '{files_regex()}'
  require_serial: true
  stages: [pre-commit, pre-merge-commit, manual]
  minimum_pre_commit_version: "3.2.0"
"""


GENERATED: dict[str, Callable[[], str]] = {
    "docs/state-machines.md": state_machines_md,
    ".pre-commit-hooks.yaml": precommit_hooks_yaml,
}


def stale(root: Path) -> list[str]:
    return [p for p, render in GENERATED.items() if not (root / p).is_file() or (root / p).read_text() != render()]


def main(argv: list[str]) -> int:
    root = Path.cwd()
    if "--check" in argv:
        out_of_date = stale(root)
        for path in out_of_date:
            print(f"{path}: stale; run `python -m patch_ledger.generate`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, render in GENERATED.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(render())
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
