"""``dispatch finance report``: what the audit stream says about spend, read as finance would."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from dispatch_core.settings import get_settings
from workers.finance import AuditLog, read_audit_to_end, summarise

from .output import console, run

finance_app = typer.Typer(help="Reports from the audit stream.", no_args_is_help=True)


def by_service(log: AuditLog) -> dict[str, dict[str, Any]]:
    """Per service: decisions, downgrades, rejections, estimated and actual cost of settled work."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "decisions": 0, "downgraded": 0, "rejected": 0, "estimated": Decimal(0), "actual": Decimal(0)})
    settled = log.settled()
    for did, d in log.decisions.items():
        row = out[d["service"]]
        row["decisions"] += 1
        row["downgraded"] += d["outcome"] == "downgraded"
        row["rejected"] += d["outcome"] == "rejected"
        if did in settled:
            row["estimated"] += d["reserved"]
            row["actual"] += settled[did]["actual"]
    return {svc: {**row, "estimated": str(row["estimated"]), "actual": str(row["actual"])} for svc, row in out.items()}


@finance_app.command("report")
def report(
    audit_topic: Annotated[str | None, typer.Option(help="audit topic (default: settings)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Decisions, downgrades and estimated vs actual cost per service, from the audit topic alone."""
    settings = get_settings()
    log = run(read_audit_to_end(settings.kafka_bootstrap, audit_topic or settings.topic_audit))
    rows = by_service(log)
    if as_json:
        print(json.dumps({"services": rows, "totals": summarise(log)}, indent=2))
        return
    table = Table("service", "decisions", "downgraded", "rejected", "estimated", "actual",
                  title="settled spend by service (audit stream)", title_justify="left")
    for svc, r in sorted(rows.items()):
        table.add_row(svc, str(r["decisions"]), str(r["downgraded"]), str(r["rejected"]), r["estimated"], r["actual"])
    console.print(table)
