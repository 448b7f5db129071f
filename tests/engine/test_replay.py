"""Replaying recorded decisions, per decision and as a simulation, from what the audit events carry.

The recordings here are made by the engine itself, the way the dispatcher makes them: batches
that share one decision time, a ledger that held spend before the recording began, executor
load that comes and goes, settlements and expiries between batches, decisions made without
Redis, a cap lost to a concurrent worker. Every event goes through the Avro codec and back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from datetime import timedelta
from decimal import Decimal

from dispatch_core import keys
from dispatch_core.classify import Baseline
from dispatch_core.decision import Trigger
from dispatch_core.dispatcher import CONTENTION
from dispatch_core.engine import LoadReport, ScopeState, Snapshot, apply_plan, decide, fallback, invalid, reject
from dispatch_core.money import from_micros, to_micros
from dispatch_core.policy import parse_policy
from dispatch_core.replay import compare, order_key, recording, replay
from dispatch_core.settlement import ExecutorReport, SettlementEvent, SettlementKind
from dispatch_core.windows import window_at
from schemas import DECISION, SETTLEMENT, decode, encode

from .factories import NOON, budget, default_policy, policy_with, task


def pressed():
    """A recording policy under budget pressure: soft, trend and hard caps all fire."""
    return policy_with(budgets=[budget("0.20", scope="tenant", window="hour", soft_pct=0.9),
                                budget("2.00", scope="service", window="day")])


def _event(decision) -> dict:
    return decode(encode(DECISION, decision.model_dump()))[1]


def _settlement(decision, kind: SettlementKind, actual: Decimal | None, at) -> dict:
    ev = SettlementEvent(decision_id=decision.decision_id, kind=kind, task_id=decision.task_id,
                         service=decision.service, executor=decision.executor, currency=decision.currency,
                         reserved=decision.reserved, actual=actual, scopes=[], run_ms=1.0, dispatch_ms=2.0,
                         report_id=f"r-{decision.decision_id}" if actual is not None else None, recorded_at=at)
    return decode(encode(SETTLEMENT, ev.model_dump()))[1]


def _task(i: int, batch: int):
    kind = ["llm", "llm", "script", "kernel"][i % 4]
    feats = {"llm": {"tokens": 300 * (1 + (i * 7) % 13)}, "script": {"cpu_ms": 40.0 * (i % 9), "depth": i % 5},
             "kernel": {"cpu_ms": 90.0 * (i % 11), "payload_bytes": 5000 * i}}[kind]
    return task(kind, task_id=f"b{batch}-{i}", service=["llm-gateway", "tarotscript", "aegis"][i % 3],
                tenant=["acme", "globex"][i % 2], features=feats)


def recorded_world(policy, batches: int = 14, size: int = 8):
    """Decision and settlement events as one worker records them against a live ledger.

    The ledger starts with spend and baselines from before the recording; each batch is decided
    on one snapshot at one time; settlements and expiries of the previous batch land in between.
    """
    ledger = Snapshot()
    for b in policy.budgets:  # spend from before the recording began
        if b.scope == "tenant":
            for tenant in ("acme", "globex"):
                ledger.scopes[keys.budget(b.id, tenant, window_at(b.window, NOON).id)] = ScopeState(to_micros(b.limit) // 3)
    for svc in ("llm-gateway", "tarotscript", "aegis"):
        ledger.baselines[keys.baseline(svc, "default")] = Baseline(40, 6.0, 1.5)
    seq, events, last = 0, [], []
    for k in range(batches):
        now = NOON + timedelta(seconds=20 * k)
        for j, (d, plan) in enumerate(last):  # the previous batch's reports (or expiries), 5 s after it
            if plan.amount == 0:
                continue
            expired = j % 5 == 4
            actual = plan.amount if expired else plan.amount * 4 // 5
            for c in plan.charges:
                s = ledger.scopes[c.key]
                ledger.scopes[c.key] = ScopeState(s.spent + actual, s.reserved - plan.amount, s.trend)
            kind, reported = (SettlementKind.EXPIRED, None) if expired else (SettlementKind.SETTLED, from_micros(actual))
            events.append(_settlement(d, kind, reported, now - timedelta(seconds=15)))
        sat = 0.95 if k % 3 == 1 else 0.2
        snap = Snapshot(scopes=dict(ledger.scopes), baselines=dict(ledger.baselines),
                        load={"llm-large": LoadReport(sat, now - timedelta(seconds=2)),
                              "script-heavy": LoadReport(0.97, now - timedelta(seconds=60))})  # stale: ignored
        last = []
        for i in range(size):
            t = _task(i + k, k)
            mode = "shadow" if t.service == "aegis" and k % 4 == 3 else "enforce"
            plan = decide(t, policy, snap, now, mode=mode, arm="canary" if i % 7 == 6 else "stable")
            if k == 5 and i == 0 and plan.amount:  # the cap kept being taken by other workers
                plan = dataclasses.replace(plan, decision=reject(plan.decision, Trigger.BUDGET_HARD, CONTENTION),
                                           amount=0, charges=())
            apply_plan(snap, plan)
            apply_plan(ledger, plan)
            seq += 1
            d = plan.decision.model_copy(update={"sequence": seq})
            events.append(_event(d))
            last.append((d, plan))
    end = NOON + timedelta(seconds=20 * batches)
    for i in range(4):  # Redis unreachable at the end: fail-open routes and fail-closed rejections
        t = _task(i, 99)
        events.append(_event(fallback(t, policy, end, fail_open=i % 2 == 0, reason="Redis went away")))
    events.append(_event(invalid({"task_id": "x", "workload": "nope"}, "bad", policy, end)))
    return events


def test_per_decision_replay_of_the_recording_policy_reproduces_every_decision():
    policy = pressed()
    events = recorded_world(policy)
    triggers = {t for e in events if "triggers" in e for t in e["triggers"]}
    assert {"budget_soft", "trend", "load", "shadow", "ledger_unavailable", "budget_hard"} <= triggers  # a real mix
    report = replay(events, policy, "per-decision").as_dict()
    assert report["decisions"] == 14 * 8 + 4 and report["skipped_by_reason"] == {"invalid": 1}
    assert report["agreed"] == report["decisions"] and report["disagreements"] == []
    assert report["changed"] == 0 and report["recorded_cost"] == report["replayed_cost"]


def test_simulation_of_the_recording_policy_follows_the_spend_and_settlements_as_they_happened():
    policy = pressed()
    report = replay(recorded_world(policy), policy, "simulation").as_dict()
    assert report["agreed"] == report["decisions"] == 14 * 8 + 4


def test_both_modes_are_the_same_whatever_order_the_events_are_read_in():
    candidate = policy_with(budgets=[budget("3.00", scope="tenant", window="hour", soft_pct=0.5)])
    events = recorded_world(pressed())
    runs = []
    for seed in (1, 2, 3):
        shuffled = events + events[::5]  # read in another order, with redelivered copies
        random.Random(seed).shuffle(shuffled)
        runs.append({m: r.as_dict() for m, r in compare(shuffled, candidate).items()})
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["per-decision"]["changed"] > 0 and runs[0]["simulation"]["changed"] > 0


def test_decisions_are_ordered_by_sequence_then_those_without_by_time_and_id():
    policy = default_policy()
    events = recorded_world(policy, batches=3)
    ordered = recording(reversed(events)).decisions
    numbered = [e["sequence"] for e in ordered if e["sequence"] is not None]
    assert numbered == list(range(1, 25))
    rest = ordered[len(numbered):]
    assert [(e["decided_at"], e["decision_id"]) for e in rest] == sorted((e["decided_at"], e["decision_id"]) for e in rest)
    assert all(order_key(a) < order_key(b) for a, b in zip(ordered, ordered[1:]))


def test_the_simulation_carries_the_candidates_own_spend_where_per_decision_keeps_the_recorded():
    loose = policy_with(budgets=[budget("100.00", soft_pct=0.99)], triggers={"trend": {"enabled": False}})
    events = recorded_world(loose)
    tight = policy_with(budgets=[budget("0.50", soft_pct=0.99)], triggers={"trend": {"enabled": False}})
    both = {m: r.as_dict() for m, r in compare(events, tight).items()}
    # per decision, every decision sees the loose policy's recorded spend against the tight cap;
    # simulated, the tight policy's own (smaller) spend leaves room for more of them
    assert both["per-decision"]["replayed_rejected"] > both["simulation"]["replayed_rejected"] > 0


def test_a_new_budget_shows_its_saving_in_the_simulation_and_is_seen_empty_per_decision():
    loose = policy_with(budgets=[])
    tight = policy_with(budgets=[budget("0.20", soft_pct=0.5)], triggers={"trend": {"enabled": False}})
    both = {m: r.as_dict() for m, r in compare(recorded_world(loose), tight).items()}
    sim = both["simulation"]
    assert sim["changed"] > 0 and float(sim["saving"]) > 0 and sim["saving_pct"] > 0
    assert any(m.endswith("->small") or m.endswith("->reject") for m in sim["moves"])
    assert sim["replayed_triggers"].get("budget_soft", 0) > 0
    per = both["per-decision"]  # the recording held no spend on that budget: nothing presses on it
    assert per["unrecorded_scopes"] == per["decisions"] - 4 and per["changed"] == 0  # 4 made without Redis


def test_cheaper_prices_reduce_replayed_cost():
    loose = policy_with(budgets=[])
    data = loose.model_dump(mode="json")
    data["classes"]["llm"]["tiers"][2]["unit_price"] = "0.0050"
    report = replay(recorded_world(loose), parse_policy(data), "per-decision").as_dict()
    assert report["changed"] == 0 and float(report["saving"]) > 0 and report["agreed"] < report["decisions"]


def test_enforce_replays_shadow_traffic_as_enforced():
    policy = pressed()
    events = recorded_world(policy)
    shadow = [e for e in events if e.get("mode") == "shadow"]
    held_back = [e for e in shadow if e["enforced_tier"] != e["assigned_tier"]]
    assert held_back
    report = replay(events, policy, "per-decision", enforce=True)
    assert set(report.disagreements) == {e["decision_id"] for e in shadow}  # none is a shadow decision now
    assert report.changed == len(held_back)  # routed where enforcement said it would go
    assert report.moves == Counter(f"{e['assigned_tier']}->{e['enforced_tier'] or 'reject'}" for e in held_back)


async def test_concurrent_dispatchers_on_the_real_ledger_replay_exactly_per_decision(make_dispatcher, ledger):
    """Two dispatchers race for one cap on the real Redis, every decision at the same instant."""
    policy = policy_with(budgets=[budget("0.08", scope="tenant", window="hour", soft_pct=0.6)],
                         triggers={"trend": {"enabled": False}})
    workers = [await make_dispatcher(policy), await make_dispatcher(policy)]
    await ledger.report_load("llm-large", 0.95, NOON)
    decisions, settlements = [], []
    for wave in range(4):
        batches = [[_task(i, wave * 10 + w) for i in range(w, 24, 2)] for w in range(2)]
        out = await asyncio.gather(*(d.decide(b) for d, b in zip(workers, batches, strict=True)))
        decided = [d for batch in out for d in batch]
        decisions += decided
        for d in decided[::2]:
            if d.routed:
                ev = await workers[0].settle(ExecutorReport(
                    decision_id=d.decision_id, report_id=f"r-{d.decision_id}", task_id=d.task_id, service=d.service,
                    executor=d.executor, actual=d.estimate_assigned, run_ms=1, dispatch_ms=1, finished_at=NOON))
                settlements.append(ev)
        if wave == 1:
            await ledger.report_load("llm-large", 0.1, NOON)
    assert sorted(d.sequence for d in decisions) == list(range(1, len(decisions) + 1))
    assert len({d.decided_at for d in decisions}) == 1  # no help from time: the sequence orders them
    events = [_event(d) for d in decisions] + [decode(encode(SETTLEMENT, s.model_dump()))[1] for s in settlements]
    triggers = {t for e in events if "triggers" in e for t in e["triggers"]}
    assert {"load", "budget_hard", "budget_soft"} <= triggers
    report = replay(events, policy, "per-decision")
    assert report.agreed == report.decisions == len(decisions) and not report.disagreements
    again = replay(list(reversed(events)), policy, "simulation").as_dict()
    assert again == replay(events, policy, "simulation").as_dict()
