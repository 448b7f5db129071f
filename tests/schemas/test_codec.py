"""Audit events: single-object encoding that any Avro reader can decode, and no event without provenance."""

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import avro.io
import avro.schema
import pytest

from dispatch_core.engine import Snapshot, decide
from dispatch_core.policy import load_policy
from dispatch_core.task import Task
from schemas import CIRCUIT, DECISION, SETTLEMENT, AuditEncodingError, decode, encode
from schemas.codec import SCHEMAS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


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


# --- the fingerprint, computed independently from the Avro 1.12 specification -------------------
# "Parsing Canonical Form for Schemas" and "Schema Fingerprints",
# https://avro.apache.org/docs/1.12.0/specification/#parsing-canonical-form-for-schemas

PRIMITIVE_TYPES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
KEPT = ("name", "type", "fields", "symbols", "items", "values", "size")  # [STRIP], in [ORDER]


def fullname(name, namespace):
    return name if "." in name or not namespace else f"{namespace}.{name}"


def spec_canonical_form(schema, namespace=""):
    """[PRIMITIVES] [FULLNAMES] [STRIP] [ORDER]; json.dumps below does [STRINGS] and [WHITESPACE]."""
    if isinstance(schema, list):
        return [spec_canonical_form(s, namespace) for s in schema]
    if isinstance(schema, str):
        return schema if schema in PRIMITIVE_TYPES else fullname(schema, namespace)
    if schema["type"] in PRIMITIVE_TYPES:  # logicalType, precision, scale are stripped: a primitive is left
        return schema["type"]
    out = {}
    if "name" in schema:
        out["name"] = fullname(schema["name"], schema.get("namespace", namespace))
        namespace = out["name"].rpartition(".")[0]  # names nested inside default to this one's namespace
    for key in KEPT[1:]:
        if key not in schema:
            continue
        if key == "fields":
            out[key] = [{"name": f["name"], "type": spec_canonical_form(f["type"], namespace)} for f in schema[key]]
        elif key in ("items", "values"):
            out[key] = spec_canonical_form(schema[key], namespace)
        else:
            out[key] = schema[key]
    return out


def crc64_avro(data: bytes) -> int:
    """The spec's 64-bit Rabin fingerprint (fingerprint64 with its FP_TABLE), transcribed."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


#: Every published schema version's fingerprint: events on audit topics carry them forever.
PINNED = {("decision", 1): "8aaa95c5b7526952", ("settlement", 1): "5e4c6968b527c74e",
          ("decision", 2): "29e5b4c09bacf5ff", ("settlement", 2): "b52cde723df2116b",
          ("decision", 3): "7a07dcbc355d5c2c", ("settlement", 3): "e5c752d22aac5fd9",
          ("decision", 4): "12c0c482c911d55c", ("settlement", 4): "de45fc88a7b22b4c",
          ("circuit", 1): "74887899fdc0ddcc"}


def test_every_version_is_pinned_and_the_current_ones_are_the_newest():
    assert {(s.name, s.version) for s in SCHEMAS.values()} == set(PINNED)
    assert (DECISION.version, SETTLEMENT.version, CIRCUIT.version) == (4, 4, 1)


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=lambda s: f"{s.name}.v{s.version}")
def test_fingerprint_is_the_specs_crc64_of_the_specs_parsing_canonical_form(schema):
    """Pinned: every event on the audit topic carries it. Decimals are plain "bytes" in the canonical form."""
    pinned = PINNED[schema.name, schema.version]
    canonical = json.dumps(spec_canonical_form(schema.raw), separators=(",", ":"), ensure_ascii=False)
    assert '"logicalType"' not in canonical
    assert schema.name == "circuit" or '{"name":"reserved","type":"bytes"}' in canonical
    assert schema.fingerprint == crc64_avro(canonical.encode()).to_bytes(8, "little")  # single-object: little-endian
    assert crc64_avro(b'"int"').to_bytes(8, "little") == avro.schema.parse('"int"').fingerprint()  # transcribed right
    assert schema.fingerprint_hex == pinned


def apache_avro_schemas_by_fingerprint():
    """What a reader using only the Apache library does (README, "Audit stream"): its canonical form keeps
    {"type": "bytes"} for a decimal, so it fingerprints that form parsed once more, which is the spec's."""
    by_fingerprint = {}
    for path in [*SCHEMA_DIR.glob("*.avsc"), *SCHEMA_DIR.glob("history/*.avsc")]:
        schema = avro.schema.parse(path.read_text())
        by_fingerprint[avro.schema.parse(schema.canonical_form).fingerprint()] = schema
    return by_fingerprint


def test_an_apache_avro_reader_finds_the_schema_by_the_events_fingerprint():
    d = a_decision()
    data = encode(DECISION, d.model_dump())
    by_fingerprint = apache_avro_schemas_by_fingerprint()
    assert set(by_fingerprint) == set(SCHEMAS)
    schema = by_fingerprint[data[2:10]]
    record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
    assert record["decision_id"] == d.decision_id and record["reserved"] == d.reserved
    # avro 1.12's own fingerprint differs (it is not the spec's); if this fails, the README paragraph is stale
    assert avro.schema.parse(json.dumps(DECISION.raw)).fingerprint() != DECISION.fingerprint


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


def test_events_written_with_an_earlier_schema_read_as_the_current_one():
    """v1 events (before task hashes, conflicts, expiries) stay readable, with v2's defaults filled in."""
    import fastavro

    old = SCHEMAS[bytes.fromhex(PINNED["decision", 1])]
    record = {k: v for k, v in a_decision().model_dump(mode="python").items() if k != "task_hash"}
    record = {**record, "outcome": record["outcome"].value, "mode": record["mode"], "workload": "llm",
              "triggers": [t.value for t in record["triggers"]]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old.parsed, record)
    schema, read = decode(b"\xc3\x01" + old.fingerprint + buf.getvalue())
    assert schema is DECISION and read["task_hash"] is None and read["decision_id"] == record["decision_id"]
