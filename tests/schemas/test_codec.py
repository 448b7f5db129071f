"""Audit events: single-object encoding that any Avro reader can decode, and no event without provenance."""

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import avro.io
import avro.schema
import pytest

from dispatch_core.engine import Snapshot, decide
from dispatch_core.policy import load_policy
from dispatch_core.task import Task
from schemas import DECISION, SETTLEMENT, AuditEncodingError, decode, encode


def a_decision():
    task = Task(task_id="t1", service="svc", workload="llm", tenant="acme", features={"tokens": 4000})
    return decide(task, load_policy(), Snapshot(), datetime(2026, 11, 24, 12, tzinfo=UTC)).decision


def test_round_trip_keeps_money_exact_and_every_field():
    d = a_decision()
    data = encode(DECISION, d.model_dump())
    assert data[:2] == b"\xc3\x01" and data[2:10] == DECISION.fingerprint
    schema, record = decode(data)
    assert schema is DECISION
    assert record["reserved"] == d.reserved and isinstance(record["reserved"], Decimal)
    assert record["budgets"][0]["limit"] == Decimal("50")
    assert record["triggers"] == [t.value for t in d.triggers] and record["policy_version"] == d.policy_version


def test_the_apache_avro_library_reads_the_body_too():
    d = a_decision()
    body = encode(DECISION, d.model_dump())[10:]
    reader = avro.io.DatumReader(avro.schema.parse(json.dumps(DECISION.raw)))
    record = reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))
    assert record["decision_id"] == d.decision_id and record["estimate_assigned"] == d.estimate_assigned


def test_fingerprint_is_the_avro_crc64_of_the_canonical_form():
    """Cross-checked with the Apache library on a schema without logical types (which it canonicalises
    differently from the spec); the algorithm and byte order are then the same."""
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    plain = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "string"}]}
    ours = bytes.fromhex(fingerprint(to_parsing_canonical_form(plain), "CRC-64-AVRO"))
    assert ours == avro.schema.parse(json.dumps(plain)).fingerprint()
    assert DECISION.fingerprint != SETTLEMENT.fingerprint


@pytest.mark.parametrize("field", ["policy_version", "rule_id", "complexity_score", "triggers", "budgets", "estimate_asked"])
def test_an_event_missing_provenance_cannot_be_written(field):
    record = a_decision().model_dump()
    del record[field]
    with pytest.raises(AuditEncodingError, match=field):
        encode(DECISION, record)


def test_wrong_types_and_unknown_fingerprints_are_refused():
    record = a_decision().model_dump()
    record["complexity_score"] = "high"
    with pytest.raises(AuditEncodingError):
        encode(DECISION, record)
    with pytest.raises(AuditEncodingError, match="unknown schema fingerprint"):
        decode(b"\xc3\x01" + b"\x00" * 8 + b"\x02")
    with pytest.raises(AuditEncodingError, match="not an Avro single-object"):
        decode(b'{"json": true}')


def test_the_decision_model_itself_refuses_a_record_without_provenance():
    from pydantic import ValidationError

    from dispatch_core.decision import Decision

    data = a_decision().model_dump()
    del data["rationale"]
    with pytest.raises(ValidationError, match="rationale"):
        Decision.model_validate(data)
