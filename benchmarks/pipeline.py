"""The ``pipeline`` section of ``dispatch bench``: real worker processes over the real broker and Redis.

1. Offered rates (100, 1,000, 2,000 tasks/s): a paced, non-blocking producer sends a mixed
   workload of the three services to one worker; a ``read_committed`` reader (as executors
   and finance read) notes when each task's routed copy and its audit event arrive. End to
   end is task created -> received, on one clock (this process). Achieved is what the
   producer really sent per second.
2. Saturation: tasks as fast as the producer goes, one worker, then two workers in one
   consumer group on the same topic: tasks/s from first to last decision and CPU ms per task
   of the worker processes (from /proc) over the same interval.
3. Partition spread of the task topic over everything sent (max / mean).

The task topic has 4 partitions here (the product's default is 3) so that two workers can
each own an equal share. Each run uses its own topics and consumer group.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.baselines import cpu_s, input_partitions
from dispatch_cli.workload import mixed_task
from dispatch_core.decision import decision_id_for
from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings
from schemas import decode
from stack.children import ProcessGroup
from streams.producer import TaskProducer
from streams.topics import ensure_topics
from workers.finance import pct

RATES = (100, 1000, 2000)
TASK_PARTITIONS = 4


def quantile(values: list[float], q: float) -> float:
    """``workers.finance.pct``, but NaN for no samples (a missing latency is not 0 ms)."""
    return pct(values, q) if values else float("nan")


async def bench_settings(base: Settings, workdir: Path) -> Settings:
    """A private namespace (topics, group, transactional ids) with its topics created."""
    ns = f"bench.{secrets.token_hex(4)}"
    s = base.namespaced(ns, app_id=ns, metrics_port=0, state_dir=workdir, task_partitions=TASK_PARTITIONS)
    await ensure_topics(s, load_policy(s.policy_file).executors())
    return s


@dataclass
class Arrivals:
    """When each key first arrived on the routed (executor) topics and on the audit topic (time.time())."""

    routed: dict[bytes, float] = field(default_factory=dict)
    audit: dict[bytes, float] = field(default_factory=dict)
    audit_values: list[bytes] = field(default_factory=list)  # decoded after the run, off the clock


async def tail(s: Settings, executors: list[str], out: Arrivals, stop: asyncio.Event) -> None:
    """Read the executor topics and the audit topic as executors and finance do (read_committed)."""
    routed = {s.executor_topic(e) for e in executors}
    consumer = AIOKafkaConsumer(*routed, s.topic_audit, bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                fetch_max_wait_ms=100)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50, max_records=5000)
            now = time.time()
            for tp, msgs in batch.items():
                seen = out.routed if tp.topic in routed else out.audit
                for m in msgs:
                    if m.key is not None:
                        seen.setdefault(m.key, now)
                    if tp.topic == s.topic_audit and m.value is not None:
                        out.audit_values.append(m.value)
    finally:
        await consumer.stop()


def tasks_for(prefix: str, n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        task = mixed_task(rnd, i)
        task["task_id"] = f"{prefix}-{i}"
        out.append(task)
    return out


async def paced(producer: TaskProducer, tasks: list[dict[str, Any]], rate: float) -> tuple[float, dict[str, float]]:
    """Send ``tasks`` at ``rate`` per second without waiting on each; returns (achieved/s, sent time per id).

    Each task is stamped ``created_at`` as it is handed to the producer; every send is confirmed
    (``flush``) before the phase ends. Sends due in a tick go together (1 ms ticks).
    """
    sent: dict[str, float] = {}
    start = time.monotonic()
    i = 0
    while i < len(tasks):
        due = min(len(tasks), int((time.monotonic() - start) * rate) + 1)
        while i < due:
            t = tasks[i]
            now = time.time()
            t["created_at"] = datetime.fromtimestamp(now, UTC).isoformat()
            await producer.enqueue(t)
            sent[t["task_id"]] = now
            i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    elapsed = time.monotonic() - start
    await producer.flush()
    return (len(tasks) - 1) / elapsed if elapsed > 0 and len(tasks) > 1 else float(len(tasks)), sent


async def wait_for(done: Callable[[], bool], check: Callable[[], None], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        check()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def latencies(sent: dict[str, float], arrived: dict[bytes, float], key: Callable[[str], bytes]) -> list[float]:
    return [(arrived[key(tid)] - at) * 1000 for tid, at in sent.items() if key(tid) in arrived]


def _summary(values: list[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_p50_ms": quantile(values, 0.5), f"{prefix}_p95_ms": quantile(values, 0.95),
            f"{prefix}_p99_ms": quantile(values, 0.99)}


async def _group_members(s: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        groups = await admin.describe_consumer_groups([s.app_id])
        described = groups[0].groups[0] if groups and groups[0].groups else None
        if described is None:
            return 0
        state, members = described[2], described[5]
        return len(members) if state == "Stable" else 0
    finally:
        await admin.close()


async def _partition_counts(s: Settings) -> list[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(input_partitions(s))
        return [ends[tp] for tp in input_partitions(s)]
    finally:
        await consumer.stop()


async def _saturate(producer: TaskProducer, s: Settings, arrivals: Arrivals, pids: list[int],
                    children: ProcessGroup, n: int, prefix: str, seed: int) -> dict[str, float]:
    """Offer ``n`` tasks as fast as the producer goes; the workers' rate and CPU from first to last decision."""
    tasks = tasks_for(prefix, n, seed)
    keys = [decision_id_for(t["service"], t["task_id"]).encode() for t in tasks]
    now = datetime.now(UTC).isoformat()
    for t in tasks:
        t["created_at"] = now
    cpu0 = [cpu_s(p) for p in pids]
    t0 = time.time()
    await producer.submit_many(tasks)
    sent_s = time.time() - t0
    ok = await wait_for(lambda: all(k in arrivals.audit for k in keys), children.check, 60 + n / 200)
    cpu = sum(cpu_s(p) for p in pids) - sum(cpu0)
    got = [arrivals.audit[k] for k in keys if k in arrivals.audit]
    first, last = min(got), max(got)
    # CPU over the whole phase (incl. the wait for the first batch): per task, an upper bound
    return {"per_s": (len(got) - 1) / (last - first) if last > first else float("nan"),
            "cpu_ms_per_task": cpu * 1000 / max(1, len(got)), "tasks": len(got), "complete": ok,
            "producer_s": sent_s}


async def run_pipeline(base: Settings, workdir: Path, *, quick: bool, rates: Sequence[int] = RATES,
                       seconds: float | None = None, saturation_n: int | None = None, seed: int = 11,
                       log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every measurement of the pipeline section (see the module docstring), as one dict.

    Each offered rate runs ``seconds`` (3 quick, 15 full); saturation offers ``saturation_n`` tasks.
    """
    s = await bench_settings(base, workdir)
    executors = load_policy(s.policy_file).executors()
    seconds = seconds or (3 if quick else 15)
    saturation_n = saturation_n or (5_000 if quick else 30_000)
    arrivals, stop = Arrivals(), asyncio.Event()
    reader = asyncio.create_task(tail(s, executors, arrivals, stop))
    children = ProcessGroup(workdir, stop_timeout_s=20)
    result: dict[str, Any] = {"task_partitions": TASK_PARTITIONS, "processing_guarantee": s.processing_guarantee,
                              "rates": []}
    samples: dict[str, list[float]] = {}
    try:
        pids = [children.start("worker-1", s.model_copy(update={"worker_id": f"{s.app_id}-1"}), "worker")]
        async with TaskProducer(s) as producer:
            warm = tasks_for(f"{s.app_id}-warm", 20, seed)
            await paced(producer, warm, 20)
            warm_keys = [decision_id_for(t["service"], t["task_id"]).encode() for t in warm]
            if not await wait_for(lambda: all(k in arrivals.audit for k in warm_keys), children.check, 120):
                raise RuntimeError("the worker did not decide the warm-up tasks within 120 s")
            phases = []
            for rate in rates:
                tasks = tasks_for(f"{s.app_id}-r{rate}", int(rate * seconds), seed + rate)
                achieved, sent = await paced(producer, tasks, rate)
                by_id = {t["task_id"]: decision_id_for(t["service"], t["task_id"]).encode() for t in tasks}
                await wait_for(lambda: all(k in arrivals.audit for k in by_id.values()), children.check, 60)
                phases.append((rate, achieved, sent, by_id))
                log(f"pipeline {rate:>5}/s offered, {achieved:,.0f}/s achieved")
            one = await _saturate(producer, s, arrivals, pids, children, saturation_n, f"{s.app_id}-sat1", seed + 1)
            log(f"pipeline saturation, 1 worker: {one['per_s']:,.0f} tasks/s, {one['cpu_ms_per_task']:.3f} ms CPU/task")
            pids.append(children.start("worker-2", s.model_copy(update={"worker_id": f"{s.app_id}-2"}), "worker"))
            if not await wait_for_group(s, 2, children, 90):
                raise RuntimeError("the second worker did not join the group within 90 s")
            two = await _saturate(producer, s, arrivals, pids, children, saturation_n, f"{s.app_id}-sat2", seed + 2)
            log(f"pipeline saturation, 2 workers: {two['per_s']:,.0f} tasks/s, {two['cpu_ms_per_task']:.3f} ms CPU/task")
        counts = await _partition_counts(s)
    finally:
        children.stop_all()
        stop.set()
        await reader
    result.update({
        "max_per_s_1_worker": one["per_s"], "cpu_ms_per_task": one["cpu_ms_per_task"],
        "max_per_s_2_workers": two["per_s"], "cpu_ms_per_task_2_workers": two["cpu_ms_per_task"],
        "saturation_tasks": saturation_n, "partition_counts": counts,
        "partition_max_over_mean": max(counts) / statistics.mean(counts) if counts and any(counts) else float("nan"),
    })
    for rate, achieved, sent, by_id in phases:  # read after the run: every routed copy has arrived by then
        routed = latencies(sent, arrivals.routed, lambda tid: tid.encode())
        audited = latencies(sent, arrivals.audit, lambda tid: by_id[tid])
        samples[f"{rate}/s"] = routed
        row = {"offered_per_s": rate, "achieved_per_s": achieved, "tasks": len(sent), "routed": len(routed),
               "audited": len(audited), **_summary(routed, "e2e"), **_summary(audited, "audit")}
        result["rates"].append(row)
        log(f"pipeline {rate:>5}/s: created -> routed p50/p95/p99 {row['e2e_p50_ms']:.1f}/{row['e2e_p95_ms']:.1f}/"
            f"{row['e2e_p99_ms']:.1f} ms, -> audit event p50/p95 {row['audit_p50_ms']:.1f}/{row['audit_p95_ms']:.1f} ms")
    result["decision_in_worker"] = _worker_decision_latency(arrivals.audit_values)
    result["samples"] = samples
    return result


async def wait_for_group(s: Settings, members: int, children: ProcessGroup, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children.check()
        if await _group_members(s) >= members:
            return True
        await asyncio.sleep(0.5)
    return False


def _worker_decision_latency(values: list[bytes]) -> dict[str, float]:
    """The decision time the worker recorded (its batch's time in the dispatcher), over the rate phases."""
    ms = []
    for v in values:
        try:
            schema, record = decode(v)
        except Exception:  # noqa: BLE001 - a registry-framed or foreign event: not ours to time
            continue
        if schema.name == "decision" and "-r" in record["task_id"]:
            ms.append(record["decision_latency_ms"])
    return {"p50_ms": quantile(ms, 0.5), "p95_ms": quantile(ms, 0.95), "p99_ms": quantile(ms, 0.99), "n": len(ms)}
