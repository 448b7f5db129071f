"""The Faust app: agents on the task, cost-feedback and load topics, and the release timer.

Faust is imported only here (it has import-time side effects). Settings chosen on purpose:
topics are created by dispatch-core (``topic_allow_declare=False``), no leader topic, no web
server (metrics come from prometheus-client), agent concurrency 1 (faust#606: with more,
offsets can be committed past unprocessed events), values as raw bytes so a malformed task
reaches our dead-letter handling instead of crashing a codec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.settings import Settings
from streams.outputs import Outputs
from streams.pipeline import Incoming, Pipeline, until_done
from streams.topics import topic_specs

log = logging.getLogger(__name__)


class Runtime:
    """The worker's connections, opened once on first use and closed on shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pipeline: Pipeline | None = None
        self._lock = asyncio.Lock()

    async def pipeline(self) -> Pipeline:
        async with self._lock:
            if self._pipeline is None:
                s = self.settings
                ledger = RedisLedger.from_url(s.redis_url, timeout_s=s.redis_timeout_s, decision_ttl_s=s.decision_ttl_s)
                dispatcher = Dispatcher(
                    ledger, PolicyStore(ledger.redis), load_policy(s.policy_file),
                    fail_mode=s.ledger_fail_mode, reservation_ttl_s=s.reservation_ttl_s,
                    snapshot_max_age_s=s.snapshot_max_age_s,
                )
                await dispatcher.start()
                self._pipeline = Pipeline(dispatcher, await Outputs.start(s))
                log.info("dispatch-core worker ready: policy %s", dispatcher.default_policy.version[:12])
            return self._pipeline

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.outputs.stop()
            await self._pipeline.ledger.close()
            self._pipeline = None


def _incoming(events: Any) -> list[Incoming]:
    return [Incoming(e.value, e.message.topic, e.message.partition, e.message.offset) for e in events]


async def _drain(stream: Any, handle: Callable[[list[Incoming]], Awaitable[None]], size: int, within_s: float) -> None:
    """Hand the stream to ``handle`` batch by batch; a batch's offsets may be committed only once handled.

    ``take_events`` acks a batch as soon as the loop leaves it, finished or not. So if a
    batch cannot be finished (a bug, or cancellation mid-batch at shutdown) the process
    exits on the spot instead, before anything commits: the batch is redelivered, and since
    handling is idempotent the redelivery yields the same decisions and no second charge.
    """
    async for events in stream.take_events(size, within=within_s):
        batch = _incoming(events)
        try:
            await until_done(handle, batch)
        except BaseException:
            log.critical("a batch of %d from %s was not handled: exiting so it is redelivered", len(batch),
                         batch[0].topic if batch else "?", exc_info=True)
            logging.shutdown()
            os._exit(70)


def create_app(settings: Settings) -> tuple[faust.App, Runtime]:
    """Build the dispatcher's Faust app for ``settings``."""
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
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        stream_wait_empty=False,
    )
    runtime = Runtime(settings)

    def topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions[name])

    @app.agent(topic(settings.topic_tasks), concurrency=1)
    async def dispatch(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(stream, pipeline.handle_tasks, settings.batch_size, settings.batch_within_s)

    @app.agent(topic(settings.topic_cost), concurrency=1)
    async def settle(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(stream, pipeline.handle_costs, settings.batch_size, settings.batch_within_s)

    @app.agent(topic(settings.topic_load), concurrency=1)
    async def load(stream: faust.StreamT) -> None:
        pipeline = await runtime.pipeline()
        await _drain(stream, pipeline.handle_load, 100, 0.05)

    @app.timer(interval=1.0)
    async def release_expired() -> None:
        await (await runtime.pipeline()).release_expired()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers as sync
    async def close(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await runtime.close()

    return app, runtime
