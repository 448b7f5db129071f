"""Reading a whole topic up to its current end, as reports, replays and the dead-letter tools do.

Always ``read_committed``: the worker writes in transactions, and a reader must not see the
outputs of a batch that was aborted (they are redone in a later transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from dispatch_core.errors import DispatchError


@asynccontextmanager
async def topic_reader(bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer assigned every partition of ``topic``, at the beginning (no group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not consumer.assignment():  # without a group, every partition is assigned once known
            if asyncio.get_running_loop().time() > deadline:
                raise DispatchError(f"no topic {topic!r} at {bootstrap}")
            await asyncio.sleep(0.05)
        yield consumer
    finally:
        await consumer.stop()


async def to_end(consumer: AIOKafkaConsumer) -> AsyncIterator[ConsumerRecord]:
    """Every record from the consumer's positions up to the ends its partitions have now."""
    parts = sorted(consumer.assignment())
    ends = await consumer.end_offsets(parts)
    while any([await consumer.position(tp) < ends[tp] for tp in parts]):
        for msgs in (await consumer.getmany(timeout_ms=500)).values():
            for m in msgs:
                yield m
