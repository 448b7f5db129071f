"""Real traffic through the test stack: Kafka produce/consume and Redis commands."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from dispatch_core.settings import Settings


async def test_kafka_round_trip_keeps_per_key_order(
    stack: Settings, new_topic: Callable[..., Awaitable[str]], unique_name: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=3)
    sent = [(f"tenant-{i % 4}".encode(), f"task-{i}".encode()) for i in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, key=k, value=v) for k, v in sent])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, group_id=unique_name("group"),
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(received) < len(sent):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    received += [(m.key, m.value) for m in messages if m.key is not None and m.value is not None]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(sent)
    for key in {k for k, _ in sent}:
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


async def test_redis_round_trip_on_a_flushed_db(redis_client: Redis) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.hset("dc:test:budget", mapping={"spent": "0", "cap": "100"})
    spent = await redis_client.eval(  # scripts are how the ledger stays atomic
        "return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])", 1, "dc:test:budget", 30
    )
    assert spent == 30
    assert await redis_client.hgetall("dc:test:budget") == {"spent": "30", "cap": "100"}
