"""End-to-end pipeline latency and throughput on the local stack: a real worker process over Kafka.

    python -m benchmarks.pipeline [--runs 3] [--tasks 1500] [--rate 100] [--saturation 10000]

For each run and each worker variant (exactly once, the default: each batch in a Kafka
transaction; at least once: offsets committed after the writes) it starts a fresh dispatcher
worker on its own topics, publishes a paced mixed workload, and measures decision latency
(the batch's time in the dispatcher, incl. its Redis round trip) and dispatch latency (task
created -> routed task received by a ``read_committed`` consumer of its executor topic, as
an executor sees it: a transaction's records become visible only when it commits). With
``--saturation N`` it also pre-loads N tasks and measures how fast one worker decides them
all and its CPU per task. Prints each run and the medians. Needs `dispatch stack up` first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    "exactly once (default)": {},
    "at least once": {"processing_guarantee": "at_least_once"},
}


async def _settings(base: Settings, variant: dict[str, object], workdir: Path) -> Settings:
    ns = f"bench.{secrets.token_hex(4)}"
    s = base.namespaced(ns, **{
        "app_id": ns,
        "metrics_port": 0, "state_dir": workdir, **variant,
    })
    await ensure_topics(s, load_policy(s.policy_file).executors())
    return s


async def one_run(base: Settings, variant: dict[str, object], tasks: int, rate: float,
                  workdir: Path) -> tuple[list[float], list[float]]:
    s = await _settings(base, variant, workdir)
    ns = s.app_id
    policy = load_policy(s.policy_file)
    children = ProcessGroup(workdir, stop_timeout_s=20)
    children.start(ns, s, "worker")
    log, stop = AuditLog(), asyncio.Event()
    reader = asyncio.create_task(read_audit(s.kafka_bootstrap, s.topic_audit, log, stop))
    received: dict[str, tuple[datetime, datetime]] = {}
    tail = asyncio.create_task(_receive(s, policy.executors(), received, stop))
    try:
        async with TaskProducer(s) as producer:
            await producer.submit({"task_id": f"{ns}-warmup", "service": "bench", "workload": "kernel"})
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
        routed = lambda: sum(1 for d in log.decisions.values() if d["assigned_tier"])  # noqa: E731
        while (len(log.decisions) < expected or len(received) < routed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        children.stop_all()
        stop.set()
        await reader
        await tail
    decided = [d for d in log.decisions.values() if d["service"] != "bench" and d["rule_id"] != "validation"]
    created = {d["task_id"]: d for d in decided}
    dispatch = [(at - created_at).total_seconds() * 1000 for task_id, (created_at, at) in received.items()
                if task_id in created]
    return [d["decision_latency_ms"] for d in decided], dispatch


async def _receive(s: Settings, executors: list[str], out: dict[str, tuple[datetime, datetime]],
                   stop: asyncio.Event) -> None:
    """task id -> (created at, when a read_committed reader of its executor topic received it)."""
    consumer = AIOKafkaConsumer(*[s.executor_topic(e) for e in executors], bootstrap_servers=s.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = datetime.now(UTC)
            for msgs in batch.values():
                for m in msgs:
                    body = json.loads(m.value)
                    out.setdefault(body["task_id"], (datetime.fromisoformat(body["created_at"]), now))
    finally:
        await consumer.stop()


async def saturation(base: Settings, variant: dict[str, object], tasks: int, workdir: Path) -> tuple[float, float]:
    """(tasks/s, CPU ms per task) of one worker deciding ``tasks`` pre-loaded tasks."""
    s = await _settings(base, variant, workdir)
    async with TaskProducer(s) as producer:
        for i in range(0, tasks, 1000):
            await producer.submit_many([{"task_id": f"{s.app_id}-{j}", "service": f"svc-{j % 12}", "workload": "llm",
                                         "tenant": f"t{j % 7}", "features": {"tokens": 200 + (j * 37) % 5000}}
                                        for j in range(i, min(tasks, i + 1000))])
    log, stop = AuditLog(), asyncio.Event()
    reader = asyncio.create_task(read_audit(s.kafka_bootstrap, s.topic_audit, log, stop))
    children = ProcessGroup(workdir, stop_timeout_s=20)
    pid = children.start(s.app_id, s, "worker")
    try:
        while not log.decisions:
            children.check()
            await asyncio.sleep(0.05)
        t0, cpu0 = time.monotonic(), _cpu_s(pid)
        first = len(log.decisions)
        while len(log.decisions) < tasks:
            children.check()
            await asyncio.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, _cpu_s(pid) - cpu0
    finally:
        children.stop_all()
        stop.set()
        await reader
    return (tasks - first) / elapsed, cpu * 1000 / (tasks - first)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(runs: int, tasks: int, rate: float, saturate: int) -> None:
    base = get_settings()
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs if saturate else 0):
            for name, variant in VARIANTS.items():
                per_s, cpu_ms = asyncio.run(saturation(base, variant, saturate, Path(tmp)))
                results.setdefault(name, {}).setdefault("saturation", []).append((per_s, cpu_ms))
                print(f"run {run + 1} {name:<24} saturation: {per_s:,.0f} tasks/s, {cpu_ms:.3f} ms CPU per task",
                      flush=True)
        for run in range(runs):
            for loop, variant in VARIANTS.items():
                decision, dispatch = asyncio.run(one_run(base, variant, tasks, rate, Path(tmp)))
                r = results.setdefault(loop, {})
                r.setdefault("decision", [])
                r.setdefault("dispatch", [])
                r["decision"].append((pct(decision, 0.5), pct(decision, 0.95)))
                r["dispatch"].append((pct(dispatch, 0.5), pct(dispatch, 0.95)))
                print(f"run {run + 1} {loop:<24} decision p50/p95 {r['decision'][-1][0]:.2f}/{r['decision'][-1][1]:.2f} ms"
                      f"   dispatch p50/p95 {r['dispatch'][-1][0]:.1f}/{r['dispatch'][-1][1]:.1f} ms"
                      f"   ({len(decision)} decisions)", flush=True)
    print(f"medians over {runs} runs, {tasks} tasks at {rate:g}/s, worker on a 2-core machine with Kafka and Redis:")
    for loop, r in results.items():
        med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in r.items()}
        print(f"  {loop:<24} decision p50 {med['decision'][0]:.2f} ms  p95 {med['decision'][1]:.2f} ms   "
              f"dispatch (created -> received from executor topic) p50 {med['dispatch'][0]:.1f} ms  "
              f"p95 {med['dispatch'][1]:.1f} ms")
        if "saturation" in med:
            print(f"  {'':<24} saturation {med['saturation'][0]:,.0f} tasks/s, {med['saturation'][1]:.3f} ms CPU per task")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--saturation", type=int, default=0, help="also pre-load this many tasks and time one worker")
    args = ap.parse_args()
    main(args.runs, args.tasks, args.rate, args.saturation)
