"""``dispatch finance sync | sql | report``: the audit stream in a DuckDB store, and reports from it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import duckdb
import typer
from rich.table import Table

from dispatch_core.settings import Settings, get_settings
from workers.finance_report import FAILURE_COLUMNS
from workers.finance_report import report as build_report
from workers.finance_store import Applied, FinanceStore, SyncResult, open_store, sync

from .output import console, errors, fail, run

finance_app = typer.Typer(help="The finance store (DuckDB) and reports from it.", no_args_is_help=True)

AuditTopic = Annotated[str | None, typer.Option(help="audit topic (default: settings)")]
StorePath = Annotated[Path | None, typer.Option("--store", help="DuckDB file (default: DISPATCH_FINANCE_STORE)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def open_store_or_fail(path: Path) -> FinanceStore:
    """The store, read-only; one error line when it is missing or stays locked (waits up to 60 s for a writer)."""
    if not path.exists():
        fail(f"no finance store at {path}: run `dispatch finance sync` first")
    try:
        return open_store(path, read_only=True, wait_s=60.0)
    except duckdb.Error as exc:
        fail(f"cannot open the finance store {path}: {str(exc).splitlines()[0]}")


async def _sync(s: Settings, path: Path, topic: str, follow: bool, max_batch: int, verbose: bool) -> SyncResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def progress(applied: Applied, offsets: dict[int, int]) -> None:
        at = " ".join(f"{p}:{o}" for p, o in sorted(offsets.items()))
        errors.print(f"committed {applied.read} events ({applied.new} new) next offsets {at}", soft_wrap=True)

    return await sync(path, s.kafka_bootstrap, topic, follow=follow, stop=stop, max_records=max_batch,
                      on_batch=progress if verbose else None)


def sync_store(s: Settings, path: Path, topic: str, *, follow: bool = False, max_batch: int = 5000,
               verbose: bool = False) -> SyncResult:
    """Bring the store at ``path`` up to the end of ``topic`` (or follow it until SIGINT/SIGTERM)."""
    try:
        return run(_sync(s, path, topic, follow, max_batch, verbose))
    except duckdb.Error as exc:
        fail(f"finance store {path}: {str(exc).splitlines()[0]}")


@finance_app.command("sync")
def sync_cmd(
    audit_topic: AuditTopic = None,
    store: StorePath = None,
    follow: Annotated[bool, typer.Option("--follow", help="keep tailing until SIGINT/SIGTERM")] = False,
    max_batch: Annotated[int, typer.Option(help="most events per DuckDB transaction", min=1)] = 5000,
    verbose: Annotated[bool, typer.Option("--verbose", help="one line per committed batch, on stderr")] = False,
) -> None:
    """Tail the audit topic into the finance store: each event once, resuming where the last run stopped."""
    s = get_settings()
    path, topic = store or s.finance_store_path, audit_topic or s.topic_audit
    done = sync_store(s, path, topic, follow=follow, max_batch=max_batch, verbose=verbose)
    console.print(f"{path}: {done.read} events read from {topic}, {done.new} new, {done.undecodable} undecodable, "
                  f"in {done.seconds:.2f} s ({done.events_per_s:.0f} events/s)", soft_wrap=True)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


@finance_app.command("sql")
def sql_cmd(
    query: Annotated[str, typer.Argument(help="one SQL statement; the store is opened read-only")],
    store: StorePath = None,
    as_json: AsJson = False,
) -> None:
    """Ask the finance store your own question (tables: decisions, settlements, decision_budgets, offsets)."""
    path = store or get_settings().finance_store_path
    with open_store_or_fail(path) as st:
        try:
            cur = st.db.execute(query)
        except duckdb.Error as exc:
            fail(str(exc).splitlines()[0])
        names = [c[0] for c in cur.description or []]
        rows = cur.fetchall()
    if as_json:
        print(json.dumps([dict(zip(names, r)) for r in rows], indent=2, default=str))
        return
    table = Table(*names)
    for r in rows:
        table.add_row(*map(_cell, r))
    console.print(table)


def _when(option: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be an ISO 8601 date or time, not {value!r}")
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


@finance_app.command("report")
def report(
    audit_topic: AuditTopic = None,
    store: StorePath = None,
    since: Annotated[str | None, typer.Option(help="decisions at or after (ISO 8601; UTC if no zone)")] = None,
    until: Annotated[str | None, typer.Option(help="decisions before (ISO 8601; UTC if no zone)")] = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="report the store as it is, without syncing first")] = False,
    as_json: AsJson = False,
    html: Annotated[Path | None, typer.Option("--html", help="also write a self-contained HTML page here")] = None,
) -> None:
    """Spend, savings, triggers, SLA risk, adoption, canary vs stable and executor failures, from the finance
    store (synced first)."""
    s = get_settings()
    path, topic = store or s.finance_store_path, audit_topic or s.topic_audit
    start, end = _when("--since", since), _when("--until", until)
    if not no_sync:
        sync_store(s, path, topic)
    with open_store_or_fail(path) as st:
        data = build_report(st.db, start, end)
        if html is not None:
            from workers.finance_html import write_html

            write_html(html, data, st.db, start, end)
            errors.print(f"wrote {html}", soft_wrap=True)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    render(data)


def render(data: dict[str, Any]) -> None:
    """The report as tables."""
    svc = Table("service", "decisions", "routed", "downgraded", "rejected", "cost", "estimated settled",
                "actual settled", title="spend by service", title_justify="left")
    for name, r in data["services"].items():
        svc.add_row(name, *(_cell(r[k]) for k in ("decisions", "routed", "downgraded", "rejected", "cost",
                                                   "estimated_settled", "actual_settled")))
    sav = Table("service", "tasks", "vs untiered", "%", "vs complexity only", "%", "unserved", "unserved cost",
                title="savings per served task (cost vs each counterfactual); unserved tasks apart",
                title_justify="left")
    rows = {**data["savings"]["services"], "total": data["savings"]["total"]}
    for name, r in rows.items():
        u, c, x = r["vs_untiered"], r["vs_complexity"], r["unserved"]
        sav.add_row(name, str(r["tasks"]), u["saved"], f"{u['saved_pct']:.1f}", c["saved"], f"{c['saved_pct']:.1f}",
                    str(x["tasks"]), x["cost"])
    trig = Table("outcome", "trigger", "decisions", title="downgrades and rejections by trigger", title_justify="left")
    for outcome in ("downgraded", "rejected"):
        for t, n in data["triggers"][outcome].items():
            trig.add_row(outcome, t, str(n))
    risk = Table("service", "routed", "at risk", "%", "over SLA", title="SLA risk (executor p95 within 10% of SLA)",
                 title_justify="left")
    for name, r in data["sla_risk"].items():
        risk.add_row(name, str(r["routed"]), str(r["at_risk"]), f"{r['at_risk_pct']:.1f}", str(r["over_sla"]))
    adopt = Table("service", "mode", "pinned", "canary", "canary %", "decisions", "first seen", "last seen",
                  title="adoption", title_justify="left")
    for name, r in data["adoption"]["services"].items():
        adopt.add_row(name, r["mode"], _cell(r["pinned_version"])[:12], _cell(r["canary_version"])[:12],
                      _cell(r["canary_pct"]), str(r["decisions"]), r["first_seen"], r["last_seen"])
    arms = Table("service", "arm", "tasks", "cost/task", "downgrade %", "reject %", "dispatch p50 ms",
                 "dispatch p95 ms", title="canary vs stable", title_justify="left")
    for name, by_arm in data["canary"].items():
        for arm, r in by_arm.items():
            arms.add_row(name, arm, str(r["tasks"]), _cell(r["cost_per_task"]), _cell(r["downgrade_pct"]),
                         _cell(r["rejection_pct"]), _cell(r["dispatch_p50_ms"]), _cell(r["dispatch_p95_ms"]))
    fails = Table(*FAILURE_COLUMNS.values(), title="executor failures", title_justify="left")
    for name, r in data["executor_failures"]["executors"].items():
        fails.add_row(name, *(_cell(r[k]) for k in list(FAILURE_COLUMNS)[1:]))
    for t in (svc, sav, trig, risk, adopt, arms, fails):
        console.print(t)
    console.print(data["executor_failures"]["extra_cost_rule"], soft_wrap=True)
    sun = data["adoption"]["sunset"]
    verdict = "FLAG: fewer than 3 services in enforce mode" if sun["flag"] else (
        "ok" if sun["due"] else f"not due yet (review at {sun['review_at']})")
    console.print(f"sunset rule (3 services in enforce mode 90 days after the first): {verdict}; "
                  f"{sun['services_in_enforce']} in enforce as of {sun['as_of']}", soft_wrap=True)
