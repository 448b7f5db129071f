"""The finance store survives a SIGKILL of its consumer mid-stream: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from dispatch_cli.main import app

from schemas import decode
from stack.children import ProcessGroup
from streams.consume import to_end, topic_reader
from workers.finance_store import FinanceStore, sync

from .conftest import Recorded

runner = CliRunner()


async def copy(bootstrap: str, records, topic: str) -> None:
    """Re-produce records (same key, value, headers) onto ``topic``, partition for partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, r.value, key=r.key, partition=r.partition,
                                                   headers=list(r.headers)) for r in records])
    finally:
        await producer.stop()


def committed_lines(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("committed ")) if log.exists() else 0


async def wait_lines(log: Path, procs: ProcessGroup, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while committed_lines(log) < at_least:
        procs.check()
        assert time.monotonic() < deadline, log.read_text()[-2000:] if log.exists() else "no log"
        await asyncio.sleep(0.02)


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(recorded: Recorded, new_topic, tmp_path):
    s = recorded.settings
    topic = await new_topic(partitions=s.audit_partitions)
    half = len(recorded.records) // 2
    await copy(s.kafka_bootstrap, recorded.records[:half], topic)
    store_path = tmp_path / "finance.duckdb"
    run = s.model_copy(update={"topic_audit": topic, "finance_store": store_path})
    procs = ProcessGroup(tmp_path, cwd=Path.cwd())
    try:
        procs.start("sync", run, "finance", "sync", "--follow", "--verbose", "--max-batch", "1")
        await wait_lines(procs.log("sync"), procs, 1)
        # readers get in between the follower's batches (it holds the file only while it writes one)
        count = runner.invoke(app, ["finance", "sql", "--store", str(store_path), "--json",
                                    "SELECT (SELECT count(*) FROM decisions) + (SELECT count(*) FROM settlements) AS n"])
        assert count.exit_code == 0, count.output
        assert json.loads(count.stdout)[0]["n"] >= 1
        # the rest, and every event of the first half again (an at-least-once writer's repeats)
        await copy(s.kafka_bootstrap, recorded.records[half:] + recorded.records[:half], topic)
        seen = committed_lines(procs.log("sync"))
        await wait_lines(procs.log("sync"), procs, seen + 3)
        procs.kill("sync")  # SIGKILL: wherever it was, mid-transaction or between two
    finally:
        procs.stop_all()

    async with topic_reader(s.kafka_bootstrap, topic) as consumer:
        on_topic = [m async for m in to_end(consumer)]
    keys = set()
    for m in on_topic:
        schema, e = decode(m.value)
        keys.add((e["decision_id"], "decision" if schema.name == "decision" else e["kind"]))
    assert len(on_topic) == len(recorded.records) + half

    with FinanceStore(store_path) as store:
        at_kill = store.count("decisions") + store.count("settlements")
    assert 0 < at_kill < len(keys), "the kill should land mid-stream"
    done = await sync(store_path, s.kafka_bootstrap, topic)  # restart: resumes from the stored offsets
    assert done.read < len(on_topic)  # it did not start over
    again = await sync(store_path, s.kafka_bootstrap, topic)
    assert (again.read, again.new) == (0, 0)
    with FinanceStore(store_path) as store:
        rows = set(store.db.execute("SELECT decision_id, 'decision' FROM decisions UNION ALL "
                                    "SELECT decision_id, kind FROM settlements").fetchall())
        assert store.count("decisions") + store.count("settlements") == len(rows) == len(keys)
        assert rows == keys
        # every partition read to its end (a partition with nothing on it has nothing to store)
        ends = {tp.partition: o for tp, o in (await _ends(s.kafka_bootstrap, topic)).items() if o > 0}
        assert store.offsets(topic) == ends


async def _ends(bootstrap: str, topic: str):
    async with topic_reader(bootstrap, topic) as consumer:
        return await consumer.end_offsets(list(consumer.assignment()))
