"""The pure decision engine: task + policy + ledger snapshot -> decision and ledger plan.

No I/O and no clock of its own: the same task, snapshot, policy and ``now`` always give the
same decision. One standard order for every workload class:

    classify -> map to a tier (thresholds, force rules, requested tier)
    -> sla_guard -> load -> budget_soft / trend -> budget_hard -> shadow

The ``Plan`` it returns is what the ledger must commit atomically (reservation, baseline
update, trend flags); ``apply_plan`` replays that commit on a snapshot so a batch of
decisions can be planned ahead of one Redis round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from dispatch_core import keys
from dispatch_core.version import __version__
from dispatch_core.classify import Baseline, score, update_baseline
from dispatch_core.decision import Arm, BudgetState, Decision, Mode, Outcome, Trigger, decision_id_for
from dispatch_core.money import from_micros, quantize, to_micros
from dispatch_core.policy import Budget, ClassPolicy, Policy, Tier
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
    trend_flags: tuple[tuple[str, bool, int], ...]  # (budget key, flag, key expiry ms)
    expires_at_ms: int


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


def _eligible(cls: ClassPolicy, i: int, sla_ms: float) -> bool:
    return cls.tiers[i].p95_ms <= sla_ms


def _step_down(cls: ClassPolicy, cur: int, sla_ms: float, ok=lambda i: True) -> int | None:
    """The next cheaper tier below ``cur`` that meets the SLA (and ``ok``), if any."""
    for i in range(cur - 1, -1, -1):
        if _eligible(cls, i, sla_ms) and ok(i):
            return i
    return None


def _map_tier(policy: Policy, cls: ClassPolicy, task: Task, score_value: float) -> tuple[int, str]:
    thresholds = cls.task_types.get(task.task_type, cls.thresholds)
    source = f"task_types.{task.task_type}" if task.task_type in cls.task_types else "thresholds"
    for i, t in enumerate(thresholds):
        if score_value < t.upto or i == len(thresholds) - 1:
            return cls.index(t.tier) or 0, f"{task.workload.value}.{source}[{i}]"
    raise AssertionError("unreachable: thresholds end at upto 1.0")


def decide(
    task: Task,
    policy: Policy,
    snap: Snapshot,
    now: datetime,
    *,
    mode: Mode = "enforce",
    arm: Arm = "stable",
    reservation_ttl_s: float = 600.0,
) -> Plan:
    """Decide where ``task`` goes under ``policy`` given the ledger ``snap`` at ``now``."""
    t0 = time.perf_counter()
    cls = policy.classes[task.workload]
    sla = task.effective_sla_ms
    bkey = keys.baseline(task.service, task.task_type)
    cx = score(task, cls.complexity, snap.baselines.get(bkey, Baseline()))
    triggers: list[Trigger] = []
    why: list[str] = []

    # 1-2. classify and map to a tier; a force rule wins, then an allowed requested tier.
    mapped, rule_id = _map_tier(policy, cls, task, cx.score)
    why.append(f"complexity {cx.score:.3f} maps to {cls.tiers[mapped].name} ({rule_id})")
    asked: int | None = mapped
    rule = next((r for r in policy.rules if r.matches(task)), None)
    if rule is not None:
        asked, rule_id = cls.index(rule.tier), f"rules.{rule.id}"
        triggers.append(Trigger.POLICY)
        why.append(f"rule {rule.id} forces {rule.tier}")
    elif task.requested_tier is not None:
        req = cls.index(task.requested_tier)
        if req is None:
            asked = None
            triggers.append(Trigger.POLICY)
            why.append(f"requested tier {task.requested_tier!r} is not a {task.workload.value} tier")
        elif cls.honour_requested_tier:
            asked, rule_id = req, f"{task.workload.value}.requested"
            why.append(f"requested tier {task.requested_tier} honoured")
        else:
            why.append(f"requested tier {task.requested_tier} ignored: policy does not honour requests")

    scopes = _scopes(policy, task, snap, now) if mode != "off" else []
    cur = asked

    # 3. enforcement, in the standard order.
    if mode == "off":
        triggers.append(Trigger.FLAG)
        why.append("service adoption flag is off: routed as asked, unmanaged")
    if cur is not None and mode != "off" and not _eligible(cls, cur, sla):
        below = _step_down(cls, cur, sla)
        above = next((i for i in range(cur + 1, len(cls.tiers)) if _eligible(cls, i, sla)), None)
        new = below if below is not None else above
        triggers.append(Trigger.SLA_GUARD)
        if new is None:
            why.append(f"no tier meets the {sla:g} ms SLA")
        else:
            why.append(f"{cls.tiers[cur].name} p95 {cls.tiers[cur].p95_ms:g} ms > SLA {sla:g} ms: {cls.tiers[new].name}")
        cur = new
    if cur is not None and mode != "off" and policy.triggers.load.enabled:
        rep = snap.load.get(cls.tiers[cur].executor)
        lt = policy.triggers.load
        if rep and rep.saturation >= lt.saturation and now - rep.at <= timedelta(seconds=lt.max_age_s):
            new = _step_down(cls, cur, sla, lambda i: _saturation(snap, cls.tiers[i].executor, now, lt) < lt.saturation)
            if new is not None:
                triggers.append(Trigger.LOAD)
                why.append(f"{cls.tiers[cur].executor} saturated ({rep.saturation:.2f}): {cls.tiers[new].name}")
                cur = new
    if cur is not None and scopes:
        soft = [s for s in scopes if s.soft()]
        trend = [s for s in scopes if s.trend_now]
        if soft or trend:
            new = _step_down(cls, cur, sla)
            if soft:
                triggers.append(Trigger.BUDGET_SOFT)
                why.append("past soft threshold: " + ", ".join(f"{s.budget.id}/{s.scope}" for s in soft))
            if trend:
                triggers.append(Trigger.TREND)
                why.append("spend projected over cap: " + ", ".join(f"{s.budget.id}/{s.scope}" for s in trend))
            if new is not None:
                why.append(f"one step down to {cls.tiers[new].name}")
                cur = new
        amounts = [to_micros(estimate(t, task)) for t in cls.tiers]
        if not all(s.fits(amounts[cur]) for s in scopes):
            fit = [i for i in range(cur, -1, -1) if _eligible(cls, i, sla) and all(s.fits(amounts[i]) for s in scopes)]
            triggers.append(Trigger.BUDGET_HARD)
            tight = [f"{s.budget.id}/{s.scope}" for s in scopes if not s.fits(amounts[cur])]
            if fit:
                why.append(f"{cls.tiers[cur].name} would cross the cap of {', '.join(tight)}: {cls.tiers[fit[0]].name}")
                cur = fit[0]
            else:
                why.append(f"no tier meeting the SLA fits under the cap of {', '.join(tight)}")
                cur = None

    enforced = cur
    assigned = enforced
    if mode == "shadow":
        assigned = asked
        triggers.append(Trigger.SHADOW)
        shown = cls.tiers[enforced].name if enforced is not None else "reject"
        why.append(f"shadow mode: enforcement would give {shown}; routed as asked")

    amount = to_micros(estimate(cls.tiers[assigned], task)) if assigned is not None and mode != "off" else 0
    return _plan(
        task, policy, cls, snap, now, scopes, cx, bkey, triggers, why, rule_id,
        mapped, asked, enforced, assigned, amount, mode, arm, reservation_ttl_s, t0,
    )


def _saturation(snap: Snapshot, executor: str, now: datetime, lt) -> float:
    rep = snap.load.get(executor)
    if rep is None or now - rep.at > timedelta(seconds=lt.max_age_s):
        return 0.0
    return rep.saturation


def _outcome(asked: int | None, assigned: int | None) -> Outcome:
    if assigned is None:
        return Outcome.REJECTED
    if asked is None or assigned == asked:
        return Outcome.ROUTED
    return Outcome.DOWNGRADED if assigned < asked else Outcome.REROUTED


def _plan(task, policy, cls, snap, now, scopes, cx, bkey, triggers, why, rule_id,
          mapped, asked, enforced, assigned, amount, mode, arm, ttl_s, t0) -> Plan:  # fmt: skip
    name = lambda i: cls.tiers[i].name if i is not None else None  # noqa: E731
    est_asked = estimate(cls.tiers[asked if asked is not None else mapped], task)
    budgets = [
        BudgetState(
            budget_id=s.budget.id, scope=s.scope, window=s.span.id, window_start=s.span.start,
            window_end=s.span.end, limit=s.budget.limit, soft_pct=s.budget.soft_pct,
            spent=from_micros(s.state.spent), reserved_before=from_micros(s.state.reserved),
            committed_after=from_micros(s.state.committed + amount), projected=from_micros(s.projected),
            trend_active=s.trend_now,
        )
        for s in scopes
    ]
    decision = Decision(
        decision_id=decision_id_for(task.service, task.task_id),
        task_id=task.task_id, service=task.service, workload=task.workload, task_type=task.task_type,
        tenant=task.tenant, outcome=_outcome(asked, assigned), mode=mode, canary_arm=arm,
        policy_version=policy.version, policy_name=policy.name, rule_id=rule_id,
        complexity_score=cx.score, complexity_raw=cx.raw, complexity_inputs=cx.inputs,
        baseline_mean=cx.ref_mean, baseline_std=cx.ref_std, baseline_n=cx.baseline_n,
        requested_tier=task.requested_tier, asked_tier=name(asked), enforced_tier=name(enforced),
        assigned_tier=name(assigned), executor=cls.tiers[assigned].executor if assigned is not None else None,
        triggers=triggers, rationale="; ".join(why), currency=policy.currency,
        estimate_asked=est_asked,
        estimate_assigned=estimate(cls.tiers[assigned], task) if assigned is not None else Decimal(0),
        reserved=from_micros(amount), budgets=budgets, sla_ms=task.effective_sla_ms,
        executor_p95_ms=cls.tiers[assigned].p95_ms if assigned is not None else None,
        engine_version=__version__, decided_at=now,
        decision_latency_ms=(time.perf_counter() - t0) * 1000.0,
    )
    now_ms = int(now.timestamp() * 1000)
    return Plan(
        decision=decision,
        amount=amount,
        enforce=mode == "enforce",
        charges=tuple(ScopeCharge(s.key, s.limit, int(s.span.end.timestamp() * 1000)) for s in scopes) if amount else (),
        baseline_key=bkey,
        raw_complexity=cx.raw,
        trend_flags=tuple(
            (s.key, s.trend_now, int(s.span.end.timestamp() * 1000)) for s in scopes if s.trend_now != s.state.trend
        ),
        expires_at_ms=now_ms + int(ttl_s * 1000),
    )


def apply_plan(snap: Snapshot, plan: Plan, policy: Policy) -> None:
    """Replay a plan's commit on ``snap`` (as the ledger's Lua does) so later tasks see it."""
    for key, flag, _ in plan.trend_flags:
        s = snap.scopes.get(key, ScopeState())
        snap.scopes[key] = ScopeState(s.spent, s.reserved, flag)
    for c in plan.charges:
        s = snap.scopes.get(c.key, ScopeState())
        snap.scopes[c.key] = ScopeState(s.spent, s.reserved + plan.amount, s.trend)
    model = policy.classes[plan.decision.workload].complexity
    base = snap.baselines.get(plan.baseline_key, Baseline())
    snap.baselines[plan.baseline_key] = update_baseline(base, plan.raw_complexity, model)


def invalid(raw: dict[str, object], error: str, policy: Policy, now: datetime) -> Decision:
    """The rejection recorded for a task that failed validation but whose task id is known."""
    def text(key: str, default: str | None) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and value else default

    workload = raw.get("workload")
    return Decision(
        decision_id=decision_id_for(text("service", "unknown"), str(raw["task_id"])),
        task_id=str(raw["task_id"]), service=text("service", "unknown"),
        workload=workload if workload in {w.value for w in WorkloadClass} else None,
        task_type=text("task_type", "default"), tenant=text("tenant", None), outcome=Outcome.REJECTED,
        mode="enforce", canary_arm="stable", policy_version=policy.version, policy_name=policy.name,
        rule_id="validation", complexity_score=0.0, complexity_raw=0.0, complexity_inputs={},
        baseline_mean=0.0, baseline_std=0.0, baseline_n=0, requested_tier=text("requested_tier", None),
        asked_tier=None, enforced_tier=None, assigned_tier=None, executor=None, triggers=[Trigger.INVALID],
        rationale=error, currency=policy.currency, estimate_asked=Decimal(0), estimate_assigned=Decimal(0),
        reserved=Decimal(0), budgets=[], sla_ms=0.0, executor_p95_ms=None, engine_version=__version__,
        decided_at=now, decision_latency_ms=0.0,
    )
