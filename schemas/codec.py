"""Avro single-object encoding of audit events: no schema registry needed.

Each event is ``0xC3 0x01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of its
schema + the Avro body (the Avro spec's single-object encoding), so any reader holding the
.avsc files in this folder can decode the audit topic with plain fastavro or avro.
The fingerprint is also sent as a Kafka header (``avro.fingerprint``, hex).

Writing is strict: a record missing a field, or with a wrong type, raises ``AuditEncodingError``
instead of being written. Events are always written with the current schema; every earlier
version is kept in ``history/`` and decoded by its own fingerprint, then resolved to the
current schema (fields added since get their defaults), so readers see one shape.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from dispatch_core.errors import DispatchError
from schemas.encoder import compile_encoder

MAGIC = b"\xc3\x01"
HEADER_FINGERPRINT = "avro.fingerprint"
HEADER_KIND = "event.kind"
_DIR = Path(__file__).parent


class AuditEncodingError(DispatchError):
    """An audit event could not be encoded or decoded against its schema."""


@dataclass(frozen=True)
class EventSchema:
    """A parsed schema with its single-object fingerprint."""

    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    version: int  # history/<name>.v<n>.avsc holds version n; the current one is the next
    write: Callable[[Mapping[str, Any]], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "write", compile_encoder(self.parsed))

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def _load(name: str, path: Path, version: int) -> EventSchema:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(raw)
    # The spec's Parsing Canonical Form: logicalType, precision and scale are stripped, so a decimal
    # is plain "bytes" (Java agrees). Apache avro-python 1.12 keeps {"type":"bytes"} there, so its own
    # fingerprint differs; README "Audit stream" says what its readers do. fastavro renders the
    # 64-bit Rabin fingerprint as the hex of its little-endian bytes.
    crc = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    return EventSchema(name, raw, parsed, crc, version)


def _versions(name: str) -> list[EventSchema]:
    """Every version of one event's schema, oldest first; the last is the current one."""
    old = sorted(_DIR.joinpath("history").glob(f"{name}.v*.avsc"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    return [_load(name, p, i) for i, p in enumerate([*old, _DIR / f"{name}.avsc"], start=1)]


_ALL = _versions("decision") + _versions("settlement") + _versions("circuit")
DECISION = max((s for s in _ALL if s.name == "decision"), key=lambda s: s.version)
SETTLEMENT = max((s for s in _ALL if s.name == "settlement"), key=lambda s: s.version)
CIRCUIT = max((s for s in _ALL if s.name == "circuit"), key=lambda s: s.version)
CURRENT = {s.name: s for s in (DECISION, SETTLEMENT, CIRCUIT)}
#: Every schema version an audit event may have been written with, by fingerprint.
SCHEMAS = {s.fingerprint: s for s in _ALL}


def body(schema: EventSchema, record: dict[str, Any]) -> bytes:
    """The Avro binary body of ``record``; refuses a record that does not match the schema exactly.

    ``link`` (the hash-chain link, the last field) may be left out: it is written as null, and
    ``schemas.chain`` replaces that null when the event is written to its chain.
    """
    try:
        return schema.write({"link": None, **record})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AuditEncodingError(f"cannot write {schema.name} event: {exc!r}") from exc


def encode(schema: EventSchema, record: dict[str, Any]) -> bytes:
    """Single-object encode ``record`` (see ``body``)."""
    return MAGIC + schema.fingerprint + body(schema, record)


def prefix_length(data: bytes) -> int:
    """Bytes before the Avro body: 10 for single-object encoding, 5 for the Confluent wire format."""
    return 5 if data[:1] == b"\x00" else 10


def split(data: bytes) -> tuple[EventSchema, bytes]:
    """The writer's schema and the Avro body of a single-object encoded event."""
    if data[:2] != MAGIC or len(data) < 10:
        raise AuditEncodingError("not an Avro single-object encoded event")
    writer = SCHEMAS.get(data[2:10])
    if writer is None:
        raise AuditEncodingError(f"unknown schema fingerprint {data[2:10].hex()}")
    return writer, data[10:]


def read_body(writer: EventSchema, data: bytes) -> tuple[EventSchema, dict[str, Any]]:
    """An Avro body written with ``writer``, read as the current version of its schema."""
    current = CURRENT[writer.name]
    try:
        record = fastavro.schemaless_reader(io.BytesIO(data), writer.parsed,
                                            None if writer is current else current.parsed)
    except (ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
        raise AuditEncodingError(f"cannot read {writer.name} event: {exc!r}") from exc
    assert isinstance(record, dict)
    return current, record


def decode(data: bytes) -> tuple[EventSchema, dict[str, Any]]:
    """Decode a single-object encoded event: the writer's schema by its fingerprint, read as the current one."""
    return read_body(*split(data))


def headers(schema: EventSchema, kind: str) -> list[tuple[str, bytes]]:
    """Kafka headers naming the event's schema and kind, for consumers that route on them."""
    return [(HEADER_FINGERPRINT, schema.fingerprint_hex.encode()), (HEADER_KIND, kind.encode())]
