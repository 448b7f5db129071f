"""``dispatch demo``: the whole product on the real local stack, in about a minute.

Starts (or reuses) Kafka and Redis, then a dispatcher worker and the example executors as
separate processes, publishes a mixed workload of the three services with budgets that run
short part-way through, follows the audit topic as finance would, and prints what happened:
tiers per class, downgrades per trigger, spend against each budget, estimated vs actual
cost, dead letters and latencies. One executor (``FLAKY_EXECUTOR``) is flaky: a share of its
runs fail and it has an outage part-way through the workload, so the summary also shows
executor failures, the fallbacks decided for them and its circuit breaker opening and closing. Every run uses its own topics and a flushed Redis DB
(index 1), and stops every process it started.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatch_core.decision import decision_id_for
from dispatch_core.errors import TaskError
from dispatch_core.ledger import RedisLedger
from dispatch_core.money import from_micros
from dispatch_core.policy import Policy, load_policy, parse_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout, ServiceRollout
from dispatch_core.settings import Settings
from schemas import CIRCUIT, decode
from stack import process
from stack.children import ProcessGroup
from stack.errors import ServiceFailed
from streams.audit import verify_topic
from streams.consume import to_end, topic_reader
from streams.dlq import DeadLetter
from streams.producer import TaskProducer
from streams.topics import ensure_topics
from workers.finance import AuditLog, cost_rows, read_audit, summarise
from workers.finance_rules import savings

from .output import short
from .workload import demo_workload

#: Budgets sized so the demo's ~14 USD of asked-for work runs short part-way through.
DEMO_BUDGETS: list[dict[str, Any]] = [
    {"id": "global-daily", "scope": "global", "window": "day", "limit": "8.00", "soft_pct": 0.8},
    {"id": "tenant-hourly", "scope": "tenant", "window": "hour", "limit": "3.00", "soft_pct": 0.8},
    {"id": "aegis-daily", "scope": "service", "match": "aegis", "window": "day", "limit": "0.20", "soft_pct": 0.8},
    {"id": "tarotscript-daily", "scope": "service", "match": "tarotscript", "window": "day", "limit": "0.05"},
]
SHADOW_SERVICE = "tarotscript"  # adopts in shadow mode: decided and logged, routed as asked
PROBE_SERVICE = "demo-probe"
SMALL_EXECUTOR = "llm-large"  # run with little capacity, so the load trigger shows on live reports
#: Run flaky: FLAKY_FAILURE_RATE of its runs fail (FLAKY_PERMANENT_SHARE of those permanently), and it has an
#: outage part-way through the workload (``flaky_outage``). llm-medium takes about 40% of the LLM tasks (scores
#: 0.4-0.8) plus what the saturated llm-large sheds to it: enough traffic to open its circuit within a second.
FLAKY_EXECUTOR = "llm-medium"
FLAKY_FAILURE_RATE = 0.1
FLAKY_PERMANENT_SHARE = 0.2
#: The circuit's cool-down in the demo (default 30 s) and its probes' share (default 10%): short and
#: large enough that it probes and closes again within the run's 15 s.
DEMO_CIRCUIT_COOLDOWN_S = 3.0
DEMO_CIRCUIT_PROBE_PCT = 50.0


def flaky_outage(tasks: int, rate: float) -> tuple[float, float]:
    """The flaky executor's outage, in seconds after it starts (just before the workload does).

    A fifth of the way into the workload, for at least 5 s (a fifth of it when longer): enough
    failures in a row to open the circuit, and over before the cool-down ends, so the
    half-open probes succeed and it closes again while tasks still flow.
    """
    duration = tasks / rate
    start = max(3.0, 0.2 * duration)
    return round(start, 1), round(start + max(5.0, 0.2 * duration), 1)


def demo_policy(base: Policy) -> Policy:
    data = base.model_dump(mode="json")
    data["name"] = f"{base.name}-demo"
    data["budgets"] = DEMO_BUDGETS
    return parse_policy(data, source="demo policy")


def demo_settings(base: Settings, run_id: str, run_dir: Path) -> Settings:
    """The stack's settings with this run's own topics, Redis DB, policy file and metrics port."""
    return base.namespaced(f"demo.{run_id}", **{
        "app_id": f"dispatch-demo-{run_id}", "redis_url": base.redis_url.rsplit("/", 1)[0] + "/1",
        "policy_file": run_dir / "policy.json", "metrics_port": process.free_ports(1)[0], "reservation_ttl_s": 120.0,
        "circuit_cooldown_s": DEMO_CIRCUIT_COOLDOWN_S, "circuit_probe_pct": DEMO_CIRCUIT_PROBE_PCT,
    })


@dataclass
class DemoAuditLog(AuditLog):
    """The finance reader's log plus the circuit breaker changes (which finance does not keep)."""

    circuits: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (executor, seq) -> event

    def add(self, data: bytes) -> None:
        schema, record = decode(data)
        if schema is CIRCUIT:
            self.raw_events += 1
            self.circuits.setdefault((record["executor"], record["seq"]), record)
        else:
            super().add(data)


def _when(value: Any) -> datetime:
    """An event's timestamp: decoded Avro gives an aware datetime; tolerate ISO text and naive (UTC)."""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def failure_summary(decisions: Iterable[dict[str, Any]], settlements: Iterable[dict[str, Any]],
                    circuits: Iterable[dict[str, Any]], t0: datetime | None = None) -> dict[str, Any]:
    """Executor failures, fallbacks and circuit changes of a run, from its audit events alone.

    ``decisions``, ``settlements`` and ``circuits`` are decoded audit events, each once. A
    failure is a settlement whose report outcome is ``failed`` (by ``error_class``) or
    ``expired`` (the executor got to it after its deadline; not a reservation expiry, which has
    no outcome); a fallback is a decision with attempt > 1 caused by ``executor_failure``. Circuit
    changes are in each executor's order (``seq``), timed in seconds after ``t0`` (default: the
    first decision).
    """
    decisions = list(decisions)
    failures: Counter[str] = Counter()
    by_executor: dict[str, Counter[str]] = defaultdict(Counter)
    errors: Counter[str] = Counter()
    for e in settlements:
        outcome = e.get("outcome")
        if outcome == "failed":
            what = e.get("error_class") or "retryable"
            errors[e.get("error") or "unknown"] += 1
        elif outcome == "expired":
            what = "expired"
        else:
            continue
        failures[what] += 1
        by_executor[e.get("executor") or "?"][what] += 1
    fallbacks = [d for d in decisions if d.get("attempt", 1) > 1 and "executor_failure" in d["triggers"]]
    fell_to: Counter[str] = Counter(d["executor"] or "rejected" for d in fallbacks)
    if t0 is None:
        t0 = min((_when(d["decided_at"]) for d in decisions), default=None)
    changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in sorted(circuits, key=lambda c: (c["executor"], c["seq"])):
        at = _when(c["changed_at"])
        changes[c["executor"]].append({
            "from": c["from_state"], "to": c["to_state"], "reason": c["reason"], "seq": c["seq"],
            "at_s": round((at - t0).total_seconds(), 1) if t0 is not None else None,
        })
    return {
        "executor_failures": {
            "retryable": failures["retryable"], "permanent": failures["permanent"], "expired": failures["expired"],
            "by_executor": {k: {w: v[w] for w in ("retryable", "permanent", "expired")} for k, v in sorted(by_executor.items())},
            "by_error": dict(sorted(errors.items())),
        },
        "fallbacks": {
            "decided": len(fallbacks),
            "rejected": sum(1 for d in fallbacks if not d["assigned_tier"]),
            "to_executor": dict(sorted(fell_to.items())),
        },
        "circuit_changes": dict(sorted(changes.items())),
    }


def circuit_line(executor: str, changes: list[dict[str, Any]]) -> str:
    """``llm-medium: closed->open +21.3 s, open->half_open +26.3 s, ...``"""
    steps = [f"{c['from']}->{c['to']}" + ("" if c["at_s"] is None else f" {c['at_s']:+.1f} s") for c in changes]
    return f"{executor}: " + ", ".join(steps)


async def _wait(cond: Callable[[], bool], what: str, procs: ProcessGroup, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        procs.check()
        if time.monotonic() > deadline:
            raise ServiceFailed(f"demo: timed out waiting for {what}", process.tail(procs.log("worker")))
        await asyncio.sleep(0.1)


async def _dead_letters(s: Settings) -> dict[str, int]:
    """Dead letters per reason, read committed (offsets alone would count transaction markers)."""
    async with topic_reader(s.kafka_bootstrap, s.topic_dlq) as consumer:
        return dict(Counter([DeadLetter.from_record(m.key, m.value, list(m.headers)).reason
                             async for m in to_end(consumer)]))


async def _budget_states(s: Settings, log: AuditLog) -> list[dict[str, Any]]:
    """Final state of every budget scope the run touched, read back from the Redis ledger."""
    from dispatch_core import keys

    seen: dict[str, dict[str, Any]] = {}
    for d in log.decisions.values():
        for b in d["budgets"]:
            seen[keys.budget(b["budget_id"], b["scope"], b["window"])] = b
    ledger = RedisLedger.from_url(s.redis_url)
    out = []
    try:
        for key, b in sorted(seen.items(), key=lambda kv: (kv[1]["budget_id"], kv[1]["scope"])):
            state = await ledger.scope(key)
            limit = Decimal(b["limit"])
            spent, reserved = from_micros(state.spent), from_micros(state.reserved)
            out.append({"budget": b["budget_id"], "scope": b["scope"], "window": b["window"], "limit": str(limit),
                        "spent": str(spent), "presumed": str(from_micros(await ledger.presumed(key))),
                        "reserved": str(reserved), "utilisation_pct": round(float((spent + reserved) / limit * 100), 1)})
    finally:
        await ledger.close()
    return out


async def run_pipeline_demo(stack_settings: Settings, *, tasks: int, rate: float, console: Console) -> dict[str, Any]:
    """Everything after the stack is up. Returns the summary (also what ``--json`` prints)."""
    run_id = time.strftime("%H%M%S") + secrets.token_hex(2)
    run_dir = stack_settings.state_dir / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    policy = demo_policy(load_policy(stack_settings.policy_file))
    (run_dir / "policy.json").write_text(policy.canonical_json())
    s = demo_settings(stack_settings, run_id, run_dir)
    await ensure_topics(s, policy.executors())
    redis = Redis.from_url(s.redis_url, decode_responses=True)
    await redis.flushdb()
    store = PolicyStore(redis)
    await store.publish(policy)
    await store.set_rollout(Rollout(services={SHADOW_SERVICE: ServiceRollout(mode="shadow")}))
    await redis.aclose()
    console.print(f"[bold]demo run {run_id}[/]: policy {policy.name} {short(policy.version)}, "
                  f"{SHADOW_SERVICE} in shadow mode, logs in {run_dir}", soft_wrap=True)

    procs = ProcessGroup(run_dir)  # the run dir is their cwd too
    log, stop_reading = DemoAuditLog(), asyncio.Event()
    outage = flaky_outage(tasks, rate)
    reader = asyncio.create_task(read_audit(s.kafka_bootstrap, s.topic_audit, log, stop_reading))
    try:
        procs.start("worker", s, "worker")
        others = [e for e in policy.executors() if e not in (SMALL_EXECUTOR, FLAKY_EXECUTOR)]
        procs.start("executors", s, "executor", *others, "--capacity", "24")
        procs.start(SMALL_EXECUTOR, s, "executor", SMALL_EXECUTOR, "--capacity", "3")  # saturates: `load` fires
        async with TaskProducer(s) as producer:
            probe: dict[str, Any] = {"task_id": f"{run_id}-probe", "service": PROBE_SERVICE, "workload": "kernel",
                     "features": {"cpu_ms": 1}}
            await producer.submit(probe)
            probe_id = decision_id_for(PROBE_SERVICE, probe["task_id"])
            with console.status("starting the dispatcher worker and the executors..."):
                await _wait(lambda: probe_id in log.settled(), "the worker and executors to start", procs, 180)
            # started just before the workload, so its outage (seconds after it starts) falls inside it
            procs.start(FLAKY_EXECUTOR, s, "executor", FLAKY_EXECUTOR, "--capacity", "24",
                        "--failure-rate", str(FLAKY_FAILURE_RATE), "--permanent-share", str(FLAKY_PERMANENT_SHARE),
                        "--outage", f"{outage[0]}:{outage[1]}")
            started, started_at = time.monotonic(), datetime.now(UTC)
            expected = 0
            with _progress(console) as progress:
                pub = progress.add_task("published", total=tasks)
                dec = progress.add_task("decided", total=tasks)
                for i, msg in enumerate(demo_workload(tasks, run_id)):
                    try:
                        await producer.enqueue(msg)  # validated, keyed by its task id, not awaited
                    except TaskError as exc:  # broken on purpose: sent as it is (keyed by its task id if readable)
                        await producer.enqueue_raw(msg, key=exc.task_id.encode() if exc.task_id else None)
                    expected += b'"task_id"' in msg
                    delay = started + (i + 1) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if i % 20 == 0:
                        progress.update(pub, completed=i + 1)
                        progress.update(dec, completed=len(log.decisions) - 1)
                        procs.check()
                progress.update(pub, completed=tasks)
                await _wait(lambda: len(log.decisions) - 1 >= expected, "every decision on the audit topic", procs, 120)
                progress.update(dec, completed=tasks)
            routed = lambda: sum(1 for d in log.decisions.values() if d["assigned_tier"])  # noqa: E731
            with console.status("waiting for executors to report actual costs..."):
                await _wait(lambda: len(log.settled()) >= routed(), "every routed task to be settled", procs, 120)
            await asyncio.sleep(0.5)  # let late duplicates (if any) arrive before counting
    finally:
        procs.stop_all()
        stop_reading.set()
        await reader
    for key in [k for k, d in log.decisions.items() if d["service"] == PROBE_SERVICE]:
        log.decisions.pop(key)
        log.settlements.pop((key, "settled"), None)
        log.raw_events -= 2
    dead = await _dead_letters(s)
    verified = await verify_topic(s)
    failures = failure_summary(log.decisions.values(), log.settlements.values(), log.circuits.values(), started_at)
    flaky = {"executor": FLAKY_EXECUTOR, "failure_rate": FLAKY_FAILURE_RATE, "permanent_share": FLAKY_PERMANENT_SHARE,
             "outage_s": list(outage), "circuit_cooldown_s": DEMO_CIRCUIT_COOLDOWN_S}
    summary = {"run_id": run_id, "tasks_in": tasks, **summarise(log), **failures, "flaky": flaky,
               "dlq": sum(dead.values()), "dlq_reasons": dead,
               "budgets": await _budget_states(s, log), "audit_topic": s.topic_audit,
               "savings": savings(cost_rows(log)),
               "policy_version": policy.version, "audit_verified": verified.ok,
               "audit_chains": len(verified.chains)}
    return summary


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console)


def _savings_line(total: dict[str, Any]) -> str:
    u, c, x = total["vs_untiered"], total["vs_complexity"], total["unserved"]
    return (f"{u['saved']} of {u['baseline']} ({u['saved_pct']:.1f}%) / "
            f"{c['saved']} of {c['baseline']} ({c['saved_pct']:.1f}%) over {total['tasks']} served tasks; "
            f"{x['tasks']} tasks unserved, cost {x['cost']}")


def failure_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The closing report's rows on executor failures, fallbacks and circuits (zeros when none)."""
    f, fb = summary["executor_failures"], summary["fallbacks"]
    flaky = summary.get("flaky")
    rows = []
    if flaky:
        rows.append(("flaky executor (failure rate, outage s after start, circuit cool-down s)",
                     f"{flaky['executor']} ({flaky['failure_rate']:.0%}, {flaky['outage_s'][0]}-{flaky['outage_s'][1]}, "
                     f"{flaky['circuit_cooldown_s']:g})"))
    rows += [
        ("executor failures retryable / permanent / expired", f"{f['retryable']} / {f['permanent']} / {f['expired']}"),
        ("fallbacks decided (of them rejected)", f"{fb['decided']} ({fb['rejected']} rejected)"),
    ]
    changes = summary["circuit_changes"]
    if not changes:
        rows.append(("circuit changes", "none"))
    for executor, steps in changes.items():
        rows.append(("circuit changes (s after the workload began)", circuit_line(executor, steps)))
    return rows


def render(summary: dict[str, Any], console: Console) -> None:
    """The demo's closing report."""
    by_class = Table("class", "tier", "tasks", title="tasks per class and tier", title_justify="left")
    for cls, tiers in sorted(summary["by_class"].items()):
        for tier, n in sorted(tiers.items(), key=lambda kv: -kv[1]):
            by_class.add_row(cls, tier, str(n))
    triggers = Table("trigger", "decisions", title="standard triggers fired", title_justify="left")
    for t, n in sorted(summary["by_trigger"].items(), key=lambda kv: -kv[1]):
        triggers.add_row(t, str(n))
    budgets = Table("budget / scope", "window", "limit", "spent", "reserved", "used %",
                    title="spend vs budget (from the Redis ledger)", title_justify="left")
    budgets.columns[0].no_wrap = True
    for b in summary["budgets"]:
        money = [f"{Decimal(b[k]):.4f}" for k in ("limit", "spent", "reserved")]
        budgets.add_row(f"{b['budget']} {b['scope']}", b["window"].split(":")[0], *money, f"{b['utilisation_pct']:.1f}")
    totals = Table("", "", title="run", title_justify="left", show_header=False)
    rows = [
        ("tasks in / decisions / routed / rejected",
         f"{summary['tasks_in']} / {summary['decisions']} / {summary['routed']} / {summary['rejected']}"),
        ("dead letters (by reason)", f"{summary['dlq']} {json.dumps(summary['dlq_reasons'])}"),
        ("expired reservations / duplicate reports / repeats skipped by executors",
         f"{summary['expired']} / {summary['duplicate_reports']} / {summary['skipped_duplicates']}"),
        ("audit events (decisions + settlements)", str(summary["audit_events"])),
        ("audit hash chains (dispatch audit verify)",
         f"{summary['audit_chains']} chains, {'verified' if summary['audit_verified'] else 'BROKEN'}"),
        ("estimated vs actual cost of settled tasks", f"{summary['estimated_settled']} vs {summary['actual_settled']}"),
        ("savings vs every task untiered / vs complexity alone", _savings_line(summary["savings"]["total"])),
        ("shadow mode: enforcement would have changed", json.dumps(summary["shadow_would_change"])),
        ("decision latency p50 / p95 / p99 (ms, per batch)",
         f"{summary['decision_p50_ms']} / {summary['decision_p95_ms']} / {summary['decision_p99_ms']}"),
        ("end-to-end p50 / p95 (ms, produced -> at executor)", f"{summary['e2e_p50_ms']} / {summary['e2e_p95_ms']}"),
    ]
    rows.extend(failure_rows(summary))
    for k, v in rows:
        totals.add_row(k, v)
    for table in (by_class, triggers, budgets, totals):
        console.print(table)
    console.print(f"[dim]audit topic {summary['audit_topic']}: decode it with the schemas in schemas/ "
                  "(Avro single-object encoding)[/]", soft_wrap=True)
