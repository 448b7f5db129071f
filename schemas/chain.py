"""Hash chains over the audit stream: each event names its predecessor, so a change shows.

A chain is what one writer appends to: an input partition (``dispatch.tasks/3``,
``dispatch.costs/0``). Exactly one worker owns an input partition at a time and writes its
outputs in that partition's Kafka transactions (a new owner fences the old one), so each
chain has one writer, and all its events go to one audit partition, in order. The head
(count, hash, epoch) is committed with the input offsets in the same transaction, as the
offset's metadata: a new owner reads it back with the offsets, so the head survives any
crash exactly as the events do, and an aborted batch takes its links with it.

Each event's link is ``hash = H(chain, seq, prev, epoch, body)`` where ``body`` is its Avro body
up to the link field (the last field), and ``H`` is SHA-256, or HMAC-SHA-256 with the
writers' key (``DISPATCH_AUDIT_KEY``), so that without the key a forger cannot recompute
the chain after changing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import fastavro

from schemas.codec import DECISION
from schemas.encoder import compile_encoder

GENESIS = "0" * 64
HMAC = "hmac-sha256"
#: The ChainLink record, as the current decision schema defines it (settlement uses the same).
_LINK_SCHEMA = fastavro.parse_schema(
    next(t for t in next(f for f in DECISION.raw["fields"] if f["name"] == "link")["type"] if t != "null"))
_write_link = compile_encoder(_LINK_SCHEMA)
_NULL_LINK = b"\x00"  # union branch 0 (null), as ``codec.body`` writes a missing link


@dataclass(frozen=True, slots=True)
class Link:
    """One event's place in its chain."""

    chain: str
    seq: int
    prev: str
    hash: str
    alg: str
    epoch: int

    def as_record(self) -> dict[str, object]:
        return {"chain": self.chain, "seq": self.seq, "prev": self.prev, "hash": self.hash, "alg": self.alg,
                "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class Head:
    """A chain's last event: what the next one links to. Travels as offset-commit metadata."""

    chain: str
    seq: int = 0
    hash: str = GENESIS
    epoch: int = 0

    def metadata(self) -> str:
        return json.dumps({"chain": self.chain, "seq": self.seq, "hash": self.hash, "epoch": self.epoch},
                          separators=(",", ":"))

    @classmethod
    def from_metadata(cls, chain: str, metadata: str | None) -> Head:
        """The head committed for ``chain``; a new chain if nothing (or something else) was committed."""
        try:
            data = json.loads(metadata or "")
        except ValueError:
            return cls(chain)
        if not isinstance(data, dict) or data.get("chain") != chain:
            return cls(chain)
        return cls(chain, int(data["seq"]), str(data["hash"]), int(data["epoch"]))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A chain's head as written, kept on the checkpoint topic: the audit topic cannot lose its end
    silently. ``mac`` is the digest of the other fields (keyed when the writers hold the key)."""

    chain: str
    seq: int
    hash: str
    offset: int  # the head event's offset on the audit topic
    alg: str = "sha256"
    mac: str = ""

    @classmethod
    def of(cls, chain: str, seq: int, hash_: str, offset: int, key: bytes | None) -> Checkpoint:
        return cls(chain, seq, hash_, offset, alg(key), digest(key, ("checkpoint", chain, seq, hash_, offset)))

    def valid(self, key: bytes | None) -> bool:
        """The MAC matches; with a key, only a keyed MAC counts (a plain one can be made by anyone)."""
        if key and self.alg != HMAC:
            return False
        keyed = key if self.alg == HMAC else None
        return bool(self.mac) and hmac.compare_digest(
            self.mac, digest(keyed, ("checkpoint", self.chain, self.seq, self.hash, self.offset)))

    def encode(self) -> bytes:
        return json.dumps({"chain": self.chain, "seq": self.seq, "hash": self.hash, "offset": self.offset,
                           "alg": self.alg, "mac": self.mac}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Checkpoint:
        """A checkpoint record; ValueError if it is not one."""
        try:
            d = json.loads(value or b"")
            return cls(str(d["chain"]), int(d["seq"]), str(d["hash"]), int(d["offset"]), str(d["alg"]),
                       str(d["mac"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a checkpoint record: {exc!r}") from exc


def digest(key: bytes | None, fields: tuple[object, ...], body: bytes = b"") -> str:
    """SHA-256 (HMAC-SHA-256 with a key) of ``fields``, one per line, then ``body``."""
    message = "".join(f"{f}\n" for f in fields).encode() + body
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def alg(key: bytes | None) -> str:
    return HMAC if key else "sha256"


def link_matches(link: dict[str, Any], content: bytes, key: bytes | None) -> bool:
    """Whether ``link`` (as decoded) is the hash of ``content`` at its place. With a key, only a
    keyed link counts: a writer holding the key never writes a plain one, anybody can."""
    if key and link["alg"] != HMAC:
        return False
    keyed = key if link["alg"] == HMAC else None
    expected = digest(keyed, (link["chain"], link["seq"], link["prev"], link["epoch"]), content)
    return hmac.compare_digest(expected, link["hash"])


def unlinked(body: bytes) -> bytes:
    """An Avro body as ``codec.body`` wrote it (null link last), without that null."""
    if not body.endswith(_NULL_LINK):
        raise ValueError("not an unlinked event body")
    return body[:-1]


def link_bytes(link: Link) -> bytes:
    """The link field's Avro encoding: union branch 1, then the record."""
    return b"\x02" + _write_link(link.as_record())


def append(head: Head, content: bytes, key: bytes | None) -> tuple[Link, Head]:
    """Link ``content`` (an unlinked body) after ``head``: its link and the chain's new head."""
    seq = head.seq + 1
    link = Link(head.chain, seq, head.hash, digest(key, (head.chain, seq, head.hash, head.epoch), content), alg(key),
                head.epoch)
    return link, Head(head.chain, seq, link.hash, head.epoch)


def content_of(body: bytes, link: dict[str, object]) -> bytes:
    """The part of a linked event's body its hash covers: everything before the link field."""
    tail = link_bytes(Link(**link))  # type: ignore[arg-type]
    if not body.endswith(tail):
        raise ValueError("the event's body does not end with its link")
    return body[: -len(tail)]
