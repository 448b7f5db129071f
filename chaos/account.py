"""Counting what crossed Kafka and Redis in one scenario, and the row that proves what survived.

Everything is read back from the scenario's own topics with ``isolation_level=read_committed``
(as every reader must: the worker writes each batch in a transaction) and from the Redis
ledger after every process is stopped, so nothing is taken from the system's own logs or
metrics. What the scenario *sent* (``Expect``) comes from the workload: an input counts once
the broker acknowledged it.

The columns, precisely:

tasks_in
    Inputs acknowledged by the broker that must each get one (first) decision event: valid tasks
    (decision id ``decision_id_for(service, task_id)``), plus, in the poison scenario, the
    invalid task with a readable task id (its ``invalid_decision_id``) and the reused task id
    (its ``conflict_decision_id``). Poison inputs with no readable id are not tasks; they
    must each reach the dead-letter topic (see ``lost``).
distinct_decisions
    Distinct ``(decision_id, outcome, assigned_tier, reserved)`` among first decision events
    (``attempt`` absent or 1). Equals ``tasks_in`` exactly when every task has one first
    decision, never two different ones. Fallback decisions (``attempt`` > 1) are counted
    apart, in ``fallbacks_doubled``.
duplicate_events
    Audit events beyond one per ``(decision_id, event kind)``, where the kind of a decision
    event is ``decision`` and that of a settlement event is its settlement kind.
duplicate_executions
    Decisions with ``succeeded`` reports of more than one distinct ``report_id`` on the
    cost topic (the task really ran twice).
lost
    Expected decision ids with no decision event, plus routed decisions (decision events with
    an assigned tier, fallbacks included) that no executor received by the end (no report of
    any outcome on the cost topic), plus poison inputs missing from the dead-letter topic (per
    reason). A missing fallback decision is counted in ``fallbacks_doubled``.
fallbacks_doubled
    The chains of attempts that are not one fallback per retryable failure. A *retryable
    failure settlement* is a distinct charging settlement event (settled, settled_late or
    unreserved) with ``outcome`` failed and ``error_class`` retryable; each must name a
    ``fallback_decision_id`` that has a decision event whose ``parent_decision_id`` is the
    failed decision (the fallback may be routed or a recorded rejection). Counted: fallback
    decision ids (``attempt`` > 1) with more than one distinct ``(outcome, assigned_tier,
    reserved)``; failed decisions whose settlement events name more than one distinct
    fallback id, or that are the parent of more than one distinct fallback decision id;
    retryable failure settlements naming no fallback, or one with no decision event or
    another parent; and fallback decisions no retryable failure settlement names.
routed_mismatches
    Records on the executor topics whose decision names another executor or tier (or that
    sit on another executor's topic), routed records with no routed decision event, routed
    decisions with no routed record, and routed records beyond the first per decision.
overshoot
    For every budget key and every ledger sample (every 100 ms during the run, and once at
    the end): committed (spent + reserved) minus the key's cap minus the key's
    actual-above-estimate (below); the maximum of that over samples and keys, floored at 0.
    In money (the policy's currency).
actual_above_estimate
    Sum over distinct ``settled`` and ``settled_late`` events of max(0, actual - reserved):
    money executors reported beyond what was reserved. Caps bound reservations, so this is
    what can legitimately push a budget past its cap; reported, not counted as overshoot.
double_charges
    Decisions whose charging settlement events (settled, settled_late, unreserved, expired)
    are not one of the sequences that charge once: {settled}, {unreserved}, {expired} or
    {expired, settled_late} (an expiry's estimate replaced by the late actual); plus budget
    keys whose Redis ``spent`` differs from the sum of the charges of the distinct settlement
    events on that key (settled and unreserved: actual; expired: reserved; settled_late:
    actual - reserved). A failed attempt is settled like any run: its one ``settled`` event
    (``outcome`` failed) charges the partial cost it reported, once.
double_reservations
    Tasks ``(service, task_id)``, located through their decision events, that held more than
    one open reservation at once in the Redis ledger: in any sample of the open-reservation
    set ``dc:resv:open`` (taken with the budget samples, one atomic read each) or among the
    ``dc:resv:<decision id>`` records with status ``reserved`` at the end. A fallback reserves
    in the same Lua step that settles its failed attempt, so this must be 0.
uncharged_executions
    Decisions with a ``succeeded`` report but no settlement event that charged the report's
    cost (settled, settled_late or unreserved) by the end. An expiry alone does not count:
    it charges the estimate, not the run.
chain_breaks
    Audit hash chains that ``dispatch audit verify`` reports broken at the end, plus events
    it could not place in any chain. Normal operation, crashes included, must leave none.
recover_s
    Seconds from the fault being lifted (the restart issued, or the service answering again)
    to the first event of the interrupted flow that reaches the read_committed tail, was
    written after the fault began (its Kafka timestamp) and belongs to a decision not seen
    before: a decision event that is not a ``ledger_unavailable`` fallback, or for an
    executor fault an executor report. With several faults, the slowest; each one is in
    ``extra``. Empty when the scenario lifts no fault.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from dispatch_core import keys
from dispatch_core.money import from_micros
from dispatch_core.settings import Settings
from schemas import CIRCUIT, DECISION, decode
from streams.consume import to_end
from streams.dlq import DeadLetter
from workers.finance import pct

CHARGE_ONCE = ({"settled"}, {"unreserved"}, {"expired"}, {"expired", "settled_late"})
REPORTED = {"settled", "settled_late", "unreserved"}  # kinds that charged a report's actual cost
TERMINAL = REPORTED | {"expired"}


@dataclass(frozen=True)
class Routed:
    """One record on an executor topic."""

    topic_executor: str  # the executor whose topic it was on
    decision_id: str
    tier: str
    executor: str
    task_id: str
    created_at: datetime
    received_at: datetime | None  # when the live tail got it (None when read back at the end)


@dataclass
class Crossed:
    """What was read off a scenario's topics (read_committed), parsed; the live tail also times arrivals."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    circuits: list[dict[str, Any]] = field(default_factory=list)  # circuit breaker changes
    routed: list[Routed] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    #: arrivals of the live tail: (monotonic s, record timestamp ms, decision id, what) for recover_s
    arrivals: list[tuple[float, int, str, str]] = field(default_factory=list)
    # indexes for progress checks while a scenario runs
    decided: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    reported: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)

    def add(self, settings: Settings, rec: ConsumerRecord, at: float | None = None,
            received: datetime | None = None) -> None:
        """Parse one record by its topic; ``at``/``received`` are the live tail's arrival times."""
        try:
            self._add(settings, rec, at, received)
        except Exception as exc:  # noqa: BLE001 - an unreadable record is counted, never fatal
            self.unreadable.append(f"{rec.topic}/{rec.partition}/{rec.offset}: {exc!r}"[:300])

    def _add(self, s: Settings, rec: ConsumerRecord, at: float | None, received: datetime | None) -> None:
        if rec.topic == s.topic_audit:
            schema, event = decode(rec.value)
            if schema is CIRCUIT:
                self.circuits.append(event)
                return
            did = event["decision_id"]
            if schema is DECISION:
                self.decisions.append(event)
                self.decided.setdefault(did, event)
                what = "fallback" if "ledger_unavailable" in event["triggers"] else "decision"
            else:
                self.settlements.append(event)
                self.kinds[did].add(event["kind"])
                what = "settlement"
        elif rec.topic == s.topic_cost:
            report = json.loads(rec.value)
            did = report["decision_id"]
            self.reports.append(report)
            self.reported.add(did)
            if report.get("outcome", "succeeded") == "succeeded":
                self.succeeded.add(did)
            what = "report"
        elif rec.topic == s.topic_dlq:
            self.dead.append(DeadLetter.from_record(rec.key, rec.value, list(rec.headers)))
            return
        else:
            body = json.loads(rec.value)
            did = body["decision_id"]
            self.routed.append(Routed(rec.topic.removeprefix(s.topic_executor_prefix), did, body["tier"],
                                      body["executor"], body["task_id"], datetime.fromisoformat(body["created_at"]),
                                      received))
            what = "routed"
        if at is not None:
            self.arrivals.append((at, rec.timestamp, did, what))


def topics(settings: Settings, executors: Iterable[str]) -> list[str]:
    """Every topic the account reads: audit, cost, dead letters and each executor's."""
    return [settings.topic_audit, settings.topic_cost, settings.topic_dlq,
            *(settings.executor_topic(e) for e in executors)]


async def read_all(settings: Settings, executors: Iterable[str], timeout_s: float = 120) -> Crossed:
    """Every committed record on the scenario's topics, from the beginning to their current ends."""
    crossed = Crossed()

    async def one(topic: str) -> list[ConsumerRecord]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed", max_partition_fetch_bytes=2 << 20)
        await consumer.start()
        try:
            async with asyncio.timeout(timeout_s):  # a read that cannot reach the end fails the scenario
                while not consumer.assignment():
                    await asyncio.sleep(0.05)
                return [m async for m in to_end(consumer)]
        finally:
            await consumer.stop()

    for records in await asyncio.gather(*(one(t) for t in topics(settings, executors))):
        for rec in records:
            crossed.add(settings, rec)
    return crossed


@dataclass
class Expect:
    """What the acknowledged inputs must become."""

    decisions: set[str] = field(default_factory=set)
    dead_letters: Counter[str] = field(default_factory=Counter)
    valid: set[str] = field(default_factory=set)  # decision ids of valid tasks (for latency)


@dataclass
class Ledger:
    """The Redis ledger as sampled during the run and read at the end (micro-units)."""

    max_committed: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    final: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> {spent, reserved, presumed}
    open_samples: list[tuple[str, ...]] = field(default_factory=list)  # decision ids in dc:resv:open, per sample
    final_open: list[str] = field(default_factory=list)  # decision ids whose dc:resv record is "reserved" at the end

    def sample(self, key: str, spent: int, reserved: int) -> None:
        self.max_committed[key] = max(self.max_committed.get(key, 0), spent + reserved)


@dataclass
class Row:
    """One scenario's line of the table (``extra`` goes to JSON only)."""

    scenario: str
    tasks_in: int
    distinct_decisions: int
    duplicate_events: int
    duplicate_executions: int
    lost: int
    routed_mismatches: int
    overshoot: Decimal
    actual_above_estimate: Decimal
    double_charges: int
    uncharged_executions: int
    recover_s: float | None
    note: str
    chain_breaks: int = 0
    fallbacks_doubled: int = 0
    double_reservations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the scenario could not run to its end

    @property
    def ok(self) -> bool:
        """Every invariant the default (exactly-once) configuration promises holds."""
        return (not self.error and self.lost == 0 and self.overshoot == 0 and self.double_charges == 0 and self.uncharged_executions == 0
                and self.duplicate_executions == 0 and self.distinct_decisions == self.tasks_in
                and self.duplicate_events == 0 and self.routed_mismatches == 0 and self.chain_breaks == 0
                and self.fallbacks_doubled == 0 and self.double_reservations == 0)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["overshoot"] = str(self.overshoot)
        out["actual_above_estimate"] = str(self.actual_above_estimate)
        out["ok"] = self.ok
        return out


def _charges(event: dict[str, Any]) -> int:
    """Micro-units a settlement event moved into ``spent`` on each of its scopes."""
    micros = lambda d: int(Decimal(d) * 1_000_000)  # noqa: E731
    actual, reserved = event["actual"] or Decimal(0), event["reserved"] or Decimal(0)
    return {"settled": micros(actual), "unreserved": micros(actual), "expired": micros(reserved),
            "settled_late": micros(actual - reserved)}.get(event["kind"], 0)


def _attempt(decision: dict[str, Any]) -> int:
    return int(decision.get("attempt") or 1)


CHARGING = {"settled", "settled_late", "unreserved"}  # settlement kinds that settle a report (its cost charged)


@dataclass
class Chains:
    """The fallback chains of one scenario: their faults (``fallbacks_doubled``) and what happened."""

    faults: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # failed attempts settled, by error class
    fallbacks: Counter[str] = field(default_factory=Counter)  # fallback decisions, routed or rejected
    rejected_after: Counter[str] = field(default_factory=Counter)  # rejected fallbacks by their failed parent's tier
    rejected_why: Counter[str] = field(default_factory=Counter)  # rejected fallbacks by rationale (digits as #)

    @property
    def doubled(self) -> int:
        return sum(self.faults.values())


def _chains(c: Crossed, decisions: dict[str, dict[str, Any]],
            settlements: dict[tuple[str, str], dict[str, Any]]) -> Chains:
    """``fallbacks_doubled`` (see the module docstring), by kind of fault, and the failure and fallback counts."""
    out = Chains()
    contents: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    children: dict[str, set[str]] = defaultdict(set)  # failed decision -> fallback decision ids naming it parent
    for d in c.decisions:
        if _attempt(d) > 1:
            contents[d["decision_id"]].add((d["outcome"], d["assigned_tier"], d["reserved"]))
            children[d.get("parent_decision_id") or ""].add(d["decision_id"])
    out.faults["fallback with two contents"] = sum(1 for v in contents.values() if len(v) > 1)
    named: dict[str, set[str]] = defaultdict(set)  # failed decision -> fallback ids its settlement events name
    for e in c.settlements:
        if e.get("fallback_decision_id"):
            named[e["decision_id"]].add(e["fallback_decision_id"])
    out.faults["failed attempt with two fallbacks"] = sum(
        1 for p in set(named) | set(children) if len(named.get(p, set()) | children.get(p, set())) > 1)
    expected: set[str] = set()
    for e in settlements.values():
        if e["kind"] not in CHARGING or e.get("outcome") != "failed":
            continue
        out.failures[e.get("error_class") or "unknown"] += 1
        if e.get("error_class") != "retryable":
            continue
        child = e.get("fallback_decision_id")
        if not child:
            out.faults["retryable failure without fallback"] += 1
            continue
        expected.add(child)
        if child not in decisions or decisions[child].get("parent_decision_id") != e["decision_id"]:
            out.faults["fallback missing"] += 1
    out.faults["fallback unexpected"] = len(set(contents) - expected)
    for did in contents:
        out.fallbacks["routed" if decisions[did]["assigned_tier"] else "rejected"] += 1
        parent = decisions.get(decisions[did].get("parent_decision_id") or "")
        if not decisions[did]["assigned_tier"] and parent is not None:
            out.rejected_after[f"{parent.get('workload')}/{parent['assigned_tier']}"] += 1
        if not decisions[did]["assigned_tier"]:
            out.rejected_why[re.sub(r"[0-9]+(\.[0-9]+)?", "#", str(decisions[did].get("rationale", "")))[:160]] += 1
    return out


def _double_reservations(decisions: dict[str, dict[str, Any]], ledger: Ledger) -> int:
    """Tasks that held two open reservations at once, in a ledger sample or at the end (``double_reservations``)."""
    doubled: set[tuple[str, str]] = set()
    for ids in [*ledger.open_samples, tuple(ledger.final_open)]:
        held = Counter((decisions[d]["service"], decisions[d]["task_id"]) for d in ids if d in decisions)
        doubled |= {t for t, n in held.items() if n > 1}
    return len(doubled)


def account(name: str, c: Crossed, expect: Expect, ledger: Ledger, *, live: Crossed | None = None,
            recover: list[float | None] | None = None, notes: Iterable[str] = ()) -> Row:
    """The row for one scenario (see the module docstring for each column).

    ``c`` is everything read back at the end; ``live`` is what the tail saw as it arrived (for latency).
    """
    decisions = {d["decision_id"]: d for d in c.decisions}
    distinct = {(d["decision_id"], d["outcome"], d["assigned_tier"], d["reserved"]) for d in c.decisions
                if _attempt(d) <= 1}
    event_keys = Counter([(d["decision_id"], "decision") for d in c.decisions]
                         + [(e["decision_id"], e["kind"]) for e in c.settlements])
    duplicate_events = sum(n - 1 for n in event_keys.values())

    runs: dict[str, set[str]] = defaultdict(set)
    for r in c.reports:
        if r.get("outcome", "succeeded") == "succeeded":
            runs[r["decision_id"]].add(r.get("report_id") or json.dumps(r, sort_keys=True))
    duplicate_executions = sum(1 for ids in runs.values() if len(ids) > 1)

    routed_decisions = {d for d, e in decisions.items() if e["assigned_tier"]}
    reported = {r["decision_id"] for r in c.reports}
    got_dead = Counter(d.reason for d in c.dead)
    missing_decisions = expect.decisions - set(decisions)
    unreceived = routed_decisions - reported
    missing_dead = sum(max(0, n - got_dead[reason]) for reason, n in expect.dead_letters.items())
    lost = len(missing_decisions) + len(unreceived) + missing_dead

    per_decision = Counter(r.decision_id for r in c.routed)
    wrong = sum(1 for r in c.routed if r.decision_id not in routed_decisions
                or decisions[r.decision_id]["executor"] != r.executor or r.executor != r.topic_executor
                or decisions[r.decision_id]["assigned_tier"] != r.tier)
    unrouted = routed_decisions - set(per_decision)
    copies = sum(n - 1 for n in per_decision.values())
    routed_mismatches = wrong + len(unrouted) + copies

    settlements = {(e["decision_id"], e["kind"]): e for e in c.settlements}  # distinct events
    kinds: dict[str, set[str]] = defaultdict(set)
    for did, kind in settlements:
        kinds[did].add(kind)
    bad_sequences = sum(1 for ks in kinds.values() if (ks & TERMINAL) and (ks & TERMINAL) not in CHARGE_ONCE)
    expected_spent: Counter[str] = Counter()
    above: Counter[str] = Counter()
    for e in settlements.values():
        for key in e["scopes"]:
            expected_spent[key] += _charges(e)
            if e["kind"] in ("settled", "settled_late") and e["actual"] > e["reserved"]:
                above[key] += int((e["actual"] - e["reserved"]) * 1_000_000)
    spent = {k: v.get("spent", 0) for k, v in ledger.final.items()}
    spent_off = {k: spent.get(k, 0) - expected_spent[k] for k in set(expected_spent) | set(spent)
                 if spent.get(k, 0) != expected_spent[k]}
    double_charges = bad_sequences + len(spent_off)
    reserved_left = {k: v["reserved"] for k, v in ledger.final.items() if v.get("reserved")}
    actual_above = sum((max(Decimal(0), e["actual"] - e["reserved"]) for e in settlements.values()
                        if e["kind"] in ("settled", "settled_late")), Decimal(0))

    uncharged = {did for did in runs if not kinds[did] & REPORTED}
    chains = _chains(c, decisions, settlements)
    double_reservations = _double_reservations(decisions, ledger)

    limits: dict[str, Decimal] = {}
    for d in c.decisions:
        for b in d["budgets"]:
            limits[keys.budget(b["budget_id"], b["scope"], b["window"])] = Decimal(b["limit"])
    peaks = dict(ledger.max_committed)
    for k, v in ledger.final.items():
        peaks[k] = max(peaks.get(k, 0), v.get("spent", 0) + v.get("reserved", 0))
    over = 0
    ratio = 0.0
    for k, peak in peaks.items():
        if k in limits:
            cap = int(limits[k] * 1_000_000)
            over = max(over, peak - cap - above[k])
            ratio = max(ratio, peak / cap if cap else 0.0)

    firsts: dict[str, float] = {}
    for route in (live or c).routed:  # a task's latency is that of its first routed copy to arrive
        if route.received_at is not None and route.decision_id in expect.valid and route.decision_id not in firsts:
            firsts[route.decision_id] = (route.received_at - route.created_at).total_seconds() * 1000
    latencies = list(firsts.values())
    rec = list(recover or [])
    known = [r for r in rec if r is not None]
    note = list(notes)
    if missing_decisions:
        note.append(f"{len(missing_decisions)} tasks without a decision")
    if unreceived:
        note.append(f"{len(unreceived)} routed, never received")
    if missing_dead:
        note.append(f"{missing_dead} poison inputs not dead-lettered")
    if copies:
        note.append(f"{copies} extra routed copies")
    if spent_off:
        note.append(f"spent != settlements on {len(spent_off)} keys (off by {from_micros(sum(spent_off.values()))})")
    if reserved_left:
        note.append(f"reserved left {from_micros(sum(reserved_left.values()))} on {len(reserved_left)} keys")
    if chains.doubled:
        note.append(f"{chains.doubled} fallback chain faults ({', '.join(f'{n} {k}' for k, n in chains.faults.items() if n)})")
    if double_reservations:
        note.append(f"{double_reservations} tasks held two open reservations at once")
    if c.unreadable:
        note.append(f"{len(c.unreadable)} unreadable records")
    if len(rec) != len(known):
        note.append(f"{len(rec) - len(known)} faults never recovered")
    outcomes = Counter(d["outcome"] for d in decisions.values())
    triggers = Counter(t for d in decisions.values() for t in d["triggers"])
    kinds_total = Counter(kind for _, kind in settlements)
    return Row(
        scenario=name, tasks_in=len(expect.decisions), distinct_decisions=len(distinct),
        duplicate_events=duplicate_events, duplicate_executions=duplicate_executions, lost=lost,
        routed_mismatches=routed_mismatches, overshoot=from_micros(max(0, over)), actual_above_estimate=actual_above,
        double_charges=double_charges, uncharged_executions=len(uncharged),
        fallbacks_doubled=chains.doubled, double_reservations=double_reservations,
        recover_s=round(max(known), 2) if known and len(known) == len(rec) else None, note="; ".join(note),
        extra={
            "recover_each_s": [None if r is None else round(r, 2) for r in rec],
            "outcomes": dict(outcomes), "triggers": dict(triggers), "settlements": dict(kinds_total),
            "dead_letters": dict(got_dead), "ledger_samples": ledger.samples,
            "max_committed_over_limit": round(ratio, 4),
            "e2e_p50_ms": round(pct(latencies, 0.5), 1) if latencies else None,
            "e2e_p95_ms": round(pct(latencies, 0.95), 1) if latencies else None,
            "missing_decisions": sorted(missing_decisions)[:20], "unreceived": sorted(unreceived)[:20],
            "uncharged": sorted(uncharged)[:20], "duplicate_runs": sorted(d for d, i in runs.items() if len(i) > 1)[:20],
            "failures": dict(chains.failures), "fallbacks": dict(chains.fallbacks),
            "fallbacks_rejected_after": dict(chains.rejected_after),
            "fallbacks_rejected_why": dict(chains.rejected_why.most_common(8)),
            "fallback_faults": {k: n for k, n in chains.faults.items() if n},
            "circuit_changes": dict(Counter(f"{e['from_state']}->{e['to_state']}" for e in c.circuits)),
            "circuit_opens": sum(1 for e in c.circuits if e["to_state"] == "open"),
            "spent_off_micros": spent_off, "reserved_left_micros": reserved_left, "unreadable": c.unreadable[:5],
        },
    )
