"""The compiled Avro encoder writes exactly what fastavro writes, and refuses what fastavro's strict mode refuses."""

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_core.engine import Snapshot, ScopeState, decide, reject
from dispatch_core.decision import Trigger
from dispatch_core.policy import load_policy
from dispatch_core.settlement import SettlementEvent, SettlementKind
from dispatch_core.task import Task
from schemas import DECISION, SETTLEMENT
from schemas.encoder import compile_encoder

NOON = datetime(2026, 11, 24, 12, tzinfo=UTC)


def fastavro_bytes(parsed, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record, strict=True)
    return buf.getvalue()


def decisions():
    """A routed, a downgraded (budget), a rejected and a shadow decision, as the engine makes them."""
    policy = load_policy()
    tasks = [Task(task_id=f"t{i}", service="svc", workload=w, tenant="acme", features=f)
             for i, (w, f) in enumerate([("llm", {"tokens": 4000}), ("script", {"cpu_ms": 80.5, "depth": 3}),
                                         ("kernel", {"payload_bytes": 10_000})])]
    out = [decide(t, policy, Snapshot(), NOON).decision for t in tasks]
    tight = Snapshot(scopes={k: ScopeState(spent=10**12) for k in _keys(policy, tasks[0])})
    out.append(decide(tasks[0], policy, tight, NOON).decision)
    out.append(decide(tasks[0], policy, Snapshot(), NOON, mode="shadow").decision)
    out.append(reject(out[0], Trigger.CONFLICT, "refused"))
    return out


def _keys(policy, task):
    from dispatch_core.engine import ledger_keys
    return ledger_keys(policy, task, NOON)[0]


@pytest.mark.parametrize("decision", decisions(), ids=lambda d: f"{d.outcome}-{d.mode}")
def test_decision_events_are_byte_identical_to_fastavro(decision):
    record = {"link": None, **decision.model_dump(mode="json")}  # fastavro needs plain values...
    record = {**record, **{k: getattr(decision, k) for k in ("decided_at", "deadline", "reserved", "estimate_asked",
                                                                 "estimate_assigned", "estimate_complexity",
                                                                 "estimate_untiered")}}
    record["budgets"] = [b.model_dump() for b in decision.budgets]
    assert DECISION.write({"link": None, **decision.model_dump()}) == fastavro_bytes(DECISION.parsed, record)


@pytest.mark.parametrize("kind", list(SettlementKind))
def test_settlement_events_are_byte_identical_to_fastavro(kind):
    e = SettlementEvent(decision_id="d", kind=kind, task_id="t", service="s", executor="x", currency="USD",
                        reserved=Decimal("0.120000"), actual=None if kind == SettlementKind.EXPIRED else Decimal("-1.5"),
                        scopes=["a", "b"], run_ms=3.5, dispatch_ms=None, report_id="r", recorded_at=NOON)
    record = {"link": None, **e.model_dump()}
    plain = {**record, "kind": kind.value}
    assert SETTLEMENT.write(record) == fastavro_bytes(SETTLEMENT.parsed, plain)


TEST_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "T", "namespace": "x", "fields": [
        {"name": "i", "type": "int"}, {"name": "l", "type": "long"}, {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"}, {"name": "s", "type": "string"}, {"name": "raw", "type": "bytes"},
        {"name": "money", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}},
        {"name": "ns", "type": ["null", "string"]}, {"name": "sn", "type": ["string", "null"]},
        {"name": "xs", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": ["null", "double"]}},
        {"name": "inner", "type": ["null", {"type": "record", "name": "I", "fields": [{"name": "e2", "type": "E"}]}]},
    ]})

records = st.fixed_dictionaries({
    "i": st.integers(-(2**31), 2**31 - 1), "l": st.integers(-(2**63), 2**63 - 1),
    "d": st.floats(allow_nan=False), "b": st.booleans(), "s": st.text(), "raw": st.binary(),
    "money": st.decimals(min_value=Decimal("-1e11"), max_value=Decimal("1e11"), places=6),
    "at": st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    "e": st.sampled_from("abc"), "ns": st.none() | st.text(), "sn": st.none() | st.text(),
    "xs": st.lists(st.integers(-(2**63), 2**63 - 1)), "m": st.dictionaries(st.text(), st.none() | st.floats(allow_nan=False)),
    "inner": st.none() | st.fixed_dictionaries({"e2": st.sampled_from("abc")}),
})


@settings(max_examples=300, deadline=None)
@given(records)
def test_any_record_encodes_byte_identical_to_fastavro(record):
    assert compile_encoder(TEST_SCHEMA)(record) == fastavro_bytes(TEST_SCHEMA, record)


def good():
    return {"i": 1, "l": 2, "d": 1.5, "b": True, "s": "s", "raw": b"", "money": Decimal("1.25"), "at": NOON,
            "e": "a", "ns": None, "sn": "x", "xs": [1], "m": {}, "inner": None}


@pytest.mark.parametrize("change", [
    {"i": 2**31}, {"l": 2**63}, {"i": True}, {"l": 1.0}, {"d": "1"}, {"b": 1}, {"s": b"x"}, {"raw": "x"},
    {"money": Decimal("0.0000001")}, {"money": Decimal("NaN")}, {"e": "z"}, {"xs": [1.5]}, {"m": {1: 1.0}},
    {"inner": {"e2": "a", "extra": 1}}, {"extra": 1},
], ids=str)
def test_a_value_that_does_not_fit_its_type_is_refused(change):
    """At least as strict as fastavro's strict mode (which lets an int over 32 bits through)."""
    with pytest.raises((ValueError, TypeError, KeyError)):
        compile_encoder(TEST_SCHEMA)({**good(), **change})


def test_a_missing_field_is_refused():
    record = good()
    del record["s"]
    with pytest.raises(KeyError):
        compile_encoder(TEST_SCHEMA)(record)


def test_naive_timestamps_count_from_the_naive_epoch_like_fastavro():
    record = {**good(), "at": datetime(2026, 1, 1) + timedelta(microseconds=7)}
    assert compile_encoder(TEST_SCHEMA)(record) == fastavro_bytes(TEST_SCHEMA, record)
