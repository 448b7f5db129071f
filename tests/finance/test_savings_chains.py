"""Savings per task, not per attempt: a first decision and its fallbacks count once, against the first
decision's counterfactuals, and tasks whose work was never delivered are counted apart (unserved).
Built from the real models on a fixed instant, without Kafka; the report (DuckDB) and the demo's
in-memory reader must state the same figures."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatch_cli.demo import _savings_line
from dispatch_cli.main import app
from dispatch_core.decision import Decision, Outcome
from schemas import DECISION, SETTLEMENT, encode
from schemas.codec import SCHEMAS
from workers.finance import AuditLog, cost_rows
from workers.finance_report import report
from workers.finance_rules import Attempt, CostRow, savings, task_costs
from workers.finance_store import Event, FinanceStore

from .test_failures import AT, MS, cells, fallback, first, report_cli, settled

runner = CliRunner()
OTHER = "other"


def on(service: str, d: Decision) -> Decision:
    return d.model_copy(update={"service": service})


# c-ok (svc): llm-large times out after partial work (0.003), the fallback on llm-medium succeeds (0.011).
# The fallback records counterfactuals of its own (0.9): only the first decision's may count.
OK1 = first("c-ok").model_copy(update={"estimate_untiered": D("0.061000"), "estimate_complexity": D("0.040000")})
OK2 = fallback(OK1, 2, "medium", "llm-medium", "0.012500", 300).model_copy(
    update={"estimate_untiered": D("0.900000"), "estimate_complexity": D("0.900000")})
# c-late (other): the executor got to it after its deadline: expired, not run, cost 0.
LATE = on(OTHER, first("c-late"))
# c-end (other): llm-large overloaded (0.002 spent), nothing left to fall back to: the fallback is rejected.
END1 = on(OTHER, first("c-end"))
END2 = fallback(END1, 2, None, None, "0", 250)
# c-perm (svc): refused as invalid input (permanent, 0.0005 spent), no fallback.
PERM = first("c-perm", tokens=300)
# c-plain (svc): small, succeeded; c-open (svc): small, no report yet (its estimate counts).
PLAIN = first("c-plain", tokens=300)
OPEN = first("c-open", tokens=300)
# c-rej (svc): rejected at once: ran nothing, stays out of savings (as before chains).
REJ = first("c-rej").model_copy(update={"assigned_tier": None, "enforced_tier": None, "executor": None,
                                        "outcome": Outcome.REJECTED, "reserved": D(0)})

SETTLEMENTS = [
    settled(OK1, "0.003000", "failed", "retryable", "timeout", fallback_to=OK2),
    settled(OK2, "0.011000"),
    settled(LATE, "0", "expired"),
    settled(END1, "0.002000", "failed", "retryable", "overloaded", fallback_to=END2),
    settled(PERM, "0.000500", "failed", "permanent", "invalid_input"),
    settled(PLAIN, "0.000400"),
]

V4_DECISION = ["attempt", "parent_decision_id", "excluded_executors", "deadline", "time_left_ms", "executor_circuits"]
V4_SETTLEMENT = ["outcome", "error_class", "error", "sla_ms", "deadline", "fallback_decision_id"]


def v3_events() -> list[bytes]:
    """c-v3 (svc): a decision and its settlement written before schema v4 (no attempt, no outcome)."""
    v3 = {name: next(s for s in SCHEMAS.values() if s.name == name and s.version == 3)
          for name in ("decision", "settlement")}
    d = first("c-v3")
    s = settled(d, "0.010000").model_dump(exclude=set(V4_SETTLEMENT))
    return [encode(v3["decision"], d.model_dump(exclude=set(V4_DECISION))), encode(v3["settlement"], s)]


def events() -> list[bytes]:
    return ([encode(DECISION, d.model_dump()) for d in (OK1, OK2, LATE, END1, END2, PERM, PLAIN, OPEN, REJ)]
            + [encode(SETTLEMENT, s.model_dump()) for s in SETTLEMENTS] + v3_events())


# svc serves c-ok (0.003 + 0.011), c-plain (0.0004), c-open (estimate 0.00038) and c-v3 (0.010):
# untiered 0.061 + 0.0055 + 0.0055 + 0.061, complexity 0.040 + 0.00038 + 0.00038 + 0.061
SVC_COST = D("0.014") + D("0.0004") + D("0.00038") + D("0.010")
SVC_UNTIERED, SVC_COMPLEXITY = D("0.133"), D("0.10176")


def check(got: dict) -> None:
    """The expected savings, compared as exact Decimals (the store gives 6 decimals, the reader its own)."""
    svc, other, total = got["services"]["svc"], got["services"][OTHER], got["total"]
    assert set(got["services"]) == {"svc", OTHER}
    assert svc["tasks"] == 4 and total["tasks"] == 4 and other["tasks"] == 0
    for scope in (svc, total):
        for key, baseline in (("vs_untiered", SVC_UNTIERED), ("vs_complexity", SVC_COMPLEXITY)):
            assert D(scope[key]["baseline"]) == baseline
            assert D(scope[key]["cost"]) == SVC_COST
            assert D(scope[key]["saved"]) == baseline - SVC_COST
            assert scope[key]["saved_pct"] == round(float((baseline - SVC_COST) / baseline * 100), 2)
    assert D(svc["vs_untiered"]["saved"]) == D("0.10822") and D(svc["vs_complexity"]["saved"]) == D("0.07698")
    # unserved: c-perm (0.0005) in svc; c-late (0) and c-end (0.002) in other; none of it a saving
    assert (svc["unserved"]["tasks"], D(svc["unserved"]["cost"])) == (1, D("0.0005"))
    assert (other["unserved"]["tasks"], D(other["unserved"]["cost"])) == (2, D("0.002"))
    assert (total["unserved"]["tasks"], D(total["unserved"]["cost"])) == (3, D("0.0025"))
    assert D(other["vs_untiered"]["baseline"]) == 0 and D(other["vs_untiered"]["cost"]) == 0


def attempt(d: Decision, actual: str | None = None, outcome: str | None = None) -> Attempt:
    return Attempt(d.decision_id, d.parent_decision_id, d.attempt, d.service, d.assigned_tier, d.estimate_assigned,
                   d.estimate_untiered, d.estimate_complexity, None if actual is None else D(actual), outcome)


def test_a_task_that_fell_back_counts_once_with_every_attempts_cost_against_its_first_decision():
    rows = task_costs([attempt(OK2, "0.011", "succeeded"), attempt(OK1, "0.003", "failed")])  # any order
    assert rows == [CostRow("svc", D("0.014"), D("0.061"), D("0.040"), served=True, attempts=2)]
    assert savings(rows)["total"]["vs_untiered"] == {"baseline": "0.061000", "cost": "0.014", "saved": "0.047000",
                                                      "saved_pct": 77.05}


def test_unserved_tasks_are_counted_apart_with_what_they_cost():
    rows = task_costs([attempt(LATE, "0", "expired"),  # expired: unserved, nothing spent
                       attempt(END1, "0.002", "failed"), attempt(END2),  # the fallback rejected: unserved, 0.002
                       attempt(PERM, "0.0005", "failed"),  # permanent, no fallback: unserved
                       attempt(OK1, "0.003", "failed"),  # a retryable failure whose fallback is not decided yet
                       attempt(REJ)])  # rejected first decision: no row at all
    assert sorted((r.service, r.cost, r.served, r.attempts) for r in rows) == [
        ("other", D("0"), False, 1), ("other", D("0.002"), False, 2), ("svc", D("0.0005"), False, 1),
        ("svc", D("0.003"), False, 1)]
    out = savings(rows)
    assert out["total"]["tasks"] == 0 and out["total"]["unserved"] == {"tasks": 4, "cost": "0.0055"}
    assert out["total"]["vs_untiered"]["saved"] == "0"  # nothing served, nothing saved


def test_events_before_v4_and_ledger_expiries_are_served_as_before():
    old = Attempt("d-old", None, 1, "svc", "small", D("0.5"), D("2"), D("1"))  # no report: its estimate
    settled_v3 = Attempt("d-v3", None, 1, "svc", "small", D("0.5"), D("2"), None, D("0.4"), None)
    dup = Attempt("d-dup", None, 1, "svc", "small", D("0.5"), D("2"), D("1"), D("0"), "duplicate")  # it ran before
    rows = task_costs([old, settled_v3, dup])
    assert [(r.cost, r.served) for r in rows] == [(D("0.5"), True), (D("0.4"), True), (D("0"), True)]
    assert savings(rows)["total"]["vs_untiered"]["baseline"] == "6"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "finance.duckdb"
    with FinanceStore(path) as store:
        store.apply("audit", [Event(0, i, v) for i, v in enumerate(events())])
    return path


def test_report_and_demo_reader_state_the_same_per_task_savings(store_path: Path):
    with FinanceStore(store_path, read_only=True) as store:
        got = report(store.db)
    check(got["savings"])
    log = AuditLog()
    for e in events():
        log.add(e)
    demo = savings(cost_rows(log))
    check(demo)
    assert demo == got["savings"]  # the same rule, the same text
    assert "3 tasks unserved, cost 0.002500" in _savings_line(got["savings"]["total"])


def test_a_task_belongs_to_the_period_of_its_first_decision(store_path: Path):
    with FinanceStore(store_path, read_only=True) as store:
        early = report(store.db, AT, AT + 300 * MS)["savings"]  # ends before c-ok's fallback was decided
        late = report(store.db, AT + MS, None)["savings"]  # only the fallbacks: their tasks started before
    check(early)
    assert late["total"]["tasks"] == 0 and late["total"]["unserved"]["tasks"] == 0 and late["services"] == {}


def test_report_cli_shows_unserved_next_to_savings(store_path: Path, monkeypatch, fresh_settings_cache,
                                                   tmp_path: Path):
    stdout, page = report_cli(store_path, monkeypatch, tmp_path)
    lines = stdout.splitlines()
    assert any("service" in ln and ln.rstrip(" ┃│").endswith("unserved cost") for ln in lines)
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("savings per served task")):]
    other = next(cells(ln) for ln in table if cells(ln)[:1] == [OTHER])
    assert other == [OTHER, "0", "0", "0.0", "0", "0.0", "2", "0.002000"]  # nothing served, two tasks unserved
    assert 'id="savings"' in page and "<td>0.002500</td>" in page and "3 unserved tasks" in page
    data = json.loads(runner.invoke(app, ["finance", "report", "--no-sync", "--json"]).stdout)
    assert data["savings"]["total"]["unserved"] == {"tasks": 3, "cost": "0.002500"}
