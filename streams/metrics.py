"""Prometheus metrics of the dispatcher worker (served on ``settings.metrics_port``)."""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from dispatch_core.decision import BudgetState, Decision

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
EXECUTOR_OUTCOMES = Counter("dispatch_executor_outcomes_total",
                            "Executor reports by outcome (succeeded, failed, expired, duplicate) and error class",
                            ["executor", "outcome", "error_class"])
FALLBACKS = Counter("dispatch_fallbacks_total", "Fallbacks decided after a retryable failure, by the failed "
                    "executor and the fallback's outcome (rejected: chain exhausted or nothing fits)",
                    ["executor", "outcome"])
CIRCUIT_STATE = Gauge("dispatch_circuit_state", "Circuit breaker per executor: 0 closed, 1 half-open, 2 open",
                      ["executor"])
CIRCUIT_CHANGES = Counter("dispatch_circuit_changes_total", "Circuit breaker changes written to the audit stream",
                          ["executor", "to_state"])
CIRCUIT_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
UNAVAILABLE = Gauge("dispatch_waiting_unavailable", "1 while batches wait for Redis or the broker to come back",
                    ["what"])


def observe(decisions: Iterable[Decision]) -> None:
    """Count a batch's decisions and update the budgets they saw.

    Per batch, not per decision: a labelled child is looked up once per label set, and a
    budget's gauge is set once, to the last decision's view of it (the batch's latest). The
    latency histogram has no labels: it is observed per decision.
    """
    counts: Counter_[tuple[str, str, str]] = Counter_()
    triggers: Counter_[tuple[str, str]] = Counter_()
    latest: dict[tuple[str, str], BudgetState] = {}
    for d in decisions:
        workload = d.workload.value if d.workload else "unknown"
        counts[(workload, d.assigned_tier or "none", d.outcome.value)] += 1
        for trigger in d.triggers:
            triggers[(workload, trigger.value)] += 1
        DECISION_LATENCY.observe(d.decision_latency_ms / 1000.0)
        for b in d.budgets:
            latest[(b.budget_id, b.scope)] = b
    for (workload, tier, outcome), n in counts.items():
        DECISIONS.labels(workload=workload, tier=tier, outcome=outcome).inc(n)
    for (workload, fired), n in triggers.items():
        TRIGGERS.labels(workload=workload, trigger=fired).inc(n)
    for (budget, scope), b in latest.items():
        BUDGET_UTILISATION.labels(budget=budget, scope=scope).set(float(b.committed_after / b.limit))
