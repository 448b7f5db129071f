"""The pure decision engine: task + policy + ledger snapshot -> decision and ledger plan.

No I/O and no clock of its own: the same task, snapshot, policy and ``now`` always give the
same decision. One standard order for every workload class:

    classify -> map to a tier (thresholds, force rules, requested tier)
    -> sla_guard -> circuit -> load -> budget_soft / trend -> budget_hard -> shadow

A fallback after an executor failure (``Retry``) is decided the same way on a restricted
ladder: the tiers its class's fallback rule allows, that the failed executors do not serve,
and that fit the time left before the task's deadline.

The ``Plan`` it returns is what the ledger must commit atomically (reservation, baseline
update, trend flags); ``apply_plan`` replays that commit on a snapshot so a batch of
decisions can be planned ahead of one Redis round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from dispatch_core import keys
from dispatch_core.version import __version__
from dispatch_core.circuit import CircuitConfig, CircuitView, is_probe
from dispatch_core.classify import Baseline, score, update_baseline
from dispatch_core.decision import (
    Arm,
    BudgetState,
    Decision,
    Mode,
    Outcome,
    Trigger,
    attempt_decision_id,
    conflict_decision_id,
    invalid_decision_id,
)
from dispatch_core.money import from_micros, quantize, to_micros
from dispatch_core.policy import Budget, ClassPolicy, ComplexityModel, Policy, Tier
from dispatch_core.settlement import CircuitState
from dispatch_core.task import Task, WorkloadClass
from dispatch_core.windows import WindowSpan, window_at

#: Cost units per workload class: (feature, divisor). LLM prices per 1k tokens, others per cpu-second.
COST_UNITS: dict[WorkloadClass, tuple[str, float]] = {
    WorkloadClass.LLM: ("tokens", 1000.0),
    WorkloadClass.SCRIPT: ("cpu_ms", 1000.0),
    WorkloadClass.KERNEL: ("cpu_ms", 1000.0),
}


@dataclass(frozen=True, slots=True)
class ScopeState:
    """One budget scope in one window, in micro-units."""

    spent: int = 0
    reserved: int = 0
    trend: bool = False

    @property
    def committed(self) -> int:
        return self.spent + self.reserved


@dataclass(frozen=True, slots=True)
class LoadReport:
    """An executor's last reported saturation (0 idle .. 1 full)."""

    saturation: float
    at: datetime


@dataclass
class Snapshot:
    """What the ledger held when a batch was read; the engine plans against it."""

    scopes: dict[str, ScopeState] = field(default_factory=dict)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    load: dict[str, LoadReport] = field(default_factory=dict)
    circuits: dict[str, CircuitView] = field(default_factory=dict)  # executor -> view; closed ones not listed


@dataclass(frozen=True, slots=True)
class Retry:
    """A fallback to decide after an executor failed a task with a retryable error.

    Carries what the failed attempt's decision knew, so the fallback is decided without
    reading that decision back: its id, its tier, the executors already tried, its deadline.
    """

    attempt: int  # the attempt number of the decision to make (>= 2)
    parent_decision_id: str  # the failed attempt's decision id
    failed_tier: str  # the tier the failed attempt was assigned
    excluded: tuple[str, ...]  # executors that failed this task so far, the one that just failed included
    deadline: datetime  # the task's deadline, fixed by its first decision

    def __post_init__(self) -> None:
        if self.attempt < 2:
            raise ValueError(f"a retry is attempt 2 or later, got {self.attempt}")


@dataclass(frozen=True, slots=True)
class ScopeCharge:
    """A budget scope a reservation is held against, with its cap and key lifetime."""

    key: str
    limit: int
    expire_at_ms: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision plus what the ledger must commit for it, atomically."""

    decision: Decision
    amount: int  # micro-units to reserve; 0 for rejections and unmanaged routes
    enforce: bool  # check caps before reserving (False in shadow mode: spend is recorded, not capped)
    charges: tuple[ScopeCharge, ...]
    baseline_key: str
    raw_complexity: float
    complexity: ComplexityModel  # how the baseline update is computed (mirrored by the Lua)
    trend_flags: tuple[tuple[str, bool, int], ...]  # (budget key, flag, key expiry ms)
    expires_at_ms: int
    # False for a fallback: its task already moved the rolling baseline once, at its first decision
    update_baseline: bool = True


def estimate(tier: Tier, task: Task) -> Decimal:
    """Estimated cost of running ``task`` on ``tier``."""
    feature, divisor = COST_UNITS[task.workload]
    units = Decimal(str(float(getattr(task.features, feature) or 0) / divisor))
    return quantize(tier.base_price + tier.unit_price * units)


@dataclass(frozen=True, slots=True)
class _Scope:
    budget: Budget
    key: str
    scope: str
    span: WindowSpan
    state: ScopeState
    limit: int
    trend_now: bool
    projected: int

    def fits(self, amount: int) -> bool:
        return self.state.committed + amount <= self.limit

    def soft(self) -> bool:
        return self.state.committed >= self.budget.soft_pct * self.limit

    @property
    def expire_at_ms(self) -> int:
        return int(self.span.end.timestamp() * 1000)

    def state_after(self, amount: int) -> BudgetState:
        """This scope as the decision saw it, and with ``amount`` reserved, for the record."""
        return BudgetState(
            budget_id=self.budget.id, scope=self.scope, window=self.span.id, window_start=self.span.start,
            window_end=self.span.end, limit=self.budget.limit, soft_pct=self.budget.soft_pct,
            spent=from_micros(self.state.spent), reserved_before=from_micros(self.state.reserved),
            committed_after=from_micros(self.state.committed + amount), projected=from_micros(self.projected),
            trend_active=self.trend_now,
        )


def _applicable(policy: Policy, task: Task, now: datetime) -> list[tuple[Budget, str, WindowSpan, str]]:
    """(budget, scope, window, ledger key) of every budget that applies to ``task`` at ``now``."""
    out = []
    for budget in policy.budgets:
        scope = budget.scope_key(task)
        if scope is not None:
            span = window_at(budget.window, now)
            out.append((budget, scope, span, keys.budget(budget.id, scope, span.id)))
    return out


def ledger_keys(policy: Policy, task: Task, now: datetime) -> tuple[list[str], str]:
    """The Redis keys a decision on ``task`` reads: its budget scopes and its baseline."""
    return [k for *_, k in _applicable(policy, task, now)], keys.baseline(task.service, task.task_type)


def _scopes(policy: Policy, task: Task, snap: Snapshot, now: datetime) -> list[_Scope]:
    out = []
    trend = policy.triggers.trend
    for budget, scope, span, key in _applicable(policy, task, now):
        state = snap.scopes.get(key, ScopeState())
        limit = to_micros(budget.limit)
        frac = span.elapsed_fraction(now)
        projected = int(state.committed / frac) if frac > 0 else state.committed
        if not trend.enabled or frac < trend.min_elapsed_pct:
            trend_now = False
        elif state.trend:  # hysteresis: stays on until the projection is clearly under the cap
            trend_now = projected > limit * (1 - trend.hysteresis_pct)
        else:
            trend_now = projected > limit
        out.append(_Scope(budget, key, scope, span, state, limit, trend_now, projected))
    return out


def _map_tier(policy: Policy, cls: ClassPolicy, task: Task, score_value: float) -> tuple[int, str]:
    thresholds = cls.task_types.get(task.task_type, cls.thresholds)
    source = f"task_types.{task.task_type}" if task.task_type in cls.task_types else "thresholds"
    for i, t in enumerate(thresholds):
        if score_value < t.upto or i == len(thresholds) - 1:
            return cls.index(t.tier) or 0, f"{task.workload.value}.{source}[{i}]"
    raise AssertionError("unreachable: thresholds end at upto 1.0")


@dataclass
class _Work:
    """One decision in progress: the tier ladder, the current choice and the reasons so far."""

    task: Task
    policy: Policy
    cls: ClassPolicy
    snap: Snapshot
    now: datetime
    scopes: list[_Scope]
    cur: int | None
    costs: list[Decimal]  # the estimate on each tier of the class, computed once
    decision_id: str  # decides which decisions probe a half-open circuit
    sla: float  # what a tier's p95 must fit: the task's SLA; for a fallback, the time left
    probe_pct: float
    # a fallback's candidate tiers, in the order it tries them; None (a first decision): every tier
    allowed: list[int] | None = None
    triggers: list[Trigger] = field(default_factory=list)
    why: list[str] = field(default_factory=list)

    def name(self, i: int | None) -> str | None:
        return self.cls.tiers[i].name if i is not None else None

    def eligible(self, i: int) -> bool:
        """Tier i meets the SLA (a fallback: the time left) and the fallback allows it."""
        return self.cls.tiers[i].p95_ms <= self.sla and (self.allowed is None or i in self.allowed)

    def circuit_state(self, i: int) -> CircuitState | None:
        """The state of tier i's executor's circuit, None when closed."""
        view = self.snap.circuits.get(self.cls.tiers[i].executor)
        return view.state if view is not None and view.state != "closed" else None

    def available(self, i: int) -> bool:
        """Tier i's executor takes this decision: its circuit is closed, or half-open and this is a probe.

        Kept apart from ``eligible`` so that a circuit is never recorded as an SLA reason.
        """
        state = self.circuit_state(i)
        return state is None or (state == "half_open" and is_probe(self.decision_id, self.probe_pct))

    def usable(self, i: int) -> bool:
        return self.eligible(i) and self.available(i)

    @property
    def fit_text(self) -> str:
        """What the tiers must fit, for reasons: the SLA, or a fallback's time left."""
        return f"{self.sla:g} ms SLA" if self.allowed is None else f"{self.sla:.0f} ms left"

    def step_down(self, ok: Callable[[int], bool] = lambda i: True) -> int | None:
        """The next cheaper tier below the current one that is usable (and ``ok``), if any."""
        assert self.cur is not None
        return next((i for i in range(self.cur - 1, -1, -1) if self.usable(i) and ok(i)), None)

    def move(self, trigger: Trigger, to: int | None, reason: str) -> None:
        self.triggers.append(trigger)
        self.why.append(reason)
        self.cur = to

    def saturation(self, i: int) -> float:
        """Last reported saturation of tier i's executor; 0 when unknown or stale."""
        rep, lt = self.snap.load.get(self.cls.tiers[i].executor), self.policy.triggers.load
        if rep is None or self.now - rep.at > timedelta(seconds=lt.max_age_s):
            return 0.0
        return rep.saturation

    # --- a fallback's starting point, before the standard triggers --------------------

    def fall_back(self, retry: Retry) -> int | None:
        """Restrict the ladder to the fallback's candidates and start on the first that fits the time left.

        Returns the failed tier's index: what the retried task "asked" for, so the outcome
        says downgraded for a cheaper fallback and rerouted for a more capable one.
        """
        rule, failed = self.cls.fallback_rule, self.cls.index(retry.failed_tier)
        executor = self.cls.tiers[failed].executor if failed is not None else retry.failed_tier
        head = f"executor {executor} failed (attempt {retry.attempt - 1})"
        self.allowed = []
        if retry.attempt > rule.max_attempts:
            self.move(Trigger.EXECUTOR_FAILURE, None, f"{head}; attempt {retry.attempt} > max_attempts "
                                                      f"{rule.max_attempts}: fallback chain exhausted")
            return failed
        if failed is None:
            self.move(Trigger.EXECUTOR_FAILURE, None, f"{head}; {retry.failed_tier!r} is not a "
                                                      f"{self.task.workload.value} tier: no fallback")
            return None
        if rule.direction == "cheaper":
            order = list(range(failed - 1, -1, -1))
        elif rule.direction == "more_capable":
            order = list(range(failed + 1, len(self.cls.tiers)))
        else:
            pos = rule.chain.index(retry.failed_tier) + 1 if retry.failed_tier in rule.chain else 0
            order = [i for t in rule.chain[pos:] if (i := self.cls.index(t)) is not None]
        self.allowed = [i for i in order if self.cls.tiers[i].executor not in retry.excluded]
        new = next((i for i in self.allowed if self.eligible(i)), None)
        left = self.fit_text
        what = {"cheaper": "cheaper tier", "more_capable": "more capable tier", "chain": "tier of the chain"}
        if not self.allowed:
            tried = f" (failed so far: {', '.join(retry.excluded)})" if retry.excluded else ""
            reason = f"{head}: no {what[rule.direction]} left to fall back to{tried}"
        elif new is None:
            p95s = ", ".join(f"{self.name(i)} p95 {self.cls.tiers[i].p95_ms:g} ms" for i in self.allowed)
            reason = f"{head}: no {what[rule.direction]} fits the {left} ({p95s})"
        else:
            reason = f"{head}: fallback {rule.direction} to {self.name(new)}, {left}"
        self.move(Trigger.EXECUTOR_FAILURE, new, reason)
        return failed

    # --- the standard triggers, applied in this order by decide() ---------------------

    def sla_guard(self) -> None:
        if self.cur is None or self.eligible(self.cur):
            return
        below = next((i for i in range(self.cur - 1, -1, -1) if self.eligible(i)), None)
        above = next((i for i in range(self.cur + 1, len(self.cls.tiers)) if self.eligible(i)), None)
        new = below if below is not None else above
        tier = self.cls.tiers[self.cur]
        reason = (f"no tier meets the {self.sla:g} ms SLA" if new is None
                  else f"{tier.name} p95 {tier.p95_ms:g} ms > SLA {self.sla:g} ms: {self.name(new)}")
        self.move(Trigger.SLA_GUARD, new, reason)

    def circuit(self) -> None:
        """Avoid an executor whose circuit is open (or half-open, unless this decision probes it)."""
        if self.cur is None or (state := self.circuit_state(self.cur)) is None:
            return
        executor = self.cls.tiers[self.cur].executor
        if self.available(self.cur):
            self.why.append(f"{executor} circuit half_open: this decision is one of its probes")
            return
        # nearest cheaper first, then nearest more capable; a fallback tries its candidates in
        # its own order (the same thing for the cheaper and more_capable directions)
        order = self.allowed if self.allowed is not None else [
            *range(self.cur - 1, -1, -1), *range(self.cur + 1, len(self.cls.tiers))]
        new = next((i for i in order if self.usable(i)), None)
        what = f"{executor} circuit {state}" + (" (not a probe)" if state == "half_open" else "")
        reason = (f"{what}: no available tier meets the {self.fit_text}: rejected" if new is None
                  else f"{what}: {self.name(new)}")
        self.move(Trigger.CIRCUIT_OPEN, new, reason)

    def load(self) -> None:
        lt = self.policy.triggers.load
        if self.cur is None or not lt.enabled or self.saturation(self.cur) < lt.saturation:
            return
        new = self.step_down(lambda i: self.saturation(i) < lt.saturation)
        if new is not None:
            executor = self.cls.tiers[self.cur].executor
            self.move(Trigger.LOAD, new, f"{executor} saturated ({self.saturation(self.cur):.2f}): {self.name(new)}")

    def budget_pressure(self) -> None:
        """budget_soft and trend: together at most one step down."""
        soft = [s for s in self.scopes if s.soft()]
        trend = [s for s in self.scopes if s.trend_now]
        if self.cur is None or not (soft or trend):
            return
        new = self.step_down()
        if soft:
            self.triggers.append(Trigger.BUDGET_SOFT)
            self.why.append("past soft threshold: " + ", ".join(f"{s.budget.id}/{s.scope}" for s in soft))
        if trend:
            self.triggers.append(Trigger.TREND)
            self.why.append("spend projected over cap: " + ", ".join(f"{s.budget.id}/{s.scope}" for s in trend))
        if new is not None:
            self.why.append(f"one step down to {self.name(new)}")
            self.cur = new

    def budget_hard(self) -> None:
        if self.cur is None or not self.scopes:
            return
        amounts = [to_micros(c) for c in self.costs]
        tight = [f"{s.budget.id}/{s.scope}" for s in self.scopes if not s.fits(amounts[self.cur])]
        if not tight:
            return
        fit = next((i for i in range(self.cur, -1, -1)
                    if self.usable(i) and all(s.fits(amounts[i]) for s in self.scopes)), None)
        meeting = "the SLA" if self.allowed is None else "the time left"
        reason = (f"no tier meeting {meeting} fits under the cap of {', '.join(tight)}" if fit is None
                  else f"{self.name(self.cur)} would cross the cap of {', '.join(tight)}: {self.name(fit)}")
        self.move(Trigger.BUDGET_HARD, fit, reason)


def decide(
    task: Task,
    policy: Policy,
    snap: Snapshot,
    now: datetime,
    *,
    mode: Mode = "enforce",
    arm: Arm = "stable",
    reservation_ttl_s: float = 600.0,
    circuit: CircuitConfig = CircuitConfig(),
    retry: Retry | None = None,
) -> Plan:
    """Decide where ``task`` goes under ``policy`` given the ledger ``snap`` at ``now``.

    With ``retry``, the decision is the fallback after a failed attempt: force rules and
    requested tiers were honoured by the first decision and do not apply again.
    """
    t0 = time.perf_counter()
    cls = policy.classes[task.workload]
    bkey = keys.baseline(task.service, task.task_type)
    cx = score(task, cls.complexity, snap.baselines.get(bkey, Baseline()))
    mapped, rule_id = _map_tier(policy, cls, task, cx.score)
    costs = [estimate(t, task) for t in cls.tiers]
    attempt = retry.attempt if retry is not None else 1
    did = attempt_decision_id(task.service, task.task_id, attempt)
    deadline = retry.deadline if retry is not None else task.created_at + timedelta(milliseconds=task.effective_sla_ms)
    time_left = (deadline - now) / timedelta(milliseconds=1)
    w = _Work(task, policy, cls, snap, now, _scopes(policy, task, snap, now) if mode != "off" else [], mapped, costs,
              did, time_left if retry is not None else task.effective_sla_ms, circuit.probe_pct)
    w.why.append(f"complexity {cx.score:.3f} maps to {w.name(mapped)} ({rule_id})")

    if retry is not None:
        rule_id = f"{task.workload.value}.fallback.{cls.fallback_rule.direction}"
        asked = w.fall_back(retry)
    else:  # a force rule wins, then an allowed requested tier
        rule = next((r for r in policy.rules if r.matches(task)), None)
        if rule is not None:
            rule_id = f"rules.{rule.id}"
            w.move(Trigger.POLICY, cls.index(rule.tier), f"rule {rule.id} forces {rule.tier}")
        elif task.requested_tier is not None:
            req = cls.index(task.requested_tier)
            if req is None:
                w.move(Trigger.POLICY, None,
                       f"requested tier {task.requested_tier!r} is not a {task.workload.value} tier")
            elif cls.honour_requested_tier:
                rule_id, w.cur = f"{task.workload.value}.requested", req
                w.why.append(f"requested tier {task.requested_tier} honoured")
            else:
                w.why.append(f"requested tier {task.requested_tier} ignored: policy does not honour requests")
        asked = w.cur
    unenforced = w.cur  # where shadow and off route: as asked, or a fallback's first candidate that fits
    as_asked = "routed as asked" if retry is None else "routed to the fallback"

    if mode == "off":
        w.triggers.append(Trigger.FLAG)
        w.why.append(f"service adoption flag is off: {as_asked}, unmanaged")
    else:
        w.sla_guard()
        w.circuit()
        w.load()
        w.budget_pressure()
        w.budget_hard()
    enforced = assigned = w.cur
    if mode == "shadow":
        assigned = unenforced
        w.triggers.append(Trigger.SHADOW)
        w.why.append(f"shadow mode: enforcement would give {w.name(enforced) or 'reject'}; {as_asked}")

    amount = to_micros(costs[assigned]) if assigned is not None and mode != "off" else 0
    est_asked = costs[asked if asked is not None else mapped]
    requested = cls.index(task.requested_tier) if task.requested_tier is not None else None
    untiered = requested if requested is not None else len(cls.tiers) - 1
    decision = Decision(
        decision_id=did, task_hash=task.content_hash,
        task_id=task.task_id, service=task.service, workload=task.workload, task_type=task.task_type,
        tenant=task.tenant, outcome=_outcome(asked, assigned), mode=mode, canary_arm=arm,
        policy_version=policy.version, policy_name=policy.name, rule_id=rule_id,
        complexity_score=cx.score, complexity_raw=cx.raw, complexity_inputs=cx.inputs,
        baseline_mean=cx.ref_mean, baseline_std=cx.ref_std, baseline_n=cx.baseline_n,
        requested_tier=task.requested_tier, asked_tier=w.name(asked), enforced_tier=w.name(enforced),
        assigned_tier=w.name(assigned), executor=cls.tiers[assigned].executor if assigned is not None else None,
        triggers=w.triggers, rationale="; ".join(w.why), currency=policy.currency,
        estimate_asked=est_asked,
        estimate_assigned=costs[assigned] if assigned is not None else Decimal(0),
        reserved=from_micros(amount), budgets=[s.state_after(amount) for s in w.scopes],
        sla_ms=task.effective_sla_ms,
        executor_p95_ms=cls.tiers[assigned].p95_ms if assigned is not None else None,
        engine_version=__version__, decided_at=now,
        complexity_tier=w.name(mapped), estimate_complexity=costs[mapped],
        untiered_tier=w.name(untiered), estimate_untiered=costs[untiered],
        executor_load={t.executor: w.saturation(i) for i, t in enumerate(cls.tiers)},
        attempt=attempt, parent_decision_id=retry.parent_decision_id if retry is not None else None,
        excluded_executors=list(retry.excluded) if retry is not None else [],
        deadline=deadline, time_left_ms=time_left,
        executor_circuits={t.executor: s for i, t in enumerate(cls.tiers) if (s := w.circuit_state(i)) is not None},
        decision_latency_ms=(time.perf_counter() - t0) * 1000.0,
    )
    return Plan(
        decision=decision,
        amount=amount,
        enforce=mode == "enforce",
        charges=tuple(ScopeCharge(s.key, s.limit, s.expire_at_ms) for s in w.scopes) if amount else (),
        baseline_key=bkey,
        raw_complexity=cx.raw,
        complexity=cls.complexity,
        trend_flags=tuple((s.key, s.trend_now, s.expire_at_ms) for s in w.scopes if s.trend_now != s.state.trend),
        expires_at_ms=int(now.timestamp() * 1000) + int(reservation_ttl_s * 1000),
        update_baseline=retry is None,
    )


def _outcome(asked: int | None, assigned: int | None) -> Outcome:
    if assigned is None:
        return Outcome.REJECTED
    if asked is None or assigned == asked:
        return Outcome.ROUTED
    return Outcome.DOWNGRADED if assigned < asked else Outcome.REROUTED


def reject(decision: Decision, trigger: Trigger, reason: str) -> Decision:
    """The same decision as a rejection: nothing routed, nothing reserved, and why."""
    return decision.model_copy(update={
        "outcome": Outcome.REJECTED, "assigned_tier": None, "enforced_tier": None, "executor": None,
        "executor_p95_ms": None, "estimate_assigned": Decimal(0), "reserved": Decimal(0),
        "triggers": [*decision.triggers, trigger], "rationale": f"{decision.rationale}; {reason}",
        "budgets": [b.model_copy(update={"committed_after": b.spent + b.reserved_before}) for b in decision.budgets],
    })


def conflict(planned: Decision, stored: Decision) -> Decision:
    """The refusal of a task whose id was already decided (``stored``) for other content.

    It gets an id of its own (the first decision keeps its id, money and route) and reserves
    nothing; the input is dead-lettered by the caller, never routed.
    """
    refused = reject(planned, Trigger.CONFLICT, (
        f"task id {planned.task_id!r} was already decided as {stored.decision_id} for other content "
        f"(hash {(stored.task_hash or 'unknown')[:12]}, this one {(planned.task_hash or '')[:12]}): refused"))
    return refused.model_copy(update={
        "decision_id": conflict_decision_id(planned.service, planned.task_id, planned.task_hash or ""),
    })


def fallback(task: Task, policy: Policy, now: datetime, *, mode: Mode = "enforce", arm: Arm = "stable",
             fail_open: bool, reason: str) -> Decision:
    """A decision made without the ledger (Redis unreachable), recorded as such.

    A service in shadow or off mode is routed as asked, as always: an outage must not change
    what an adopter that enforces nothing sees. Enforced, fail closed rejects; fail open routes
    to the cheapest tier that meets the SLA, unreserved: nothing is held against the budgets,
    and the actual cost is charged when it is reported.
    """
    base = decide(task, policy, Snapshot(), now, mode="off").decision  # classification only
    unavailable = f"ledger unavailable ({reason})"
    classified = f"complexity {base.complexity_score:.3f} maps to {base.asked_tier} ({base.rule_id})"
    if mode == "off":
        return base.model_copy(update={
            "canary_arm": arm, "triggers": [Trigger.FLAG, Trigger.LEDGER_UNAVAILABLE],
            "rationale": f"{base.rationale}; {unavailable}: nothing recorded in the ledger"})
    base = base.model_copy(update={"mode": mode, "canary_arm": arm, "triggers": [], "budgets": [],
                                   "rationale": classified})
    if mode == "shadow":
        return base.model_copy(update={
            "enforced_tier": None, "triggers": [Trigger.LEDGER_UNAVAILABLE, Trigger.SHADOW],
            "rationale": f"{classified}; {unavailable}: nothing enforced; shadow mode: routed as asked"})
    cls = policy.classes[task.workload]
    cheapest = next((i for i, t in enumerate(cls.tiers) if t.p95_ms <= task.effective_sla_ms), None)
    if not fail_open or cheapest is None:
        why = "fail-closed" if not fail_open else "fail-open, but no tier meets the SLA"
        return reject(base, Trigger.LEDGER_UNAVAILABLE, f"{unavailable}; {why}: rejected")
    tier = cls.tiers[cheapest]
    return base.model_copy(update={
        "assigned_tier": tier.name, "enforced_tier": tier.name, "executor": tier.executor,
        "executor_p95_ms": tier.p95_ms, "outcome": _outcome(cls.index(base.asked_tier or ""), cheapest),
        "estimate_assigned": estimate(tier, task), "reserved": Decimal(0), "triggers": [Trigger.LEDGER_UNAVAILABLE],
        "rationale": f"{classified}; {unavailable}; fail-open: cheapest tier meeting "
                     f"the SLA, {tier.name}, unreserved (charged when its actual cost is reported)",
    })


def apply_plan(snap: Snapshot, plan: Plan) -> None:
    """Replay a plan's commit on ``snap`` (as the ledger's Lua does) so later tasks see it."""
    for key, flag, _ in plan.trend_flags:
        s = snap.scopes.get(key, ScopeState())
        snap.scopes[key] = ScopeState(s.spent, s.reserved, flag)
    for c in plan.charges:
        s = snap.scopes.get(c.key, ScopeState())
        snap.scopes[c.key] = ScopeState(s.spent, s.reserved + plan.amount, s.trend)
    if plan.update_baseline:
        base = snap.baselines.get(plan.baseline_key, Baseline())
        snap.baselines[plan.baseline_key] = update_baseline(base, plan.raw_complexity, plan.complexity)


def invalid(raw: Mapping[str, Any], error: str, policy: Policy, now: datetime) -> Decision:
    """The rejection recorded for a task that failed validation but whose task id is known."""
    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and value else None

    workload = text("workload")
    service = text("service") or "unknown"
    return Decision(
        decision_id=invalid_decision_id(service, str(raw["task_id"])),
        task_id=str(raw["task_id"]), service=service,
        workload=WorkloadClass(workload) if workload in {w.value for w in WorkloadClass} else None,
        task_type=text("task_type") or "default", tenant=text("tenant"), outcome=Outcome.REJECTED,
        mode="enforce", canary_arm="stable", policy_version=policy.version, policy_name=policy.name,
        rule_id="validation", complexity_score=0.0, complexity_raw=0.0, complexity_inputs={},
        baseline_mean=0.0, baseline_std=0.0, baseline_n=0, requested_tier=text("requested_tier"),
        asked_tier=None, enforced_tier=None, assigned_tier=None, executor=None, triggers=[Trigger.INVALID],
        rationale=error, currency=policy.currency, estimate_asked=Decimal(0), estimate_assigned=Decimal(0),
        reserved=Decimal(0), budgets=[], sla_ms=0.0, executor_p95_ms=None, engine_version=__version__,
        decided_at=now, decision_latency_ms=0.0,
    )
