"""``dispatch demo``: the whole product on the real local stack, in about a minute.

Starts (or reuses) Kafka and Redis, then a dispatcher worker and the example executors as
separate processes, publishes a mixed workload of the three services with budgets that run
short part-way through, follows the audit topic as finance would, and prints what happened:
tiers per class, downgrades per trigger, spend against each budget, estimated vs actual
cost, dead letters and latencies. Every run uses its own topics and a flushed Redis DB
(index 1), and stops every process it started.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
import time
from collections.abc import Callable
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
    })


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
    log, stop_reading = AuditLog(), asyncio.Event()
    reader = asyncio.create_task(read_audit(s.kafka_bootstrap, s.topic_audit, log, stop_reading))
    try:
        procs.start("worker", s, "worker")
        others = [e for e in policy.executors() if e != SMALL_EXECUTOR]
        procs.start("executors", s, "executor", *others, "--capacity", "24")
        procs.start(SMALL_EXECUTOR, s, "executor", SMALL_EXECUTOR, "--capacity", "3")  # saturates: `load` fires
        async with TaskProducer(s) as producer:
            probe: dict[str, Any] = {"task_id": f"{run_id}-probe", "service": PROBE_SERVICE, "workload": "kernel",
                     "features": {"cpu_ms": 1}}
            await producer.submit(probe)
            probe_id = decision_id_for(PROBE_SERVICE, probe["task_id"])
            with console.status("starting the dispatcher worker and the executors..."):
                await _wait(lambda: probe_id in log.settled(), "the worker and executors to start", procs, 180)
            started = time.monotonic()
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
    summary = {"run_id": run_id, "tasks_in": tasks, **summarise(log), "dlq": sum(dead.values()), "dlq_reasons": dead,
               "budgets": await _budget_states(s, log), "audit_topic": s.topic_audit,
               "savings": savings(cost_rows(log)),
               "policy_version": policy.version, "audit_verified": verified.ok,
               "audit_chains": len(verified.chains)}
    return summary


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console)


def _savings_line(total: dict[str, Any]) -> str:
    u, c = total["vs_untiered"], total["vs_complexity"]
    return (f"{u['saved']} of {u['baseline']} ({u['saved_pct']:.1f}%) / "
            f"{c['saved']} of {c['baseline']} ({c['saved_pct']:.1f}%)")


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
    for k, v in rows:
        totals.add_row(k, v)
    for table in (by_class, triggers, budgets, totals):
        console.print(table)
    console.print(f"[dim]audit topic {summary['audit_topic']}: decode it with the schemas in schemas/ "
                  "(Avro single-object encoding)[/]", soft_wrap=True)
