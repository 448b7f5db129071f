"""Avro schemas of the audit topic (decision.avsc, settlement.avsc), their codec and registry framing."""

from schemas.codec import CIRCUIT, DECISION, SETTLEMENT, AuditEncodingError, EventSchema, encode, headers
from schemas.registry import (
    Confluent,
    Framing,
    IncompatibleSchema,
    RegistryClient,
    RegistryError,
    SingleObject,
    audit_framing,
    decode,
    split,
)

__all__ = [
    "CIRCUIT",
    "DECISION",
    "SETTLEMENT",
    "AuditEncodingError",
    "Confluent",
    "EventSchema",
    "Framing",
    "IncompatibleSchema",
    "RegistryClient",
    "RegistryError",
    "SingleObject",
    "audit_framing",
    "decode",
    "encode",
    "headers",
    "split",
]
