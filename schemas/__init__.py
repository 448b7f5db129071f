"""Avro schemas of the audit topic (decision.avsc, settlement.avsc) and their codec."""

from schemas.codec import DECISION, SETTLEMENT, AuditEncodingError, EventSchema, decode, encode, headers

__all__ = ["DECISION", "SETTLEMENT", "AuditEncodingError", "EventSchema", "decode", "encode", "headers"]
