"""Fallbacks after an executor failure, circuit breakers and deadlines, in the pure engine.

Every instant is fixed (T0), so nothing here depends on the day or time the tests run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatch_core import keys
from dispatch_core.circuit import CircuitConfig, CircuitView, is_probe
from dispatch_core.decision import Outcome, Trigger, attempt_decision_id, decision_id_for
from dispatch_core.engine import LoadReport, Plan, Retry, ScopeState, Snapshot, apply_plan, decide
from dispatch_core.errors import PolicyError
from dispatch_core.policy import Policy, parse_policy
from dispatch_core.settlement import CircuitState
from dispatch_core.task import Task
from dispatch_core.windows import window_at

from .factories import default_policy, llm_task

T0 = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)  # every task here was created then
SLA = timedelta(milliseconds=850)  # the default LLM SLA
DEADLINE = T0 + SLA
LATER = T0 + timedelta(milliseconds=100)  # when fallbacks are decided: 750 ms left


def policy(fallback: dict[str, Any] | None = None, **changes: Any) -> Policy:
    """The default policy without budgets (unless given), with an LLM fallback section."""
    data = default_policy().model_dump(mode="json")
    data["budgets"] = []
    data["classes"]["llm"]["fallback"] = fallback
    data.update(changes)
    return parse_policy(data)


def large() -> Task:
    return llm_task("large", created_at=T0)


def retry(failed: str = "large", attempt: int = 2, excluded: tuple[str, ...] | None = None,
          deadline: datetime = DEADLINE) -> Retry:
    tier_executor = {"small": "llm-small", "medium": "llm-medium", "large": "llm-large"}
    return Retry(attempt=attempt, parent_decision_id=attempt_decision_id("llm-gateway", "t-large", attempt - 1),
                 failed_tier=failed, excluded=excluded if excluded is not None else (tier_executor[failed],),
                 deadline=deadline)


def circuits(**states: CircuitState) -> Snapshot:
    """A snapshot whose executors (llm_small=...) have these circuit states."""
    since = T0 - timedelta(seconds=5)
    return Snapshot(circuits={e.replace("_", "-"): CircuitView(s, since) for e, s in states.items()})


def fall_back(p: Policy, r: Retry, snap: Snapshot | None = None, now: datetime = LATER, **kw: Any) -> Plan:
    return decide(large(), p, snap or Snapshot(), now, retry=r, **kw)


# --- first decisions: the new recorded fields ----------------------------------------


def test_first_decision_records_deadline_time_left_and_attempt_one():
    plan = decide(large(), policy(), Snapshot(), LATER)
    d = plan.decision
    assert d.decision_id == decision_id_for("llm-gateway", "t-large")
    assert (d.attempt, d.parent_decision_id, d.excluded_executors) == (1, None, [])
    assert d.deadline == DEADLINE
    assert d.time_left_ms == pytest.approx(750.0)
    assert d.sla_ms == 850.0 and d.assigned_tier == "large"
    assert d.executor_circuits == {}
    assert plan.update_baseline


def test_first_decision_uses_the_full_sla_not_the_time_left():
    # 50 ms left of 850: the first decision still routes on the task's SLA, as before
    d = decide(large(), policy(), Snapshot(), T0 + timedelta(milliseconds=800)).decision
    assert d.assigned_tier == "large" and d.triggers == []
    assert d.time_left_ms == pytest.approx(50.0)


# --- fallback directions --------------------------------------------------------------


def test_cheaper_fallback_goes_to_the_next_cheaper_tier_and_is_linked():
    plan = fall_back(policy(), retry())
    d = plan.decision
    assert d.assigned_tier == "medium" and d.executor == "llm-medium"
    assert d.outcome == Outcome.DOWNGRADED and d.asked_tier == "large"
    assert d.triggers == [Trigger.EXECUTOR_FAILURE]
    assert d.attempt == 2
    assert d.decision_id == attempt_decision_id("llm-gateway", "t-large", 2)
    assert d.decision_id != decision_id_for("llm-gateway", "t-large")
    assert d.parent_decision_id == decision_id_for("llm-gateway", "t-large")
    assert d.excluded_executors == ["llm-large"]
    assert d.deadline == DEADLINE and d.time_left_ms == pytest.approx(750.0)
    assert d.rule_id == "llm.fallback.cheaper"
    assert "executor llm-large failed (attempt 1): fallback cheaper to medium, 750 ms left" in d.rationale
    assert d.complexity_tier == "large"  # classification still runs and is recorded
    assert plan.amount > 0 and plan.enforce


def test_the_default_fallback_is_cheaper_with_three_attempts():
    assert policy().classes["llm"].fallback is None
    assert fall_back(policy(), retry()).decision.assigned_tier == "medium"
    assert fall_back(policy(), retry(attempt=4)).decision.outcome == Outcome.REJECTED


def test_more_capable_fallback_goes_up_and_is_rerouted():
    d = fall_back(policy({"direction": "more_capable"}), retry("small")).decision
    assert d.assigned_tier == "medium" and d.outcome == Outcome.REROUTED
    assert d.triggers == [Trigger.EXECUTOR_FAILURE]


def test_chain_fallback_follows_the_chain_after_the_failed_tier():
    p = policy({"direction": "chain", "chain": ["large", "small", "medium"]})
    assert fall_back(p, retry("large")).decision.assigned_tier == "small"
    third = fall_back(p, retry("small", attempt=3, excluded=("llm-large", "llm-small"))).decision
    assert third.assigned_tier == "medium" and third.outcome == Outcome.REROUTED


def test_chain_without_the_failed_tier_starts_at_its_head():
    p = policy({"direction": "chain", "chain": ["small", "medium"]})
    assert fall_back(p, retry("large")).decision.assigned_tier == "small"


def test_chain_ending_at_the_failed_tier_rejects():
    d = fall_back(policy({"direction": "chain", "chain": ["small", "medium"]}), retry("medium")).decision
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.EXECUTOR_FAILURE]
    assert "no tier of the chain left to fall back to" in d.rationale


def test_excluded_executors_are_skipped():
    d = fall_back(policy(), retry("large", attempt=3, excluded=("llm-medium", "llm-large"))).decision
    assert d.assigned_tier == "small" and d.excluded_executors == ["llm-medium", "llm-large"]


def test_no_tier_left_in_the_direction_rejects():
    d = fall_back(policy(), retry("small")).decision
    assert d.outcome == Outcome.REJECTED and d.assigned_tier is None
    assert d.triggers == [Trigger.EXECUTOR_FAILURE]
    assert "no cheaper tier left to fall back to" in d.rationale


def test_max_attempts_exhausted_rejects():
    d = fall_back(policy({"direction": "cheaper", "max_attempts": 2}), retry(attempt=3)).decision
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.EXECUTOR_FAILURE]
    assert "attempt 3 > max_attempts 2: fallback chain exhausted" in d.rationale
    assert d.attempt == 3 and d.reserved == 0


def test_force_rules_and_requested_tiers_do_not_apply_to_a_fallback():
    t = llm_task("large", created_at=T0, requested_tier="large", task_type="embed")  # rule forces small
    first = decide(t, policy(), Snapshot(), T0).decision
    assert first.assigned_tier == "small" and first.rule_id == "rules.embeddings-on-small"
    d = decide(t, policy(), Snapshot(), LATER, retry=retry("large")).decision
    assert d.assigned_tier == "medium" and Trigger.POLICY not in d.triggers


# --- deadlines -------------------------------------------------------------------------


def test_a_tier_slower_than_the_time_left_is_skipped():
    d = fall_back(policy(), retry(), now=T0 + timedelta(milliseconds=400)).decision  # 450 ms left
    assert d.assigned_tier == "small"  # medium's p95 is 500 ms
    assert Trigger.SLA_GUARD not in d.triggers and d.time_left_ms == pytest.approx(450.0)


def test_no_tier_fitting_the_time_left_rejects():
    d = fall_back(policy(), retry(), now=T0 + timedelta(milliseconds=700)).decision  # 150 ms left
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.EXECUTOR_FAILURE]
    assert "no cheaper tier fits the 150 ms left (medium p95 500 ms, small p95 250 ms)" in d.rationale


def test_a_past_deadline_rejects():
    d = fall_back(policy(), retry(), now=DEADLINE + timedelta(seconds=1)).decision
    assert d.outcome == Outcome.REJECTED and d.time_left_ms == pytest.approx(-1000.0)


# --- the standard triggers on a fallback -------------------------------------------------


def budget_policy() -> Policy:
    """A 1.00 global daily cap with no soft step and no trend: only budget_hard acts."""
    return policy(budgets=[{"id": "g", "scope": "global", "window": "day", "limit": "1.00", "soft_pct": 1.0}],
                  triggers={"trend": {"enabled": False}})


def spent(micros: int) -> Snapshot:
    return Snapshot(scopes={keys.budget("g", "global", window_at("day", LATER).id): ScopeState(spent=micros)})


def test_budget_hard_moves_a_fallback_to_a_cheaper_tier_that_fits():
    d = fall_back(budget_policy(), retry(), spent(990_000)).decision  # 0.01 left: medium 0.0185, small 0.0038
    assert d.assigned_tier == "small"
    assert d.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.BUDGET_HARD]


def test_budget_hard_rejects_a_fallback_when_nothing_fits():
    d = fall_back(budget_policy(), retry(), spent(999_000)).decision
    assert d.outcome == Outcome.REJECTED
    assert d.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.BUDGET_HARD]


def test_budget_hard_never_goes_below_the_fallbacks_allowed_tiers():
    # more capable from small: medium (0.0185) does not fit 0.01, and small is the failed tier
    d = fall_back(policy({"direction": "more_capable"}, budgets=budget_policy().model_dump(mode="json")["budgets"],
                         triggers={"trend": {"enabled": False}}), retry("small"), spent(990_000)).decision
    assert d.outcome == Outcome.REJECTED and Trigger.BUDGET_HARD in d.triggers


def test_load_never_steps_a_fallback_onto_an_excluded_tier():
    snap = Snapshot(load={"llm-medium": LoadReport(0.99, LATER)})
    d = fall_back(policy(), retry(), snap).decision
    assert d.assigned_tier == "small" and d.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.LOAD]
    excluded = fall_back(policy(), retry(attempt=3, excluded=("llm-small", "llm-large")), snap).decision
    assert excluded.assigned_tier == "medium"  # saturated, but small failed already


# --- modes -------------------------------------------------------------------------------


def test_shadow_fallback_routes_to_the_first_candidate_and_records_enforcement():
    plan = fall_back(budget_policy(), retry(), spent(990_000), mode="shadow")
    d = plan.decision
    assert d.assigned_tier == "medium" and d.enforced_tier == "small"
    assert d.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.BUDGET_HARD, Trigger.SHADOW]
    assert plan.amount > 0 and not plan.enforce
    assert "routed to the fallback" in d.rationale


def test_off_fallback_routes_to_the_first_candidate_unreserved():
    plan = fall_back(policy(), retry(), mode="off")
    assert plan.decision.assigned_tier == "medium" and plan.amount == 0 and plan.charges == ()
    assert plan.decision.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.FLAG]


# --- baselines -------------------------------------------------------------------------------


def test_a_fallback_does_not_move_the_baseline():
    snap = Snapshot()
    plan = fall_back(policy(), retry(), snap)
    assert not plan.update_baseline
    apply_plan(snap, plan)
    assert snap.baselines == {}
    first = decide(large(), policy(), snap, T0)
    apply_plan(snap, first)
    assert snap.baselines[first.baseline_key].n == 1


# --- circuits ------------------------------------------------------------------------------


def test_open_circuit_moves_to_the_nearest_cheaper_tier():
    d = decide(large(), policy(), circuits(llm_large="open"), T0).decision
    assert d.assigned_tier == "medium" and d.triggers == [Trigger.CIRCUIT_OPEN]
    assert "llm-large circuit open: medium" in d.rationale
    assert d.executor_circuits == {"llm-large": "open"}


def test_open_circuit_without_a_cheaper_tier_goes_more_capable():
    d = decide(llm_task("small", created_at=T0), policy(), circuits(llm_small="open"), T0).decision
    assert d.assigned_tier == "medium" and d.outcome == Outcome.REROUTED
    assert d.triggers == [Trigger.CIRCUIT_OPEN]


def test_every_circuit_open_rejects():
    d = decide(large(), policy(), circuits(llm_small="open", llm_medium="open", llm_large="open"), T0).decision
    assert d.outcome == Outcome.REJECTED and d.triggers == [Trigger.CIRCUIT_OPEN]
    assert "llm-large circuit open: no available tier meets the 850 ms SLA: rejected" in d.rationale


def test_a_circuit_is_not_recorded_as_an_sla_reason():
    # the tiers that meet a 600 ms SLA are small and medium; medium is open
    t = llm_task("large", created_at=T0, sla_ms=600)
    d = decide(t, policy(), circuits(llm_medium="open"), T0).decision
    assert d.assigned_tier == "small"
    assert d.triggers == [Trigger.SLA_GUARD, Trigger.CIRCUIT_OPEN]


def test_step_downs_never_land_on_an_open_circuit():
    snap = circuits(llm_small="open")
    snap.load["llm-medium"] = LoadReport(0.99, T0)
    d = decide(llm_task("medium", created_at=T0), policy(), snap, T0).decision
    assert d.assigned_tier == "medium" and d.triggers == []  # saturated, but small is open


def test_a_fallback_avoids_an_open_circuit():
    d = fall_back(policy(), retry(), circuits(llm_medium="open")).decision
    assert d.assigned_tier == "small"
    assert d.triggers == [Trigger.EXECUTOR_FAILURE, Trigger.CIRCUIT_OPEN]
    rejected = fall_back(policy(), retry(), circuits(llm_medium="open", llm_small="open")).decision
    assert rejected.outcome == Outcome.REJECTED
    assert "no available tier meets the 750 ms left" in rejected.rationale


def _tasks_by_probe(pct: float) -> tuple[Task, Task]:
    """A task whose first decision probes at ``pct`` and one whose does not (found deterministically)."""
    found: dict[bool, Task] = {}
    for i in range(200):
        t = llm_task("large", task_id=f"probe-{i}", created_at=T0)
        found.setdefault(is_probe(decision_id_for(t.service, t.task_id), pct), t)
        if len(found) == 2:
            return found[True], found[False]
    raise AssertionError("no probe split among 200 ids")


def test_half_open_lets_only_probes_through():
    cfg = CircuitConfig(probe_pct=30.0)
    probe, other = _tasks_by_probe(cfg.probe_pct)
    snap = circuits(llm_large="half_open")
    through = decide(probe, policy(), snap, T0, circuit=cfg).decision
    assert through.assigned_tier == "large" and through.triggers == []
    assert "llm-large circuit half_open: this decision is one of its probes" in through.rationale
    assert through.executor_circuits == {"llm-large": "half_open"}
    held = decide(other, policy(), snap, T0, circuit=cfg).decision
    assert held.assigned_tier == "medium" and held.triggers == [Trigger.CIRCUIT_OPEN]
    assert "llm-large circuit half_open (not a probe): medium" in held.rationale


def test_no_circuit_in_off_mode_and_only_enforcement_in_shadow():
    snap = circuits(llm_large="open")
    off = decide(large(), policy(), snap, T0, mode="off").decision
    assert off.assigned_tier == "large" and Trigger.CIRCUIT_OPEN not in off.triggers
    shadow = decide(large(), policy(), snap, T0, mode="shadow").decision
    assert (shadow.assigned_tier, shadow.enforced_tier) == ("large", "medium")
    assert shadow.triggers == [Trigger.CIRCUIT_OPEN, Trigger.SHADOW]


# --- policy parsing --------------------------------------------------------------------------


def test_fallback_section_parses():
    p = policy({"direction": "chain", "chain": ["medium", "small"], "max_attempts": 4})
    fb = p.classes["llm"].fallback_rule
    assert (fb.direction, fb.chain, fb.max_attempts) == ("chain", ["medium", "small"], 4)


def test_chain_with_an_unknown_tier_is_refused():
    with pytest.raises(PolicyError, match="fallback.chain: unknown tiers"):
        policy({"direction": "chain", "chain": ["medium", "huge"]})


def test_version_unchanged_without_a_fallback_section():
    assert policy(budgets=default_policy().model_dump(mode="json")["budgets"]).version == default_policy().version
    assert "fallback" not in default_policy().canonical_json()
    assert policy({"direction": "cheaper"}).version != policy().version


def test_a_retry_is_attempt_two_or_later():
    with pytest.raises(ValueError, match="attempt 2 or later"):
        retry(attempt=1)


def test_budget_hard_on_a_fallback_names_the_time_left():
    d = fall_back(budget_policy(), retry(), spent(999_000)).decision
    assert "no tier meeting the time left fits under the cap of g/global" in d.rationale
