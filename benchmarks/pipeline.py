"""End-to-end pipeline latency on the local stack: a real worker process, tasks over Kafka.

    python -m benchmarks.pipeline [--runs 3] [--tasks 1500] [--rate 100]

For each run and each worker variant (its defaults; reading before every batch instead of
one round trip) it starts a fresh dispatcher worker on
its own topics, publishes a paced mixed workload, and reads back from the audit topic:
decision latency (the batch's time in the dispatcher, incl. its two Redis round trips)
and dispatch latency (task created -> routed task on its executor topic). Prints p50/p95
per run and the medians. Needs `dispatch stack up` first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from dispatch_cli.workload import demo_workload
from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings, get_settings
from stack.children import ProcessGroup
from streams.producer import TaskProducer
from streams.topics import ensure_topics
from workers.finance import AuditLog, pct, read_audit


#: The worker configurations compared: its defaults, then one thing changed each.
VARIANTS: dict[str, dict[str, object]] = {
    "default (1 trip)": {"snapshot_max_age_s": 0.25},
    "read + commit": {"snapshot_max_age_s": 0.0},
}


async def one_run(base: Settings, variant: dict[str, object], tasks: int, rate: float,
                  workdir: Path) -> tuple[list[float], list[float]]:
    ns = f"bench.{secrets.token_hex(4)}"
    s = base.model_copy(update={
        "topic_tasks": f"{ns}.tasks", "topic_executor_prefix": f"{ns}.exec.", "topic_audit": f"{ns}.audit",
        "topic_cost": f"{ns}.cost", "topic_load": f"{ns}.load", "topic_dlq": f"{ns}.dlq", "app_id": ns,
        "metrics_port": 0, "state_dir": workdir, **variant,
    })
    policy = load_policy(s.policy_file)
    await ensure_topics(s, policy.executors())
    children = ProcessGroup(workdir, stop_timeout_s=20)
    children.start(ns, s, "worker")
    log, stop = AuditLog(), asyncio.Event()
    reader = asyncio.create_task(read_audit(s.kafka_bootstrap, s.topic_audit, log, stop))
    try:
        async with TaskProducer(s) as producer:
            await producer.submit({"task_id": "warmup", "service": "bench", "workload": "kernel"})
            while not log.decisions:
                children.check()  # a worker that died on start-up fails the run instead of hanging it
                await asyncio.sleep(0.1)
            start = time.monotonic()
            for i, msg in enumerate(demo_workload(tasks, ns)):
                await producer.send_raw(msg)
                delay = start + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        expected = 1 + sum(1 for m in demo_workload(tasks, ns) if b'"task_id"' in m)
        deadline = time.monotonic() + 60
        while len(log.decisions) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        routed = await _routed_at(s, policy.executors())
    finally:
        children.stop_all()
        stop.set()
        await reader
    decided = [d for d in log.decisions.values() if d["service"] != "bench" and d["rule_id"] != "validation"]
    created = {d["task_id"]: d for d in decided}
    dispatch = [(at - created_at).total_seconds() * 1000 for task_id, (created_at, at) in routed.items() if task_id in created]
    return [d["decision_latency_ms"] for d in decided], dispatch


async def _routed_at(s: Settings, executors: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """task id -> (created at, time its routed task was appended to the executor topic)."""
    consumer = AIOKafkaConsumer(*[s.executor_topic(e) for e in executors], bootstrap_servers=s.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: dict[str, tuple[datetime, datetime]] = {}
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                for m in msgs:
                    body = json.loads(m.value)
                    appended = datetime.fromtimestamp(m.timestamp / 1000, tz=UTC)
                    out[body["task_id"]] = (datetime.fromisoformat(body["created_at"]), appended)
    finally:
        await consumer.stop()
    return out


def main(runs: int, tasks: int, rate: float) -> None:
    base = get_settings()
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for loop, variant in VARIANTS.items():
                decision, dispatch = asyncio.run(one_run(base, variant, tasks, rate, Path(tmp)))
                r = results.setdefault(loop, {"decision": [], "dispatch": []})
                r["decision"].append((pct(decision, 0.5), pct(decision, 0.95)))
                r["dispatch"].append((pct(dispatch, 0.5), pct(dispatch, 0.95)))
                print(f"run {run + 1} {loop:<24} decision p50/p95 {r['decision'][-1][0]:.2f}/{r['decision'][-1][1]:.2f} ms"
                      f"   dispatch p50/p95 {r['dispatch'][-1][0]:.1f}/{r['dispatch'][-1][1]:.1f} ms"
                      f"   ({len(decision)} decisions)", flush=True)
    print(f"medians over {runs} runs, {tasks} tasks at {rate:g}/s, worker on a 2-core machine with Kafka and Redis:")
    for loop, r in results.items():
        med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in r.items()}
        print(f"  {loop:<24} decision p50 {med['decision'][0]:.2f} ms  p95 {med['decision'][1]:.2f} ms   "
              f"dispatch (created -> on executor topic) p50 {med['dispatch'][0]:.1f} ms  p95 {med['dispatch'][1]:.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=100.0)
    args = ap.parse_args()
    main(args.runs, args.tasks, args.rate)
