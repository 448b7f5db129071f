"""TaskProducer against the real broker: what it confirms, how it fails, how it keys and spreads tasks.

Counts come from the broker (end offsets, records read back), never from the producer's own word.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_cli.workload import demo_workload
from dispatch_core.errors import TaskError
from dispatch_core.settings import Settings
from dispatch_core.task import parse_task
from streams.producer import TaskProducer, task_record

from .conftest import consume

NewTopic = Callable[..., Awaitable[str]]


def task(task_id: str, **extra: object) -> dict:
    return {"task_id": task_id, "service": "svc", "workload": "llm", "features": {"tokens": 100}, **extra}


async def end_offsets(s: Settings, topic: str, partitions: int) -> list[int]:
    """How many records each partition of ``topic`` holds, as the broker says."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return [ends[TopicPartition(topic, p)] for p in range(partitions)]
    finally:
        await consumer.stop()


async def on_topic(stack: Settings, new_topic: NewTopic, partitions: int = 3, **configs: str) -> Settings:
    return stack.model_copy(update={"topic_tasks": await new_topic(partitions=partitions, configs=configs)})


async def test_enqueue_then_flush_confirms_every_task_keyed_by_its_id(stack: Settings, new_topic: NewTopic) -> None:
    s = await on_topic(stack, new_topic)
    as_dicts = [task(f"e-{i}", payload={"n": i}) for i in range(300)]
    as_task = parse_task(task("e-task"))
    as_json = json.dumps(task("e-json")).encode()  # no created_at: one is stamped in
    async with TaskProducer(s) as producer:
        futures = [await producer.enqueue(t) for t in as_dicts]
        futures += [await producer.enqueue(as_task), await producer.enqueue(as_json)]
        await producer.flush()
        assert all(f.done() and f.exception() is None for f in futures)
        assert sum(await end_offsets(s, s.topic_tasks, 3)) == 302  # the broker has every one after flush
    records = await consume(s, [s.topic_tasks], lambda rs: len(rs) >= 302)
    assert len(records) == 302
    sent = {t["task_id"]: parse_task(t) for t in as_dicts} | {"e-task": as_task}
    for r in records:
        got = parse_task(r.value)
        assert r.key == got.task_id.encode()
        if got.task_id in sent:
            assert got.content_hash == sent[got.task_id].content_hash
    stamped = next(parse_task(r.value) for r in records if r.key == b"e-json")
    assert "created_at" in json.loads(next(r.value for r in records if r.key == b"e-json"))
    assert stamped.content_hash == parse_task(as_json).content_hash


async def test_sends_of_one_task_id_land_on_one_partition_in_the_order_sent(
        stack: Settings, new_topic: NewTopic) -> None:
    s = await on_topic(stack, new_topic)
    async with TaskProducer(s) as producer:
        for i in range(30):
            await producer.enqueue(task("again", payload={"n": i}))
            await producer.enqueue(task(f"other-{i}"))
        await producer.submit_many([task("again", payload={"n": 30 + i}) for i in range(30)])
    records = await consume(s, [s.topic_tasks], lambda rs: len(rs) >= 90)
    again = sorted((r for r in records if r.key == b"again"), key=lambda r: r.offset)
    assert len({r.partition for r in again}) == 1
    assert [json.loads(r.value)["payload"]["n"] for r in again] == list(range(60))


async def test_an_invalid_task_is_refused_with_its_reason_before_anything_is_sent(
        stack: Settings, new_topic: NewTopic) -> None:
    s = await on_topic(stack, new_topic)
    async with TaskProducer(s) as producer:
        with pytest.raises(TaskError, match="workload"):
            await producer.submit_many([task("ok-1"), task("bad", workload="quantum"), task("ok-2")])
        with pytest.raises(TaskError, match="sla_ms"):
            await producer.enqueue(task("bad-sla", sla_ms=-1))
        with pytest.raises(TaskError) as not_json:
            await producer.enqueue(b'{"task_id": "x", not json')
        assert not_json.value.reason == "not_json"
        with pytest.raises(TaskError) as too_large:
            await producer.enqueue(task("big", payload="x" * s.max_task_bytes))
        assert too_large.value.reason == "too_large"
        with pytest.raises(TaskError) as too_deep:
            await producer.submit(task("deep", payload=nested(s.max_task_depth)))  # 1 deeper with the task
        assert too_deep.value.reason == "too_deep"
        await producer.flush()  # whatever had been handed to the producer is now on the broker
        assert sum(await end_offsets(s, s.topic_tasks, 3)) == 0


def nested(depth: int) -> list:
    out: list = []
    for _ in range(depth - 1):
        out = [out]
    return out


async def test_a_send_the_broker_refuses_fails_flush_and_submit_many(stack: Settings, new_topic: NewTopic) -> None:
    s = await on_topic(stack, new_topic, partitions=1, **{"max.message.bytes": "4096"})
    big = task("too-big-for-this-topic", payload="y" * 10_000)  # a valid task, over the topic's limit
    async with TaskProducer(s) as producer:
        future = await producer.enqueue(big)
        with pytest.raises(KafkaError):
            await producer.flush()
        assert future.done() and future.exception() is not None
    async with TaskProducer(s) as producer:  # a new producer: the failed one's sequence is spent (aiokafka #1017)
        with pytest.raises(KafkaError):
            await producer.submit_many([task("small"), big])


def test_submit_reports_success_only_once_the_broker_has_every_task(
        stack: Settings, new_topic: NewTopic, monkeypatch: pytest.MonkeyPatch, fresh_settings_cache: None,
        tmp_path) -> None:
    import asyncio

    s = asyncio.run(on_topic(stack, new_topic, partitions=1, **{"max.message.bytes": "4096"}))
    for key, value in s.as_env().items():
        monkeypatch.setenv(key, value)
    lines = tmp_path / "tasks.jsonl"
    lines.write_text(json.dumps(task("fits")) + "\n" + json.dumps(task("does-not", payload="y" * 10_000)) + "\n")
    refused = CliRunner().invoke(app, ["submit", "--file", str(lines)])
    assert refused.exit_code == 1 and '"submitted"' not in refused.output
    assert refused.output.startswith(f"error: Kafka at {s.kafka_bootstrap} failed: ") and "TooLarge" in refused.output


async def test_a_task_larger_than_a_batch_is_sent_whole(stack: Settings, new_topic: NewTopic) -> None:
    s = await on_topic(stack, new_topic)
    big = task("big", payload="z" * 400_000)  # over the producer's 256 KiB batch, under max_task_bytes
    async with TaskProducer(s) as producer:
        await producer.submit_many([task("a"), big, task("b")])
    records = await consume(s, [s.topic_tasks], lambda rs: len(rs) >= 3)
    assert json.loads(next(r.value for r in records if r.key == b"big"))["payload"] == big["payload"]


def benchmark_tasks(n: int) -> list[bytes]:
    """The valid tasks among the first inputs of the benchmark workload (the demo's), ``n`` of them."""
    out = []
    for msg in demo_workload(n * 2, "spread"):
        try:
            out.append(task_record(msg)[1])
        except TaskError:
            continue  # about 1% are broken on purpose
        if len(out) == n:
            return out
    raise AssertionError("demo_workload gave too few valid tasks")


@pytest.mark.parametrize("workload", ["demo", "uniform"])
async def test_30k_tasks_spread_over_3_partitions_none_over_1_5x_the_mean(
        stack: Settings, new_topic: NewTopic, workload: str) -> None:
    s = await on_topic(stack, new_topic)
    tasks = benchmark_tasks(30_000) if workload == "demo" else [
        json.dumps(task(f"uniform-{i}")).encode() for i in range(30_000)]
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    counts = await end_offsets(s, s.topic_tasks, 3)
    assert sum(counts) == 30_000
    assert max(counts) <= 1.5 * statistics.mean(counts), counts
