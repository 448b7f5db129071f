"""Pipeline fixtures: a fresh topic namespace per test, and worker/executor processes run for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings
from stack.children import ProcessGroup
from streams.topics import ensure_topics

from ..support import free_ports


@pytest.fixture
async def pipeline_settings(stack: Settings, redis_client, unique_name: Callable[[str], str], tmp_path: Path) -> Settings:
    """The test stack with this test's own topics, consumer group and metrics port; Redis flushed."""
    ns = unique_name("p")
    s = stack.namespaced(ns, **{
        "app_id": ns,
        "metrics_port": free_ports(1)[0], "state_dir": tmp_path,
    })
    await ensure_topics(s, load_policy(s.policy_file).executors())
    return s


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    """Dispatcher workers and executors as real processes (``python -m dispatch_cli.main ...``).

    Their cwd is pytest's: first on a child's sys.path under ``-m``, as it is on pytest's own,
    so the children import the same copy of the code as the tests that drive them.
    """
    p = ProcessGroup(tmp_path, cwd=Path.cwd())
    yield p
    failed = getattr(request.node, "rep_call", None)
    p.stop_all()
    if failed is not None and failed.failed:
        print(p.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


async def consume(
    settings: Settings, topics: list[str], until: Callable[[list[ConsumerRecord]], bool], timeout_s: float = 60.0,
    settle_s: float = 0.0, isolation_level: str = "read_committed",
) -> list[ConsumerRecord]:
    """Every record on ``topics`` from the beginning, read until ``until(records)`` (or fail on timeout).

    ``settle_s`` keeps reading that much longer once ``until`` holds, so duplicates would show.
    Read committed, as the contract tells every reader to (the worker writes in transactions).
    """
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                isolation_level=isolation_level)
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(msgs)
            if until(records):
                end = time.monotonic() + settle_s
                while time.monotonic() < end:
                    for msgs in (await consumer.getmany(timeout_ms=200)).values():
                        records.extend(msgs)
                return records
        raise AssertionError(f"timed out after {timeout_s}s with {len(records)} records on {topics}")
    finally:
        await consumer.stop()


async def wait_for(cond: Callable[[], Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def send_reports(settings: Settings, decisions: list[dict], actual: str, times: int = 1) -> None:
    """An executor's report for each decision event, each sent ``times`` times (a copy is a duplicate)."""
    from decimal import Decimal

    from aiokafka import AIOKafkaProducer

    from dispatch_core.settlement import ExecutorReport

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for d in decisions * times:
            report = ExecutorReport(decision_id=d["decision_id"], report_id=f"r-{d['decision_id']}",
                                    task_id=d["task_id"], service=d["service"], executor=d["executor"],
                                    actual=Decimal(actual), run_ms=5, dispatch_ms=10, finished_at=d["decided_at"])
            await producer.send_and_wait(settings.topic_cost, key=d["decision_id"].encode(),
                                         value=report.model_dump_json().encode())
    finally:
        await producer.stop()
