"""Replaying recorded decisions under a candidate policy, from what the audit events carry."""

from datetime import timedelta

from dispatch_core.engine import Snapshot, apply_plan, decide
from dispatch_core.policy import parse_policy
from dispatch_core.replay import replay
from schemas import DECISION, decode, encode

from .factories import NOON, budget, default_policy, policy_with, task


def recorded(policy, n=60):
    """Decision events as finance reads them off the audit topic (encoded and decoded again)."""
    snap, events = Snapshot(), []
    for i in range(n):
        kind = ["llm", "script", "kernel"][i % 3]
        feats = {"llm": {"tokens": 200 * (i + 1)}, "script": {"cpu_ms": 3.0 * i, "depth": i % 7},
                 "kernel": {"cpu_ms": 7.0 * i, "payload_bytes": 1000 * i}}[kind]
        t = task(kind, task_id=f"r{i}", tenant="acme", features=feats, created_at=NOON + timedelta(seconds=i))
        plan = decide(t, policy, snap, NOON + timedelta(seconds=i))
        apply_plan(snap, plan)
        events.append(decode(encode(DECISION, plan.decision.model_dump()))[1])
    return events


def test_replaying_under_the_same_policy_changes_nothing():
    policy = default_policy()
    report = replay(recorded(policy), policy).as_dict()
    assert report["decisions"] == 60 and report["changed"] == 0
    assert report["recorded_cost"] == report["replayed_cost"] and report["saving"] == "0.000000"


def test_a_tighter_policy_shows_its_saving_and_the_moves():
    loose = policy_with(budgets=[])
    tight = policy_with(budgets=[budget("0.20", soft_pct=0.5)], triggers={"trend": {"enabled": False}})
    report = replay(recorded(loose), tight).as_dict()
    assert report["changed"] > 0 and float(report["saving"]) > 0 and report["saving_pct"] > 0
    assert any(m.endswith("->small") or m.endswith("->reject") for m in report["moves"])
    assert report["replayed_triggers"].get("budget_soft", 0) > 0


def test_invalid_inputs_are_skipped_not_replayed():
    from dispatch_core.engine import invalid

    bad = decode(encode(DECISION, invalid({"task_id": "x", "workload": "nope"}, "bad", default_policy(), NOON).model_dump()))[1]
    report = replay([bad, *recorded(default_policy(), 3)], default_policy())
    assert (report.skipped, report.decisions) == (1, 3)


def test_cheaper_prices_reduce_replayed_cost():
    loose = policy_with(budgets=[])
    data = loose.model_dump(mode="json")
    data["classes"]["llm"]["tiers"][2]["unit_price"] = "0.0050"
    report = replay(recorded(loose), parse_policy(data)).as_dict()
    assert report["changed"] == 0 and float(report["saving"]) > 0
