"""Everything the dispatcher writes to Kafka, through one idempotent producer.

Faust's own producer is not idempotent outside exactly-once mode, and exactly-once has a
history of duplicates and crashes (faust-pitfalls.md), so outputs go through an aiokafka
producer with ``enable_idempotence=True, acks=all``. Each ``send_*`` returns a delivery
future; the caller awaits them all before its input offsets may be committed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from dispatch_core.decision import Decision
from dispatch_core.settings import Settings
from schemas import DECISION, SETTLEMENT, encode, headers
from streams.messages import RoutedTask
from streams.producer import idempotent_producer

Delivery = asyncio.Future[Any]


class Outputs:
    """Routed tasks, audit events and dead letters, written idempotently."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer

    @classmethod
    async def start(cls, settings: Settings) -> Outputs:
        producer = idempotent_producer(settings.kafka_bootstrap)
        await producer.start()
        return cls(settings, producer)

    async def stop(self) -> None:
        await self.producer.stop()

    async def route(self, routed: RoutedTask) -> Delivery:
        """The task, on its executor's topic, keyed by task id."""
        return await self.producer.send(
            self.settings.executor_topic(routed.executor), key=routed.task_id.encode(),
            value=routed.model_dump_json().encode(),
        )

    async def audit_decision(self, decision: Decision) -> Delivery:
        """The decision's provenance event (Avro), keyed by decision id."""
        return await self.producer.send(
            self.settings.topic_audit, key=decision.decision_id.encode(),
            value=encode(DECISION, decision.model_dump()), headers=headers(DECISION, decision.outcome.value),
        )

    async def audit_settlement(self, event: dict[str, Any]) -> Delivery:
        """A settlement / release event (Avro), keyed by the decision it belongs to."""
        return await self.producer.send(
            self.settings.topic_audit, key=event["decision_id"].encode(),
            value=encode(SETTLEMENT, event), headers=headers(SETTLEMENT, event["kind"]),
        )

    async def dead_letter(self, raw: bytes, error: str, source: dict[str, Any]) -> Delivery:
        """An input that could not be processed, with why and where it came from; nothing is dropped."""
        body = {
            "error": error, "source": source, "at": datetime.now(UTC).isoformat(),
            "raw": raw.decode("utf-8", errors="replace"),
        }
        return await self.producer.send(self.settings.topic_dlq, value=json.dumps(body).encode())


async def delivered(futures: Iterable[Delivery]) -> None:
    """Wait until every write is acknowledged by the broker (raises if one failed)."""
    await asyncio.gather(*futures)
