"""The producer helper: submit tasks to the task topic, validated first, keyed by service.

Keying by service keeps one service's tasks in order on one partition; a task that fails
validation is refused here with the reason instead of being sent to fail downstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dispatch_core.settings import Settings
from dispatch_core.task import Task, parse_task

log = logging.getLogger(__name__)


def idempotent_producer(bootstrap: str, linger_ms: int = 2, request_timeout_s: float = 40.0) -> AIOKafkaProducer:
    """The producer every dispatch-core writer uses: idempotent, acks from all in-sync replicas.

    ``request_timeout_s`` also bounds how long a send waits through a broker outage before it fails.
    """
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=linger_ms,
                            request_timeout_ms=int(request_timeout_s * 1000))


class Deliverer:
    """An idempotent producer that is replaced whenever a delivery fails, for writers that must
    deliver (an executor's reports) through broker outages of any length.

    After a failed delivery aiokafka's idempotent producer can hold a sequence number the broker
    never saw, and every later batch to that partition then fails with OutOfOrderSequenceNumber
    (aiokafka #1017): a new producer (a new producer id) is the cure.
    """

    def __init__(self, bootstrap: str, *, request_timeout_s: float = 40.0, max_delay_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.request_timeout_s = request_timeout_s
        self.max_delay_s = max_delay_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None

    async def _current(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = idempotent_producer(self.bootstrap, request_timeout_s=self.request_timeout_s)
                try:
                    await producer.start()
                except BaseException:
                    await _stop_quietly(producer)
                    raise
                self._producer = producer
            return self._producer

    async def _replace(self, failed: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is failed:
                self._producer = None
                asyncio.get_running_loop().create_task(_stop_quietly(failed))

    async def deliver(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send and wait until the broker has it, however long that takes (backing off meanwhile)."""
        delay = 0.1
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = await self._current()
                await (await producer.send(topic, value, key=key))
                if self._failing_since is not None:
                    log.warning("delivering again after %.1f s", time.monotonic() - self._failing_since)
                    self._failing_since = None
                return
            except (KafkaError, OSError, AssertionError) as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("delivery to %s failed, retrying with a new producer: %r", topic, exc)
                if producer is not None:
                    await self._replace(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)

    async def stop(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)
            self._producer = None


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a producer without waiting on an outage for longer than ``timeout_s``."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except (KafkaError, OSError, TimeoutError):
        pass


class TaskProducer:
    """Publishes tasks to ``settings.topic_tasks`` with an idempotent producer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = idempotent_producer(settings.kafka_bootstrap, linger_ms=5)

    async def __aenter__(self) -> TaskProducer:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # else it is left half-started, and reported unclosed
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def submit(self, task: Task | dict[str, Any]) -> Task:
        """Validate and send one task; returns it once the broker has it (TaskError if invalid)."""
        return (await self.submit_many([task]))[0]

    async def submit_many(self, tasks: Iterable[Task | dict[str, Any]]) -> list[Task]:
        """Validate every task first (nothing is sent if one is invalid), then send and await all."""
        valid = [t if isinstance(t, Task) else parse_task(t) for t in tasks]
        futures = [
            await self._producer.send(
                self.settings.topic_tasks, key=t.service.encode(), value=t.model_dump_json(exclude_none=True).encode()
            )
            for t in valid
        ]
        for f in futures:
            await f
        return valid

    async def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (demo and tests use it to show what happens to bad input)."""
        await self._producer.send_and_wait(self.settings.topic_tasks, key=key, value=value)
