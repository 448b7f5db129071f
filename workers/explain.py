"""``dispatch audit explain``: one decision reconstructed from the finance store, and its chain link checked.

A task that failed over is several decisions (attempts 1, 2...: each fallback links to the failed
attempt as its parent); ``chains`` gathers them, and ``attempts`` lays each chain out with each
attempt's settlement and the link to the next one, so any attempt's id explains the whole chain.

Everything comes from what the decision event recorded (the engine writes its inputs, the
baseline, the budget states and the executor load it saw onto the event), so an explanation
months later needs nothing but the store and, to check the link, the audit topic.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.chain import GENESIS, HMAC, content_of, link_matches
from schemas.codec import AuditEncodingError, read_body
from schemas.registry import split  # either format: single-object, or Confluent through the registry
from workers.finance_rules import ACTUAL_KINDS, chains_of
from workers.finance_store import FinanceStore, dict_rows

#: The standard triggers in the order the engine applies them, with the words its rationale uses.
STANDARD = [
    ("policy", ("rule ", "requested tier", "not a ")),
    ("sla_guard", ("SLA",)),
    ("load", ("saturated",)),
    ("budget_soft", ("soft threshold",)),
    ("trend", ("projected",)),
    ("budget_hard", ("cap",)),
]
#: Triggers that describe the decision's circumstances rather than a step down.
CIRCUMSTANCES = [("shadow", ("shadow mode",)), ("flag", ("adoption flag",)),
                 ("ledger_unavailable", ("Redis", "ledger")), ("invalid", ("",)), ("conflict", ("",)),
                 ("executor_failure", ("fall", "fail")), ("circuit_open", ("circuit",))]


def _rows(store: FinanceStore, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return dict_rows(store.db.execute(sql, params))


def find(store: FinanceStore, ident: str) -> list[dict[str, Any]]:
    """Decisions with this decision id, or for this task id (a reused id has several), oldest first."""
    return _rows(store, "SELECT * FROM decisions WHERE decision_id = ? OR task_id = ? ORDER BY decided_at",
                 [ident, ident])


def chains(store: FinanceStore, found: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The chains of attempts (``finance_rules.chains_of``) the ``found`` decisions belong to, each
    oldest attempt first, the chains in the order their first attempts were decided."""
    tasks = sorted({(d["service"], d["task_id"]) for d in found})
    every = _rows(store, "SELECT * FROM decisions WHERE list_contains(?, [service, task_id]) "
                         "ORDER BY attempt, decided_at, decision_id", [[list(t) for t in tasks]])
    wanted = {d["decision_id"] for d in found}
    linked = chains_of(every, lambda d: d["decision_id"], lambda d: d["parent_decision_id"],
                       lambda d: (d["attempt"], d["decided_at"], d["decision_id"]))
    out = [c for c in linked if wanted & {d["decision_id"] for d in c}]
    return sorted(out, key=lambda c: (c[0]["decided_at"], c[0]["decision_id"]))


def _settlements(store: FinanceStore, decision_id: str) -> list[dict[str, Any]]:
    return _rows(store, "SELECT * FROM settlements WHERE decision_id = ? ORDER BY recorded_at, kind", [decision_id])


def attempts(store: FinanceStore, chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt of a chain: where it went and why, what its executor reported, and the next attempt."""
    out = []
    for i, d in enumerate(chain):
        st = settlement_summary(d, _settlements(store, d["decision_id"]))
        nxt = chain[i + 1]["decision_id"] if i + 1 < len(chain) else st["fallback_decision_id"]
        out.append({
            "attempt": d["attempt"], "decision_id": d["decision_id"], "parent_decision_id": d["parent_decision_id"],
            "decided_at": d["decided_at"], "outcome": d["outcome"], "tier": d["assigned_tier"],
            "executor": d["executor"], "triggers": list(d["triggers"] or []),
            "excluded_executors": list(d["excluded_executors"] or []),
            "executor_circuits": json.loads(d["executor_circuits"] or "{}"),
            "deadline": d["deadline"], "time_left_ms": d["time_left_ms"], "estimate": d["estimate_assigned"],
            "settlement": {k: st[k] for k in ("status", "report_outcome", "error_class", "error", "actual",
                                              "dispatch_ms", "sla_ms", "queue_share")},
            "next_decision_id": nxt,
        })
    return out


def circuit_changes(store: FinanceStore, chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The circuit changes of the chain's executors while it ran (first decision to last settlement),
    and each one's last change before it (the state the first attempt saw)."""
    executors = sorted({d["executor"] for d in chain if d["executor"]}
                       | {e for d in chain for e in (d["excluded_executors"] or [])})
    if not executors:
        return []
    lo = min(d["decided_at"] for d in chain)
    ends = _rows(store, "SELECT max(recorded_at) AS hi FROM settlements WHERE list_contains(?, decision_id)",
                 [[d["decision_id"] for d in chain]])
    hi = max([d["decided_at"] for d in chain] + [e["hi"] for e in ends if e["hi"] is not None])
    return _rows(store, """
        SELECT executor, seq, from_state, to_state, reason, calls, failures, consecutive_failures, changed_at,
               decision_id
        FROM circuits c WHERE list_contains(?, executor) AND changed_at <= ?
          AND (changed_at >= ? OR seq = (SELECT max(seq) FROM circuits p WHERE p.executor = c.executor
                                          AND p.changed_at < ?))
        ORDER BY changed_at, executor, seq""", [executors, hi, lo, lo])


def _evidence(trigger: str, d: dict[str, Any], budgets: list[dict[str, Any]]) -> str:
    """What the decision saw that this trigger looks at."""
    if trigger == "policy":
        return f"tier chosen by {d['rule_id']}" + (f"; requested {d['requested_tier']}" if d["requested_tier"] else "")
    if trigger == "sla_guard":
        return f"SLA {d['sla_ms']:g} ms; assigned executor's p95 {d['executor_p95_ms']} ms"
    if trigger == "load":
        load = json.loads(d["executor_load"] or "{}")
        return "saturation seen: " + (", ".join(f"{k} {v:.2f}" for k, v in sorted(load.items())) or "none reported")
    parts = []
    for b in budgets:
        name = f"{b['budget_id']}/{b['scope']}"
        if trigger == "budget_soft":
            committed = b["spent"] + b["reserved_before"]
            parts.append(f"{name}: {committed} of {b['limit']} committed, soft at {b['soft_pct'] * 100:g}%")
        elif trigger == "trend":
            parts.append(f"{name}: projected {b['projected']} against {b['limit']}"
                         f"{' (trend active)' if b['trend_active'] else ''}")
        else:
            parts.append(f"{name}: {b['committed_after']} of {b['limit']} committed after this decision")
    return "; ".join(parts) or "no budget applies"


def triggers(d: dict[str, Any], budgets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each standard trigger in the engine's order: whether it fired, why, and what it looked at."""
    fired = set(d["triggers"] or [])
    reasons = [r.strip() for r in (d["rationale"] or "").split(";")]
    out = []
    for name, words in STANDARD:
        why = [r for r in reasons if any(w in r for w in words)] if name in fired else []
        out.append({"trigger": name, "fired": name in fired, "why": "; ".join(why) or None,
                    "evidence": _evidence(name, d, budgets)})
    for name, words in CIRCUMSTANCES:
        if name in fired:
            why = [r for r in reasons if any(w in r for w in words) and words != ("",)]
            out.append({"trigger": name, "fired": True, "why": "; ".join(why) or d["rationale"], "evidence": None})
    return out


def settlement_summary(d: dict[str, Any], settlements: list[dict[str, Any]]) -> dict[str, Any]:
    """Estimate against actual, or what became of the reservation; the executor's outcome (failed with
    its error class and code, or expired at its deadline), and the share of the SLA spent queueing."""
    kinds = {s["kind"]: s for s in settlements}
    main = next((kinds[k] for k in ACTUAL_KINDS if k in kinds and kinds[k]["actual"] is not None), None)
    actual = None if main is None else main["actual"]
    report = main or {}
    sla_ms = report.get("sla_ms") or d["sla_ms"]  # settlements before v4 do not carry it: the decision's
    dispatch_ms = report.get("dispatch_ms")
    if main is not None and report.get("outcome") == "failed":
        status = f"failed ({report['error_class']}: {report['error'] or 'no code'}), charged the partial cost"
    elif main is not None and report.get("outcome") == "expired":
        status = "expired: its deadline had passed when the executor got to it; not run"
    elif main is not None:
        status = {"settled": "settled", "settled_late": "settled late", "unreserved": "unreserved"}[main["kind"]]
    elif "expired" in kinds:
        status = "expired: the estimate is kept as presumed spend until a late report"
    elif d["assigned_tier"] is None:
        status = "rejected: nothing reserved"
    else:
        status = "open: no report yet"
    return {"status": status, "estimate": d["estimate_assigned"], "reserved": d["reserved"], "actual": actual,
            "difference": None if actual is None else actual - d["reserved"],
            "report_outcome": report.get("outcome"), "error_class": report.get("error_class"),
            "error": report.get("error"), "fallback_decision_id": report.get("fallback_decision_id"),
            "dispatch_ms": dispatch_ms, "sla_ms": sla_ms,
            "queue_share": None if dispatch_ms is None or not sla_ms else dispatch_ms / sla_ms,
            "events": [{k: s[k] for k in ("kind", "actual", "reserved", "report_id", "recorded_at")}
                       for s in settlements]}


async def check_link(bootstrap: str, d: dict[str, Any], store: FinanceStore, key: bytes | None) -> dict[str, Any]:
    """Does the decision's event, as it is on the audit topic now, match its link, and does the
    link name its chain's previous event?"""
    if d["link_hash"] is None:
        return {"verifies": False, "detail": "written before hash chains (no link)"}
    tp = TopicPartition(d["audit_topic"], d["audit_partition"])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, d["audit_offset"])
        record = await consumer.getone()
    finally:
        await consumer.stop()
    try:
        writer, body = split(record.value or b"")
        _, event = read_body(writer, body)
        link = event["link"]
        content = content_of(body, link)
    except (AuditEncodingError, ValueError, TypeError, KeyError) as exc:
        return {"verifies": False, "detail": f"the event at {tp.partition}/{d['audit_offset']} is unreadable: {exc}"}
    if link["alg"] == HMAC and not key:
        return {"verifies": False, "detail": "HMAC-linked: set DISPATCH_AUDIT_KEY to check it"}
    if event["decision_id"] != d["decision_id"] or link["hash"] != d["link_hash"] or not link_matches(link, content, key):
        return {"verifies": False, "detail": "modified: the event does not match its hash"}
    if link["seq"] == 1:
        ok = link["prev"] == GENESIS
    else:
        prev = _rows(store, " UNION ALL ".join(  # the previous event may be of any kind
            f"SELECT 1 FROM {t} WHERE link_hash = ? AND link_seq = ? AND link_chain = ?"  # noqa: S608 - our tables
            for t in ("decisions", "settlements", "circuits")), [link["prev"], link["seq"] - 1, link["chain"]] * 3)
        ok = bool(prev)
    return {"verifies": ok, "chain": link["chain"], "seq": link["seq"], "alg": link["alg"],
            "detail": "its hash matches and it links to the chain's previous event" if ok
            else "its previous event is not in the store (run `dispatch audit verify` for the whole chain)"}


def explain(store: FinanceStore, d: dict[str, Any]) -> dict[str, Any]:
    """The full reconstruction of decision ``d`` (a row of the store's ``decisions``)."""
    budgets = _rows(store, "SELECT * FROM decision_budgets WHERE decision_id = ? ORDER BY budget_id, scope",
                    [d["decision_id"]])
    settlements = _settlements(store, d["decision_id"])
    return {
        "decision_id": d["decision_id"], "task_id": d["task_id"], "outcome": d["outcome"],
        "decided_at": d["decided_at"], "attempt": d["attempt"], "parent_decision_id": d["parent_decision_id"],
        "task": {"service": d["service"], "tenant": d["tenant"], "workload": d["workload"],
                 "task_type": d["task_type"], "requested_tier": d["requested_tier"], "sla_ms": d["sla_ms"],
                 "features": json.loads(d["complexity_inputs"] or "{}"), "task_hash": d["task_hash"]},
        "policy": {"name": d["policy_name"], "version": d["policy_version"], "rule_id": d["rule_id"],
                   "mode": d["mode"], "canary_arm": d["canary_arm"]},
        "complexity": {"score": d["complexity_score"], "raw": d["complexity_raw"],
                       "baseline": {"mean": d["baseline_mean"], "std": d["baseline_std"], "n": d["baseline_n"]},
                       "maps_to": d["complexity_tier"]},
        "tiers": {"requested": d["requested_tier"], "asked": d["asked_tier"], "enforced": d["enforced_tier"],
                  "assigned": d["assigned_tier"], "executor": d["executor"], "without_tiering": d["untiered_tier"]},
        "triggers": triggers(d, budgets),
        "budgets": [{k: b[k] for k in ("budget_id", "scope", "window", "limit", "soft_pct", "spent",
                                       "reserved_before", "committed_after", "projected", "trend_active")}
                    for b in budgets],
        "rationale": d["rationale"],
        "money": {"currency": d["currency"], "estimate_asked": d["estimate_asked"],
                  "estimate_assigned": d["estimate_assigned"], "reserved": d["reserved"],
                  "estimate_without_tiering": d["estimate_untiered"]},
        "settlement": settlement_summary(d, settlements),
        "engine_version": d["engine_version"], "decision_latency_ms": d["decision_latency_ms"],
    }


def jsonable(value: Any) -> Any:
    """Decimals as strings, datetimes as ISO 8601, for ``--json``."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
