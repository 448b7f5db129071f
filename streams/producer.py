"""The producer helper: submit tasks to the task topic, validated first, keyed by service.

Keying by service keeps one service's tasks in order on one partition; a task that fails
validation is refused here with the reason instead of being sent to fail downstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from dispatch_core.settings import Settings
from dispatch_core.task import Task, parse_task


def idempotent_producer(bootstrap: str, linger_ms: int = 2, request_timeout_s: float = 40.0) -> AIOKafkaProducer:
    """The producer every dispatch-core writer uses: idempotent, acks from all in-sync replicas.

    ``request_timeout_s`` also bounds how long a send waits through a broker outage before it fails.
    """
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=linger_ms,
                            request_timeout_ms=int(request_timeout_s * 1000))


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
