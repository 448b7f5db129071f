"""What-if: replay recorded decisions under a policy, before rolling it out. Nothing is written.

Two modes, each deterministic for a given set of audit events (whatever order they are read in):

``per-decision``
    Each decision is decided again from the state its event recorded: the budget scopes it
    saw (spent, reserved, trend), the complexity baseline, the executor load, its mode and
    canary arm, and its time. Replaying the policy that made the decisions reproduces every
    one of them (tier, outcome, triggers, estimate). Under a candidate it answers: "given the
    world exactly as it was, what would the candidate have decided, task by task?" A budget
    the recording did not have is seen empty (``unrecorded_scopes`` counts those decisions).

``simulation``
    The decisions run in the ledger's commit order (``sequence``; decisions made without
    Redis follow, by time and id), and the candidate's own reservations are carried forward:
    budget scopes start from the state the first recorded decision on them saw, and each
    recorded settlement is applied at its time (``recorded_at``) to the candidate's own
    reservation for that decision. Baselines and executor load are taken as recorded. It
    answers: "had the candidate been live, how would its own spend have moved its later
    decisions (soft, trend and hard caps)?"

A recorded decision that the dispatcher itself overrode (a reused task id, an input that was
not a valid task, a pinned policy version missing from Redis) is not the policy's to decide
again and is counted as skipped. A cap lost to a concurrent worker on the last round is part
of the world: ``per-decision`` applies it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from dispatch_core import keys
from dispatch_core.circuit import CircuitView
from dispatch_core.classify import Baseline
from dispatch_core.decision import Arm, Decision, Mode, Trigger
from dispatch_core.dispatcher import CONTENTION
from dispatch_core.engine import (
    LoadReport,
    Plan,
    Retry,
    ScopeState,
    Snapshot,
    apply_plan,
    decide,
    fallback,
    ledger_keys,
    reject,
)
from dispatch_core.money import to_micros
from dispatch_core.policy import Policy
from dispatch_core.task import Task

ReplayMode = Literal["per-decision", "simulation"]
MODES: tuple[ReplayMode, ...] = ("per-decision", "simulation")

Event = Mapping[str, Any]


@dataclass
class ReplayReport:
    """Recorded vs replayed, over the same decisions, in one mode."""

    policy_version: str
    mode: ReplayMode
    decisions: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why: invalid, conflict, policy_missing
    agreed: int = 0  # same tier, outcome, triggers and estimate as recorded
    changed: int = 0  # another tier
    recorded_cost: Decimal = Decimal(0)
    replayed_cost: Decimal = Decimal(0)
    recorded_rejected: int = 0
    replayed_rejected: int = 0
    moves: Counter[str] = field(default_factory=Counter)  # "medium->small"
    replayed_triggers: Counter[str] = field(default_factory=Counter)
    other_versions: int = 0  # decisions recorded under another policy version than the one replayed
    unrecorded_scopes: int = 0  # per-decision: decisions under a budget scope their event did not record (seen empty)
    disagreements: list[str] = field(default_factory=list)  # decision ids, in replay order

    def add(self, event: Event, new: Decision) -> None:
        self.decisions += 1
        self.other_versions += event["policy_version"] != self.policy_version
        self.recorded_cost += event["estimate_assigned"]
        self.replayed_cost += new.estimate_assigned
        self.recorded_rejected += event["assigned_tier"] is None
        self.replayed_rejected += new.assigned_tier is None
        self.replayed_triggers.update(t.value for t in new.triggers)
        if new.assigned_tier != event["assigned_tier"]:
            self.changed += 1
            self.moves[f"{event['assigned_tier'] or 'reject'}->{new.assigned_tier or 'reject'}"] += 1
        if verdict(event) == verdict(new.model_dump()):
            self.agreed += 1
        else:
            self.disagreements.append(event["decision_id"])

    def as_dict(self) -> dict[str, Any]:
        saving = self.recorded_cost - self.replayed_cost
        pct = float(saving / self.recorded_cost * 100) if self.recorded_cost else 0.0
        return {
            "mode": self.mode, "policy_version": self.policy_version, "decisions": self.decisions,
            "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(sorted(self.skipped.items())),
            "agreed": self.agreed, "changed": self.changed, "other_versions": self.other_versions,
            "unrecorded_scopes": self.unrecorded_scopes,
            "recorded_cost": str(self.recorded_cost), "replayed_cost": str(self.replayed_cost),
            "saving": str(saving), "saving_pct": round(pct, 1),
            "recorded_rejected": self.recorded_rejected, "replayed_rejected": self.replayed_rejected,
            "moves": dict(sorted(self.moves.items(), key=lambda kv: (-kv[1], kv[0]))),
            "replayed_triggers": dict(sorted(self.replayed_triggers.items(), key=lambda kv: (-kv[1], kv[0]))),
            "disagreements": self.disagreements[:20],
        }


def verdict(d: Event) -> tuple[Any, ...]:
    """What a replay must reproduce of a decision: tier, outcome, triggers, estimate, reservation."""
    return (d["assigned_tier"], d["enforced_tier"], str(d["outcome"]), [str(t) for t in d["triggers"]],
            Decimal(d["estimate_assigned"]), Decimal(d["reserved"]))


# --- the recording: de-duplicated events in one total order ------------------------------------


@dataclass(frozen=True)
class Recording:
    """Decision events in the ledger's commit order, and settlement events in time order."""

    decisions: list[Event]
    settlements: list[Event]


def order_key(event: Event) -> tuple[Any, ...]:
    """Commit order first; decisions made without Redis (no sequence) after, by time then id."""
    if event.get("sequence") is not None:
        return (0, event["sequence"], event["decided_at"], event["decision_id"])
    return (1, 0, event["decided_at"], event["decision_id"])


def recording(events: Iterable[Event]) -> Recording:
    """Sort and de-duplicate audit events, independently of the order they were read in.

    A decision repeated on the stream (a redelivered task) is the same decision; a settlement is
    kept once per (decision, kind), its earliest record (a redelivered report is written again).
    """
    decisions: dict[str, Event] = {}
    settlements: dict[tuple[str, str], Event] = {}
    for e in events:
        if "decided_at" in e:
            decisions[e["decision_id"]] = min(e, decisions.get(e["decision_id"], e), key=order_key)
        elif "kind" in e:  # a settlement (circuit changes are neither: not replayed)
            k = (e["decision_id"], str(e["kind"]))
            settlements[k] = min(e, settlements.get(k, e), key=lambda s: (s["recorded_at"], s["report_id"] or ""))
    return Recording(sorted(decisions.values(), key=order_key),
                     sorted(settlements.values(), key=lambda s: (s["recorded_at"], s["decision_id"], str(s["kind"]))))


def task_of(event: Event) -> Task | None:
    """Rebuild the task a decision event was made for (None for an invalid input)."""
    if event["workload"] is None or Trigger.INVALID in event["triggers"]:
        return None
    features = {k: (int(v) if k in ("tokens", "payload_bytes", "depth") else v)
                for k, v in event["complexity_inputs"].items()}
    deadline = event.get("deadline")  # created_at + SLA, recorded since schema v4
    created = deadline - timedelta(milliseconds=event["sla_ms"]) if deadline else event["decided_at"]
    return Task.model_validate({
        "task_id": event["task_id"], "service": event["service"], "workload": event["workload"],
        "task_type": event["task_type"], "tenant": event["tenant"], "requested_tier": event["requested_tier"],
        "features": features, "sla_ms": event["sla_ms"], "created_at": created,
    })


def retry_of(event: Event) -> Retry | None:
    """A fallback's retry context, as its event recorded it (None for a task's first decision)."""
    if (event.get("attempt") or 1) < 2:
        return None
    return Retry(attempt=event["attempt"], parent_decision_id=event["parent_decision_id"],
                 failed_tier=event["asked_tier"], excluded=tuple(event["excluded_executors"]),
                 deadline=event["deadline"])


def skip_reason(event: Event) -> str | None:
    """Why a recorded decision is not the policy's to decide again, if it is not."""
    triggers = [str(t) for t in event["triggers"]]
    if Trigger.INVALID in triggers or event["workload"] is None:
        return "invalid"
    if Trigger.CONFLICT in triggers:
        return "conflict"
    if triggers and triggers[-1] == Trigger.POLICY and "rejected: " in event["rationale"].rsplit("; ", 1)[-1]:
        return "policy_missing"
    return None


def recorded_snapshot(event: Event) -> Snapshot:
    """The ledger state the decision's event says the engine saw: budgets, baseline, load."""
    snap = Snapshot()
    for b in event["budgets"]:
        key = keys.budget(b["budget_id"], b["scope"], b["window"])
        # trend_active is the flag after hysteresis; stored as the prior flag it gives the same result
        snap.scopes[key] = ScopeState(to_micros(b["spent"]), to_micros(b["reserved_before"]), b["trend_active"])
    snap.baselines[keys.baseline(event["service"], event["task_type"])] = Baseline(
        event["baseline_n"], event["baseline_mean"], event["baseline_std"] ** 2)
    for executor, saturation in (event.get("executor_load") or {}).items():
        snap.load[executor] = LoadReport(saturation, event["decided_at"])  # as seen: fresh, or 0 when stale
    for executor, state in (event.get("executor_circuits") or {}).items():
        snap.circuits[executor] = CircuitView(state, event["decided_at"])
    return snap


def _decide(event: Event, task: Task, policy: Policy, snap: Snapshot, enforce: bool) -> Plan | Decision:
    """Decide ``task`` again as the recorded decision was made: with the ledger, or without it."""
    now: datetime = event["decided_at"]
    mode: Mode = "enforce" if enforce else event["mode"]
    arm: Arm = event["canary_arm"]
    triggers = [str(t) for t in event["triggers"]]
    if Trigger.LEDGER_UNAVAILABLE in triggers:
        return fallback(task, policy, now, mode=mode, arm=arm, fail_open="fail-open" in event["rationale"],
                        reason="as recorded")
    plan = decide(task, policy, snap, now, mode=mode, arm=arm, retry=retry_of(event))
    if event["rationale"].endswith(CONTENTION) and plan.amount and plan.enforce:
        return replace(plan, decision=reject(plan.decision, Trigger.BUDGET_HARD, CONTENTION), amount=0, charges=())
    return plan


def per_decision(rec: Recording, policy: Policy, enforce: bool = False) -> ReplayReport:
    """Each decision again from the state its event recorded (``enforce``: every service enforced)."""
    report = ReplayReport(policy.version, "per-decision")
    for event in rec.decisions:
        task = task_of(event)
        why = skip_reason(event)
        if task is None or why is not None:
            report.skipped[why or "invalid"] += 1
            continue
        snap = recorded_snapshot(event)
        out = _decide(event, task, policy, snap, enforce)
        new = out.decision if isinstance(out, Plan) else out
        report.unrecorded_scopes += any(keys.budget(b.budget_id, b.scope, b.window) not in snap.scopes
                                        for b in new.budgets)
        report.add(event, new)
    return report


@dataclass
class _Held:
    """The candidate's reservation for one decision: what it holds, where, and its estimate."""

    amount: int
    scopes: tuple[str, ...]
    estimate: Decimal
    recorded_estimate: Decimal
    same_tier: bool


class _Simulation:
    """The candidate's own budget state, moved by its reservations and the recorded settlements."""

    def __init__(self) -> None:
        self.scopes: dict[str, ScopeState] = {}
        self.held: dict[str, _Held] = {}

    def snapshot(self, event: Event, policy: Policy, task: Task) -> Snapshot:
        """Baseline and load as recorded; the candidate's own state of the scopes it will read."""
        seen = recorded_snapshot(event)
        for key, state in seen.scopes.items():  # a scope's first sight: what it held before the recording
            self.scopes.setdefault(key, state)
        needed = ledger_keys(policy, task, event["decided_at"])[0]
        return Snapshot(scopes={k: self.scopes[k] for k in needed if k in self.scopes},
                        baselines=seen.baselines, load=seen.load)

    def commit(self, event: Event, out: Plan | Decision, snap: Snapshot, policy: Policy, task: Task) -> None:
        new = out.decision if isinstance(out, Plan) else out
        if isinstance(out, Plan):
            apply_plan(snap, out)
            for key in {*(c.key for c in out.charges), *(k for k, _, _ in out.trend_flags)}:
                self.scopes[key] = snap.scopes[key]
            charged: tuple[str, ...] = tuple(c.key for c in out.charges)
        else:  # made without the ledger: fail-open spend is charged to its scopes when reported
            routed = new.routed and new.mode == "enforce"
            charged = tuple(ledger_keys(policy, task, event["decided_at"])[0]) if routed else ()
        amount = out.amount if isinstance(out, Plan) else 0
        self.held[event["decision_id"]] = _Held(amount, charged, new.estimate_assigned,
                                                Decimal(event["estimate_assigned"]),
                                                new.assigned_tier == event["assigned_tier"])

    def settle(self, s: Event) -> None:
        """Apply one recorded settlement to the candidate's reservation for the same decision."""
        held = self.held.get(s["decision_id"])
        kind = str(s["kind"])
        if held is None or kind in ("duplicate", "skipped"):
            return
        if kind in ("expired", "released"):
            actual = held.amount if kind == "expired" else 0  # expired: the estimate is presumed spent
        else:
            actual = to_micros(self._actual(held, Decimal(s["actual"] or 0)))
        for key in held.scopes:
            st = self.scopes.get(key, ScopeState())
            if kind == "settled_late":  # the presumed estimate is replaced by the actual cost
                self.scopes[key] = ScopeState(st.spent - held.amount + actual, st.reserved, st.trend)
            elif kind == "unreserved" or held.amount == 0:
                self.scopes[key] = ScopeState(st.spent + actual, st.reserved, st.trend)
            else:
                self.scopes[key] = ScopeState(st.spent + actual, st.reserved - held.amount, st.trend)

    @staticmethod
    def _actual(held: _Held, actual: Decimal) -> Decimal:
        """What the candidate's route would have cost: as recorded on the same tier, else scaled."""
        if held.same_tier:
            return actual
        if held.estimate == 0 or held.recorded_estimate == 0:
            return held.estimate
        return (held.estimate * actual / held.recorded_estimate).quantize(Decimal("0.000001"))


def simulation(rec: Recording, policy: Policy, enforce: bool = False) -> ReplayReport:
    """The decisions in commit order, the candidate's own spend carried forward, settlements in time."""
    report = ReplayReport(policy.version, "simulation")
    sim = _Simulation()
    pending = list(rec.settlements)
    at = 0  # next settlement to apply
    held_back: dict[str, list[Event]] = {}  # settlements whose decision comes later in the order
    clock: datetime | None = None
    for event in rec.decisions:
        clock = event["decided_at"] if clock is None else max(clock, event["decided_at"])
        while at < len(pending) and pending[at]["recorded_at"] <= clock:
            s = pending[at]
            if s["decision_id"] in sim.held:
                sim.settle(s)
            else:
                held_back.setdefault(s["decision_id"], []).append(s)
            at += 1
        task = task_of(event)
        why = skip_reason(event)
        if task is None or why is not None:
            report.skipped[why or "invalid"] += 1
            continue
        snap = sim.snapshot(event, policy, task)
        out = _decide(event, task, policy, snap, enforce)
        sim.commit(event, out, snap, policy, task)
        report.add(event, out.decision if isinstance(out, Plan) else out)
        for s in held_back.pop(event["decision_id"], []):
            sim.settle(s)
    return report


def replay(events: Iterable[Event], policy: Policy, mode: ReplayMode = "simulation", *,
           enforce: bool = False) -> ReplayReport:
    """Decide every recorded decision again under ``policy`` in ``mode``.

    Each decision keeps its recorded rollout mode (enforce, shadow, off) unless ``enforce``,
    which replays every one as enforced: what the candidate would do where it is not enforced yet.
    """
    rec = recording(events)
    return (per_decision if mode == "per-decision" else simulation)(rec, policy, enforce)


def compare(events: Iterable[Event], policy: Policy, *, enforce: bool = False) -> dict[ReplayMode, ReplayReport]:
    """Both modes over the same recording."""
    rec = recording(events)
    return {m: (per_decision if m == "per-decision" else simulation)(rec, policy, enforce) for m in MODES}
