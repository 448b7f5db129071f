"""Executor failures in the finance store, the report and explain, without Kafka: fallback chains,
failed and expired attempts and circuit changes built from the real models on a fixed instant."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_core.decision import Decision, Outcome, Trigger, attempt_decision_id
from dispatch_core.engine import Snapshot, decide
from dispatch_core.policy import load_policy
from dispatch_core.settlement import CircuitEvent, CircuitState, ErrorClass, ReportOutcome, SettlementEvent, SettlementKind
from dispatch_core.task import Task
from schemas import CIRCUIT, DECISION, SETTLEMENT, encode
from schemas.codec import SCHEMAS
from workers.explain import attempts, chains, find
from workers.finance_report import report
from workers.finance_rules import EXTRA_COST_RULE, extra_cost
from workers.finance_store import TABLES, Event, FinanceStore

AT = datetime(2026, 11, 24, 12, tzinfo=UTC)
MS = timedelta(milliseconds=1)
SVC = "svc"
runner = CliRunner()


def first(task_id: str, tokens: int = 4000) -> Decision:
    """A real first decision (llm, enforce) on the fixed instant, with its deadline."""
    task = Task.model_validate({"task_id": task_id, "service": SVC, "workload": "llm", "tenant": "acme",
                                "features": {"tokens": tokens}, "sla_ms": 900.0})
    d = decide(task, load_policy(), Snapshot(), AT).decision
    return d.model_copy(update={"deadline": AT + 900 * MS, "time_left_ms": 900.0})


def fallback(parent: Decision, n: int, tier: str | None, executor: str | None, estimate: str, after_ms: int) -> Decision:
    """Attempt ``n`` of ``parent``'s task, decided ``after_ms`` after the first, away from the failed executors."""
    rejected = tier is None
    return parent.model_copy(update={
        "decision_id": attempt_decision_id(SVC, parent.task_id, n), "attempt": n,
        "parent_decision_id": parent.decision_id,
        "excluded_executors": [*parent.excluded_executors, parent.executor],
        "triggers": [Trigger.EXECUTOR_FAILURE], "outcome": Outcome.REJECTED if rejected else Outcome.DOWNGRADED,
        "assigned_tier": tier, "enforced_tier": tier, "executor": executor,
        "estimate_assigned": D(estimate), "reserved": D(0) if rejected else D(estimate),
        "decided_at": AT + after_ms * MS, "time_left_ms": 900.0 - after_ms,
        "executor_circuits": {"llm-large": "open"} if n > 1 else {},
    })


def settled(d: Decision, actual: str, outcome: ReportOutcome = "succeeded", error_class: ErrorClass | None = None,
            error: str | None = None, fallback_to: Decision | None = None, dispatch_ms: float = 90.0) -> SettlementEvent:
    return SettlementEvent(
        decision_id=d.decision_id, kind=SettlementKind.SETTLED, task_id=d.task_id, service=d.service,
        executor=d.executor, currency="USD", reserved=d.reserved, actual=D(actual), scopes=[], run_ms=40.0,
        dispatch_ms=dispatch_ms, report_id=f"r-{d.decision_id}", recorded_at=d.decided_at + 200 * MS,
        outcome=outcome, error_class=error_class, error=error, sla_ms=900.0, deadline=d.deadline,
        fallback_decision_id=None if fallback_to is None else fallback_to.decision_id)


def circuit(seq: int, from_state: CircuitState, to_state: CircuitState, after_ms: int,
            by: Decision | None) -> CircuitEvent:
    return CircuitEvent(executor="llm-large", seq=seq, from_state=from_state, to_state=to_state,
                        reason="failure rate 0.60 over 10 calls" if to_state == "open" else "cool-down over",
                        calls=10, failures=6, consecutive_failures=3, changed_at=AT + after_ms * MS,
                        decision_id=None if by is None else by.decision_id)


# t-fb: llm-large times out (partial cost), the fallback on llm-medium succeeds.
A1 = first("t-fb")
A2 = fallback(A1, 2, "medium", "llm-medium", "0.012500", 300)
# t-ex: llm-large overloaded, llm-medium times out, then nothing is left: the chain ends rejected.
E1 = first("t-ex")
E2 = fallback(E1, 2, "medium", "llm-medium", "0.012500", 250)
E3 = fallback(E2, 3, None, None, "0", 600)
# t-perm: refused as invalid input by llm-small: permanent, no fallback.
P1 = first("t-perm", tokens=300).model_copy(update={"assigned_tier": "small", "executor": "llm-small",
                                                    "estimate_assigned": D("0.000380"), "reserved": D("0.000380")})
# t-late: its deadline had passed when llm-medium got to it.
L1 = first("t-late").model_copy(update={"assigned_tier": "medium", "executor": "llm-medium",
                                        "estimate_assigned": D("0.012500"), "reserved": D("0.012500")})

SETTLEMENTS = [
    settled(A1, "0.004000", "failed", "retryable", "timeout", fallback_to=A2, dispatch_ms=180.0),
    settled(A2, "0.011000"),
    settled(E1, "0.002000", "failed", "retryable", "overloaded", fallback_to=E2),
    settled(E2, "0.003000", "failed", "retryable", "timeout", fallback_to=E3),
    settled(P1, "0.000500", "failed", "permanent", "invalid_input"),
    settled(L1, "0", "expired", dispatch_ms=950.0),
]
CIRCUITS = [circuit(1, "closed", "open", 450, E1), circuit(2, "open", "half_open", 30_000, None),
            circuit(3, "half_open", "open", 31_000, None)]


def cells(line: str) -> list[str]:
    """A table row's cells, whether rich drew the table with borders (a terminal) or as plain text."""
    return [c.strip() for c in line.strip().strip("│").split("│")] if "│" in line else line.split()


def encoded() -> list[bytes]:
    return ([encode(DECISION, d.model_dump()) for d in (A1, A2, E1, E2, E3, P1, L1)]
            + [encode(SETTLEMENT, s.model_dump()) for s in SETTLEMENTS]
            + [encode(CIRCUIT, c.model_dump()) for c in CIRCUITS])


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "finance.duckdb"
    events = encoded()
    with FinanceStore(path) as store:
        applied = store.apply("audit", [Event(0, i, v) for i, v in enumerate(events)])
        assert applied.new == len(events)
        again = store.apply("audit", [Event(1, 0, encode(CIRCUIT, CIRCUITS[0].model_dump())),  # repeats
                                      Event(1, 1, encode(SETTLEMENT, SETTLEMENTS[0].model_dump()))])
        assert again.new == 0
    return path


def test_the_v4_fields_and_circuit_changes_are_stored(store_path: Path):
    with FinanceStore(store_path, read_only=True) as store:
        got = store.db.execute("SELECT attempt, parent_decision_id, excluded_executors, deadline, time_left_ms, "
                               "executor_circuits FROM decisions WHERE decision_id = ?", [E3.decision_id]).fetchone()
        assert got == (3, E2.decision_id, ["llm-large", "llm-medium"], AT + 900 * MS, 300.0, '{"llm-large": "open"}')
        assert store.db.execute("SELECT attempt, parent_decision_id, excluded_executors FROM decisions "
                                "WHERE decision_id = ?", [A1.decision_id]).fetchone() == (1, None, [])
        s = store.db.execute("SELECT outcome, error_class, error, actual, sla_ms, deadline, fallback_decision_id "
                             "FROM settlements WHERE decision_id = ?", [A1.decision_id]).fetchone()
        assert s == ("failed", "retryable", "timeout", D("0.004000"), 900.0, AT + 900 * MS, A2.decision_id)
        rows = store.db.execute("SELECT executor, seq, from_state, to_state, calls, failures, changed_at, decision_id, "
                                "audit_partition, audit_offset FROM circuits ORDER BY seq").fetchall()
        assert rows == [("llm-large", 1, "closed", "open", 10, 6, AT + 450 * MS, E1.decision_id, 0, 13),
                        ("llm-large", 2, "open", "half_open", 10, 6, AT + 30 * 1000 * MS, None, 0, 14),
                        ("llm-large", 3, "half_open", "open", 10, 6, AT + 31 * 1000 * MS, None, 0, 15)]


def test_report_counts_failures_per_executor_with_exact_wasted_fallback_and_extra_cost(store_path: Path):
    with FinanceStore(store_path, read_only=True) as store:
        got = report(store.db)["executor_failures"]
    assert got["extra_cost_rule"] == EXTRA_COST_RULE
    ex = got["executors"]
    assert set(ex) == {"llm-large", "llm-medium", "llm-small"}
    # llm-large: A1 and E1 failed (retryable), both fell back and were replaced on llm-medium
    assert ex["llm-large"] == {
        "retryable": 2, "permanent": 0, "expired": 0, "fallbacks": 2, "fallbacks_rejected": 0,
        "wasted": "0.006000",  # 0.004 (A1) + 0.002 (E1)
        "fallback_cost": "0.014000",  # A2 succeeded 0.011 + E2 failed 0.003
        "replaced_estimate": "0.122000",  # A1 and E1 were estimated 0.061 each
        "extra_cost": "-0.102000",  # 0.006 + 0.014 - 0.122: the medium tier was cheaper
        "circuit_opens": 2}
    # llm-medium: E2 failed and its fallback was rejected (nothing left); L1 expired before running
    assert ex["llm-medium"] == {
        "retryable": 1, "permanent": 0, "expired": 1, "fallbacks": 1, "fallbacks_rejected": 1,
        "wasted": "0.003000", "fallback_cost": "0.000000", "replaced_estimate": "0.000000",
        "extra_cost": "0.003000", "circuit_opens": 0}
    assert ex["llm-small"] == {
        "retryable": 0, "permanent": 1, "expired": 0, "fallbacks": 0, "fallbacks_rejected": 0,
        "wasted": "0.000500", "fallback_cost": "0.000000", "replaced_estimate": "0.000000",
        "extra_cost": "0.000500", "circuit_opens": 0}
    assert extra_cost(D("0.006"), D("0.014"), D("0.122")) == D("-0.102")
    # the chain's rejection is a rejection by executor_failure
    with FinanceStore(store_path, read_only=True) as store:
        assert report(store.db)["triggers"]["rejected"] == {"executor_failure": 1}
        # a period that holds only the first 300 ms: A2 (decided at 300 ms) is out, yet counts as A1's fallback
        early = report(store.db, AT, AT + 300 * MS)["executor_failures"]["executors"]
    assert early["llm-large"]["fallbacks"] == 2 and early["llm-large"]["fallback_cost"] == "0.014000"
    assert early["llm-large"]["circuit_opens"] == 0  # its opens were at 450 ms and 31 s
    assert set(early) == {"llm-large", "llm-medium", "llm-small"}  # E2 (250 ms) is in


def report_cli(store_path: Path, monkeypatch, tmp_path: Path) -> tuple[str, str]:
    """``dispatch finance report`` on the store: its text, and its HTML page."""
    monkeypatch.setenv("DISPATCH_FINANCE_STORE", str(store_path))
    text = runner.invoke(app, ["finance", "report", "--no-sync", "--html", str(tmp_path / "r.html")])
    assert text.exit_code == 0, text.output
    print(text.stdout)
    return text.stdout, (tmp_path / "r.html").read_text()


def test_report_cli_prints_the_failures_table_and_the_rule(store_path: Path, monkeypatch, fresh_settings_cache,
                                                          tmp_path: Path):
    stdout, page = report_cli(store_path, monkeypatch, tmp_path)
    assert "executor failures" in stdout and EXTRA_COST_RULE in stdout
    line = next(ln for ln in stdout.splitlines() if "llm-large" in ln and "-0.102000" in ln)
    assert cells(line) == ["llm-large", "2", "0", "0", "2", "0", "0.006000", "0.014000", "0.122000", "-0.102000", "2"]
    assert 'id="executor-failures"' in page and "<td>-0.102000</td>" in page
    data = json.loads(runner.invoke(app, ["finance", "report", "--no-sync", "--json"]).stdout)
    assert data["executor_failures"]["executors"]["llm-small"]["permanent"] == 1


def test_explain_any_attempt_shows_the_whole_chain_in_order(store_path: Path, monkeypatch, fresh_settings_cache):
    with FinanceStore(store_path, read_only=True) as store:
        for ident in ("t-ex", E1.decision_id, E2.decision_id, E3.decision_id):
            (chain,) = chains(store, find(store, ident))
            assert [d["decision_id"] for d in chain] == [E1.decision_id, E2.decision_id, E3.decision_id]
        steps = attempts(store, chains(store, find(store, E3.decision_id))[0])
    assert [(a["attempt"], a["executor"], a["outcome"], a["next_decision_id"]) for a in steps] == [
        (1, "llm-large", "routed", E2.decision_id), (2, "llm-medium", "downgraded", E3.decision_id),
        (3, None, "rejected", None)]
    assert steps[0]["settlement"]["error_class"] == "retryable" and steps[0]["settlement"]["error"] == "overloaded"
    assert steps[1]["settlement"]["actual"] == D("0.003000") and steps[1]["settlement"]["queue_share"] == 0.1
    assert steps[2]["triggers"] == ["executor_failure"] and steps[2]["time_left_ms"] == 300.0

    monkeypatch.setenv("DISPATCH_FINANCE_STORE", str(store_path))
    got = json.loads(runner.invoke(app, ["audit", "explain", A2.decision_id, "--no-sync", "--json"]).stdout)
    assert [e["decision_id"] for e in got] == [A1.decision_id, A2.decision_id]  # the whole chain, oldest first
    assert got[0]["settlement"]["status"] == "failed (retryable: timeout), charged the partial cost"
    assert got[0]["settlement"]["queue_share"] == 0.2 and got[0]["settlement"]["fallback_decision_id"] == A2.decision_id
    assert [c["seq"] for c in got[0]["circuits"]] == [1]  # opened at 450 ms, while the chain ran (to 500 ms)
    assert {t["trigger"] for t in got[1]["triggers"] if t["fired"]} == {"executor_failure"}

    text = runner.invoke(app, ["audit", "explain", "t-ex", "--no-sync"])
    assert text.exit_code == 0, text.output
    print(text.stdout)
    rows = [cells(ln) for ln in text.stdout.splitlines() if cells(ln)[:1] in (["1"], ["2"], ["3"])]
    assert [r[1] for r in rows] == [E1.decision_id, E2.decision_id, E3.decision_id]  # attempts in order
    assert rows[0][7:] == ["failed", "retryable: overloaded", "0.002000", "0.10", E2.decision_id]
    assert rows[2][2] == "rejected" and rows[2][-1] == "-"
    assert "circuit changes of these executors" in text.stdout


def test_a_store_of_the_previous_version_is_upgraded_and_v3_events_read_with_v4_defaults(tmp_path: Path):
    v3 = {name: next(s for s in SCHEMAS.values() if s.name == name and s.version == 3)
          for name in ("decision", "settlement")}
    new = {"decisions": ["attempt", "parent_decision_id", "excluded_executors", "deadline", "time_left_ms",
                         "executor_circuits"],
           "settlements": ["outcome", "error_class", "error", "sla_ms", "deadline", "fallback_decision_id"]}
    old = first("t-old").model_dump(exclude=set(new["decisions"]))
    old_settlement = settled(A1, "0.010000").model_dump(exclude=set(new["settlements"]))
    old_settlement["decision_id"] = old["decision_id"]
    path = tmp_path / "old.duckdb"
    with FinanceStore(path) as store:  # then cut back to the previous version's tables
        store.apply("audit", [Event(0, 0, encode(v3["decision"], old)), Event(0, 1, encode(v3["settlement"],
                                                                                           old_settlement))])
        store.db.execute("DROP TABLE circuits")
        for table, cols in new.items():
            for c in cols:
                store.db.execute(f'ALTER TABLE {table} DROP COLUMN "{c}"')
    with FinanceStore(path, read_only=True) as store:  # a reader upgrades it too (adds, never drops)
        assert store.db.execute("SELECT attempt, excluded_executors, executor_circuits, deadline FROM decisions"
                                ).fetchall() == [(1, [], "{}", None)]
    with FinanceStore(path) as store:
        for table in TABLES:  # a migrated table has the columns of a new one, in the same order
            names = [c[0] for c in store.db.execute(f"SELECT * FROM {table} LIMIT 0").description]
            assert names == [n for n, _ in TABLES[table]]
        assert store.apply("audit", [Event(0, 2 + i, v) for i, v in enumerate(encoded())]).new == 16
        assert store.db.execute("SELECT outcome, error_class FROM settlements WHERE decision_id = ?",
                                [old["decision_id"]]).fetchone() == (None, None)
        assert report(store.db)["executor_failures"]["executors"]["llm-large"]["retryable"] == 2
    fresh = tmp_path / "v3-into-new.duckdb"
    with FinanceStore(fresh) as store:  # v3 events into a new store: decoded with the v4 defaults
        store.apply("audit", [Event(0, 0, encode(v3["decision"], old))])
        assert store.db.execute("SELECT attempt, parent_decision_id, executor_circuits FROM decisions").fetchall() == [
            (1, None, "{}")]
