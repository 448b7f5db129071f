"""A batch's decisions are counted once each, per label set, and each budget gauge shows the batch's latest view."""

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from dispatch_core.engine import Snapshot, apply_plan, decide
from dispatch_core.policy import load_policy
from dispatch_core.task import Task
from streams import metrics

NOON = datetime(2026, 11, 24, 12, tzinfo=UTC)


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_is_counted_per_decision_and_the_latest_budget_view_wins():
    policy, snap = load_policy(), Snapshot()
    decisions = []
    for i in range(5):
        plan = decide(Task(task_id=f"m{i}", service="metrics-svc", workload="kernel", tenant="acme",
                           features={"payload_bytes": 1000}), policy, snap, NOON)
        apply_plan(snap, plan)
        decisions.append(plan.decision)
    d = decisions[-1]
    labels = {"workload": "kernel", "tier": d.assigned_tier, "outcome": d.outcome.value}
    before = sample("dispatch_decisions_total", **labels)
    latency_before = sample("dispatch_decision_latency_seconds_count")
    metrics.observe(decisions)
    assert sample("dispatch_decisions_total", **labels) - before == 5
    assert sample("dispatch_decision_latency_seconds_count") - latency_before == 5
    b = d.budgets[0]
    assert sample("dispatch_budget_utilisation_ratio", budget=b.budget_id, scope=b.scope) == float(
        b.committed_after / b.limit)
    assert d.budgets[0].committed_after > decisions[0].budgets[0].committed_after
