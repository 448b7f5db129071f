"""``dispatch finance report`` from the finance store: SQL over DuckDB, rules from ``finance_rules``.

Every section is computed over the decisions decided in ``[since, until)`` (all when unset) and
their settlements. A decision's *cost* is its actual cost when an executor reported one (settled,
settled late, or unreserved), otherwise its assigned estimate (expired or not yet settled), and
0 when it was not routed (rejected). Savings are per task: a task is in the period of its first
decision and brings all its fallbacks, wherever they were decided (``finance_rules.task_costs``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import duckdb

from .finance_rules import (ACTUAL_KINDS, EXTRA_COST_RULE, SLA_RISK_MARGIN, Attempt, extra_cost, savings, sunset,
                            task_costs)
from .finance_store import dict_rows

_KINDS = ", ".join(f"'{k}'" for k in ACTUAL_KINDS)

#: ``[since, until)`` on one time column; binds since, since, until, until.
IN_PERIOD = """(CAST(? AS TIMESTAMPTZ) IS NULL OR {col} >= CAST(? AS TIMESTAMPTZ))
  AND (CAST(? AS TIMESTAMPTZ) IS NULL OR {col} < CAST(? AS TIMESTAMPTZ))"""

#: One row per decision (any time), with its settlement joined and its cost for the report; the
#: settlement's ``report_outcome`` (succeeded, failed, expired), ``error_class`` and ``error`` too.
COSTED = f"""
SELECT d.*, s.actual, s.settled_kind, s.dispatch_ms, s.run_ms, s.report_outcome, s.error_class, s.error,
       s.actual IS NOT NULL AS is_settled,
       CASE WHEN d.assigned_tier IS NULL THEN 0::DECIMAL(18,6)
            ELSE coalesce(s.actual, d.estimate_assigned) END AS cost
FROM decisions d LEFT JOIN (
    SELECT decision_id,
           arg_min(actual, list_position([{_KINDS}], kind)) AS actual,
           arg_min(kind, list_position([{_KINDS}], kind)) AS settled_kind,
           arg_min(dispatch_ms, list_position([{_KINDS}], kind)) AS dispatch_ms,
           arg_min(run_ms, list_position([{_KINDS}], kind)) AS run_ms,
           arg_min(outcome, list_position([{_KINDS}], kind)) AS report_outcome,
           arg_min(error_class, list_position([{_KINDS}], kind)) AS error_class,
           arg_min(error, list_position([{_KINDS}], kind)) AS error
    FROM settlements WHERE kind IN ({_KINDS}) AND actual IS NOT NULL GROUP BY decision_id
) s USING (decision_id)
"""

#: The decisions decided in the period (``COSTED`` rows).
TASKS = f"SELECT * FROM costed WHERE {IN_PERIOD.format(col='decided_at')}"


class Period:
    """The report's ``[since, until)``, bound into every query as a ``tasks`` CTE (and ``costed``: all decisions)."""

    def __init__(self, db: duckdb.DuckDBPyConnection, since: dt.datetime | None, until: dt.datetime | None):
        self.db, self.since, self.until = db, since, until

    @property
    def bounds(self) -> list[dt.datetime | None]:
        """The parameters of one ``IN_PERIOD``."""
        return [self.since, self.since, self.until, self.until]

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """``sql`` may read ``tasks`` and ``costed``; rows as dicts."""
        return dict_rows(self.db.execute(f"WITH costed AS ({COSTED}), tasks AS ({TASKS}) {sql}",
                                         [*self.bounds, *params]))


def _plain(value: Any) -> Any:
    """JSON-ready: money as exact text, times as ISO 8601, floats rounded."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


SPEND = """
SELECT {key} AS key, count(*) AS tasks, count(assigned_tier) AS routed, sum(cost) AS cost,
       sum(estimate_assigned) FILTER (WHERE assigned_tier IS NOT NULL) AS estimated,
       count(*) FILTER (WHERE is_settled) AS settled,
       coalesce(sum(estimate_assigned) FILTER (WHERE is_settled), 0) AS estimated_settled,
       coalesce(sum(actual) FILTER (WHERE is_settled), 0) AS actual_settled
FROM tasks GROUP BY ALL ORDER BY key NULLS LAST
"""


def spend(p: Period) -> dict[str, Any]:
    """Spend by service, tenant, class, assigned tier, and UTC hour and day of the decision."""
    keys = {"service": "service", "tenant": "coalesce(tenant, '(none)')", "class": "coalesce(workload, '(invalid)')",
            "tier": "coalesce(assigned_tier, '(rejected)')",
            "hour": "strftime(date_trunc('hour', decided_at AT TIME ZONE 'UTC'), '%Y-%m-%dT%H:00Z')",
            "day": "strftime(date_trunc('day', decided_at AT TIME ZONE 'UTC'), '%Y-%m-%d')"}
    return {name: {r.pop("key"): r for r in p.rows(SPEND.format(key=expr))} for name, expr in keys.items()}


def services(p: Period) -> dict[str, Any]:
    """Per service: decisions, outcomes, cost, and estimated vs actual cost of its settled tasks."""
    rows = p.rows("""
        SELECT service, count(*) AS decisions, count(assigned_tier) AS routed,
               count(*) FILTER (WHERE outcome = 'downgraded') AS downgraded,
               count(*) FILTER (WHERE outcome = 'rejected') AS rejected, sum(cost) AS cost,
               coalesce(sum(estimate_assigned) FILTER (WHERE is_settled), 0) AS estimated_settled,
               coalesce(sum(actual) FILTER (WHERE is_settled), 0) AS actual_settled
        FROM tasks GROUP BY service ORDER BY service""")
    return {r.pop("service"): r for r in rows}


def triggers(p: Period) -> dict[str, Any]:
    """Downgrades and rejections counted by each trigger they carry (a decision may carry several)."""
    rows = p.rows("SELECT outcome, trigger, count(*) AS n FROM (SELECT outcome, unnest(triggers) AS trigger "
                  "FROM tasks WHERE outcome IN ('downgraded', 'rejected')) GROUP BY ALL ORDER BY n DESC, trigger")
    out: dict[str, dict[str, int]] = {"downgraded": {}, "rejected": {}}
    for r in rows:
        out[r["outcome"]][r["trigger"]] = r["n"]
    return out


#: Every decision of the tasks whose first decision is in the period: each first decision (no parent in
#: the store) of ``tasks`` and the fallbacks linked to it, decided whenever (``costed``).
CHAIN_ATTEMPTS = """
SELECT decision_id, parent_decision_id, attempt, service, assigned_tier, estimate_assigned, estimate_untiered,
       estimate_complexity, actual, report_outcome
FROM costed WHERE decision_id IN (
    WITH RECURSIVE chain(decision_id) AS (
        SELECT t.decision_id FROM tasks t WHERE t.parent_decision_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM costed p WHERE p.decision_id = t.parent_decision_id)
        UNION
        SELECT n.decision_id FROM chain c JOIN costed n ON n.parent_decision_id = c.decision_id
    ) SELECT decision_id FROM chain)
"""


def savings_report(p: Period) -> dict[str, Any]:
    """Savings of the served tasks against both counterfactuals, unserved tasks apart (``finance_rules``)."""
    rows = p.rows(CHAIN_ATTEMPTS)
    return savings(task_costs(Attempt(r["decision_id"], r["parent_decision_id"], r["attempt"] or 1, r["service"],
                                      r["assigned_tier"], r["estimate_assigned"], r["estimate_untiered"],
                                      r["estimate_complexity"], r["actual"], r["report_outcome"]) for r in rows))


def sla_risk(p: Period) -> dict[str, Any]:
    """Routed tasks whose executor's expected p95 is within 10% of their SLA (or past it), per service."""
    rows = p.rows(f"""
        SELECT service, count(*) AS routed,
               count(*) FILTER (WHERE executor_p95_ms >= sla_ms * (1 - {SLA_RISK_MARGIN})) AS at_risk,
               count(*) FILTER (WHERE executor_p95_ms > sla_ms) AS over_sla
        FROM tasks WHERE assigned_tier IS NOT NULL AND executor_p95_ms IS NOT NULL
        GROUP BY service ORDER BY service""")
    return {r.pop("service"): {**r, "at_risk_pct": round(100 * r["at_risk"] / r["routed"], 2)} for r in rows}


def adoption(p: Period) -> dict[str, Any]:
    """Per service: current mode and pinned version, canary share, volume, first/last seen; the sunset rule."""
    rows = p.rows("""
        SELECT service, count(*) AS decisions, min(decided_at) AS first_seen, max(decided_at) AS last_seen,
               arg_max(mode, decided_at) AS mode,
               arg_max(policy_version, decided_at) FILTER (WHERE canary_arm = 'stable') AS pinned_version,
               arg_max(policy_version, decided_at) FILTER (WHERE canary_arm = 'canary') AS canary_version,
               round(100.0 * count(*) FILTER (WHERE canary_arm = 'canary') / count(*), 2) AS canary_pct,
               min(decided_at) FILTER (WHERE mode = 'enforce') AS first_enforce
        FROM tasks GROUP BY service ORDER BY service""")
    as_of = p.until or max((r["last_seen"] for r in rows), default=None)
    starts = [r["first_enforce"] for r in rows if r["first_enforce"] is not None]
    enforcing = sum(1 for r in rows if r["mode"] == "enforce")
    services = {r.pop("service"): {k: v for k, v in r.items() if k != "first_enforce"} for r in rows}
    return {"services": services, "sunset": sunset(min(starts, default=None), enforcing, as_of)}


def canary(p: Period) -> dict[str, Any]:
    """Per service and arm: cost per task, downgrade and rejection rates, latency from the settlements."""
    rows = p.rows("""
        SELECT service, canary_arm AS arm, count(*) AS tasks, (sum(cost) / count(*))::DECIMAL(18,6) AS cost_per_task,
               round(100.0 * count(*) FILTER (WHERE outcome = 'downgraded') / count(*), 2) AS downgrade_pct,
               round(100.0 * count(*) FILTER (WHERE outcome = 'rejected') / count(*), 2) AS rejection_pct,
               quantile_cont(decision_latency_ms, 0.95) AS decision_p95_ms,
               quantile_cont(dispatch_ms, 0.5) AS dispatch_p50_ms, quantile_cont(dispatch_ms, 0.95) AS dispatch_p95_ms,
               quantile_cont(run_ms, 0.5) AS run_p50_ms
        FROM tasks GROUP BY ALL ORDER BY service, arm""")
    out: dict[str, Any] = {}
    for r in rows:
        out.setdefault(r.pop("service"), {})[r.pop("arm")] = r
    return out


#: Per executor, its failed (or executor-expired) attempts decided in the period, each with the
#: attempt that fell back from it (``n``, decided whenever; none for a permanent failure).
FAILURES = """
SELECT f.executor,
       count(*) FILTER (WHERE f.report_outcome = 'failed' AND f.error_class = 'retryable') AS retryable,
       count(*) FILTER (WHERE f.report_outcome = 'failed' AND f.error_class = 'permanent') AS permanent,
       count(*) FILTER (WHERE f.report_outcome = 'expired') AS expired,
       count(n.decision_id) AS fallbacks,
       count(n.decision_id) FILTER (WHERE n.assigned_tier IS NULL) AS fallbacks_rejected,
       coalesce(sum(f.actual) FILTER (WHERE f.report_outcome = 'failed'), 0) AS wasted,
       coalesce(sum(n.cost) FILTER (WHERE n.assigned_tier IS NOT NULL), 0) AS fallback_cost,
       coalesce(sum(f.estimate_assigned) FILTER (WHERE n.assigned_tier IS NOT NULL), 0) AS replaced_estimate
FROM tasks f LEFT JOIN costed n ON n.parent_decision_id = f.decision_id
WHERE f.report_outcome IN ('failed', 'expired') AND f.executor IS NOT NULL
GROUP BY f.executor
"""


#: The executor failures table: report key -> column heading (text and HTML).
FAILURE_COLUMNS = {"executor": "executor", "retryable": "retryable", "permanent": "permanent", "expired": "expired",
                   "fallbacks": "fallbacks", "fallbacks_rejected": "fallbacks rejected", "wasted": "wasted",
                   "fallback_cost": "fallback cost", "replaced_estimate": "replaced estimate",
                   "extra_cost": "extra cost", "circuit_opens": "circuit opens"}


def executor_failures(p: Period) -> dict[str, Any]:
    """Per executor: its failures by class, expiries, the fallbacks they caused (and how many of those
    were rejected), wasted and fallback cost, the extra cost of its failures, and its circuit opens."""
    zero = {"retryable": 0, "permanent": 0, "expired": 0, "fallbacks": 0, "fallbacks_rejected": 0,
            "wasted": Decimal(0), "fallback_cost": Decimal(0), "replaced_estimate": Decimal(0), "circuit_opens": 0}
    out: dict[str, dict[str, Any]] = {}
    for r in p.rows(FAILURES):
        name = r.pop("executor")
        out[name] = {**zero, **r}
    opens = p.rows(f"SELECT executor, count(*) AS circuit_opens FROM circuits WHERE to_state = 'open' "
                   f"AND {IN_PERIOD.format(col='changed_at')} GROUP BY executor", *p.bounds)
    for r in opens:
        out.setdefault(r["executor"], dict(zero))["circuit_opens"] = r["circuit_opens"]
    for r in out.values():
        r["extra_cost"] = extra_cost(r["wasted"], r["fallback_cost"], r["replaced_estimate"])
    return {"executors": dict(sorted(out.items())), "extra_cost_rule": EXTRA_COST_RULE}


def budget_timeline(p: Period, points: int = 400) -> list[dict[str, Any]]:
    """Each budget scope's committed spend over time, for the HTML chart: per time bucket (the period
    cut into about ``points`` buckets, so a month of traffic stays a small page), the highest committed
    spend after a decision in it, the limit, and how many of its decisions were downgrades."""
    span = p.rows("SELECT epoch_us(min(decided_at)) AS lo, epoch_us(max(decided_at)) AS hi FROM tasks")[0]
    if span["lo"] is None:
        return []
    bucket_us = max(1, (span["hi"] - span["lo"]) // points)
    return p.rows("""
        SELECT b.budget_id, b.scope, make_timestamptz(epoch_us(t.decided_at) // ? * ?) AS bucket,
               max(b."limit") AS "limit", max(b.committed_after) AS committed_after,
               count(*) FILTER (WHERE t.outcome = 'downgraded') AS downgrades
        FROM tasks t JOIN decision_budgets b USING (decision_id)
        GROUP BY ALL ORDER BY b.budget_id, b.scope, bucket""", bucket_us, bucket_us)


def report(db: duckdb.DuckDBPyConnection, since: dt.datetime | None = None,
           until: dt.datetime | None = None) -> dict[str, Any]:
    """The whole report as plain JSON-ready data."""
    p = Period(db, since, until)
    totals = p.rows("""SELECT count(*) AS decisions, count(assigned_tier) AS routed,
        count(*) FILTER (WHERE outcome = 'rejected') AS rejected, count(*) FILTER (WHERE is_settled) AS settled,
        coalesce(sum(cost), 0) AS cost,
        coalesce(sum(estimate_assigned) FILTER (WHERE is_settled), 0) AS estimated_settled,
        coalesce(sum(actual) FILTER (WHERE is_settled), 0) AS actual_settled, min(decided_at) AS first, max(decided_at) AS last,
        list(DISTINCT currency) AS currencies FROM tasks""")[0]
    return _plain({
        "period": {"since": since, "until": until},
        "totals": totals,
        "services": services(p),
        "spend": spend(p),
        "triggers": triggers(p),
        "savings": savings_report(p),
        "sla_risk": sla_risk(p),
        "adoption": adoption(p),
        "canary": canary(p),
        "executor_failures": executor_failures(p),
    })
