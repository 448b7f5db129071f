"""Prometheus metrics of the dispatcher worker (served on ``settings.metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from dispatch_core.decision import Decision

DECISIONS = Counter("dispatch_decisions_total", "Routing decisions", ["workload", "tier", "outcome"])
TRIGGERS = Counter("dispatch_triggers_total", "Standard triggers fired, per decision", ["workload", "trigger"])
DECISION_LATENCY = Histogram(
    "dispatch_decision_latency_seconds", "Batch decision latency incl. ledger round trips",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
BUDGET_UTILISATION = Gauge(
    "dispatch_budget_utilisation_ratio", "Committed spend / limit per budget scope", ["budget", "scope"]
)
DLQ = Counter("dispatch_dead_letters_total", "Inputs sent to the dead-letter topic", ["reason"])
SETTLEMENTS = Counter("dispatch_settlements_total", "Settlement events by kind (settled, expired, duplicate...)", ["kind"])
REPEATS = Counter("dispatch_repeated_inputs_total",
                  "Tasks sent again (same id and content) as another record: acknowledged, not routed again")
UNAVAILABLE = Gauge("dispatch_waiting_unavailable", "1 while batches wait for Redis or the broker to come back",
                    ["what"])


def observe(decision: Decision) -> None:
    """Count one decision and update the budgets it saw."""
    labels = {
        "workload": decision.workload.value if decision.workload else "unknown",
        "tier": decision.assigned_tier or "none",
        "outcome": decision.outcome.value,
    }
    DECISIONS.labels(**labels).inc()
    for trigger in decision.triggers:
        TRIGGERS.labels(workload=labels["workload"], trigger=trigger.value).inc()
    DECISION_LATENCY.observe(decision.decision_latency_ms / 1000.0)
    for b in decision.budgets:
        BUDGET_UTILISATION.labels(budget=b.budget_id, scope=b.scope).set(float(b.committed_after / b.limit))
