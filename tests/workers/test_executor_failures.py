"""The example executor's failures: deadlines, flaky runs, outages; and the demo's rows about them.

The stack tests run an ``Executor`` in process against the real Kafka and Redis: routed tasks
go onto its topic, its reports are read back from the cost topic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from dispatch_cli.demo import circuit_line, failure_rows, failure_summary, flaky_outage
from dispatch_cli.main import app
from dispatch_core import keys
from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from streams.messages import RoutedTask
from streams.topics import ensure_topics
from workers.executor import PERMANENT_ERROR, RETRYABLE_ERRORS, Executor, Profile, fate, simulate

EXECUTOR = "llm-small"
ESTIMATE = Decimal("0.012340")  # x 0.3 = 0.003702 exactly


def routed(decision_id: str, *, deadline: datetime | None = None, sla_ms: float | None = 850.0) -> RoutedTask:
    now = datetime.now(UTC)
    return RoutedTask(
        decision_id=decision_id, task_id=f"t-{decision_id}", service="svc", workload="llm", tier="small",
        executor=EXECUTOR, policy_version="v", estimate=ESTIMATE, currency="USD", created_at=now, routed_at=now,
        task={"task_id": f"t-{decision_id}", "service": "svc", "workload": "llm", "payload": {"prompt": "hi"}},
        charge_scopes=[], deadline=deadline if deadline is not None else now + timedelta(seconds=60), sla_ms=sla_ms,
    )


# -- without the stack: the draw of failures ------------------------------------------------------------


def test_failures_are_deterministic_per_decision_and_near_the_configured_rate():
    tasks = [routed(f"d-{i}") for i in range(2000)]
    profile = Profile(p95_ms=10, failure_rate=0.1, permanent_share=0.25)
    fates = [fate(t, profile) for t in tasks]
    assert fates == [fate(t, profile) for t in tasks]  # a redelivered decision draws the same
    failed = [f for f in fates if f is not None]
    assert 150 < len(failed) < 250
    permanent = [f for f in failed if f.error_class == "permanent"]
    assert 0.15 < len(permanent) / len(failed) < 0.35
    assert {f.error for f in permanent} == {PERMANENT_ERROR}
    assert {f.error for f in failed if f.error_class == "retryable"} == set(RETRYABLE_ERRORS)


def test_turning_failures_on_leaves_each_run_s_time_and_cost_as_it_was():
    tasks = [routed(f"d-{i}") for i in range(50)]
    assert [simulate(t, Profile(p95_ms=10)) for t in tasks] == \
        [simulate(t, Profile(p95_ms=10, failure_rate=0.5)) for t in tasks]
    assert all(fate(t, Profile(p95_ms=10)) is None for t in tasks)


@pytest.mark.parametrize("bad", [{"failure_rate": 1.5}, {"permanent_share": -0.1}, {"partial_cost": 2.0},
                                 {"outages": ((5.0, 5.0),)}, {"outages": ((-1.0, 3.0),)}])
def test_a_profile_refuses_shares_outside_0_1_and_empty_outages(bad):
    with pytest.raises(ValueError):
        Profile(p95_ms=10, **bad)


@pytest.mark.parametrize("outage", ["5", "a:b", "8:3", "-1:2", "3:3"])
def test_the_executor_command_refuses_a_malformed_outage(outage):
    result = CliRunner().invoke(app, ["executor", EXECUTOR, "--outage", outage])
    assert result.exit_code == 1
    assert "--outage" in result.output


# -- against the real Kafka and Redis -------------------------------------------------------------------


@pytest.fixture
async def exec_settings(stack: Settings, redis_client, unique_name: Callable[[str], str]) -> Settings:
    """The test stack with this test's own topics; Redis flushed (claims start empty)."""
    s = stack.namespaced(unique_name("x"))
    await ensure_topics(s, load_policy(s.policy_file).executors())
    return s


async def run_executor(settings: Settings, profile: Profile, messages: list[RoutedTask],
                       reports: int, redis_client: Any = None) -> tuple[Executor, list[ExecutorReport]]:
    """Put ``messages`` on the executor's topic (keyed by decision id, in order), run an executor until
    ``reports`` reports are on the cost topic, stop it, and return it with those reports."""
    executor = Executor(settings, EXECUTOR, profile, instance="test")
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for m in messages:
            await producer.send_and_wait(settings.executor_topic(EXECUTOR), m.model_dump_json().encode(),
                                         key=m.decision_id.encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(settings.topic_cost, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    got: list[ExecutorReport] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < reports:
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    got += [ExecutorReport.model_validate_json(m.value) for m in msgs]
    finally:
        await consumer.stop()
        stop.set()
        await running
    return executor, got


async def claim_state(redis_client, decision_id: str) -> str | None:
    value: str | None = await redis_client.get(keys.claim(decision_id))
    return value


async def test_a_task_past_its_deadline_is_reported_expired_at_no_cost_and_never_run(exec_settings, redis_client):
    late = routed("d-late", deadline=datetime.now(UTC) - timedelta(seconds=1), sla_ms=45.0)
    on_time = routed("d-on-time")
    executor, reports = await run_executor(exec_settings, Profile(p95_ms=20.0), [late, on_time], 2)
    by_id = {r.decision_id: r for r in reports}
    expired = by_id["d-late"]
    assert expired.outcome == "expired" and expired.actual == Decimal(0) and expired.run_ms == 0
    assert expired.error_class is None and expired.task is None
    assert expired.deadline == late.deadline and expired.sla_ms == 45.0  # echoed
    assert by_id["d-on-time"].outcome == "succeeded" and by_id["d-on-time"].deadline == on_time.deadline
    assert by_id["d-on-time"].sla_ms == 850.0
    assert executor.expired == 1 and executor.done == 1 and executor.failed == 0
    assert await claim_state(redis_client, "d-late") == "done"  # a redelivery will not run it either


async def test_with_failure_rate_1_every_run_fails_retryably_echoing_its_task_at_partial_cost(
        exec_settings, redis_client):
    tasks = [routed(f"d-flaky-{i}") for i in range(5)]
    profile = Profile(p95_ms=20.0, failure_rate=1.0, partial_cost=0.3)
    executor, reports = await run_executor(exec_settings, profile, tasks, 5)
    sent = {t.decision_id: t for t in tasks}
    assert sorted(r.decision_id for r in reports) == sorted(sent)
    for r in reports:
        assert r.outcome == "failed" and r.error_class == "retryable" and r.error in RETRYABLE_ERRORS
        assert r.actual == Decimal("0.003702")  # 0.3 x the estimate, exactly
        assert r.task == sent[r.decision_id].task  # what the dispatcher routes again
        assert r.deadline == sent[r.decision_id].deadline and r.sla_ms == 850.0
    assert executor.failed == 5 and executor.failed_permanent == 0 and executor.done == 0
    assert [await claim_state(redis_client, did) for did in sent] == ["done"] * 5


async def test_with_permanent_share_1_failures_are_permanent_invalid_input(exec_settings, redis_client):
    tasks = [routed(f"d-bad-{i}") for i in range(3)]
    profile = Profile(p95_ms=20.0, failure_rate=1.0, permanent_share=1.0, partial_cost=0.5)
    executor, reports = await run_executor(exec_settings, profile, tasks, 3)
    assert {(r.outcome, r.error_class, r.error) for r in reports} == {("failed", "permanent", PERMANENT_ERROR)}
    assert {r.actual for r in reports} == {Decimal("0.006170")}
    assert executor.failed == 3 and executor.failed_permanent == 3


async def test_during_an_outage_every_run_fails_unavailable_at_once_and_costs_nothing(exec_settings, redis_client):
    tasks = [routed(f"d-down-{i}") for i in range(4)]
    profile = Profile(p95_ms=20.0, outages=((0.0, 3600.0),))  # from its start, for an hour
    executor, reports = await run_executor(exec_settings, profile, tasks, 4)
    for r in reports:
        assert (r.outcome, r.error_class, r.error) == ("failed", "retryable", "unavailable")
        assert r.actual == Decimal(0) and r.run_ms == 0 and r.task is not None
    assert executor.failed == 4


async def test_an_executor_outside_its_outage_windows_runs_normally(exec_settings, redis_client):
    profile = Profile(p95_ms=20.0, outages=((3600.0, 7200.0),))  # an hour after its start
    _, reports = await run_executor(exec_settings, profile, [routed("d-fine")], 1)
    assert [r.outcome for r in reports] == ["succeeded"]


async def test_a_redelivered_failed_task_is_a_duplicate_and_not_run_again(exec_settings, redis_client):
    task = routed("d-once")
    profile = Profile(p95_ms=20.0, failure_rate=1.0)
    executor, reports = await run_executor(exec_settings, profile, [task, task], 2)  # the same record twice
    assert sorted(r.outcome for r in reports) == ["duplicate", "failed"]
    duplicate = next(r for r in reports if r.outcome == "duplicate")
    assert duplicate.actual == Decimal(0) and duplicate.task is None and duplicate.deadline == task.deadline
    assert executor.failed == 1 and executor.duplicates == 1
    # and a later delivery, to another executor process, is a duplicate too
    _, again = await run_executor(exec_settings, profile, [task], 3)
    assert sorted(r.outcome for r in again) == ["duplicate", "duplicate", "failed"]


# -- the demo's summary rows, from constructed audit events -------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # constructed events: any fixed instant serves


def decision(did: str, executor: str | None, *, attempt: int = 1, triggers: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"decision_id": did, "executor": executor, "assigned_tier": executor and executor.split("-")[1],
            "attempt": attempt, "triggers": list(triggers), "decided_at": T0 + timedelta(seconds=attempt)}


def settlement(did: str, executor: str, outcome: str | None, error_class: str | None = None,
               error: str | None = None, kind: str = "settled") -> dict[str, Any]:
    return {"decision_id": did, "kind": kind, "executor": executor, "outcome": outcome,
            "error_class": error_class, "error": error}


def circuit(executor: str, seq: int, a: str, b: str, after_s: float) -> dict[str, Any]:
    return {"executor": executor, "seq": seq, "from_state": a, "to_state": b, "reason": "r",
            "changed_at": T0 + timedelta(seconds=after_s)}


def test_the_demo_summary_counts_failures_fallbacks_and_circuit_changes_from_audit_events():
    decisions = [
        decision("d1", "llm-medium"), decision("d2", "llm-medium"), decision("d3", "llm-small"),
        decision("f1", "llm-small", attempt=2, triggers=("executor_failure",)),
        decision("f2", None, attempt=2, triggers=("executor_failure", "budget_hard")),
        decision("d4", "llm-large", triggers=("load",)),
    ]
    settlements = [
        settlement("d1", "llm-medium", "failed", "retryable", "unavailable"),
        settlement("d2", "llm-medium", "failed", "retryable", "timeout"),
        settlement("d3", "llm-small", "failed", "permanent", "invalid_input"),
        settlement("f1", "llm-small", "succeeded"),
        settlement("d4", "llm-large", "expired"),
        settlement("d5", "llm-large", None, kind="expired"),  # a reservation expiry: no report, not a failure
        settlement("d6", "llm-large", "duplicate", kind="duplicate"),
    ]
    circuits = [circuit("llm-medium", 2, "open", "half_open", 26.3), circuit("llm-medium", 1, "closed", "open", 21.3),
                circuit("llm-medium", 3, "half_open", "closed", 27.04)]
    out = failure_summary(decisions, settlements, circuits, T0)
    assert out["executor_failures"] == {
        "retryable": 2, "permanent": 1, "expired": 1,
        "by_executor": {"llm-large": {"retryable": 0, "permanent": 0, "expired": 1},
                        "llm-medium": {"retryable": 2, "permanent": 0, "expired": 0},
                        "llm-small": {"retryable": 0, "permanent": 1, "expired": 0}},
        "by_error": {"invalid_input": 1, "timeout": 1, "unavailable": 1},
    }
    assert out["fallbacks"] == {"decided": 2, "rejected": 1, "to_executor": {"llm-small": 1, "rejected": 1}}
    steps = out["circuit_changes"]["llm-medium"]
    assert [(c["from"], c["to"], c["at_s"]) for c in steps] == [
        ("closed", "open", 21.3), ("open", "half_open", 26.3), ("half_open", "closed", 27.0)]
    assert circuit_line("llm-medium", steps) == \
        "llm-medium: closed->open +21.3 s, open->half_open +26.3 s, half_open->closed +27.0 s"
    assert json.loads(json.dumps(out)) == out  # the demo's --json prints it as it is

    rows = dict(failure_rows(out))
    assert rows["executor failures retryable / permanent / expired"] == "2 / 1 / 1"
    assert rows["fallbacks decided (of them rejected)"] == "2 (1 rejected)"
    assert rows["circuit changes (s after the workload began)"].startswith("llm-medium: closed->open +21.3 s")


def test_the_demo_summary_is_zeros_before_any_failure_and_times_from_the_first_decision_by_default():
    out = failure_summary([decision("d1", "llm-small")], [settlement("d1", "llm-small", "succeeded"),
                                                          settlement("d0", "llm-small", None)], [])
    assert out["executor_failures"]["retryable"] == out["executor_failures"]["permanent"] == 0
    assert out["executor_failures"]["expired"] == 0
    assert out["fallbacks"]["decided"] == 0 and out["circuit_changes"] == {}
    assert dict(failure_rows(out))["circuit changes"] == "none"
    timed = failure_summary([decision("d1", "llm-small")], [], [circuit("kernel-gpu", 1, "closed", "open", 4.0)])
    assert timed["circuit_changes"]["kernel-gpu"][0]["at_s"] == 3.0  # the first decision was at T0 + 1 s


def test_the_demo_outage_falls_inside_the_workload_and_is_long_enough_to_open_the_circuit():
    for tasks, rate in ((1500, 100.0), (300, 150.0), (6000, 100.0)):
        start, end = flaky_outage(tasks, rate)
        assert 0 < start < end and end - start >= 5.0
    start, end = flaky_outage(1500, 100.0)  # the default demo: 15 s of workload
    assert end < 15.0
