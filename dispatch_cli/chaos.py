"""``dispatch chaos``: run fault scenarios on a private local stack and print what survived.

The columns are defined in ``chaos/account.py``. Exit code 1 when any row breaks an
invariant of the default (exactly-once) configuration, so CI can run ``--quick`` as a check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from chaos.account import Row
from chaos.runner import run_chaos
from chaos.scenarios import SCENARIOS

from .output import console, errors, fail, read_settings, run

COLUMNS = ("scenario", "tasks_in", "distinct_decisions", "duplicate_events", "duplicate_executions", "lost",
           "routed_mismatches", "overshoot", "actual_above_estimate", "double_charges", "uncharged_executions",
           "fallbacks_doubled", "double_reservations", "chain_breaks", "recover_s")


def render(rows: list[Row], out: Console) -> None:
    """The table: one row per scenario, the note under its numbers."""
    table = Table(*COLUMNS, "ok", "note", title="dispatch chaos", title_justify="left")
    table.columns[0].no_wrap = True
    for r in rows:
        d = r.as_dict()
        cells = ["-" if d[c] is None else str(d[c]) for c in COLUMNS]
        table.add_row(*cells, "yes" if r.ok else "NO", r.note)
    out.print(table)


def chaos(
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", "-s", help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a short variant of every scenario (a few minutes, for CI)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON on stdout")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="also write the rows as JSON to this file")] = None,
) -> None:
    """Run fault scenarios (kills, outages, poison input, a contended budget) on a private Kafka + Redis."""
    names = list(dict.fromkeys(scenario or SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        fail(f"--scenario {', '.join(unknown)} is unknown; scenarios: {', '.join(SCENARIOS)}")
    progress = errors if as_json else console  # with --json, stdout carries only the JSON
    rows = run(run_chaos(read_settings(), names, quick=quick, say=lambda line: progress.print(line, soft_wrap=True,
                                                                                                   markup=False)))
    data = json.dumps([r.as_dict() for r in rows], indent=2, default=str)
    if out is not None:
        out.write_text(data + "\n")
    if as_json:
        print(data)
    else:
        render(rows, console)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
