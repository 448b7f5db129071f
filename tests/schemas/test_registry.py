"""The Confluent wire format against the real registry (Apicurio, Confluent API), and schema evolution
proven with the Apache avro library."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import avro.io
import avro.schema
import fastavro
import httpx
import pytest

from dispatch_core.settings import Settings, get_settings
from schemas import (
    DECISION,
    SETTLEMENT,
    AuditEncodingError,
    Confluent,
    IncompatibleSchema,
    RegistryClient,
    SingleObject,
    audit_framing,
    decode,
)
from schemas.codec import SCHEMAS
from schemas.registry import subject, versions

from .test_codec import a_decision


@pytest.fixture
def client(registry: Settings) -> Iterator[RegistryClient]:
    assert registry.schema_registry_url
    c = RegistryClient(registry.schema_registry_url)
    yield c
    c.close()


def with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    changed["fields"].append(field)
    return changed


def backward(client: RegistryClient) -> bool:
    """BACKWARD is the global rule. Apicurio 3.0.9's Confluent API reports NONE while it enforces
    the rule; its own admin API tells."""
    if client.compatibility() == "BACKWARD":
        return True
    root = client.url.removesuffix("/apis/ccompat/v7")
    return bool(httpx.get(f"{root}/apis/registry/v3/admin/rules/COMPATIBILITY").json()["config"] == "BACKWARD")


def test_the_registry_enforces_backward_and_refuses_an_incompatible_version(
        client: RegistryClient, unique_name: Callable[[str], str]) -> None:
    assert backward(client)
    name = unique_name("subject")
    first = client.register(name, DECISION.raw)
    # a new required field without a default: the new reader cannot read the old events
    required = with_field(DECISION.raw, {"name": "cost_centre", "type": "string"})
    with pytest.raises(IncompatibleSchema) as refused:
        client.register(name, required)
    assert refused.value.status == 409
    assert client.subject_versions(name) == [1]
    # the same field with a default is a compatible next version
    optional = with_field(DECISION.raw, {"name": "cost_centre", "type": ["null", "string"], "default": None})
    assert client.register(name, optional) != first
    assert client.subject_versions(name) == [1, 2]


def test_every_version_is_registered_oldest_first_and_registering_again_gets_the_same_ids(
        registry: Settings, client: RegistryClient) -> None:
    framing = audit_framing(registry)
    assert isinstance(framing, Confluent)
    assert set(framing.ids) == set(SCHEMAS) and len(set(framing.ids.values())) == len(SCHEMAS)
    again = audit_framing(registry)
    assert isinstance(again, Confluent) and again.ids == framing.ids
    for name, current in (("decision", DECISION), ("settlement", SETTLEMENT)):
        ours = [s for s in versions() if s.name == name]
        assert [s.version for s in ours] == list(range(1, current.version + 1))
        assert subject(current) == f"dev.dispatchcore.audit.{current.raw['name']}"
        # oldest first: the subject's version n is our version n
        assert client.subject_versions(subject(current)) == [s.version for s in ours]
        for schema in ours:  # each id names that exact version (by its canonical form)
            assert client.writer(framing.ids[schema.fingerprint]) is schema


def test_without_a_registry_the_single_object_encoding_stays(stack_settings: Settings) -> None:
    assert stack_settings.schema_registry_url is None
    assert isinstance(audit_framing(stack_settings), SingleObject)
    assert SingleObject().encode(DECISION, a_decision().model_dump())[:10] == b"\xc3\x01" + DECISION.fingerprint


def test_decode_reads_the_confluent_format_through_the_registry(
        registry: Settings, client: RegistryClient, monkeypatch: pytest.MonkeyPatch,
        fresh_settings_cache: None) -> None:
    framing = audit_framing(registry)
    d = a_decision().model_dump()
    data = framing.encode(DECISION, d)
    assert data[:1] == b"\x00" and int.from_bytes(data[1:5], "big") == framing.ids[DECISION.fingerprint]
    assert data[5:] == SingleObject().encode(DECISION, d)[10:]  # a prefix: the same Avro body
    expected = decode(SingleObject().encode(DECISION, d))
    assert decode(data, client) == expected

    # every reader's plain `decode(data)`: the registry comes from DISPATCH_SCHEMA_REGISTRY_URL
    monkeypatch.delenv("DISPATCH_SCHEMA_REGISTRY_URL", raising=False)
    with pytest.raises(AuditEncodingError, match="DISPATCH_SCHEMA_REGISTRY_URL"):
        decode(data)
    assert registry.schema_registry_url
    monkeypatch.setenv("DISPATCH_SCHEMA_REGISTRY_URL", registry.schema_registry_url)
    get_settings.cache_clear()
    assert decode(data) == expected

    # an event framed with an older version's id is read as the current version
    v1 = next(s for s in versions() if s.name == "decision" and s.version == 1)
    old = sample(v1.raw)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, old)
    schema, read = decode(framing.prefix(v1) + body.getvalue(), client)
    assert schema is DECISION and read["decision_id"] == old["decision_id"] and read["link"] is None

    other = client.register("dev.dispatchcore.test.Other", {"type": "record", "name": "Other", "fields": []})
    with pytest.raises(AuditEncodingError, match=f"schema id {other} .* is none of the audit schemas"):
        decode(b"\x00" + other.to_bytes(4, "big"), client)


# --- schema evolution, proven with the Apache avro library (no project code reads) -----------------

def sample(schema: Any, names: dict[str, Any] | None = None, namespace: str = "") -> Any:
    """A value of every field for ``schema`` (raw JSON form), in the types Apache avro writes."""
    names = {} if names is None else names
    if isinstance(schema, str):
        simple = {"null": None, "boolean": True, "int": 7, "long": 1_234, "float": 1.5, "double": 2.5,
                  "bytes": b"\x01", "string": "s"}
        if schema in simple:
            return simple[schema]
        return sample(names.get(schema) or names[f"{namespace}.{schema}"], names, namespace)
    if isinstance(schema, list):  # a union: its first non-null branch, so every nested field is written
        return sample(next((b for b in schema if b != "null"), "null"), names, namespace)
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal":
        return Decimal(1).scaleb(-schema.get("scale", 0)) * 1234
    if logical == "timestamp-micros":
        return datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    if kind == "record":
        namespace = schema.get("namespace", namespace)
        names[schema["name"]] = names[f"{namespace}.{schema['name']}"] = schema
        return {f["name"]: sample(f["type"], names, namespace) for f in schema["fields"]}
    if kind == "enum":
        names[schema["name"]] = names[f"{schema.get('namespace', namespace)}.{schema['name']}"] = schema
        return schema["symbols"][0]
    if kind == "array":
        return [sample(schema["items"], names, namespace)]
    if kind == "map":
        return {"k": sample(schema["values"], names, namespace)}
    if kind == "fixed":
        return b"\x00" * schema["size"]
    return sample(kind, names, namespace)


def avro_write(schema: avro.schema.Schema, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(out))
    return out.getvalue()


EVOLUTIONS = [(old, new) for old in versions() for new in versions()
              if old.name == new.name and old.version < new.version]


@pytest.mark.parametrize("old,new", EVOLUTIONS, ids=[f"{o.name}-v{o.version}-read-by-v{n.version}"
                                                     for o, n in EVOLUTIONS])
def test_each_new_version_reads_events_written_with_each_older_one(old: Any, new: Any) -> None:
    writer = avro.schema.parse(json.dumps(old.raw))
    reader = avro.schema.parse(json.dumps(new.raw))
    record = sample(old.raw)
    data = avro_write(writer, record)
    read = avro.io.DatumReader(writer, reader).read(avro.io.BinaryDecoder(io.BytesIO(data)))
    kept = {f["name"] for f in old.raw["fields"]} & {f["name"] for f in new.raw["fields"]}
    added = [f for f in new.raw["fields"] if f["name"] not in kept]
    assert kept and {k: read[k] for k in kept} == {k: record[k] for k in kept}
    assert all(read[f["name"]] == f["default"] for f in added)  # fields added since: their defaults
    assert avro.io.DatumReader(writer, writer).read(avro.io.BinaryDecoder(io.BytesIO(data))) == record
