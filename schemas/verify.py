"""Check audit hash chains: every event's link, each chain's continuity, and its checkpoints.

Pure: it is given each audit partition's records in offset order (and the latest checkpoint
of each chain) and reports, per chain, what it checked and the first break, by kind:

- ``modified``: an event's hash does not match its content (changed, or forged without the key),
  or an event differs from the one a checkpoint recorded at that position;
- ``removed``: events are missing (a gap in the sequence that nothing later fills);
- ``reordered``: the missing events come later in the partition;
- ``injected``: an event that does not belong where it is (a second event at a position, an
  unlinked event among linked ones, a chain's event in another chain's partition);
- ``truncated``: the chain ends before its latest checkpoint.

Normal operation never breaks a chain: an aborted transaction's events are invisible to
``read_committed`` readers, and a redelivery in at-least-once mode either repeats events
in the same writer epoch (counted as ``repeated``) or, after a crash, resumes the chain from
the last committed link in a new epoch (counted as ``rewound``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.chain import GENESIS, HMAC, Checkpoint, content_of, link_matches
from schemas.codec import AuditEncodingError, read_body
from schemas.registry import split  # either format: single-object, or Confluent through the registry


@dataclass(frozen=True, slots=True)
class Break:
    kind: str  # modified, removed, reordered, injected, truncated
    partition: int
    offset: int
    detail: str


@dataclass
class ChainReport:
    chain: str
    partition: int | None = None
    events: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    last_seq: int = 0
    head: str = GENESIS
    epoch: int = 0
    repeated: int = 0
    rewound: int = 0
    checkpoint_seq: int | None = None
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "partition": self.partition, "events": self.events,
                "first_offset": self.first_offset, "last_offset": self.last_offset, "last_seq": self.last_seq,
                "repeated": self.repeated, "rewound": self.rewound, "checkpoint_seq": self.checkpoint_seq,
                "ok": self.ok, "break": None if self.broken is None else {
                    "kind": self.broken.kind, "partition": self.broken.partition, "offset": self.broken.offset,
                    "detail": self.broken.detail}}


@dataclass(frozen=True, slots=True)
class _Event:
    offset: int
    chain: str
    seq: int
    prev: str
    hash: str
    epoch: int
    valid: bool  # its hash matches its content


@dataclass
class Verification:
    chains: dict[str, ChainReport] = field(default_factory=dict)
    unlinked: int = 0  # events written before chains existed (schema v2 and older)
    problems: list[Break] = field(default_factory=list)  # breaks that belong to no chain

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.chains.values())


def _read(partition: int, offset: int, value: bytes | None, key: bytes | None) -> _Event | None | Break:
    """The event's link (None: an unlinked legacy event), or why it cannot be read."""
    try:
        writer, body = split(value or b"")
        _, record = read_body(writer, body)
    except AuditEncodingError as exc:
        return Break("modified", partition, offset, f"unreadable event: {exc}")
    link = record.get("link")
    if link is None:
        return None
    try:
        content = content_of(body, link)
    except ValueError:
        return Break("modified", partition, offset, "the event's body does not end with its link")
    if link["alg"] == HMAC and not key:
        return Break("modified", partition, offset, "HMAC-linked event: verify needs the key (DISPATCH_AUDIT_KEY)")
    return _Event(offset, link["chain"], link["seq"], link["prev"], link["hash"], link["epoch"],
                  link_matches(link, content, key))


def verify(partitions: Mapping[int, Iterable[tuple[int, bytes | None]]], checkpoints: Iterable[Checkpoint] = (),
           *, key: bytes | None = None, start_offsets: Mapping[int, int] | None = None) -> Verification:
    """Verify every chain on the audit partitions given as ``{partition: [(offset, value), ...]}``.

    ``start_offsets``: each partition's first retained offset; a chain whose start was deleted
    by retention may begin mid-way there.
    """
    out = Verification()
    per_chain: dict[str, list[tuple[int, _Event]]] = {}
    for partition, records in sorted(partitions.items()):
        linked_seen = False
        for offset, value in records:
            event = _read(partition, offset, value, key)
            if isinstance(event, Break):
                out.problems.append(event)
                continue
            if event is None:
                if linked_seen:
                    out.problems.append(Break("injected", partition, offset, "an unlinked event among linked ones"))
                else:
                    out.unlinked += 1
                continue
            linked_seen = True
            per_chain.setdefault(event.chain, []).append((partition, event))
    starts = start_offsets or {}
    for chain, events in sorted(per_chain.items()):
        out.chains[chain] = _walk(chain, events, starts)
    latest: dict[str, Checkpoint] = {}
    for cp in checkpoints:
        if not cp.valid(key):
            out.problems.append(Break("modified", -1, cp.offset, f"checkpoint of {cp.chain} at seq {cp.seq}: "
                                                                 "its MAC does not match (forged or altered)"))
            continue
        if cp.chain not in latest or cp.seq > latest[cp.chain].seq:
            latest[cp.chain] = cp
    for chain, cp in latest.items():
        _against_checkpoint(out.chains.setdefault(chain, ChainReport(chain)), cp, per_chain.get(chain, []))
    return out


def _walk(chain: str, events: list[tuple[int, _Event]], starts: Mapping[int, int]) -> ChainReport:
    rep = ChainReport(chain, partition=events[0][0])
    seen: dict[str, _Event] = {}  # hash -> event, for repeats and rewinds
    for i, (partition, e) in enumerate(events):
        rep.events += 1
        rep.first_offset = e.offset if rep.first_offset is None else rep.first_offset
        rep.last_offset = e.offset
        if rep.broken is not None:
            continue
        brk = _step(rep, seen, partition, e, events[i + 1:], first=i == 0, retained=starts.get(partition, 0) > 0)
        if brk is not None:
            rep.broken = brk
    return rep


def _step(rep: ChainReport, seen: dict[str, _Event], partition: int, e: _Event, later: list[tuple[int, _Event]],
          *, first: bool, retained: bool) -> Break | None:
    """Check one event against the chain so far; advance the chain or return the break."""
    if partition != rep.partition:
        return Break("injected", partition, e.offset, f"an event of chain {rep.chain} outside its partition")
    if e.valid and e.hash in seen and seen[e.hash].seq == e.seq:  # the same event again: a redelivery
        rep.repeated += 1
        return None
    if e.seq <= rep.last_seq and not (e.valid and _resumes(e, seen, rep.epoch)):
        return Break("injected", partition, e.offset, f"a second event at seq {e.seq} (the chain is at {rep.last_seq})")
    if not e.valid:
        return Break("modified", partition, e.offset, f"seq {e.seq}: its hash does not match its content")
    if e.prev == rep.head and e.seq == rep.last_seq + 1:
        pass
    elif first and retained and e.seq > 1:
        pass  # the chain's beginning was deleted by retention
    elif _resumes(e, seen, rep.epoch):
        rep.rewound += 1  # a new writer resumed from an earlier link (at-least-once redelivery)
    elif e.seq > rep.last_seq + 1:
        missing = rep.last_seq + 1
        if any(x.seq == missing and x.prev == rep.head for _, x in later):
            return Break("reordered", partition, e.offset, f"seq {e.seq} before seq {missing}")
        return Break("removed", partition, e.offset, f"seq {missing}..{e.seq - 1} missing before seq {e.seq}")
    else:
        return Break("modified", partition, e.offset, f"seq {e.seq}: its link does not name the chain's head")
    seen[e.hash] = e
    rep.last_seq, rep.head, rep.epoch = e.seq, e.hash, e.epoch
    return None


def _resumes(e: _Event, seen: dict[str, _Event], head_epoch: int) -> bool:
    """A new writer (a later epoch than the head's) continued from an earlier link than the head:
    its predecessor had written events but not committed them before it crashed (at-least-once)."""
    before = seen.get(e.prev)
    return before is not None and e.seq == before.seq + 1 and e.epoch > head_epoch


def _against_checkpoint(rep: ChainReport, cp: Checkpoint, events: list[tuple[int, _Event]]) -> None:
    rep.checkpoint_seq = cp.seq
    if rep.broken is not None:
        return
    at = [e for _, e in events if e.seq == cp.seq]
    if not at:
        end = (rep.last_offset + 1) if rep.last_offset is not None else 0
        rep.broken = Break("truncated", rep.partition if rep.partition is not None else -1, end,
                           f"the chain ends at seq {rep.last_seq}; a checkpoint recorded seq {cp.seq}")
    elif all(e.hash != cp.hash for e in at):
        rep.broken = Break("modified", rep.partition if rep.partition is not None else -1, at[0].offset,
                           f"seq {cp.seq} differs from its checkpoint")
