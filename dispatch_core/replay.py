"""What-if: replay recorded decisions under another policy version before rolling it out.

Every decision event carries what the engine needs to decide again (service, class, task
type, tenant, requested tier, the features behind its complexity, SLA, time). Replaying
them in order through the pure engine, against a ledger simulated in memory from empty,
shows what the candidate policy would have assigned and what it would have cost, side by
side with what actually happened. Nothing is written anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dispatch_core.engine import Snapshot, apply_plan, decide
from dispatch_core.policy import Policy
from dispatch_core.task import Task


@dataclass
class ReplayReport:
    """Recorded vs replayed, over the same decisions."""

    policy_version: str
    decisions: int = 0
    skipped: int = 0  # invalid inputs: nothing to replay
    changed: int = 0
    recorded_cost: Decimal = Decimal(0)
    replayed_cost: Decimal = Decimal(0)
    recorded_rejected: int = 0
    replayed_rejected: int = 0
    moves: Counter[str] = field(default_factory=Counter)  # "medium->small"
    replayed_triggers: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        saving = self.recorded_cost - self.replayed_cost
        pct = float(saving / self.recorded_cost * 100) if self.recorded_cost else 0.0
        return {
            "policy_version": self.policy_version, "decisions": self.decisions, "skipped": self.skipped,
            "changed": self.changed, "recorded_cost": str(self.recorded_cost),
            "replayed_cost": str(self.replayed_cost), "saving": str(saving), "saving_pct": round(pct, 1),
            "recorded_rejected": self.recorded_rejected, "replayed_rejected": self.replayed_rejected,
            "moves": dict(self.moves.most_common()), "replayed_triggers": dict(self.replayed_triggers.most_common()),
        }


def task_of(event: Mapping[str, Any]) -> Task | None:
    """Rebuild the task a decision event was made for (None for an invalid input)."""
    if event["workload"] is None or "invalid" in event["triggers"]:
        return None
    features = {k: (int(v) if k in ("tokens", "payload_bytes", "depth") else v)
                for k, v in event["complexity_inputs"].items()}
    return Task.model_validate({
        "task_id": event["task_id"], "service": event["service"], "workload": event["workload"],
        "task_type": event["task_type"], "tenant": event["tenant"], "requested_tier": event["requested_tier"],
        "features": features, "sla_ms": event["sla_ms"], "created_at": event["decided_at"],
    })


def replay(events: Iterable[Mapping[str, Any]], policy: Policy) -> ReplayReport:
    """Decide every recorded event again under ``policy``, in decision-time order."""
    report = ReplayReport(policy.version)
    snap = Snapshot()
    for event in sorted(events, key=lambda e: e["decided_at"]):
        task = task_of(event)
        if task is None:
            report.skipped += 1
            continue
        plan = decide(task, policy, snap, event["decided_at"])
        apply_plan(snap, plan)
        new = plan.decision
        report.decisions += 1
        report.recorded_cost += event["estimate_assigned"]
        report.replayed_cost += new.estimate_assigned
        report.recorded_rejected += event["assigned_tier"] is None
        report.replayed_rejected += new.assigned_tier is None
        report.replayed_triggers.update(t.value for t in new.triggers)
        if new.assigned_tier != event["assigned_tier"]:
            report.changed += 1
            report.moves[f"{event['assigned_tier'] or 'reject'}->{new.assigned_tier or 'reject'}"] += 1
    return report
