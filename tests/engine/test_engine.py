"""The pure engine: every trigger, in the standard order, for all three workload classes."""

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_core import keys
from dispatch_core.decision import Outcome, Trigger
from dispatch_core.engine import LoadReport, ScopeState, Snapshot, apply_plan, decide, estimate
from dispatch_core.money import to_micros
from dispatch_core.task import Task
from dispatch_core.windows import window_at

from .factories import NOON, budget, default_policy, llm_task, policy_with, snapshot_with, task

DAY = window_at("day", NOON).id


def gkey(budget_id: str = "global-day") -> str:
    return keys.budget(budget_id, "global", DAY)


def test_complexity_maps_each_class_to_its_tiers():
    p = policy_with(budgets=[])
    got = {
        hint: decide(llm_task(hint), p, Snapshot(), NOON).decision.assigned_tier for hint in ("small", "medium", "large")
    }
    assert got == {"small": "small", "medium": "medium", "large": "large"}
    light = decide(task("script", features={"cpu_ms": 5, "depth": 1}), p, Snapshot(), NOON).decision
    heavy = decide(task("script", features={"cpu_ms": 900, "depth": 8}), p, Snapshot(), NOON).decision
    assert (light.assigned_tier, heavy.assigned_tier) == ("lite", "heavy")
    small_k = decide(task("kernel", features={"cpu_ms": 10}), p, Snapshot(), NOON).decision
    big_k = decide(task("kernel", features={"cpu_ms": 3000, "payload_bytes": 10**7}), p, Snapshot(), NOON).decision
    assert (small_k.assigned_tier, big_k.assigned_tier) == ("cpu", "gpu")
    assert all(d.outcome == Outcome.ROUTED and d.triggers == [] for d in (light, heavy, small_k, big_k))


def test_score_is_relative_to_the_streams_rolling_baseline():
    p = policy_with(budgets=[])
    t = llm_task("large")
    bkey = keys.baseline(t.service, t.task_type)
    used_to_huge = Snapshot(baselines={bkey: __import__("dispatch_core.classify").classify.Baseline(100, 9.5, 0.25)})
    d = decide(t, p, used_to_huge, NOON).decision
    assert d.assigned_tier == "small" and d.baseline_n == 100 and d.baseline_mean == 9.5


def test_force_rule_wins_and_is_recorded_as_policy():
    d = decide(llm_task("large", task_type="embed"), policy_with(budgets=[]), Snapshot(), NOON).decision
    assert d.assigned_tier == "small" and d.rule_id == "rules.embeddings-on-small"
    assert d.triggers == [Trigger.POLICY]


def test_requested_tier_is_honoured_and_unknown_one_rejected():
    p = policy_with(budgets=[])
    d = decide(llm_task("small", requested_tier="large"), p, Snapshot(), NOON).decision
    assert (d.asked_tier, d.assigned_tier, d.rule_id) == ("large", "large", "llm.requested")
    bad = decide(llm_task("small", requested_tier="gpu"), p, Snapshot(), NOON).decision
    assert bad.outcome == Outcome.REJECTED and Trigger.POLICY in bad.triggers and "not a llm tier" in bad.rationale


def test_sla_guard_demotes_to_a_tier_that_meets_the_sla():
    d = decide(llm_task("large", sla_ms=400), policy_with(budgets=[]), Snapshot(), NOON).decision
    assert (d.asked_tier, d.assigned_tier, d.outcome) == ("large", "small", Outcome.DOWNGRADED)
    assert d.triggers == [Trigger.SLA_GUARD] and d.executor_p95_ms <= 400


def test_sla_guard_moves_up_when_only_a_faster_tier_meets_it():
    d = decide(task("kernel", features={"cpu_ms": 5}, sla_ms=30), policy_with(budgets=[]), Snapshot(), NOON).decision
    assert (d.asked_tier, d.assigned_tier, d.outcome) == ("cpu", "gpu", Outcome.REROUTED)


def test_sla_guard_rejects_when_no_tier_meets_it():
    d = decide(task("kernel", features={"cpu_ms": 5}, sla_ms=10), policy_with(budgets=[]), Snapshot(), NOON).decision
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.SLA_GUARD] and "no tier meets" in d.rationale


def test_load_moves_off_a_saturated_executor_but_ignores_stale_reports():
    p = policy_with(budgets=[])
    busy = Snapshot(load={"llm-large": LoadReport(0.97, NOON - timedelta(seconds=2))})
    d = decide(llm_task("large"), p, busy, NOON).decision
    assert (d.assigned_tier, d.triggers) == ("medium", [Trigger.LOAD])
    stale = Snapshot(load={"llm-large": LoadReport(0.97, NOON - timedelta(minutes=5))})
    assert decide(llm_task("large"), p, stale, NOON).decision.assigned_tier == "large"


def test_load_skips_a_lower_tier_that_is_saturated_too():
    p = policy_with(budgets=[])
    at = NOON - timedelta(seconds=1)
    both = Snapshot(load={"llm-large": LoadReport(0.95, at), "llm-medium": LoadReport(0.99, at)})
    assert decide(llm_task("large"), p, both, NOON).decision.assigned_tier == "small"


def test_budget_soft_demotes_one_step():
    # the trend trigger off: at 8.1 spent half-way through the day it would fire too
    p = policy_with(budgets=[budget("10.00")], triggers={"trend": {"enabled": False}})
    snap = snapshot_with(gkey(), spent=to_micros(Decimal("4.1")))  # 41% committed: under the 80% soft line
    assert decide(llm_task("large"), p, snap, NOON).decision.assigned_tier == "large"
    snap = snapshot_with(gkey(), spent=to_micros(Decimal("8.1")))
    d = decide(llm_task("large"), p, snap, NOON).decision
    assert d.assigned_tier == "medium" and d.triggers == [Trigger.BUDGET_SOFT] and d.outcome == Outcome.DOWNGRADED


def test_trend_demotes_pre_emptively_with_hysteresis():
    p = policy_with(budgets=[budget("10.00", soft_pct=1.0)])
    # half the day gone, 6.00 committed: projected 12.00 > 10.00
    d = decide(llm_task("large"), p, snapshot_with(gkey(), spent=to_micros(Decimal("6"))), NOON)
    assert d.decision.triggers == [Trigger.TREND] and d.decision.assigned_tier == "medium"
    assert d.trend_flags and d.trend_flags[0][:2] == (gkey(), True)
    # 52% of the day gone, 5.05 committed: projected 9.70, under the cap but inside the 5% band -> stays on
    on = decide(llm_task("large"), p, snapshot_with(gkey(), spent=to_micros(Decimal("5.05")), trend=True), NOON)
    assert on.decision.triggers == [Trigger.TREND] and on.trend_flags == ()
    off = decide(llm_task("large"), p, snapshot_with(gkey(), spent=to_micros(Decimal("5.05"))), NOON)
    assert off.decision.triggers == []
    # projected 8.64: clears
    cleared = decide(llm_task("large"), p, snapshot_with(gkey(), spent=to_micros(Decimal("4.5")), trend=True), NOON)
    assert cleared.decision.triggers == [] and cleared.trend_flags[0][:2] == (gkey(), False)


def test_trend_does_not_fire_early_in_the_window():
    """Bifrost #5770: a percentage rule firing far too early. 1% of spend 1% into the day is fine."""
    p = policy_with(budgets=[budget("10.00", soft_pct=1.0)])
    early = NOON.replace(hour=0, minute=10)
    snap = Snapshot(scopes={keys.budget("global-day", "global", window_at("day", early).id): ScopeState(to_micros(Decimal("1")))})
    assert decide(llm_task("large"), p, snap, early).decision.triggers == []


def test_budget_hard_demotes_to_the_most_capable_tier_that_fits_else_rejects():
    p = policy_with(budgets=[budget("1.00", soft_pct=1.0)], triggers={"trend": {"enabled": False}})
    t = llm_task("large")
    cls = p.classes["llm"]
    room = to_micros(estimate(cls.tiers[1], t))  # exactly the medium estimate is left
    snap = snapshot_with(gkey(), spent=1_000_000 - room)
    d = decide(t, p, snap, NOON)
    assert d.decision.assigned_tier == "medium" and d.decision.triggers == [Trigger.BUDGET_HARD]
    assert d.amount == room and d.decision.budgets[0].committed_after == Decimal("1.000000")
    full = decide(t, p, snapshot_with(gkey(), spent=999_999), NOON).decision
    assert full.outcome == Outcome.REJECTED and full.reserved == 0 and "fits under the cap" in full.rationale


def test_upward_sla_reroute_is_still_capped():
    """LiteLLM #41344: a cheap route with a pricier fallback must not escape the cap."""
    p = policy_with(budgets=[budget("1.00", soft_pct=1.0)], triggers={"trend": {"enabled": False}})
    t = task("kernel", features={"cpu_ms": 5}, sla_ms=30)
    nearly_full = snapshot_with(gkey(), spent=1_000_000 - 50)  # cpu would fit, gpu does not
    d = decide(t, p, nearly_full, NOON).decision
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.SLA_GUARD, Trigger.BUDGET_HARD]


def test_shadow_decides_in_full_but_routes_as_asked():
    p = policy_with(budgets=[budget("10.00")])
    snap = snapshot_with(gkey(), spent=to_micros(Decimal("9.999")))  # no tier fits: enforcement rejects
    plan = decide(llm_task("large"), p, snap, NOON, mode="shadow")
    d = plan.decision
    assert (d.asked_tier, d.assigned_tier, d.enforced_tier) == ("large", "large", None)
    assert Trigger.SHADOW in d.triggers and Trigger.BUDGET_HARD in d.triggers
    assert plan.amount == to_micros(d.estimate_asked) and plan.enforce is False


def test_mode_off_routes_as_asked_unmanaged():
    plan = decide(llm_task("large"), default_policy(), Snapshot(), NOON, mode="off")
    assert plan.decision.triggers == [Trigger.FLAG] and plan.amount == 0 and plan.decision.budgets == []


def test_every_applicable_scope_is_charged_and_recorded():
    plan = decide(llm_task("medium", tenant="acme"), default_policy(), Snapshot(), NOON)
    scopes = {(b.budget_id, b.scope) for b in plan.decision.budgets}
    assert scopes == {("global-daily", "global"), ("service-daily", "service:llm-gateway"), ("tenant-hourly", "tenant:acme")}
    assert len(plan.charges) == 3 and all(c.limit > 0 for c in plan.charges)
    no_tenant = decide(llm_task("medium"), default_policy(), Snapshot(), NOON)
    assert len(no_tenant.charges) == 2


def test_apply_plan_lets_the_next_decision_of_a_batch_see_the_reservation():
    p = policy_with(budgets=[budget("0.10", soft_pct=1.0)], triggers={"trend": {"enabled": False}})
    snap = Snapshot()
    assigned = []
    for i in range(6):
        plan = decide(llm_task("large", task_id=f"t{i}"), p, snap, NOON)
        apply_plan(snap, plan)
        assigned.append(plan.decision.assigned_tier)
    assert snap.scopes[gkey()].reserved <= 100_000
    assert assigned[0] == "large" and assigned[-1] != "large"


_tasks = st.builds(
    lambda w, tokens, cpu, depth, sla, tenant, n: Task.model_validate({
        "task_id": f"t{n}", "service": "svc", "workload": w, "tenant": tenant, "sla_ms": sla, "created_at": NOON,
        "features": {"tokens": tokens, "cpu_ms": cpu, "depth": depth},
    }),
    st.sampled_from(["llm", "script", "kernel"]), st.integers(0, 50_000), st.floats(0, 5_000), st.integers(0, 20),
    st.one_of(st.none(), st.floats(5, 2_000)), st.sampled_from([None, "a", "b"]), st.integers(0, 10**6),
)
_spent = st.integers(0, 60_000_000)


@settings(max_examples=150, deadline=None)
@given(t=_tasks, spent=_spent, trend=st.booleans(), mode=st.sampled_from(["enforce", "shadow"]))
def test_same_inputs_same_decision_and_enforced_invariants(t, spent, trend, mode):
    p = default_policy()
    key = keys.budget("global-daily", "global", DAY)
    snap = lambda: Snapshot(scopes={key: ScopeState(spent, 0, trend)})  # noqa: E731
    a = decide(t, p, snap(), NOON, mode=mode)
    b = decide(t, p, snap(), NOON, mode=mode)
    strip = lambda d: d.model_dump(exclude={"decision_latency_ms"})  # noqa: E731
    assert strip(a.decision) == strip(b.decision) and a.amount == b.amount and a.charges == b.charges
    d = a.decision
    assert d.rationale and d.policy_version == p.version
    if d.enforced_tier is not None and mode == "enforce":
        assert d.executor_p95_ms <= t.effective_sla_ms  # never onto an executor that breaks the SLA
        assert spent + a.amount <= 50_000_000  # never past the global cap
    if d.outcome == Outcome.REJECTED:
        assert a.amount == 0 and d.executor is None
