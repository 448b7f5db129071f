"""`dispatch finance sync | sql | report` on a run recorded by a real worker and executors."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from dispatch_cli.main import app

from ..streams.test_pipeline import audit_events  # plain fastavro on the .avsc files: no project decoder
from .chromium import render
from .conftest import TASKS, Recorded

runner = CliRunner()
ACTUAL = ("settled", "settled_late", "unreserved")


@pytest.fixture
def env(recorded: Recorded, monkeypatch, fresh_settings_cache, tmp_path) -> Recorded:
    for key, value in recorded.settings.as_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DISPATCH_FINANCE_STORE", str(tmp_path / "finance.duckdb"))
    return recorded


def independent_savings(records) -> dict[str, dict[str, Decimal]]:
    """Savings recomputed from the raw events: first decision per id, first settlement per (id, kind).
    A task is a first decision (no parent) routed, and the fallbacks after it (``parent_decision_id``);
    it costs the sum over its routed attempts of the actual an executor reported, else the estimate; it
    is compared against its first decision's counterfactuals when its last attempt was routed and not
    reported failed or expired (served), else counted as unserved with that cost."""
    decisions, settlements = {}, {}
    for name, e in audit_events(records):
        if name == "decision":
            decisions.setdefault(e["decision_id"], e)
        else:
            settlements.setdefault((e["decision_id"], e["kind"]), e)
    child = {d["parent_decision_id"]: d for d in decisions.values() if d.get("parent_decision_id")}
    out: dict[str, dict[str, Decimal]] = {}
    for first in decisions.values():
        if first.get("parent_decision_id") or first["assigned_tier"] is None:
            continue
        chain = [first]
        while chain[-1]["decision_id"] in child:
            chain.append(child[chain[-1]["decision_id"]])
        cost, outcome = Decimal(0), None
        for d in chain:
            s = next((settlements[(d["decision_id"], k)] for k in ACTUAL
                      if (d["decision_id"], k) in settlements), {"actual": None})
            outcome = s.get("outcome")
            if d["assigned_tier"] is not None:
                cost += s["actual"] if s["actual"] is not None else d["estimate_assigned"]
        served = chain[-1]["assigned_tier"] is not None and outcome not in ("failed", "expired")
        for scope in (first["service"], "total"):
            z = Decimal(0)
            s = out.setdefault(scope, {"cost": z, "untiered": z, "complexity": z, "unserved": z, "unserved_cost": z})
            if not served:
                s["unserved"] += 1
                s["unserved_cost"] += cost
                continue
            s["cost"] += cost
            s["untiered"] += first["estimate_untiered"]
            s["complexity"] += first["estimate_complexity"]
    return out


def test_report_json_savings_match_an_independent_recomputation_from_the_raw_events(env):
    result = runner.invoke(app, ["finance", "report", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"]["decisions"] == TASKS
    assert {k: v["decisions"] for k, v in report["services"].items()} == {"llm-gateway": 160, "tarotscript": 40,
                                                                          "aegis": 40}
    expected = independent_savings(env.records)
    got = {**report["savings"]["services"], "total": report["savings"]["total"]}
    assert set(got) == set(expected)
    for scope, e in expected.items():
        for counterfactual, baseline in (("vs_untiered", e["untiered"]), ("vs_complexity", e["complexity"])):
            assert Decimal(got[scope][counterfactual]["baseline"]) == baseline
            assert Decimal(got[scope][counterfactual]["cost"]) == e["cost"]
            assert Decimal(got[scope][counterfactual]["saved"]) == baseline - e["cost"]
            pct = round(float((baseline - e["cost"]) / baseline * 100), 2) if baseline else 0.0
            assert got[scope][counterfactual]["saved_pct"] == pct
        assert got[scope]["unserved"]["tasks"] == e["unserved"]
        assert Decimal(got[scope]["unserved"]["cost"]) == e["unserved_cost"]
    assert Decimal(report["savings"]["total"]["vs_untiered"]["saved"]) > 0  # budgets ran short: tiers fell
    # every routed task was served (no flaky executor, a generous SLA): none of the savings is unserved work
    assert report["savings"]["total"]["unserved"] == {"tasks": 0, "cost": "0"}
    assert report["savings"]["total"]["tasks"] == report["totals"]["routed"]
    # the rest of the report, against what the run was set up to do
    assert report["triggers"]["downgraded"], report["triggers"]
    adoption = report["adoption"]["services"]
    assert adoption["tarotscript"]["mode"] == "shadow" and adoption["aegis"]["mode"] == "enforce"
    assert 0 < adoption["llm-gateway"]["canary_pct"] < 100 and adoption["llm-gateway"]["canary_version"]
    assert adoption["aegis"]["canary_pct"] == 0 and adoption["aegis"]["canary_version"] is None
    assert report["adoption"]["sunset"]["due"] is False  # one run: 90 days have not passed
    assert set(report["canary"]["llm-gateway"]) == {"stable", "canary"}
    assert report["canary"]["llm-gateway"]["canary"]["dispatch_p50_ms"] is not None
    assert sum(r["tasks"] for r in report["spend"]["class"].values()) == TASKS
    assert report["spend"]["tenant"].keys() == {"acme", "globex"}


def test_sql_reads_the_store_and_cannot_write_it(env):
    synced = runner.invoke(app, ["finance", "sync"])
    assert synced.exit_code == 0, synced.output
    print(synced.stdout)  # events read, new, events/s
    result = runner.invoke(app, ["finance", "sql", "--json",
                                 "SELECT service, count(*) AS n FROM decisions GROUP BY service ORDER BY service"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"service": "aegis", "n": 40}, {"service": "llm-gateway", "n": 160},
                                         {"service": "tarotscript", "n": 40}]
    table = runner.invoke(app, ["finance", "sql", "SELECT count(*) AS decisions FROM decisions"])
    assert table.exit_code == 0 and str(TASKS) in table.stdout
    refused = runner.invoke(app, ["finance", "sql", "DELETE FROM decisions"])
    assert refused.exit_code == 1 and "read-only" in refused.output


def test_html_report_renders_in_headless_chromium(env, tmp_path):
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["finance", "report", "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert not re.search(r"<script[^>]*\ssrc=", text)  # plotly.js is inline; chromium gets no network either
    rendered = asyncio.run(render(page, tmp_path))
    print(f"screenshot: {rendered.screenshot}")
    assert rendered.errors == []
    assert rendered.counts["plots"] == 4 and rendered.counts["rendered"] == 4
    assert rendered.counts["svgs"] >= 8 and rendered.counts["traces"] >= 4
