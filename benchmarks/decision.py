"""Decision latency: the pure engine, and the engine with its Redis round trips.

    python -m benchmarks.decision [--redis-url URL] [--runs 5] [--tasks 2000]

Prints p50/p95/p99 per run and the median of each across runs. Three measurements in one
run so they can be compared on the same (noisy, 2-core) machine:
  engine        decide() alone, no I/O
  dispatch x1   Dispatcher.decide([task]): read + commit round trips to Redis, one task at a time
  x100          Dispatcher.decide(batch of 100): the per-task share of one batch
each Redis measurement reading before every batch (two round trips: read, commit) and with
the snapshot cache (snapshot_max_age_s=0.25, the worker's default: one round trip per batch).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import Snapshot, apply_plan, decide
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.settings import get_settings
from dispatch_core.task import Task
from workers.finance import pct


def mixed_tasks(n: int, seed: int, prefix: str) -> list[Task]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        w = rnd.choice(["llm", "script", "kernel"])
        feats = {"tokens": int(rnd.lognormvariate(7, 1))} if w == "llm" else {
            "cpu_ms": rnd.lognormvariate(4, 1), "depth": rnd.randint(0, 6), "payload_bytes": rnd.randint(0, 10**6)}
        out.append(Task.model_validate({
            "task_id": f"{prefix}-{i}", "service": rnd.choice(["llm-gateway", "tarotscript", "aegis"]),
            "workload": w, "tenant": rnd.choice(["acme", "globex", None]), "features": feats,
        }))
    return out


def summary(name: str, runs: list[list[float]]) -> None:
    p50 = [pct(r, 0.5) for r in runs]
    p95 = [pct(r, 0.95) for r in runs]
    p99 = [pct(r, 0.99) for r in runs]
    per_run = "  ".join(f"{a:.3f}/{b:.3f}/{c:.3f}" for a, b, c in zip(p50, p95, p99, strict=True))
    print(f"{name:<22} median over {len(runs)} runs: p50 {statistics.median(p50):.3f} ms  "
          f"p95 {statistics.median(p95):.3f} ms  p99 {statistics.median(p99):.3f} ms   (per run p50/p95/p99: {per_run})")


def engine_runs(runs: int, n: int) -> list[list[float]]:
    """decide() alone, each plan replayed on the snapshot as the dispatcher does."""
    policy, out = load_policy(), []
    for run in range(runs):
        snap, now, samples = Snapshot(), datetime.now(UTC), []
        for t in mixed_tasks(n, run, f"engine{run}"):
            t0 = time.perf_counter()
            plan = decide(t, policy, snap, now)
            samples.append((time.perf_counter() - t0) * 1000)
            apply_plan(snap, plan)
        out.append(samples)
    return out


async def dispatch_runs(
    redis_url: str, runs: int, n: int, snapshot_max_age_s: float = 0.0
) -> tuple[list[list[float]], list[list[float]]]:
    """Dispatcher.decide on the real Redis: one task per call, then batches of 100 (per-task share)."""
    policy = load_policy()
    single_runs, batch_runs = [], []
    ledger = RedisLedger.from_url(redis_url)
    for run in range(runs):
        tasks = mixed_tasks(n, run, f"bench{run}-{time.time_ns()}")
        await ledger.redis.flushdb()
        d = Dispatcher(ledger, PolicyStore(ledger.redis), policy, snapshot_max_age_s=snapshot_max_age_s)
        await d.start()
        samples = []
        for t in tasks[: n // 2]:
            t0 = time.perf_counter()
            await d.decide([t])
            samples.append((time.perf_counter() - t0) * 1000)
        single_runs.append(samples)
        samples = []
        rest = tasks[n // 2 :]
        for i in range(0, len(rest), 100):
            chunk = rest[i : i + 100]
            t0 = time.perf_counter()
            await d.decide(chunk)
            samples.append((time.perf_counter() - t0) * 1000 / len(chunk))
        batch_runs.append(samples)
    await ledger.redis.flushdb()
    await ledger.close()
    return single_runs, batch_runs


def main(redis_url: str, runs: int, n: int) -> None:
    print(f"decision latency, {n} mixed tasks per run (llm/script/kernel, 3 services, 2 tenants, default policy)")
    summary("engine", engine_runs(runs, n))
    for name, max_age in (("read+commit", 0.0), ("1 trip", 0.25)):
        single, batch = asyncio.run(dispatch_runs(redis_url, runs, n, max_age))
        summary(f"x1 {name}", single)
        summary(f"x100 {name}", batch)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default=get_settings().redis_url, help="a Redis whose DB may be flushed")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=2000)
    args = ap.parse_args()
    main(args.redis_url, args.runs, args.tasks)
