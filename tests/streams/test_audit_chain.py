"""Tamper evidence on the real stream: chains written by real workers through crashes and
rebalances verify, and every kind of tampering with a copy of the topic is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from dispatch_core.settings import Settings
from schemas import decode
from schemas.chain import append, content_of, link_bytes
from schemas.codec import split
from streams.audit import verify_topic
from streams.consume import to_end, topic_reader
from streams.producer import TaskProducer
from streams.topics import TopicSpec, create_topics

from .conftest import consume, send_reports
from .test_pipeline import mixed_tasks

KEY = SecretStr("finance-owns-this-key")


@pytest.fixture
async def written(pipeline_settings, procs) -> Settings:
    """An audit stream written by two workers, one SIGKILLed mid-stream and replaced, with settlements."""
    s = pipeline_settings.model_copy(update={"batch_size": 20, "audit_key": KEY, "audit_checkpoint_interval_s": 0.0})
    tasks = mixed_tasks(450, "chain")
    procs.start("worker-1", s, "worker")
    procs.start("worker-2", s, "worker")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks[:150])
        await consume(s, [s.topic_audit], lambda rs: len(rs) >= 60)
        procs.kill("worker-1")  # mid-stream: its open transaction is aborted by the next owner
        await producer.submit_many(tasks[150:300])
        procs.start("worker-3", s, "worker")  # another rebalance
        await producer.submit_many(tasks[300:])
    records = await consume(s, [s.topic_audit], lambda rs: len(rs) >= 450, timeout_s=120)
    decisions = [e for _, e in (decode(r.value) for r in records)][:40]
    await send_reports(s, decisions, "0.001", times=2)  # a settlement and a duplicate each
    await consume(s, [s.topic_audit], lambda rs: len(rs) >= 450 + 80, timeout_s=60)
    procs.stop_all()  # a graceful stop is normal operation too
    return s


async def _records(s: Settings) -> list:
    async with topic_reader(s.kafka_bootstrap, s.topic_audit) as consumer:
        return [m async for m in to_end(consumer)]


async def _copy(s: Settings, records: list, name: str) -> Settings:
    """``records`` written as they are onto a fresh topic with the audit topic's partitioning."""
    copy = s.model_copy(update={"topic_audit": name})
    await create_topics(copy, [TopicSpec(name, s.audit_partitions, 1, "tampered copy")])
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(name, value=r.value, key=r.key, partition=r.partition)
    finally:
        await producer.stop()
    return copy


def _chain_of(record) -> tuple[str, int]:
    link = decode(record.value)[1]["link"]
    return link["chain"], link["seq"]


def _tamper(records: list, kind: str) -> list:
    """A copy of ``records`` with one kind of tampering, in the middle of the longest chain."""
    by_chain: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_chain[_chain_of(r)[0]].append(i)
    idx = max(by_chain.values(), key=len)
    mid = idx[len(idx) // 2]
    out = list(records)
    if kind == "modified":  # one byte of the body changed (a service name's letter)
        v = bytearray(out[mid].value)
        v[20] ^= 0x01
        out[mid] = _with_value(out[mid], bytes(v))
    elif kind == "removed":
        del out[mid]
    elif kind == "reordered":
        nxt = idx[idx.index(mid) + 1]
        out[mid], out[nxt] = out[nxt], out[mid]
    elif kind == "injected":  # a forged event linked after a real one, its hash recomputed without the key
        v = out[mid].value
        writer, body = split(v)
        link = decode(v)[1]["link"]
        content = bytearray(content_of(body, link))
        content[12] ^= 0x01
        prev_head = _head_before(records, link)
        forged, _ = append(prev_head, bytes(content), None)
        out.insert(mid + 1, _with_value(out[mid], v[:10] + bytes(content) + link_bytes(forged)))
    elif kind == "truncated":  # the newest events of the chain cut off
        cut = set(idx[len(idx) // 2:])
        out = [r for i, r in enumerate(out) if i not in cut]
    return out


def _head_before(records: list, link: dict):
    from schemas.chain import Head

    return Head(link["chain"], link["seq"] - 1, link["prev"], link["epoch"])


def _with_value(record, value: bytes):
    return type(record)(record.topic, record.partition, record.offset, record.timestamp, record.timestamp_type,
                        record.key, value, record.checksum, record.serialized_key_size, len(value), record.headers)


async def test_a_stream_through_crashes_and_rebalances_verifies_and_each_kind_of_tampering_is_named(
        written, unique_name):
    result = await verify_topic(written)
    assert result.ok, [c.as_dict() for c in result.chains.values() if not c.ok] + [result.problems]
    chains = result.chains
    assert {c.split("/")[0] for c in chains} == {written.topic_tasks, written.topic_cost}
    assert sum(c.events for c in chains.values()) == 450 + 80
    assert all(c.checkpoint_seq == c.last_seq for c in chains.values())  # checkpointed at every write here
    assert all(c.rewound == 0 and c.repeated == 0 for c in chains.values())  # exactly once: no repeats at all

    out = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "audit", "verify", "--json"],
                         env={**__import__("os").environ, **written.as_env()}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True

    records = await _records(written)
    for kind in ("modified", "removed", "reordered", "injected", "truncated"):
        copy = await _copy(written, _tamper(records, kind), unique_name(f"tampered-{kind}"))
        result = await verify_topic(copy, checkpoints=written.topic_audit_checkpoints)
        breaks = [c.broken for c in result.chains.values() if c.broken] + result.problems
        assert not result.ok and len(breaks) == 1 and breaks[0].kind == kind, (kind, breaks)


async def test_at_least_once_redeliveries_after_a_crash_verify_as_repeats_not_breaks(pipeline_settings, procs):
    s = pipeline_settings.model_copy(update={"batch_size": 20, "processing_guarantee": "at_least_once"})
    tasks = mixed_tasks(400, "alo")
    procs.start("worker-1", s, "worker")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks[:200])
        await consume(s, [s.topic_audit], lambda rs: len(rs) >= 80, isolation_level="read_uncommitted")
        procs.kill("worker-1")  # outputs written, offsets maybe not committed: their batch is redone
        procs.start("worker-2", s, "worker")
        await producer.submit_many(tasks[200:])
    await consume(s, [s.topic_audit], lambda rs: len({r.key for r in rs}) >= 400, timeout_s=120)
    result = await verify_topic(s)
    assert result.ok, [c.as_dict() for c in result.chains.values() if not c.ok] + [result.problems]
    assert sum(c.events - c.repeated for c in result.chains.values()) >= 400
