"""The Faust app: agents on the task, executor-report and load topics, and the expiry timer.

Faust is imported only here (it has import-time side effects). Settings chosen on purpose:
topics are created by dispatch-core (``topic_allow_declare=False``), no leader topic, no web
server (metrics come from prometheus-client), agent concurrency 1 (faust#606: with more,
offsets can be committed past unprocessed events), values as raw bytes so a malformed task
reaches our dead-letter handling instead of crashing a codec.

Offsets of the task and report topics are not Faust's to commit (``acks=False``): the
pipeline commits each batch's offsets with its outputs (``streams.outputs``), in the same
Kafka transaction by default. Faust still commits the load topic, where losing or repeating
a saturation report does no harm.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.settings import Settings
from schemas import Framing
from streams.dlq import Incoming
from streams.errors import Fenced
from streams.outputs import KafkaOutputs
from streams.pipeline import Pipeline
from streams.topics import topic_specs

log = logging.getLogger(__name__)


class Runtime:
    """The worker's connections, opened once on first use and closed on shutdown."""

    def __init__(self, settings: Settings, app: faust.App, framing: Framing) -> None:
        self.settings = settings
        self.app = app
        self.framing = framing
        self._pipeline: Pipeline | None = None
        self._lock = asyncio.Lock()
        self.stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def pipeline(self) -> Pipeline:
        async with self._lock:
            if self._pipeline is None:
                s = self.settings
                ledger = RedisLedger.from_url(s.redis_url, timeout_s=s.redis_timeout_s, decision_ttl_s=s.decision_ttl_s)
                dispatcher = Dispatcher(
                    ledger, PolicyStore(ledger.redis), load_policy(s.policy_file),
                    fail_mode=s.ledger_fail_mode, reservation_ttl_s=s.reservation_ttl_s,
                    snapshot_max_age_s=s.snapshot_max_age_s, circuit=s.circuit(),
                )
                await dispatcher.start()
                outputs = KafkaOutputs(s, group_id=s.app_id, commit=self._commit)
                self._pipeline = Pipeline(dispatcher, outputs, s, worker=s.worker_id or f"pid-{os.getpid()}",
                                          framing=self.framing)
                log.info("dispatch-core worker ready: policy %s, %s", dispatcher.default_policy.version[:12],
                         s.processing_guarantee)
            return self._pipeline

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """At-least-once: commit input offsets, with their chain heads as metadata, as the group
        member Faust runs: its aiokafka consumer, on the thread that owns it (Faust's own commit
        carries no metadata, and its public ``commit()`` only commits what its acks tracked)."""
        thread: Any = self.app.consumer._thread  # type: ignore[attr-defined]

        async def commit() -> None:
            await thread._ensure_consumer().commit(offsets)

        try:
            await thread.call_thread(commit)
        except CommitFailedError as exc:  # the group rebalanced: the partition's next owner redoes the batch
            raise Fenced(f"offsets not committed, the group rebalanced: {exc}") from exc

    async def handle(self, handle: Callable[[list[Incoming]], Awaitable[None]], batch: list[Incoming]) -> bool:
        """Handle one batch unless the worker is stopping; False once it is (leave the rest uncommitted)."""
        if self.stopping:
            return False
        self._in_flight += 1
        self._idle.clear()
        try:
            await handle(batch)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        return True

    async def close(self, wait_s: float = 10.0) -> None:
        """Stop taking batches, let the ones in flight finish (bounded), then close the connections.

        Closing under a batch in flight made it fail at shutdown (and the process exit 70 before
        it could leave its group); an unfinished batch is simply redelivered.
        """
        self.stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), wait_s)
        except TimeoutError:
            log.warning("stopping with a batch still in flight: it will be redelivered")
        if self._pipeline is not None:
            await self._pipeline.outputs.stop()
            await self._pipeline.dispatcher.ledger.close()
            self._pipeline = None


def _incoming(events: Any) -> list[Incoming]:
    return [Incoming(e.message.value, e.message.topic, e.message.partition, e.message.offset, e.message.key,
                     int(e.message.timestamp * 1000) if e.message.timestamp else None) for e in events]


async def _drain(runtime: Runtime, stream: Any, handle: Callable[[list[Incoming]], Awaitable[None]], size: int,
                 within_s: float) -> None:
    """Hand the stream to ``handle`` batch by batch, until the worker stops.

    ``handle`` returns only once the batch is written and committed (or left to a partition's
    new owner); it raises only on cancellation (shutdown: the uncommitted batch is simply
    redelivered) or a bug in its own error handling, where the process exits on the spot so
    that nothing unknown is committed after it.
    """
    async for events in stream.take_events(size, within=within_s):
        try:
            if not await runtime.handle(handle, _incoming(events)):
                return
        except asyncio.CancelledError:
            raise
        except BaseException:
            if runtime.stopping:
                return
            log.critical("a batch of %d could not be handled: exiting so it is redelivered", len(events),
                         exc_info=True)
            logging.shutdown()
            os._exit(70)


def _ours(partitions: Iterable[Any], topics: set[str]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions if tp.topic in topics]


def create_app(settings: Settings, framing: Framing) -> tuple[faust.App, Runtime]:
    """Build the dispatcher's Faust app for ``settings``; ``framing`` frames its audit events
    (``schemas.audit_framing``: the worker sets it up, registering the schemas, before it starts)."""
    partitions = {spec.name: spec.partitions for spec in topic_specs(settings, [])}
    datadir = settings.state_dir / "faust" / settings.app_id  # Faust wants one; keep it out of the cwd
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        datadir=str(datadir),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        consumer_group_instance_id=settings.worker_id,
        stream_wait_empty=False,
    )
    runtime = Runtime(settings, app, framing)
    committed_by_us = {settings.topic_tasks, settings.topic_cost}

    def topic(name: str, acks: bool) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions[name], acks=acks)

    @app.agent(topic(settings.topic_tasks, acks=False), concurrency=1)
    async def dispatch(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(runtime, stream, pipeline.handle_tasks, settings.batch_size, settings.batch_within_s)

    @app.agent(topic(settings.topic_cost, acks=False), concurrency=1)
    async def settle(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(runtime, stream, pipeline.handle_reports, settings.batch_size, settings.batch_within_s)

    @app.agent(topic(settings.topic_load, acks=True), concurrency=1)
    async def load(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(runtime, stream, pipeline.handle_load, 100, 0.05)

    @app.timer(interval=1.0)
    async def expire_overdue() -> None:
        if not runtime.stopping:
            pipeline = await runtime.pipeline()
            await pipeline.expire_overdue()
            await pipeline.record_circuits()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types receivers as sync
    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Fence the partitions' last owner before this worker reads them (exactly-once)."""
        await (await runtime.pipeline()).outputs.on_assigned(_ours(assigned, committed_by_us))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await (await runtime.pipeline()).outputs.on_revoked(_ours(revoked, committed_by_us))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await runtime.close()

    return app, runtime
