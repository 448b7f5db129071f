"""``dispatch audit verify``: check the audit topic's hash chains against their checkpoints."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from dispatch_core.settings import get_settings
from stack.kafka import quiet_aiokafka
from streams.audit import verify_topic

from .output import console, run

audit_app = typer.Typer(help="The audit stream: integrity and explanations.", no_args_is_help=True)


@audit_app.command("verify")
def verify(
    topic: Annotated[str | None, typer.Option(help="audit topic to check (default: settings)")] = None,
    checkpoints: Annotated[str | None, typer.Option(help="checkpoint topic (default: settings)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Verify every hash chain on the audit topic; exit 1 at the first break of any chain."""
    settings = get_settings()
    with quiet_aiokafka():
        result = run(verify_topic(settings, topic, checkpoints))
    chains = [c.as_dict() for c in result.chains.values()]
    problems = [{"kind": b.kind, "partition": b.partition, "offset": b.offset, "detail": b.detail}
                for b in result.problems]
    if as_json:
        print(json.dumps({"ok": result.ok, "topic": topic or settings.topic_audit, "unlinked": result.unlinked,
                          "chains": chains, "problems": problems}, indent=2))
    else:
        table = Table("chain", "partition", "events", "offsets", "seq", "checkpoint", "repeated", "rewound",
                      "result", title=f"audit chains on {topic or settings.topic_audit}", title_justify="left")
        for c in chains:
            brk = c["break"]
            table.add_row(c["chain"], str(c["partition"]), str(c["events"]), f"{c['first_offset']}..{c['last_offset']}",
                          str(c["last_seq"]), str(c["checkpoint_seq"] or "-"), str(c["repeated"]), str(c["rewound"]),
                          "ok" if brk is None else f"{brk['kind']} at {brk['partition']}/{brk['offset']}: {brk['detail']}")
        console.print(table)
        for p in problems:
            console.print(f"{p['kind']} at {p['partition']}/{p['offset']}: {p['detail']}")
        if result.unlinked:
            console.print(f"{result.unlinked} events written before hash chains (schema v2 and older): not linked")
        console.print("verified: every chain is intact" if result.ok else "BROKEN: see above")
    raise typer.Exit(0 if result.ok else 1)
