"""``dispatch finance report --html FILE``: one self-contained page (plotly's JS inlined, no network).

Charts: committed spend over time against each budget's limit with downgrades marked, savings
by service against both counterfactuals, the trigger mix, and adoption per service; then the
savings per task (unserved tasks apart) and the executor failures as tables.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go

from .finance_report import FAILURE_COLUMNS, Period, budget_timeline


def spend_vs_budgets(timeline: list[dict[str, Any]]) -> go.Figure:
    """Committed spend (spent + reserved) over time, one line per budget scope (it falls back at each
    new window), its limit dashed, and the time buckets that held downgrades as red crosses."""
    fig = go.Figure()
    series: dict[str, list[dict[str, Any]]] = {}
    for r in timeline:
        series.setdefault(f"{r['budget_id']} {r['scope']}", []).append(r)
    for name, rows in series.items():
        x = [r["bucket"] for r in rows]
        fig.add_trace(go.Scatter(x=x, y=[float(r["committed_after"]) for r in rows], mode="lines", name=name))
        fig.add_trace(go.Scatter(x=x, y=[float(r["limit"]) for r in rows], mode="lines", line={"dash": "dash"},
                                 line_shape="hv", name=f"{name} limit"))
        down = [r for r in rows if r["downgrades"]]
        if down:
            fig.add_trace(go.Scatter(x=[r["bucket"] for r in down], y=[float(r["committed_after"]) for r in down],
                                     mode="markers", marker={"symbol": "x", "color": "red", "size": 7},
                                     text=[f"{r['downgrades']} downgrades" for r in down],
                                     name=f"{name} downgrades"))
    fig.update_layout(title="Spend against each budget (downgrades marked)", yaxis_title="committed")
    return fig


def savings_by_service(savings: dict[str, Any]) -> go.Figure:
    rows = {**savings["services"], "total": savings["total"]}
    names = list(rows)
    fig = go.Figure([
        go.Bar(name="vs untiered (requested / most capable tier)", x=names,
               y=[float(rows[n]["vs_untiered"]["saved"]) for n in names],
               text=[f"{rows[n]['vs_untiered']['saved_pct']:.1f}%" for n in names]),
        go.Bar(name="vs complexity alone (no budgets)", x=names,
               y=[float(rows[n]["vs_complexity"]["saved"]) for n in names],
               text=[f"{rows[n]['vs_complexity']['saved_pct']:.1f}%" for n in names]),
    ])
    fig.update_layout(title="Savings by service", barmode="group", yaxis_title="saved")
    return fig


def trigger_mix(triggers: dict[str, Any]) -> go.Figure:
    names = sorted(set(triggers["downgraded"]) | set(triggers["rejected"]))
    fig = go.Figure([go.Bar(name=outcome, x=names, y=[triggers[outcome].get(n, 0) for n in names])
                     for outcome in ("downgraded", "rejected")])
    fig.update_layout(title="Downgrades and rejections by trigger", barmode="stack", yaxis_title="decisions")
    return fig


def adoption_chart(adoption: dict[str, Any]) -> go.Figure:
    services = adoption["services"]
    names = list(services)
    fig = go.Figure([go.Bar(x=names, y=[services[n]["decisions"] for n in names],
                            text=[f"{services[n]['mode']}, canary {services[n]['canary_pct']}%" for n in names])])
    sun = adoption["sunset"]
    fig.update_layout(title=f"Adoption: decisions per service (sunset flag: {sun['flag']}, "
                            f"{sun['services_in_enforce']} in enforce)", yaxis_title="decisions")
    return fig


def failures_table(failures: dict[str, Any]) -> str:
    """The executor failures as an HTML table, with the extra-cost rule under it."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in FAILURE_COLUMNS.values())
    rows = "".join("<tr><td>" + html.escape(name) + "</td>"
                   + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in list(FAILURE_COLUMNS)[1:]) + "</tr>"
                   for name, r in failures["executors"].items())
    return (f"<h2>Executor failures</h2><table id=\"executor-failures\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table><p>{html.escape(failures['extra_cost_rule'])}</p>")


def savings_table(savings: dict[str, Any]) -> str:
    """Savings per service and in total over the served tasks, and the unserved tasks apart."""
    head = "".join(f"<th>{c}</th>" for c in ("service", "served tasks", "saved vs untiered", "%",
                                             "saved vs complexity only", "%", "unserved tasks", "unserved cost"))
    body = ""
    for name, r in {**savings["services"], "total": savings["total"]}.items():
        u, c, x = r["vs_untiered"], r["vs_complexity"], r["unserved"]
        cells = [name, r["tasks"], u["saved"], u["saved_pct"], c["saved"], c["saved_pct"], x["tasks"], x["cost"]]
        body += "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>"
    return (f"<h2>Savings per task</h2><table id=\"savings\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table><p>A task is its first decision and its fallbacks: its cost is every attempt's, its "
            "counterfactuals its first decision's. Unserved tasks (the last attempt rejected, failed or expired) "
            "are not in the savings; their cost was spent for nothing.</p>")


def page(report: dict[str, Any], timeline: list[dict[str, Any]]) -> str:
    """The whole page; the first chart carries plotly.js inline, the others reuse it."""
    figures = [spend_vs_budgets(timeline), savings_by_service(report["savings"]), trigger_mix(report["triggers"]),
               adoption_chart(report["adoption"])]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"chart-{i}")
             for i, fig in enumerate(figures)]
    total = report["savings"]["total"]
    period = report["period"]
    head = (f"{report['totals']['decisions']} decisions, {report['totals']['first']} to {report['totals']['last']}"
            f" (since {period['since']}, until {period['until']}); saved {total['vs_untiered']['saved']} "
            f"({total['vs_untiered']['saved_pct']}%) vs untiered, {total['vs_complexity']['saved']} "
            f"({total['vs_complexity']['saved_pct']}%) vs complexity alone over {total['tasks']} served tasks; "
            f"{total['unserved']['tasks']} unserved tasks cost {total['unserved']['cost']}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>dispatch-core finance report</title></head>"
            f"<body><h1>dispatch-core finance report</h1><p>{html.escape(head)}</p>"
            + "".join(parts) + savings_table(report["savings"]) + failures_table(report["executor_failures"])
            + "</body></html>")


def write_html(path: Path, report: dict[str, Any], db: duckdb.DuckDBPyConnection,
               since: dt.datetime | None, until: dt.datetime | None) -> None:
    """Write the report's page to ``path``."""
    path.write_text(page(report, budget_timeline(Period(db, since, until))), encoding="utf-8")
