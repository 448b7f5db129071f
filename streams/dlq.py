"""The dead-letter topic's record format: the input exactly as it came, and why, in headers.

A dead letter is the original record's key and value, byte for byte (binary input stays
recoverable and re-drivable as it was), with ``dlq.*`` headers saying what went wrong and
where it came from, in the style of Kafka Connect's dead-letter queues:

    dlq.reason     short code: null_value, too_large, not_utf8, too_deep, not_json, not_object,
                   invalid, conflict, invalid_report, poison, undeliverable
    dlq.error      the specific error (at most 2,000 characters)
    dlq.topic, dlq.partition, dlq.offset, dlq.timestamp   the input record's origin
    dlq.size, dlq.sha256   the input value's length and SHA-256
    dlq.task_id    when it could be read
    dlq.attempts   how many times it was tried (poison only)
    dlq.at, dlq.worker     when and by which worker it was dead-lettered

An input larger than the task size limit keeps no value: its dead letter carries only its
size, hash and origin (the original stays on its topic until retention removes it), so a dead
letter is never larger than the input limit plus a few KiB of headers: it always fits the
broker's and the producer's limits. Such a dead letter, and one of a tombstone, has an empty
value (Kafka needs a key or a value). Original headers are not copied, for the same reason.
``dispatch dlq show`` reads the topic; ``dispatch dlq redrive`` sends values back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PREFIX = "dlq."
MAX_ERROR_CHARS = 2_000
#: Reasons whose record keeps no value (nothing to re-drive).
WITHOUT_VALUE = frozenset({"too_large", "null_value"})
NO_LIMIT = 1 << 62


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed Kafka record, with where it came from (for dead letters)."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int | None = None

    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, as written to and read back from the dead-letter topic."""

    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    size: int | None
    sha256: str | None
    timestamp_ms: int | None = None
    task_id: str | None = None
    attempts: int = 1
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker: str = ""

    @classmethod
    def of(cls, rec: Incoming, reason: str, error: str, *, task_id: str | None = None, attempts: int = 1,
           worker: str = "", max_value_bytes: int = NO_LIMIT) -> DeadLetter:
        """The dead letter of ``rec``; an input over ``max_value_bytes`` keeps only its size and hash."""
        value = rec.value
        keep = reason not in WITHOUT_VALUE and value is not None and len(value) <= max_value_bytes
        return cls(
            reason=reason, error=error[:MAX_ERROR_CHARS], topic=rec.topic, partition=rec.partition,
            offset=rec.offset, key=rec.key, value=value if keep else None,
            size=None if value is None else len(value),
            sha256=None if value is None else hashlib.sha256(value).hexdigest(),
            timestamp_ms=rec.timestamp_ms, task_id=task_id, attempts=attempts, worker=worker,
        )

    def headers(self) -> list[tuple[str, bytes]]:
        fields: dict[str, object | None] = {
            "reason": self.reason, "error": self.error, "topic": self.topic, "partition": self.partition,
            "offset": self.offset, "timestamp": self.timestamp_ms, "size": self.size, "sha256": self.sha256,
            "task_id": self.task_id, "attempts": self.attempts, "at": self.at.isoformat(), "worker": self.worker,
        }
        return [(PREFIX + k, str(v).encode()) for k, v in fields.items() if v is not None and v != ""]

    def record_value(self) -> bytes:
        """The value to write: the input's bytes, or empty when they are not kept."""
        return self.value if self.value is not None else b""

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> DeadLetter:
        """Read a dead letter back (for ``dispatch dlq``); headers of other writers are ignored."""
        h = {k.removeprefix(PREFIX): v.decode(errors="replace") for k, v in headers if k.startswith(PREFIX)}

        def num(name: str) -> int | None:
            return int(h[name]) if h.get(name, "").lstrip("-").isdigit() else None

        reason = h.get("reason", "unknown")
        size = num("size")
        kept = value is not None and reason not in WITHOUT_VALUE and (len(value) > 0 or size == 0)
        return cls(
            reason=reason, error=h.get("error", ""), topic=h.get("topic", ""),
            partition=num("partition") or 0, offset=num("offset") or 0, key=key, value=value if kept else None,
            size=size,
            sha256=h.get("sha256"), timestamp_ms=num("timestamp"), task_id=h.get("task_id"),
            attempts=num("attempts") or 1,
            at=datetime.fromisoformat(h["at"]) if "at" in h else datetime.fromtimestamp(0, UTC),
            worker=h.get("worker", ""),
        )

    @property
    def redrivable(self) -> bool:
        """True if the original bytes are here to send back."""
        return self.value is not None
