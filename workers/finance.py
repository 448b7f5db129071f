"""The finance side: read the audit topic with nothing but the Avro schemas, and summarise it.

Decisions and settlements are joined by decision id. The stream is read with
``isolation.level=read_committed``: the worker writes each batch in a Kafka transaction, so
this sees every event once. Events are still de-duplicated by (decision id, event kind), as any
consumer should: in at-least-once mode a redelivered task or report repeats its event.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas import DECISION, SETTLEMENT, decode
from streams.consume import to_end, topic_reader

from .finance_rules import ACTUAL_KINDS, Attempt, CostRow, task_costs


@dataclass
class AuditLog:
    """Audit events read so far, de-duplicated."""

    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    settlements: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    raw_events: int = 0

    def add(self, data: bytes) -> None:
        schema, record = decode(data)
        self.raw_events += 1
        if schema is DECISION:
            self.decisions.setdefault(record["decision_id"], record)
        elif schema is SETTLEMENT:
            self.settlements.setdefault((record["decision_id"], record["kind"]), record)

    def settled(self) -> dict[str, dict[str, Any]]:
        return {d: r for (d, kind), r in self.settlements.items() if kind in ("settled", "settled_late")}


def attempts(log: AuditLog) -> list[Attempt]:
    """Every decision read, with the first settlement that carries an actual cost (``ACTUAL_KINDS`` order)."""
    out = []
    for did, d in log.decisions.items():
        s = next((log.settlements[(did, k)] for k in ACTUAL_KINDS
                  if (did, k) in log.settlements and log.settlements[(did, k)]["actual"] is not None), {})
        out.append(Attempt(did, d.get("parent_decision_id"), d.get("attempt") or 1, d["service"], d["assigned_tier"],
                           d["estimate_assigned"], d.get("estimate_untiered"), d.get("estimate_complexity"),
                           s.get("actual"), s.get("outcome")))
    return out


def cost_rows(log: AuditLog) -> list[CostRow]:
    """One row per task (a first decision and its fallbacks) for ``finance_rules.savings``."""
    return task_costs(attempts(log))


async def _from_beginning(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A started consumer of every partition of ``topic`` from its first offset (no group, no commits)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    return consumer


async def read_audit(bootstrap: str, topic: str, log: AuditLog, stop: asyncio.Event, poll_ms: int = 200) -> None:
    """Follow the audit topic from its beginning into ``log`` until ``stop`` is set."""
    consumer = await _from_beginning(bootstrap, topic)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=poll_ms)
            for msgs in batches.values():
                for m in msgs:
                    log.add(m.value)
    finally:
        await consumer.stop()


async def read_audit_to_end(bootstrap: str, topic: str, timeout_s: float = 10.0) -> AuditLog:
    """Everything on the audit topic up to its current end (for reports and replays)."""
    log = AuditLog()
    async with topic_reader(bootstrap, topic, timeout_s=timeout_s) as consumer:
        async for m in to_end(consumer):
            log.add(m.value)
    return log


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarise(log: AuditLog) -> dict[str, Any]:
    """What finance and operators want to see of a run, from the audit stream alone."""
    decisions = list(log.decisions.values())
    by_tier: Counter[str] = Counter()
    by_trigger: Counter[str] = Counter()
    by_outcome: Counter[str] = Counter()
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    shadow_would: Counter[str] = Counter()
    for d in decisions:
        tier = d["assigned_tier"] or "rejected"
        by_tier[tier] += 1
        by_outcome[d["outcome"]] += 1
        per_class[d["workload"] or "invalid"][tier] += 1
        for t in d["triggers"]:
            by_trigger[t] += 1
        if d["mode"] == "shadow" and d["enforced_tier"] != d["assigned_tier"]:
            shadow_would[f"{d['assigned_tier']}->{d['enforced_tier'] or 'reject'}"] += 1
    settled = log.settled()
    dispatch_ms = [s["dispatch_ms"] for s in settled.values() if s["dispatch_ms"] is not None]
    est = sum((log.decisions[k]["reserved"] for k in settled if k in log.decisions), Decimal(0))
    actual = sum((s["actual"] for s in settled.values()), Decimal(0))
    lat = [d["decision_latency_ms"] for d in decisions if "validation" != d["rule_id"]]
    return {
        "decisions": len(decisions),
        "routed": sum(1 for d in decisions if d["assigned_tier"]),
        "rejected": by_outcome["rejected"],
        "audit_events": log.raw_events,
        "by_outcome": dict(by_outcome),
        "by_tier": dict(by_tier),
        "by_class": {k: dict(v) for k, v in per_class.items()},
        "by_trigger": dict(by_trigger),
        "shadow_would_change": dict(shadow_would),
        "settled": len(settled),
        "expired": sum(1 for (_, kind) in log.settlements if kind in ("expired", "released")),
        "duplicate_reports": sum(1 for (_, kind) in log.settlements if kind == "duplicate"),
        "skipped_duplicates": sum(1 for (_, kind) in log.settlements if kind == "skipped"),
        "estimated_settled": str(est),
        "actual_settled": str(actual),
        "decision_p50_ms": round(pct(lat, 0.5), 3),
        "decision_p95_ms": round(pct(lat, 0.95), 3),
        "decision_p99_ms": round(pct(lat, 0.99), 3),
        "e2e_p50_ms": round(pct(dispatch_ms, 0.5), 1),
        "e2e_p95_ms": round(pct(dispatch_ms, 0.95), 1),
        "e2e_mean_ms": round(statistics.fmean(dispatch_ms), 1) if dispatch_ms else 0.0,
    }
