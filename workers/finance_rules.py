"""Finance rules as pure functions: savings against a counterfactual (per task: a first decision and
its fallbacks), the adoption sunset rule, and the extra cost of executor failures.

No I/O here: the report (``finance_report``) feeds these from SQL, and the demo from its in-memory
audit log, so both state the same figure the same way.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

#: The design discussion's rule: "if only two services use it after 90 days, sunset it".
SUNSET_AFTER = dt.timedelta(days=90)
SUNSET_MIN_ENFORCING = 3
#: A task is at SLA risk when its executor's expected p95 is within this fraction of its SLA.
SLA_RISK_MARGIN = 0.10
#: The settlement kinds that carry what a task really cost.
ACTUAL_KINDS = ("settled", "settled_late", "unreserved")


#: What the report's "extra cost" of an executor's failures is, in one line (the report prints it).
EXTRA_COST_RULE = ("extra cost of failures = wasted (actual charged on the failed attempts: partial work) "
                   "+ sum over the failures whose fallback was routed of (fallback's cost - failed attempt's "
                   "estimate); negative when the fallbacks were cheaper; in a chain A -> B -> C, B's attempt counts "
                   "as A's fallback cost and as B's wasted cost")


def extra_cost(wasted: Decimal, fallback_cost: Decimal, replaced_estimate: Decimal) -> Decimal:
    """``EXTRA_COST_RULE``: ``replaced_estimate`` sums the estimates of the failed attempts whose fallback
    was routed, ``fallback_cost`` those fallbacks' costs (actual when settled, else estimate)."""
    return wasted + fallback_cost - replaced_estimate


@dataclass(frozen=True)
class CostRow:
    """One task (a first decision and its fallbacks): what all its attempts cost, its first decision's two
    counterfactuals, and whether its work was delivered (only served tasks enter the savings comparison)."""

    service: str
    cost: Decimal  # the sum over its attempts of realised_cost (0 for a rejected attempt)
    untiered: Decimal | None  # every task on its requested tier, else its class's most capable
    complexity: Decimal | None  # every task on the tier its complexity alone called for
    served: bool = True
    attempts: int = 1


@dataclass(frozen=True)
class Attempt:
    """One decision as savings reads it, with what the first settlement carrying an actual cost said."""

    decision_id: str
    parent_decision_id: str | None  # None for a first decision (and for every event before schema v4)
    attempt: int
    service: str
    assigned_tier: str | None  # None: rejected
    estimate_assigned: Decimal
    untiered: Decimal | None
    complexity: Decimal | None
    actual: Decimal | None = None  # None: no executor report (unsettled, or a ledger expiry)
    report_outcome: str | None = None  # succeeded, failed, expired, duplicate; None before v4 or unsettled


#: The executor outcomes after which a task's last attempt delivered nothing.
UNSERVED_OUTCOMES = ("failed", "expired")


def realised_cost(assigned_tier: str | None, estimate_assigned: Decimal, actual: Decimal | None) -> Decimal | None:
    """A decision's cost for savings: None if it was not routed; its actual cost if settled; else its estimate."""
    if assigned_tier is None:
        return None
    return actual if actual is not None else estimate_assigned


T = TypeVar("T")


def chains_of(items: Iterable[T], ident: Callable[[T], str], parent: Callable[[T], str | None],
              rank: Callable[[T], Any]) -> list[list[T]]:
    """A task's attempts, as chains: each first decision (one whose parent is not among ``items``: a
    first attempt, or a fallback whose parent is missing), then the fallback linked to the chain's last
    decision by ``parent`` (the lowest ``rank`` when it has several), until there is none. First
    decisions in ``items`` order."""
    by_id = {ident(x): x for x in items}
    children: dict[str, list[T]] = defaultdict(list)
    for x in by_id.values():
        if (p := parent(x)) in by_id:
            children[p].append(x)
    out = []
    for root in by_id.values():
        if parent(root) in by_id:
            continue
        chain, seen = [root], {ident(root)}
        while nxt := [c for c in children.get(ident(chain[-1]), []) if ident(c) not in seen]:
            chain.append(min(nxt, key=rank))
            seen.add(ident(chain[-1]))
        out.append(chain)
    return out


def task_costs(attempts: Iterable[Attempt]) -> list[CostRow]:
    """One ``CostRow`` per task (``chains_of``) whose first decision was routed.

    Its cost is the sum of its attempts' ``realised_cost`` (failed attempts' partial costs
    included: money spent); its counterfactuals are its first decision's, once. It is *served*
    unless its last attempt was rejected or its executor reported ``failed`` or ``expired``. A
    task whose first decision was rejected ran nothing: no row.
    """
    rows = []
    for chain in chains_of(attempts, lambda a: a.decision_id, lambda a: a.parent_decision_id,
                           lambda a: (a.attempt, a.decision_id)):
        first, last = chain[0], chain[-1]
        if first.assigned_tier is None:
            continue
        cost = sum((realised_cost(a.assigned_tier, a.estimate_assigned, a.actual) or Decimal(0) for a in chain),
                   Decimal(0))
        served = last.assigned_tier is not None and last.report_outcome not in UNSERVED_OUTCOMES
        rows.append(CostRow(first.service, cost, first.untiered, first.complexity, served, len(chain)))
    return rows


def saving(baseline: Decimal, cost: Decimal) -> dict[str, Any]:
    """Money and percent saved against ``baseline`` (percent of the baseline; 0 when it is 0)."""
    saved = baseline - cost
    pct = float(saved / baseline * 100) if baseline else 0.0
    return {"baseline": str(baseline), "cost": str(cost), "saved": str(saved), "saved_pct": round(pct, 2)}


_SUMS = ("u_base", "u_cost", "c_base", "c_cost", "n", "x_n", "x_cost")


def savings(rows: Iterable[CostRow]) -> dict[str, Any]:
    """Savings per service and in total against both counterfactuals, over the served tasks.

    Each counterfactual compares only the served tasks that record its estimate (events written
    before schema v3 do not): baseline = the sum of those estimates, cost = the same tasks' cost.
    Unserved tasks are counted apart (``unserved``: how many, and what their attempts cost).
    """
    sums: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        for scope in (r.service, "*total*"):
            s = sums.setdefault(scope, {k: Decimal(0) for k in _SUMS})
            if not r.served:
                s["x_n"] += 1
                s["x_cost"] += r.cost
                continue
            s["n"] += 1
            if r.untiered is not None:
                s["u_base"] += r.untiered
                s["u_cost"] += r.cost
            if r.complexity is not None:
                s["c_base"] += r.complexity
                s["c_cost"] += r.cost
    out = {scope: {"tasks": int(s["n"]), "vs_untiered": saving(s["u_base"], s["u_cost"]),
                   "vs_complexity": saving(s["c_base"], s["c_cost"]),
                   "unserved": {"tasks": int(s["x_n"]), "cost": str(s["x_cost"])}} for scope, s in sums.items()}
    total = out.pop("*total*", {"tasks": 0, "vs_untiered": saving(Decimal(0), Decimal(0)),
                                "vs_complexity": saving(Decimal(0), Decimal(0)),
                                "unserved": {"tasks": 0, "cost": "0"}})
    return {"services": dict(sorted(out.items())), "total": total}


def sunset(first_enforce: dt.datetime | None, enforcing: int, as_of: dt.datetime | None) -> dict[str, Any]:
    """The sunset rule: flag when fewer than 3 services are in enforce mode 90 days after the first.

    ``as_of`` is the time the report describes (its ``--until``, else the newest event), never
    the wall clock, so a report of the same events always says the same.
    """
    if first_enforce is None or as_of is None:
        return {"first_enforce_at": None, "review_at": None, "services_in_enforce": enforcing,
                "as_of": as_of.isoformat() if as_of else None, "due": False, "flag": False}
    review = first_enforce + SUNSET_AFTER
    due = as_of >= review
    return {"first_enforce_at": first_enforce.isoformat(), "review_at": review.isoformat(),
            "services_in_enforce": enforcing, "as_of": as_of.isoformat(), "due": due,
            "flag": due and enforcing < SUNSET_MIN_ENFORCING}
