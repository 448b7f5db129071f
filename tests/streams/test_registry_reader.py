"""An independent reader of the audit topic: confluent_kafka's AvroDeserializer against the real
schema registry, no dispatch-core code in its decode path (README: "Reading the audit stream with a
schema registry")."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from dispatch_core.engine import Snapshot, decide, invalid
from dispatch_core.policy import load_policy, parse_policy
from dispatch_core.settings import Settings
from dispatch_core.settlement import SettlementEvent, SettlementKind
from schemas import DECISION, SETTLEMENT, RegistryClient, audit_framing, decode, headers
from streams.producer import TaskProducer

from ..engine.factories import NOON, budget, llm_task, policy_with, task
from .conftest import consume, send_reports

Event = tuple[int, int, str, dict[str, Any]]  # partition, offset, event.kind header, the event


def read_audit(bootstrap: str, registry_url: str, topic: str, group: str,
               until: Callable[[list[Event]], bool], timeout_s: float = 90.0) -> list[Event]:
    """The README's reader: confluent_kafka and the registry only."""
    registry = SchemaRegistryClient({"url": registry_url})
    consumer = DeserializingConsumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",  # the worker writes in Kafka transactions
        "value.deserializer": AvroDeserializer(registry),  # the writer's schema, by the id in each event
    })
    consumer.subscribe([topic])
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(events):
            assert time.monotonic() < deadline, f"{len(events)} events after {timeout_s} s"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            kind = dict(msg.headers() or [])["event.kind"].decode()
            events.append((msg.partition(), msg.offset(), kind, msg.value()))
    finally:
        consumer.close()
    return events


def decisions_of(events: list[Event]) -> list[dict[str, Any]]:
    return [e for _, _, _, e in events if "decided_at" in e]


def count(kind: str) -> Callable[[list[Event]], int]:
    return lambda events: sum(k == kind for _, _, k, e in events if "kind" in e)  # settlements


async def test_the_confluent_deserializer_reads_every_event_the_worker_writes(
        pipeline_settings: Settings, registry: Settings, procs: Any, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    data = load_policy().model_dump(mode="json")
    data["budgets"] = [{"id": "tiny", "scope": "service", "window": "day", "limit": "0.01", "soft_pct": 1.0}]
    data["triggers"] = {"trend": {"enabled": False}}  # large tasks do not fit: downgraded by budget_hard
    (tmp_path / "policy.json").write_text(parse_policy(data).canonical_json())
    url = registry.schema_registry_url
    assert url
    s = pipeline_settings.model_copy(update={
        "policy_file": tmp_path / "policy.json", "schema_registry_url": url, "reservation_ttl_s": 3.0,
    })
    procs.start("worker", s, "worker")
    tasks = [{"task_id": f"sr-{i}", "service": "finance-demo", "workload": "llm",
              "features": {"tokens": 300 if i % 2 else 9000}} for i in range(6)]
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    raw = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await raw.start()
    try:  # past the producer's validation: the worker rejects it (and dead-letters the input)
        await raw.send_and_wait(s.topic_tasks, key=b"finance-demo",
                                value=b'{"task_id": "sr-bad", "service": "finance-demo", "workload": "teleport"}')

        first = await asyncio.to_thread(read_audit, s.kafka_bootstrap, url, s.topic_audit, unique_name("group"),
                                        lambda ev: len(decisions_of(ev)) >= 7)
        decisions = decisions_of(first)
        assert {"routed", "downgraded", "rejected"} <= {d["outcome"] for d in decisions}
        assert {d["task_id"] for d in decisions} == {t["task_id"] for t in tasks} | {"sr-bad"}
        reported = sorted((d for d in decisions if d["reserved"] > 0), key=lambda d: d["task_id"])[:2]
        await send_reports(s, reported, "0.000123", times=2)  # settled once, then recorded as a duplicate
    finally:
        await raw.stop()
    unreported = sum(1 for d in decisions if d["reserved"] > 0) - len(reported)
    events = await asyncio.to_thread(
        read_audit, s.kafka_bootstrap, url, s.topic_audit, unique_name("group"),
        lambda ev: count("settled")(ev) >= 2 and count("duplicate")(ev) >= 2 and count("expired")(ev) >= unreported)
    settled = {e["decision_id"]: e for _, _, k, e in events if k == "settled"}
    assert set(settled) == {d["decision_id"] for d in reported} and unreported >= 1
    assert all(e["actual"] == Decimal("0.000123") and e["recorded_at"].tzinfo is not None for e in settled.values())

    # both readers agree on every event: the project's decode (through the registry) and confluent_kafka's
    records = await consume(s, [s.topic_audit], lambda rs: len(rs) >= len(events))
    client = RegistryClient(url)
    try:
        ours = {(r.partition, r.offset): decode(r.value, client)[1] for r in records}
    finally:
        client.close()
    assert all(r.value[:1] == b"\x00" for r in records)  # the Confluent wire format, not single-object
    assert {(p, o): e for p, o, _, e in events} == {k: ours[k] for k in ((p, o) for p, o, _, _ in events)}

    # the hash chains hold in this format too: `dispatch audit verify` reads it through the registry
    verified = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "audit", "verify", "--json"],
                              env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


async def test_every_event_kind_round_trips_through_the_confluent_deserializer(
        registry: Settings, new_topic: Callable[..., Any], unique_name: Callable[[str], str]) -> None:
    """Each decision outcome and settlement kind, written by the project's encoder to a real topic."""
    policy = load_policy()
    tight = policy_with(budgets=[budget("0.01", scope="service", soft_pct=1.0)])
    decisions = [
        decide(llm_task("small"), policy, Snapshot(), NOON).decision,
        decide(llm_task("large", task_id="t-down"), tight, Snapshot(), NOON).decision,
        decide(task("kernel", features={"cpu_ms": 50}, sla_ms=30), policy, Snapshot(), NOON).decision,
        invalid({"task_id": "t-bad", "workload": "teleport"}, "workload: not one of llm, script, kernel", policy, NOON),
    ]
    assert [d.outcome.value for d in decisions] == ["routed", "downgraded", "rerouted", "rejected"]
    at = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    settlements = [
        SettlementEvent(decision_id=decisions[0].decision_id, kind=kind, task_id="t-small", service="llm-gateway",
                        executor="llm-small", currency="USD", reserved=Decimal("0.000450"),
                        actual=None if kind is SettlementKind.EXPIRED else Decimal("0.000321"), scopes=["global-day"],
                        run_ms=None if kind is SettlementKind.EXPIRED else 12.5, dispatch_ms=3.0,
                        report_id=None if kind is SettlementKind.EXPIRED else f"r-{kind.value}", recorded_at=at)
        for kind in SettlementKind
    ]
    framing = audit_framing(registry)
    topic = await new_topic(partitions=1)
    written = [(framing.encode(DECISION, d.model_dump()), headers(DECISION, d.outcome.value)) for d in decisions]
    written += [(framing.encode(SETTLEMENT, e.model_dump()), headers(SETTLEMENT, e.kind.value)) for e in settlements]
    producer = AIOKafkaProducer(bootstrap_servers=registry.kafka_bootstrap)
    await producer.start()
    try:
        for value, hdrs in written:
            await producer.send_and_wait(topic, value=value, headers=hdrs)
    finally:
        await producer.stop()

    assert registry.schema_registry_url
    events = await asyncio.to_thread(read_audit, registry.kafka_bootstrap, registry.schema_registry_url, topic,
                                     unique_name("group"), lambda ev: len(ev) >= len(written))
    assert [k for _, _, k, _ in events] == [d.outcome.value for d in decisions] + [e.kind.value for e in settlements]
    client = RegistryClient(registry.schema_registry_url)
    try:
        assert [e for _, _, _, e in events] == [decode(value, client)[1] for value, _ in written]
    finally:
        client.close()
    for (_, _, _, read), d in zip(events, decisions, strict=False):
        assert read["decision_id"] == d.decision_id and read["reserved"] == d.reserved
        assert read["assigned_tier"] == d.assigned_tier and read["triggers"] == [t.value for t in d.triggers]
    for (_, _, _, read), e in zip(events[len(decisions):], settlements, strict=True):
        assert read == {**e.model_dump(mode="python"), "kind": e.kind.value, "link": None}


def test_a_worker_whose_registry_does_not_answer_refuses_to_start_in_one_line(pipeline_settings: Settings) -> None:
    with socket.socket() as refusing:  # bound, not listening: connecting is refused
        refusing.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{refusing.getsockname()[1]}/apis/ccompat/v7"
        s = pipeline_settings.model_copy(update={"schema_registry_url": url})
        done = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "worker"],
                              env={**s.as_env(), "PATH": "/usr/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: schema registry at {url} unreachable: [Errno 111] Connection refused"]
