"""The savings run on the real Redis: its account agrees with the decisions, caps and SLAs hold, nothing is left behind."""

from __future__ import annotations

from decimal import Decimal

import pytest
from redis.asyncio import Redis

from benchmarks import savings
from benchmarks.savings import Day, decide_day, run_savings, summarise
from dispatch_core.decision import Outcome
from dispatch_core.engine import estimate
from dispatch_core.policy import Policy, Tier
from dispatch_core.settings import Settings
from dispatch_core.task import Task

N = 600


def tier(policy: Policy, task: Task, name: str | None) -> Tier:
    return next(t for t in policy.classes[task.workload].tiers if t.name == name)


def complexity_tier(policy: Policy, task: Task, score: float) -> str:
    """The tier the thresholds give a score, read off the policy here rather than taken from the engine."""
    cls = policy.classes[task.workload]
    thresholds = cls.task_types.get(task.task_type, cls.thresholds)
    return next(t.tier for t in thresholds if score < t.upto or t is thresholds[-1])


def recount(day: Day) -> dict[str, Decimal]:
    """(a), (b), (c) from the decisions alone, with the policy's estimate times each task's cost ratio."""
    policy = day.policies[0]
    out = {"premium": Decimal(0), "static": Decimal(0), "dispatch": Decimal(0)}
    for task, d in zip(day.tasks, day.decisions, strict=True):
        if d.assigned_tier is None:
            continue
        ratio = Decimal(str(task.payload["cost_ratio"]))
        premium = task.requested_tier or policy.classes[task.workload].tiers[-1].name
        static = complexity_tier(policy, task, d.complexity_score)
        assert (d.untiered_tier, d.complexity_tier) == (premium, static)
        assert d.estimate_assigned == estimate(tier(policy, task, d.assigned_tier), task)
        for name, t in (("premium", premium), ("static", static), ("dispatch", d.assigned_tier)):
            out[name] += (estimate(tier(policy, task, t), task) * ratio).quantize(Decimal("0.000001"))
    return out


@pytest.fixture(scope="module")
async def ran(redis_service: Settings) -> tuple[Day, list[str]]:
    """One day decided on a flushed DB, and the keys left in it afterwards."""
    client = Redis.from_url(redis_service.redis_url, decode_responses=True)
    try:
        await client.flushdb()
        day = await decide_day(redis_service, n=N, seed=7)
        return day, await client.keys("*")
    finally:
        await client.aclose()


@pytest.fixture
def day(ran: tuple[Day, list[str]]) -> Day:
    return ran[0]


def test_account_agrees_with_an_independent_recount(day: Day) -> None:
    result = summarise(day.tasks, day.decisions, day.actual, day.policies[0])
    again = recount(day)
    assert result["cost_premium"] == float(again["premium"])
    assert result["cost_static"] == float(again["static"])
    assert result["cost_dispatch"] == float(again["dispatch"]) == float(sum(day.actual.values()))
    assert day.ledger_spent == sum(day.actual.values())  # what Redis charged is what was settled
    assert result["savings_pct"] == round(float((again["premium"] - again["dispatch"]) / again["premium"] * 100), 2)
    assert result["tasks"] == N == len(day.decisions)
    assert result["downgrades"] == sum(d.outcome == Outcome.DOWNGRADED for d in day.decisions)


def test_budgets_bite_yet_no_cap_is_overshot_and_no_sla_missed(day: Day) -> None:
    result = summarise(day.tasks, day.decisions, day.actual, day.policies[0])
    assert day.overshoot == 0 and result["sla_violations"] == 0
    assert result["downgrades"] > 0 and {"budget_soft", "trend"} <= set(result["triggers"])
    assert result["cost_dispatch"] < result["cost_static"] < result["cost_premium"]
    for task, d in zip(day.tasks, day.decisions, strict=True):
        if d.executor_p95_ms is not None:
            assert d.executor_p95_ms <= task.effective_sla_ms
        for b in d.budgets:
            assert b.committed_after <= b.limit
    points = result["timeline"]
    assert all(p["spend"] <= p["budget"] for p in points)
    assert [p["i"] for p in points] == sorted({p["i"] for p in points})
    assert points[-1]["budget"] < points[0]["budget"]  # the noon cut


def test_nothing_of_the_run_stays_in_redis(ran: tuple[Day, list[str]]) -> None:
    assert ran[1] == ["dc:seq"]  # the ledger's shared commit counter only moved on


async def test_same_seed_same_day_on_redis(day: Day, redis_service: Settings) -> None:
    again = await decide_day(redis_service, n=N, seed=7)
    assert [d.assigned_tier for d in again.decisions] == [d.assigned_tier for d in day.decisions]
    assert sorted(again.actual.values()) == sorted(day.actual.values())


async def test_run_savings_reports_what_the_bench_prints(redis_service: Settings, redis_client: Redis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(savings, "QUICK_TASKS", 300)
    monkeypatch.setattr(savings, "TIMELINE_POINTS", 100)
    result = await run_savings(redis_service, quick=True, seed=3)
    for key in ("cost_premium", "cost_static", "cost_dispatch", "savings_pct", "savings_vs_static_pct",
                "sla_violations", "overshoot", "underserved_pct", "rejections", "downgrades", "tasks", "seed"):
        assert key in result
    assert (result["tasks"], result["seed"], result["overshoot"]) == (300, 3, 0.0)
    assert 0 < len(result["timeline"]) <= 100
    assert set(result["timeline"][0]) == {"i", "spend", "budget", "downgraded"}
