"""Reading the audit topic and its checkpoints for ``dispatch audit verify``."""

from __future__ import annotations

from collections import defaultdict

from aiokafka import TopicPartition

from dispatch_core.settings import Settings
from schemas.chain import Checkpoint
from schemas.verify import Break, Verification, verify
from streams.consume import to_end, topic_reader
from streams.outputs import chain_key


async def verify_topic(settings: Settings, topic: str | None = None, checkpoints: str | None = None) -> Verification:
    """Verify every chain on ``topic`` (default: the audit topic) against the latest checkpoints."""
    topic = topic or settings.topic_audit
    # checkpoints first: one written with its events is then sure to find them, even while workers write
    found: list[Checkpoint] = []
    unreadable: list[Break] = []
    async with topic_reader(settings.kafka_bootstrap, checkpoints or settings.topic_audit_checkpoints) as consumer:
        async for m in to_end(consumer):
            try:
                found.append(Checkpoint.decode(m.value))
            except ValueError as exc:
                unreadable.append(Break("modified", -1, m.offset, f"checkpoint record: {exc}"))
    records: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    async with topic_reader(settings.kafka_bootstrap, topic) as consumer:
        starts = await consumer.beginning_offsets(list(consumer.assignment()))
        async for m in to_end(consumer):
            records[m.partition].append((m.offset, m.value))
    result = verify(records, found, key=chain_key(settings),
                    start_offsets={tp.partition: o for tp, o in starts.items() if isinstance(tp, TopicPartition)})
    result.problems.extend(unreadable)
    return result
