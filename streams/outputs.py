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

Writes that belong to no input (expiry events) go through a plain idempotent producer.
A producer that failed is discarded and recreated on the next write: that is also how a
producer that lost its idempotence sequence in a long broker outage recovers (aiokafka #1017).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.errors import KafkaError

from dispatch_core.settings import Settings
from streams.errors import BrokerUnavailable, Fenced, RecordRejected, translate
from streams.producer import idempotent_producer

log = logging.getLogger(__name__)
Commit = Callable[[dict[TopicPartition, int]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Out:
    """One record to write."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


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

    def __init__(self) -> None:
        self.records: list[Out] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.failures: list[BaseException] = []  # raised by the next writes, one each
        self.reject: Callable[[Out], bool] = lambda out: False  # the broker refuses these records
        self.attempts = 0

    async def write(self, source: TopicPartition | None, outs: Sequence[Out], next_offset: int | None) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        if any(self.reject(o) for o in outs):
            raise RecordRejected("the broker refuses the record: MessageSizeTooLargeError (in memory)")
        self.records.extend(outs)
        if source is not None and next_offset is not None:
            self.offsets[source] = next_offset

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
        transaction = self.transactional and source is not None
        async with self._lock(source):
            if transaction and self._owned is not None and source not in self._owned:
                # a new producer for it would fence the partition's rightful new owner
                raise Fenced(f"{source} is no longer assigned to this worker")
            producer = await self._producer(source)
            try:
                if transaction:
                    await producer.begin_transaction()
                sent = [await producer.send(o.topic, key=o.key, value=o.value, headers=o.headers) for o in outs]
                await asyncio.gather(*sent)
                if transaction:
                    await producer.send_offsets_to_transaction({source: next_offset}, self.group_id)
                    await producer.commit_transaction()
            except BaseException as exc:
                # whatever state it is in (abortable, fatal, lost sequence), a new producer starts clean;
                # for a transaction, its InitProducerId aborts what this one left open
                self._discard(source)
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
        if not transaction and source is not None and next_offset is not None and self._commit is not None:
            await self._commit({source: next_offset})

    async def on_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Take the partitions over: with transactions, fence their last owner before reading them."""
        self._owned = set(partitions)
        if self.transactional:
            results = await asyncio.gather(*(self._producer(tp) for tp in self._owned), return_exceptions=True)
            for tp, result in zip(self._owned, results, strict=True):
                if isinstance(result, BaseException):  # the first write will try again
                    log.warning("could not take over %s yet: %s", tp, result)

    async def on_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            if self._owned is not None:
                self._owned.discard(tp)
            async with self._lock(tp):  # let a batch in flight finish (or fail) first
                self._discard(tp)

    async def stop(self) -> None:
        for key in list(self._producers):
            self._discard(key)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
