"""Executor failures through the Dispatcher on the real Redis: fallbacks, deadlines, circuits, money.

Each fallback settles its failed attempt and reserves its own estimate in one Lua step, so
the ledger is checked exactly after every step: no task holds two reservations, and every
partial cost is charged once.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dispatch_core import keys
from dispatch_core.circuit import CircuitConfig, is_probe
from dispatch_core.decision import Decision, Outcome, Trigger, attempt_decision_id
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import Retry, decide, ledger_keys
from dispatch_core.ledger import FailedAttempt
from dispatch_core.money import to_micros
from dispatch_core.settlement import ExecutorReport, SettlementKind
from dispatch_core.task import Task
from dispatch_core.windows import window_at

from .factories import NOON, budget, llm_task, policy_with

pytestmark = pytest.mark.stack

PARTIAL = Decimal("0.000300")
CIRCUIT = CircuitConfig(window=10, min_calls=6, failure_rate=0.5, consecutive_failures=3, cooldown_s=30.0,
                        probe_pct=50.0, close_after=2)


class Clock:
    """A settable clock: decisions and circuits see exactly the instants a test gives them."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def policy(**fallback: Any):
    """The default policy with one roomy daily cap (so reservations are visible) and no trend."""
    data: dict[str, Any] = {"budgets": [budget("100.00", soft_pct=1.0)], "triggers": {"trend": {"enabled": False}}}
    p = policy_with(**data)
    if fallback:
        classes = p.model_dump(mode="json")["classes"]
        classes["llm"]["fallback"] = fallback
        p = policy_with(**data, classes=classes)
    return p


def scope_key() -> str:
    return keys.budget("global-day", "global", window_at("day", NOON).id)


def report(d: Decision, task: Task, outcome: str = "failed", error_class: str | None = "retryable",
           actual: Decimal = PARTIAL, **kw: Any) -> ExecutorReport:
    assert d.executor is not None
    return ExecutorReport(
        decision_id=d.decision_id, report_id=kw.pop("report_id", str(uuid.uuid4())), outcome=outcome,
        error_class=error_class, error=kw.pop("error", "timeout" if outcome == "failed" else None),
        task_id=d.task_id, service=d.service, executor=d.executor, actual=actual, currency="USD", run_ms=5.0,
        dispatch_ms=3.0, finished_at=NOON, deadline=d.deadline, sla_ms=d.sla_ms,
        task=task.model_dump(mode="json") if error_class == "retryable" else None, **kw)


async def held(ledger) -> tuple[int, int]:
    state = await ledger.scope(scope_key())
    return state.spent, state.reserved


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON + timedelta(milliseconds=10))


@pytest.fixture
def make(make_dispatcher, clock):
    async def build(p=None, **kw) -> Dispatcher:
        return await make_dispatcher(p or policy(), clock=clock, circuit=CIRCUIT, **kw)
    return build


async def test_a_retryable_failure_falls_back_to_the_next_cheaper_tier_linked_and_in_one_ledger_step(make, ledger):
    d = await make()
    task = llm_task(requested_tier="large", task_id="fo-1")
    [first] = await d.decide([task])
    assert first.assigned_tier == "large" and first.attempt == 1
    assert first.deadline == task.created_at + timedelta(milliseconds=task.effective_sla_ms)

    out = await d.fail_over(report(first, task), source="cost/0/1")
    fb = out.fallback
    assert fb is not None and fb.routed and fb.assigned_tier == "medium" and fb.executor == "llm-medium"
    assert (fb.attempt, fb.parent_decision_id, fb.excluded_executors) == (2, first.decision_id, ["llm-large"])
    assert fb.decision_id == attempt_decision_id(task.service, task.task_id, 2)
    assert Trigger.EXECUTOR_FAILURE in fb.triggers and fb.outcome == Outcome.DOWNGRADED
    assert fb.policy_version == first.policy_version and fb.canary_arm == first.canary_arm
    assert fb.sequence is not None and fb.sequence > (first.sequence or 0)
    s = out.settlement
    assert (s.kind, s.outcome, s.error_class, s.actual) == (SettlementKind.SETTLED, "failed", "retryable", PARTIAL)
    assert s.fallback_decision_id == fb.decision_id and s.reserved == first.reserved
    # the failed attempt's reservation is gone, its partial cost charged; only the fallback is held
    assert await held(ledger) == (to_micros(PARTIAL), to_micros(fb.reserved))
    assert out.task == task and out.task_text


async def test_a_redelivered_failure_report_gets_the_same_fallback_and_a_copy_gets_none(make, ledger):
    d = await make()
    task = llm_task(requested_tier="large", task_id="fo-2")
    [first] = await d.decide([task])
    rep = report(first, task)
    one = await d.fail_over(rep, source="cost/0/7")
    after_one = await held(ledger)
    again = await d.fail_over(rep, source="cost/0/7")  # the same record redelivered
    assert again.fallback == one.fallback and again.settlement.kind == one.settlement.kind
    assert again.settlement.fallback_decision_id == one.settlement.fallback_decision_id
    copy = await d.fail_over(rep, source="cost/1/3")  # the same report sent twice: a second record
    assert copy.fallback is None and copy.settlement.kind == SettlementKind.DUPLICATE
    assert copy.settlement.fallback_decision_id is None
    assert await held(ledger) == after_one  # nothing reserved or charged twice


async def test_a_permanent_failure_is_settled_and_not_retried(make, ledger):
    d = await make()
    task = llm_task(requested_tier="large", task_id="fo-3")
    [first] = await d.decide([task])
    rep = report(first, task, error_class="permanent", error="invalid_input")
    assert not rep.retryable
    s = await d.settle(rep, source="cost/0/9")
    assert (s.kind, s.outcome, s.error_class, s.fallback_decision_id) == (SettlementKind.SETTLED, "failed",
                                                                          "permanent", None)
    assert await held(ledger) == (to_micros(PARTIAL), 0)
    stored = await ledger.read([], [], [attempt_decision_id(task.service, task.task_id, 2)])
    assert stored[1] == {}


async def test_max_attempts_ends_the_chain_in_a_recorded_rejection_with_every_partial_cost_charged_once(make, ledger):
    d = await make(policy(direction="cheaper", max_attempts=2))
    task = llm_task(requested_tier="large", task_id="fo-4")
    [first] = await d.decide([task])
    second = (await d.fail_over(report(first, task), source="cost/0/1")).fallback
    assert second is not None and second.assigned_tier == "medium"
    out = await d.fail_over(report(second, task), source="cost/0/2")
    third = out.fallback
    assert third is not None and third.outcome == Outcome.REJECTED and not third.routed
    assert third.attempt == 3 and third.parent_decision_id == second.decision_id
    assert Trigger.EXECUTOR_FAILURE in third.triggers and "max_attempts" in third.rationale
    assert third.reserved == 0 and out.settlement.fallback_decision_id == third.decision_id
    assert await held(ledger) == (2 * to_micros(PARTIAL), 0)


async def test_more_capable_and_named_chains_go_their_way_skipping_failed_executors(make):
    up = await make(policy(direction="more_capable", max_attempts=3))
    task = llm_task(requested_tier="small", task_id="fo-5")
    [first] = await up.decide([task])
    fb = (await up.fail_over(report(first, task), source="cost/0/1")).fallback
    assert fb is not None and fb.assigned_tier == "medium" and fb.outcome == Outcome.REROUTED

    chained = await make(policy(direction="chain", chain=["large", "small", "medium"], max_attempts=3))
    task = llm_task(requested_tier="large", task_id="fo-6")
    [first] = await chained.decide([task])
    second = (await chained.fail_over(report(first, task), source="cost/0/2")).fallback
    assert second is not None and second.assigned_tier == "small"
    third = (await chained.fail_over(report(second, task), source="cost/0/3")).fallback
    assert third is not None and third.assigned_tier == "medium"
    assert third.excluded_executors == ["llm-large", "llm-small"]


async def test_no_fallback_breaks_the_deadline(make, clock):
    d = await make()
    task = llm_task(requested_tier="large", task_id="fo-7")  # SLA 850 ms from NOON
    [first] = await d.decide([task])
    clock.at = NOON + timedelta(milliseconds=450)  # 400 ms left: medium's p95 500 no longer fits, small's 250 does
    fb = (await d.fail_over(report(first, task), source="cost/0/1")).fallback
    assert fb is not None and fb.assigned_tier == "small"
    assert fb.time_left_ms == pytest.approx(400.0) and fb.deadline == first.deadline

    task = llm_task(requested_tier="large", task_id="fo-8")
    clock.at = NOON + timedelta(milliseconds=10)
    [first] = await d.decide([task])
    clock.at = NOON + timedelta(milliseconds=700)  # 150 ms left: no tier fits
    fb = (await d.fail_over(report(first, task), source="cost/0/2")).fallback
    assert fb is not None and fb.outcome == Outcome.REJECTED and Trigger.EXECUTOR_FAILURE in fb.triggers


async def test_the_circuit_opens_sheds_probes_and_closes(make, ledger, clock):
    d = await make()
    ids = itertools.count()

    async def run_large(outcome: str) -> Decision:
        task = llm_task(requested_tier="large", task_id=f"cb-{next(ids)}")
        [dec] = await d.decide([task])
        if dec.executor == "llm-large":
            rep = report(dec, task, outcome=outcome, error_class="retryable" if outcome == "failed" else None,
                         actual=PARTIAL if outcome == "failed" else Decimal("0.001"))
            await (d.fail_over(rep, source=f"cost/0/{dec.task_id}") if rep.retryable
                   else d.settle(rep, source=f"cost/0/{dec.task_id}"))
        return dec

    for _ in range(CIRCUIT.consecutive_failures):
        assert (await run_large("failed")).executor == "llm-large"
    states, events = await d.circuits()
    assert states["llm-large"].state == "open"
    assert [(e.from_state, e.to_state) for e in events] == [("closed", "open")]
    assert events[0].consecutive_failures == CIRCUIT.consecutive_failures
    _, again = await d.circuits()  # leased to this caller: not handed out again until the lease ends
    assert again == []
    await d.circuits_recorded(events)

    shed = await run_large("succeeded")  # while open: avoided, like a saturated executor
    assert shed.executor == "llm-medium" and Trigger.CIRCUIT_OPEN in shed.triggers
    assert shed.executor_circuits == {"llm-large": "open"}

    clock.at += timedelta(seconds=CIRCUIT.cooldown_s)
    states, events = await d.circuits()
    assert states["llm-large"].state == "half_open" and [e.to_state for e in events] == ["half_open"]
    await d.circuits_recorded(events)
    probes = 0
    while probes < CIRCUIT.close_after:  # half-open: only its probes reach it; the rest are shed
        dec = await run_large("succeeded")
        probing = is_probe(dec.decision_id, CIRCUIT.probe_pct)
        assert (dec.executor == "llm-large") == probing
        assert probing or Trigger.CIRCUIT_OPEN in dec.triggers
        probes += probing
    states, events = await d.circuits()
    assert "llm-large" not in states
    assert [(e.from_state, e.to_state) for e in events] == [("half_open", "closed")]
    await d.circuits_recorded(events)
    assert (await run_large("succeeded")).executor == "llm-large"


async def test_permanent_failures_and_expiries_do_not_open_a_circuit(make):
    d = await make()
    for i in range(CIRCUIT.consecutive_failures + 2):
        task = llm_task(requested_tier="large", task_id=f"pf-{i}")
        [dec] = await d.decide([task])
        outcome, cls = ("failed", "permanent") if i % 2 else ("expired", None)
        await d.settle(report(dec, task, outcome=outcome, error_class=cls,
                              actual=PARTIAL if cls else Decimal(0)), source=f"cost/0/{i}")
    states, events = await d.circuits()
    assert states == {} and events == []


async def test_a_fallback_step_that_loses_the_cap_changes_nothing_and_is_decided_again(make, ledger, clock):
    """All or nothing: the step that would settle the failed attempt and reserve the fallback does neither."""
    d = await make()
    p = d.default_policy
    task = llm_task(requested_tier="large", task_id="fo-9")
    [first] = await d.decide([task])
    assert first.deadline is not None and first.assigned_tier == "large"
    retry = Retry(attempt=2, parent_decision_id=first.decision_id, failed_tier="large", excluded=("llm-large",),
                  deadline=first.deadline)
    scopes, baseline = ledger_keys(p, task, clock())
    snap, _ = await ledger.read(scopes, [baseline], [])
    plan = decide(task, p, snap, clock(), circuit=CIRCUIT, retry=retry)
    assert plan.decision.assigned_tier == "medium"
    # meanwhile another worker spends nearly the whole cap: medium no longer fits, even with the
    # failed attempt's reservation swapped for its partial cost
    await ledger.redis.hincrby(scope_key(), "spent", to_micros(Decimal("99.997")))
    before = await held(ledger)
    [res], _ = await ledger.commit([plan], scopes, [baseline], [None],
                                   [FailedAttempt(first.decision_id, PARTIAL, "r-1", "llm-large")])
    assert res.status == "over" and res.parent is None
    assert await held(ledger) == before  # the failed attempt still reserved, nothing charged

    out = await d.fail_over(report(first, task), source="cost/0/1")  # decided again on fresh state
    fb = out.fallback
    assert fb is not None and fb.assigned_tier == "small" and Trigger.BUDGET_HARD in fb.triggers
    assert await held(ledger) == (before[0] + to_micros(PARTIAL), to_micros(fb.reserved))
