"""Where the pipeline's records go: one call per input partition writes a batch's outputs and
moves that partition's committed offset past it, all or nothing.

``Outputs`` is the protocol the pipeline sees; ``KafkaOutputs`` implements it over the real
broker and ``MemoryOutputs`` in memory, so every pipeline branch is tested in process.

Two processing guarantees (``settings.processing_guarantee``):

- ``exactly_once`` (default): one transactional producer per input partition
  (``transactional.id = <app_id>.<topic>.<partition>``). A batch's routed tasks, audit events
  and dead letters and the input offset commit in one Kafka transaction; readers with
  ``isolation.level=read_committed`` see each batch once or not at all, whatever crashes.
  Whoever takes a partition over initialises its producer first, which aborts the previous
  owner's open transaction and fences it out (a stalled old owner can no longer commit).
- ``at_least_once``: one idempotent producer; the input offsets are committed right after the
  batch's writes are acknowledged. A crash in between repeats the batch (same decisions, no
  second charge; executors' claims keep the task from running twice).

Audit events are linked into hash chains as they are written (``schemas.chain``): one chain
per input partition, whose head is committed with that partition's offset as its metadata,
so the head moves exactly when the events do. Writes that belong to no input (expiry
events) join the chain of an input partition this worker owns. A producer that failed is discarded and recreated on the next write: that is also how a
producer that lost its idempotence sequence in a long broker outage recovers (aiokafka #1017).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.errors import KafkaError

from dispatch_core.settings import Settings
from schemas.chain import Checkpoint, Head, append, link_bytes, unlinked
from schemas.codec import prefix_length
from streams.errors import BrokerUnavailable, Fenced, RecordRejected, translate
from streams.producer import idempotent_producer

log = logging.getLogger(__name__)
#: At-least-once: commit these input offsets, each with its chain head as metadata.
Commit = Callable[[dict[TopicPartition, OffsetAndMetadata]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Out:
    """One record to write. ``chained``: an audit event, linked into its input's chain on writing."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    chained: bool = False
    partition: int | None = None


def chain_name(source: TopicPartition) -> str:
    return f"{source.topic}/{source.partition}"


def audit_partition(chain: str, partitions: int) -> int:
    """Where a chain's events go: one partition per chain keeps them in order for readers. Input
    partition p writes to audit partition p mod N, so the inputs' spread is the audit topic's."""
    return int(chain.rsplit("/", 1)[1]) % partitions


def link(outs: Sequence[Out], head: Head, key: bytes | None, partitions: int) -> tuple[list[Out], Head]:
    """``outs`` with each audit event linked after ``head`` in order, and the chain's new head."""
    linked = []
    for out in outs:
        if out.chained and out.value is not None:
            n = prefix_length(out.value)
            content = unlinked(out.value[n:])
            ln, head = append(head, content, key)
            out = replace(out, value=out.value[:n] + content + link_bytes(ln), chained=False,
                          partition=audit_partition(head.chain, partitions))
        linked.append(out)
    return linked, head


def chain_key(settings: Settings) -> bytes | None:
    return settings.audit_key.get_secret_value().encode() if settings.audit_key else None


class Outputs(Protocol):
    """What the pipeline writes through. Raises the kinds in ``streams.errors``."""

    async def write(self, source: TopicPartition | None, outs: Sequence[Out], next_offset: int | None) -> None:
        """Write ``outs`` and commit ``source`` at ``next_offset`` (None: outputs of no input)."""

    async def on_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this worker now owns: take them over before consuming them."""

    async def on_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this worker no longer owns."""

    async def stop(self) -> None: ...


class MemoryOutputs:
    """``Outputs`` in memory: what was committed, per input offset; failures on demand."""

    def __init__(self, *, key: bytes | None = None, audit_partitions: int = 1) -> None:
        self.records: list[Out] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.heads: dict[TopicPartition, Head] = {}  # as committed with the offsets
        self.failures: list[BaseException] = []  # raised by the next writes, one each
        self.reject: Callable[[Out], bool] = lambda out: False  # the broker refuses these records
        self.attempts = 0
        self.key = key
        self.audit_partitions = audit_partitions

    async def write(self, source: TopicPartition | None, outs: Sequence[Out], next_offset: int | None) -> None:
        self.attempts += 1
        if source is None:  # like KafkaOutputs: join the chain of an input with a committed offset
            if not self.offsets:
                raise BrokerUnavailable("no input partition with a committed offset to chain these events to yet")
            source = min(self.offsets, key=lambda tp: (tp.topic, tp.partition))
            next_offset = self.offsets[source]
        if self.failures:
            raise self.failures.pop(0)
        head = self.heads.get(source) or Head(chain_name(source))
        linked, head = link(outs, head, self.key, self.audit_partitions)
        if any(self.reject(o) for o in linked):
            raise RecordRejected("the broker refuses the record: MessageSizeTooLargeError (in memory)")
        self.records.extend(linked)
        if next_offset is not None:
            self.offsets[source] = next_offset
            self.heads[source] = head

    async def on_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        return None

    async def on_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        return None

    async def stop(self) -> None:
        return None

    def on(self, topic: str) -> list[Out]:
        return [o for o in self.records if o.topic == topic]


class KafkaOutputs:
    """``Outputs`` on the real broker, exactly once (transactions) or at least once."""

    def __init__(self, settings: Settings, *, group_id: str, commit: Commit | None = None) -> None:
        """``commit`` commits input offsets in at-least-once mode (the consumer's commit)."""
        self.settings = settings
        self.group_id = group_id
        self.transactional = settings.processing_guarantee == "exactly_once"
        self._commit = commit
        self._producers: dict[TopicPartition | None, AIOKafkaProducer] = {}  # None: the plain one
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._starting: dict[TopicPartition | None, asyncio.Lock] = {}
        self._owned: set[TopicPartition] | None = None  # None until the first assignment
        self._heads: dict[TopicPartition, Head] = {}  # chain heads as last committed
        self._committed: dict[TopicPartition, int] = {}  # input offsets as last committed
        self._audit_partitions: int | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._key = chain_key(settings)
        self._checkpointed: dict[TopicPartition, float] = {}  # loop time of each chain's last checkpoint
        if self.transactional:  # aiokafka has it as a module constant, not a producer option
            aiokafka_sender.BACKOFF_OVERRIDE = settings.transaction_retry_backoff_ms / 1000

    def _new(self, source: TopicPartition | None) -> AIOKafkaProducer:
        s = self.settings
        if source is None or not self.transactional:
            return idempotent_producer(s.kafka_bootstrap, linger_ms=s.producer_linger_ms,
                                       request_timeout_s=s.producer_request_timeout_s)
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, transactional_id=f"{s.app_id}.{source.topic}.{source.partition}",
            linger_ms=s.producer_linger_ms, transaction_timeout_ms=int(s.transaction_timeout_s * 1000),
            request_timeout_ms=int(s.producer_request_timeout_s * 1000), retry_backoff_ms=20,
        )

    async def _producer(self, source: TopicPartition | None) -> AIOKafkaProducer:
        """The producer for ``source``'s outputs, started once even when asked for concurrently
        (two producers with one transactional id would fence each other)."""
        key = source if self.transactional else None
        async with self._starting.setdefault(key, asyncio.Lock()):
            producer = self._producers.get(key)
            if producer is None:
                producer = self._new(key)
                try:
                    await producer.start()  # transactional: InitProducerId aborts the last owner's transaction
                except BaseException as exc:
                    self._retire(producer)
                    raise translate(exc) if isinstance(exc, (KafkaError, OSError)) else exc
                self._producers[key] = producer
        return producer

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Close a producer in the background: stopping waits for its pending sends, which an outage stalls."""
        async def close() -> None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=self.settings.producer_close_timeout_s)
            except (KafkaError, TimeoutError, OSError):
                pass

        task = asyncio.get_running_loop().create_task(close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _discard(self, source: TopicPartition | None) -> None:
        producer = self._producers.pop(source if self.transactional else None, None)
        if producer is not None:
            self._retire(producer)

    def _lock(self, source: TopicPartition | None) -> asyncio.Lock:
        return self._locks.setdefault(source or TopicPartition("", -1), asyncio.Lock())

    async def write(self, source: TopicPartition | None, outs: Sequence[Out], next_offset: int | None) -> None:
        orphans = source is None  # expiry events: chained to an input this worker owns, its offset unchanged
        source = self._chain_for_orphans() if source is None else source
        async with self._lock(source):
            if self._owned is not None and source not in self._owned:
                # a new producer for it would fence the partition's rightful new owner
                raise Fenced(f"{source} is no longer assigned to this worker")
            if orphans:  # read under the lock: a batch may have moved it since
                next_offset = self._committed.get(source)
                if next_offset is None:
                    raise BrokerUnavailable(f"{source} has no committed offset to keep")
            producer = await self._producer(source)
            checkpointed = False
            try:
                head = self._heads.get(source) or await self._load_heads([source])
                linked, head = link(outs, head, self._key, await self._partitions(producer))
                offsets = {source: OffsetAndMetadata(next_offset, head.metadata())} if next_offset is not None else {}
                if self.transactional:
                    await producer.begin_transaction()
                sent = [await producer.send(o.topic, key=o.key, value=o.value, headers=o.headers,
                                            partition=o.partition) for o in linked]
                if self.transactional and offsets:
                    # the offsets join the transaction while its records are still in flight: the
                    # broker commits both at once either way, and this saves one round trip per batch
                    written, _ = await asyncio.gather(
                        asyncio.gather(*sent), producer.send_offsets_to_transaction(offsets, self.group_id))
                else:
                    written = await asyncio.gather(*sent)
                last = max((i for i, o in enumerate(outs) if o.chained), default=None)
                if last is not None and self._checkpoint_due(source):
                    cp = Checkpoint.of(head.chain, head.seq, head.hash, written[last].offset, self._key)
                    await (await producer.send(self.settings.topic_audit_checkpoints, key=head.chain.encode(),
                                               value=cp.encode()))
                    checkpointed = True
                if self.transactional:
                    await producer.commit_transaction()
                elif offsets and self._commit is not None:
                    await self._commit(offsets)
            except BaseException as exc:
                # whatever state it is in (abortable, fatal, lost sequence), a new producer starts clean;
                # for a transaction, its InitProducerId aborts what this one left open. The head is read
                # back from the broker: a commit whose reply was lost may have moved it.
                self._discard(source)
                self._heads.pop(source, None)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                # aiokafka's transaction manager also raises bare AssertionError ("Invalid state
                # transition") and IllegalOperation after a failed send: the producer's, not the record's
                error = translate(exc)
                if isinstance(error, Fenced) and (self._owned is None or source in self._owned):
                    # fenced, yet the group still gives us the partition: take it back and retry
                    # (if it did move, the revocation arrives and the next try is dropped)
                    raise BrokerUnavailable(f"the producer for {source} was fenced; retrying as its owner") from exc
                raise error from exc
            if next_offset is not None:
                self._heads[source], self._committed[source] = head, next_offset
            if checkpointed:
                self._checkpointed[source] = asyncio.get_running_loop().time()

    def _checkpoint_due(self, source: TopicPartition) -> bool:
        last = self._checkpointed.get(source)
        return last is None or asyncio.get_running_loop().time() - last >= self.settings.audit_checkpoint_interval_s

    def _chain_for_orphans(self) -> TopicPartition:
        """An owned input partition with a known committed offset, the same one while it lasts."""
        known = sorted((tp for tp in self._committed if self._owned is None or tp in self._owned),
                       key=lambda tp: (tp.topic, tp.partition))
        if not known:
            raise BrokerUnavailable("no owned input partition with a committed offset to chain these events to yet")
        return known[0]

    async def _partitions(self, producer: AIOKafkaProducer) -> int:
        if self._audit_partitions is None:
            found = await producer.partitions_for(self.settings.topic_audit)
            self._audit_partitions = len(found)
        return self._audit_partitions

    async def _load_heads(self, partitions: list[TopicPartition]) -> Head:
        """Read the chain heads (and offsets) committed for ``partitions``; a new writer takes them
        over in a new epoch. Returns the first one's head."""
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap,
                                            request_timeout_ms=int(self.settings.producer_request_timeout_s * 1000))
                await admin.start()
                self._admin = admin
            committed = await self._admin.list_consumer_group_offsets(self.group_id, partitions=partitions)
        except (KafkaError, OSError) as exc:
            raise translate(exc) from exc
        for tp in partitions:
            found = committed.get(tp)
            head = Head.from_metadata(chain_name(tp), found.metadata if found is not None else None)
            self._heads[tp] = replace(head, epoch=head.epoch + 1)
            if found is not None and found.offset >= 0:
                self._committed[tp] = found.offset
        return self._heads[partitions[0]]

    async def on_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Take the partitions over: with transactions, fence their last owner before reading them;
        then read their chain heads (after the fence: the last owner's commit is settled)."""
        self._owned = set(partitions)
        taken = set(self._owned)
        if self.transactional:
            results = await asyncio.gather(*(self._producer(tp) for tp in self._owned), return_exceptions=True)
            for tp, result in zip(self._owned, results, strict=True):
                if isinstance(result, BaseException):  # the first write will try again
                    log.warning("could not take over %s yet: %s", tp, result)
                    # not fenced yet: the last owner's commit may still land and move the head,
                    # so its head is read by the first write, after the fence
                    taken.discard(tp)
        new = [tp for tp in taken if tp not in self._heads]
        if new:
            try:
                await self._load_heads(new)
            except BrokerUnavailable as exc:  # each write loads what is missing
                log.warning("could not read the chain heads of %d partitions yet: %s", len(new), exc)

    async def on_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            if self._owned is not None:
                self._owned.discard(tp)
            async with self._lock(tp):  # let a batch in flight finish (or fail) first
                self._discard(tp)
                self._heads.pop(tp, None)
                self._committed.pop(tp, None)

    async def stop(self) -> None:
        for key in list(self._producers):
            self._discard(key)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._admin is not None:
            await self._admin.close()
