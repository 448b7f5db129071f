"""The store's rows, without Kafka: every field kept, repeats ignored, offsets with the rows."""

from datetime import UTC, datetime
from decimal import Decimal

from dispatch_core.engine import Snapshot, decide
from dispatch_core.policy import load_policy
from dispatch_core.task import Task
from schemas import DECISION, SETTLEMENT, encode
from workers.finance_store import TABLES, Event, FinanceStore

AT = datetime(2026, 11, 24, 12, tzinfo=UTC)


def events() -> tuple[bytes, bytes, str]:
    d = decide(Task(task_id="t1", service="svc", workload="llm", tenant="acme", features={"tokens": 4000}),
               load_policy(), Snapshot(), AT).decision
    s = {"decision_id": d.decision_id, "kind": "settled", "task_id": "t1", "service": "svc", "executor": d.executor,
         "currency": "USD", "reserved": d.reserved, "actual": Decimal("0.012345"), "scopes": [], "run_ms": 5.0,
         "dispatch_ms": 7.5, "report_id": "r1", "recorded_at": AT, "outcome": "succeeded", "error_class": None, "error": None, "sla_ms": 850.0,
         "deadline": None, "fallback_decision_id": None}
    return encode(DECISION, d.model_dump()), encode(SETTLEMENT, s), d.decision_id


def test_every_field_is_stored_once_and_the_offsets_commit_with_the_rows(tmp_path):
    decision, settlement, did = events()
    with FinanceStore(tmp_path / "f.duckdb") as store:
        applied = store.apply("audit", [Event(0, 0, decision), Event(0, 1, settlement), Event(1, 7, decision),
                                        Event(2, 3, b"not avro")])
        assert (applied.read, applied.new, applied.undecodable) == (4, 2, 1)
        again = store.apply("audit", [Event(0, 2, settlement)])  # a repeat in a later batch
        assert again.new == 0
        assert store.offsets("audit") == {0: 3, 1: 8, 2: 4}
        row = dict(zip([c for c, _ in TABLES["decisions"]],
                       store.db.execute("SELECT * FROM decisions").fetchone()))
        assert row["decision_id"] == did and row["decided_at"] == AT and row["estimate_untiered"] == Decimal("0.061")
        assert row["link_hash"] is None and (row["audit_partition"], row["audit_offset"]) == (0, 0)
        s = store.db.execute("SELECT kind, actual, dispatch_ms FROM settlements").fetchall()
        assert s == [("settled", Decimal("0.012345"), 7.5)]
        assert store.count("decision_budgets") == len(load_policy().budgets)
        assert store.db.execute("SELECT audit_partition, audit_offset FROM undecodable").fetchall() == [(2, 3)]
