"""Executor failures through real worker processes: reports in on Kafka, fallbacks and circuits out.

The executor here is a foreign client: the test reads routed tasks off the executor topics
and writes the reports itself, so each failure is exactly the one the test means.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from dispatch_core.decision import attempt_decision_id
from dispatch_core.ledger import RedisLedger
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from schemas import decode
from streams.messages import RoutedTask
from streams.producer import TaskProducer

from ..support import free_ports
from .conftest import consume, wait_for
from .test_pipeline import _group_members

PARTIAL = Decimal("0.000250")


def large_task(task_id: str) -> dict[str, Any]:
    """A task for llm-large, with a minute's SLA: time enough for the test's round trips before its fallback."""
    return {"task_id": task_id, "service": "llm-gateway", "workload": "llm", "features": {"tokens": 6000},
            "requested_tier": "large", "sla_ms": 60_000, "payload": {"prompt": "untouched ✓"}}


def events(records: list[ConsumerRecord]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for r in records:
        schema, event = decode(r.value)
        out.append((schema.name, {**event, "_partition": r.partition}))
    return out


def routed(records: list[ConsumerRecord]) -> list[RoutedTask]:
    return [RoutedTask.model_validate_json(r.value) for r in records]


def failure(task: RoutedTask, *, error_class: str = "retryable", outcome: str = "failed") -> ExecutorReport:
    failed = outcome == "failed"
    return ExecutorReport(
        decision_id=task.decision_id, report_id=str(uuid.uuid4()), outcome=outcome,  # type: ignore[arg-type]
        error_class=error_class if failed else None, error="overloaded" if failed else None,  # type: ignore[arg-type]
        task_id=task.task_id, service=task.service, executor=task.executor,
        actual=PARTIAL if failed else Decimal("0.001"), currency=task.currency, run_ms=4.0, dispatch_ms=2.0,
        finished_at=datetime.now(UTC), deadline=task.deadline, sla_ms=task.sla_ms,
        task=task.task if failed and error_class == "retryable" else None)


async def send(s: Settings, reports: list[ExecutorReport]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    try:
        for r in reports:
            await producer.send_and_wait(s.topic_cost, key=r.decision_id.encode(), value=r.model_dump_json().encode())
    finally:
        await producer.stop()


async def test_a_retryable_failure_reported_on_kafka_is_routed_again_linked_and_once(pipeline_settings, procs,
                                                                                   redis_client):
    s = pipeline_settings
    procs.start("worker", s, "worker")
    async with TaskProducer(s) as producer:
        await producer.submit_many([large_task("kf-1")])
    [first] = routed(await consume(s, [s.executor_topic("llm-large")], lambda rs: len(rs) >= 1))
    assert first.deadline is not None and first.attempt == 1
    report = failure(first)
    await send(s, [report, report])  # the same report sent twice: the copy must not fall back again

    audit = await consume(s, [s.topic_audit], lambda rs: sum(1 for n, e in events(rs) if n == "settlement") >= 2,
                          settle_s=1.0)
    decisions = [e for n, e in events(audit) if n == "decision"]
    settlements = [e for n, e in events(audit) if n == "settlement"]
    [fb] = [d for d in decisions if d["attempt"] == 2]
    assert len(decisions) == 2
    assert fb["decision_id"] == attempt_decision_id("llm-gateway", "kf-1", 2)
    assert fb["parent_decision_id"] == first.decision_id and fb["excluded_executors"] == ["llm-large"]
    assert fb["assigned_tier"] == "medium" and "executor_failure" in fb["triggers"]
    assert sorted((e["kind"], e["outcome"], e["fallback_decision_id"]) for e in settlements) == [
        ("duplicate", "failed", None), ("settled", "failed", fb["decision_id"])]

    [again] = routed(await consume(s, [s.executor_topic("llm-medium")], lambda rs: len(rs) >= 1, settle_s=1.0))
    assert (again.decision_id, again.attempt, again.deadline) == (fb["decision_id"], 2, first.deadline)
    assert again.task == first.task  # the payload untouched, through the report and back

    # Prometheus: one failure (the copy is a duplicate, not a second failure) and one fallback
    assert _metric(s.metrics_port, "dispatch_executor_outcomes_total", executor="llm-large", outcome="failed",
                   error_class="retryable") == 1
    assert _metric(s.metrics_port, "dispatch_fallbacks_total", executor="llm-large", outcome="downgraded") == 1

    # the ledger: the failed attempt's partial cost charged once, only the fallback reserved
    [key] = [k async for k in redis_client.scan_iter("dc:budget:global-daily:*")]
    state = await RedisLedger(redis_client).scope(key)
    assert (state.spent, Decimal(state.reserved) / 1_000_000) == (250, fb["reserved"])


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


async def test_the_circuit_opens_sheds_across_two_workers_probes_and_closes(pipeline_settings, procs):
    s = pipeline_settings.model_copy(update={
        "circuit_consecutive_failures": 3, "circuit_cooldown_s": 5.0, "circuit_probe_pct": 100.0,
        "circuit_close_after": 1})
    port_b = free_ports(1)[0]
    procs.start("worker-a", s, "worker")
    procs.start("worker-b", s.model_copy(update={"metrics_port": port_b}), "worker")
    await wait_for(lambda: _group_members(s), timeout_s=60)

    # three tasks fail on llm-large: its circuit opens
    async with TaskProducer(s) as producer:
        await producer.submit_many([large_task(f"cb-{i}") for i in range(3)])
    large = routed(await consume(s, [s.executor_topic("llm-large")], lambda rs: len(rs) >= 3))
    await send(s, [failure(t) for t in large])

    def circuit_changes(rs: list[ConsumerRecord]) -> list[tuple[str, str]]:
        return [(e["from_state"], e["to_state"]) for n, e in events(rs) if n == "circuit"]

    await consume(s, [s.topic_audit], lambda rs: ("closed", "open") in circuit_changes(rs), timeout_s=60)

    # while open, both workers shed llm-large: every task goes elsewhere, with trigger circuit_open
    shed_ids = [f"shed-{i}" for i in range(24)]
    async with TaskProducer(s) as producer:
        await producer.submit_many([large_task(t) for t in shed_ids])
    audit = await consume(s, [s.topic_audit], lambda rs: {e["task_id"] for n, e in events(rs) if n == "decision"}
                          >= set(shed_ids))
    shed = [e for n, e in events(audit) if n == "decision" and e["task_id"] in shed_ids]
    opened_or_probing = [e for e in shed if e["executor"] != "llm-large"]
    assert all("circuit_open" in e["triggers"] and e["executor_circuits"] == {"llm-large": "open"}
               for e in opened_or_probing)
    assert len(opened_or_probing) >= 20  # at most the tasks decided after the cool-down probe it
    assert _metric(s.metrics_port, "dispatch_triggers_total", trigger="circuit_open") > 0
    assert _metric(port_b, "dispatch_triggers_total", trigger="circuit_open") > 0  # both workers shed it

    # after the cool-down a probe goes through; its success closes the circuit
    await consume(s, [s.topic_audit], lambda rs: ("open", "half_open") in circuit_changes(rs), timeout_s=60)
    async with TaskProducer(s) as producer:
        await producer.submit_many([large_task("probe-1")])
    probes = await consume(s, [s.executor_topic("llm-large")],
                           lambda rs: any(r.task_id == "probe-1" for r in routed(rs)))
    [probe] = [r for r in routed(probes) if r.task_id == "probe-1"]
    await send(s, [failure(probe, outcome="succeeded")])
    audit = await consume(s, [s.topic_audit], lambda rs: ("half_open", "closed") in circuit_changes(rs), timeout_s=60)
    assert circuit_changes(audit) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert Counter(e["seq"] for n, e in events(audit) if n == "circuit") == {1: 1, 2: 1, 3: 1}  # each change once

    async def both_closed() -> bool:
        return all(_metric(port, "dispatch_circuit_state", executor="llm-large") == 0
                   for port in (s.metrics_port, port_b))

    await wait_for(both_closed)
