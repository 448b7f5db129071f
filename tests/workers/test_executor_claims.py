"""The example executor's side of the routed-task contract, in process on the real Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from dispatch_core.claims import ExecutionClaims
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from workers.executor import Executor, Profile

pytestmark = pytest.mark.stack


class Sent:
    """Stands where the executor's producer is: keeps what it would deliver."""

    def __init__(self) -> None:
        self.reports: list[ExecutorReport] = []

    async def deliver(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.reports.append(ExecutorReport.model_validate_json(value))


def routed(decision_id: str) -> bytes:
    return json.dumps({
        "decision_id": decision_id, "task_id": "t", "service": "svc", "workload": "llm", "tier": "small",
        "executor": "llm-small", "policy_version": "v", "estimate": "0.001", "currency": "USD",
        "created_at": datetime.now(UTC).isoformat(), "routed_at": datetime.now(UTC).isoformat(), "task": {},
    }).encode()


async def test_two_deliveries_at_once_run_once_and_the_second_is_reported_as_a_duplicate(redis_client):
    executor = Executor(Settings(), "llm-small", Profile(p95_ms=20.0, latency_scale=0.5), instance="only")
    claims = ExecutionClaims(redis_client, executor.owner)
    sent, slots = Sent(), asyncio.Semaphore(2)
    await slots.acquire()
    await slots.acquire()
    await asyncio.gather(*(executor._execute(routed("d-twice"), sent, claims, slots) for _ in range(2)))
    assert sorted(r.outcome for r in sent.reports) == ["duplicate", "succeeded"]
    assert [r.actual for r in sent.reports if r.outcome == "duplicate"] == [Decimal(0)]
    assert executor.done == 1 and executor._running == {}
    for _ in range(2):  # both capacity slots were given back
        await asyncio.wait_for(slots.acquire(), 1)


async def test_a_restarted_instance_reruns_what_it_had_claimed_and_skips_what_it_had_finished(redis_client):
    first = Executor(Settings(), "llm-small", Profile(p95_ms=20.0, latency_scale=0.1), instance="same")
    claims = ExecutionClaims(redis_client, first.owner)
    assert await claims.claim("d-interrupted") == "run"  # then the process died mid-run
    sent = Sent()
    again = Executor(Settings(), "llm-small", Profile(p95_ms=20.0, latency_scale=0.1), instance="same")
    for did in ("d-interrupted", "d-interrupted"):
        await again._execute(routed(did), sent, ExecutionClaims(redis_client, again.owner), asyncio.Semaphore(0))
    assert [r.outcome for r in sent.reports] == ["succeeded", "duplicate"]
