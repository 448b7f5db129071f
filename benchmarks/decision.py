"""The ``decision`` section of ``dispatch bench``: the engine alone, and ``Dispatcher.decide`` on the real Redis.

Three measurements in one run, so they compare on the same (noisy) machine:

- engine: ``decide()`` alone, no I/O, each plan applied to the snapshot as the dispatcher does;
- one task per call: ``Dispatcher.decide([task])``, its Redis round trips included, with the
  worker's snapshot cache (``snapshot_max_age_s`` 0.25 s: one round trip per call when warm);
- batches of 100: the per-task share of ``Dispatcher.decide(batch)``.

The workload is mixed (three classes, three services, tenants, some tight SLAs) and the budgets
are a hundredth of the default policy's, with one executor reporting saturation, so every
standard trigger fires during the run (``triggers`` counts them). Decisions are made at one
fixed instant, 12:30 UTC tomorrow: how far the budget windows have run (which the trend
trigger projects from) is then the same whatever time of day the bench runs.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import Snapshot, apply_plan, decide
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import DEFAULT_POLICY_PATH, Policy, load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.task import Task
from benchmarks.savings import next_day
from workers.finance import pct


def mixed_tasks(n: int, seed: int, prefix: str) -> list[Task]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        w = rnd.choice(["llm", "script", "kernel"])
        feats = {"tokens": int(rnd.lognormvariate(7, 1))} if w == "llm" else {
            "cpu_ms": rnd.lognormvariate(4, 1), "depth": rnd.randint(0, 6), "payload_bytes": rnd.randint(0, 10**6)}
        task: dict[str, Any] = {"task_id": f"{prefix}-{i}", "service": rnd.choice(["llm-gateway", "tarotscript", "aegis"]),
                                "workload": w, "tenant": rnd.choice(["acme", "globex", None]), "features": feats}
        if rnd.random() < 0.05:
            task["sla_ms"] = 30  # some tasks only a fast tier can serve: sla_guard
        out.append(Task.model_validate(task))
    return out


def tight_policy(workdir: Path, factor: int = 100) -> Policy:
    """The default policy with every budget limit divided by ``factor`` (its own version)."""
    text = re.sub(r'limit: "([0-9.]+)"', lambda m: f'limit: "{float(m.group(1)) / factor:.6f}"',
                  DEFAULT_POLICY_PATH.read_text())
    path = workdir / "bench-tight-policy.yaml"
    path.write_text(text)
    return load_policy(path)


def _stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(samples, 0.5), "p95_ms": pct(samples, 0.95), "p99_ms": pct(samples, 0.99)}


def instant() -> datetime:
    """When the bench's decisions are made: mid-window for every budget window but the month's."""
    return next_day() + timedelta(hours=12, minutes=30)


def engine_run(n: int, seed: int) -> list[float]:
    policy, snap, now, samples = load_policy(), Snapshot(), instant(), []
    for t in mixed_tasks(n, seed, f"engine{seed}"):
        t0 = time.perf_counter()
        plan = decide(t, policy, snap, now)
        samples.append((time.perf_counter() - t0) * 1000)
        apply_plan(snap, plan)
    return samples


async def dispatch_run(redis_url: str, policy: Policy, n: int, seed: int) -> tuple[list[float], list[float], float, float, Counter[str]]:
    """(per-call ms, per-task ms in batches, calls/s, tasks/s in batches, triggers fired) on a flushed bench DB."""
    ledger = RedisLedger.from_url(redis_url)
    try:
        await ledger.redis.flushdb(asynchronous=True)  # FLUSHDB ASYNC: instant however many keys a bench left
        at = instant()
        d = Dispatcher(ledger, PolicyStore(ledger.redis), policy, snapshot_max_age_s=0.25, clock=lambda: at)
        await d.start()
        await d.report_load("llm-large", 0.95, at)  # the load trigger's case
        tasks = mixed_tasks(n, seed, f"bench{seed}-{time.time_ns()}")
        fired: Counter[str] = Counter()
        single = []
        start = time.perf_counter()
        for t in tasks[: n // 2]:
            t0 = time.perf_counter()
            decision = (await d.decide([t]))[0]
            single.append((time.perf_counter() - t0) * 1000)
            fired.update(tr.value for tr in decision.triggers)
        single_per_s = len(single) / (time.perf_counter() - start)
        batched = []
        rest = tasks[n // 2:]
        start = time.perf_counter()
        for i in range(0, len(rest), 100):
            chunk = rest[i: i + 100]
            t0 = time.perf_counter()
            for decision in await d.decide(chunk):
                fired.update(tr.value for tr in decision.triggers)
            batched.append((time.perf_counter() - t0) * 1000 / len(chunk))
        batch_per_s = len(rest) / (time.perf_counter() - start)
        await ledger.redis.flushdb(asynchronous=True)  # FLUSHDB ASYNC: instant however many keys a bench left
        return single, batched, single_per_s, batch_per_s, fired
    finally:
        await ledger.close()


async def run_decision(redis_url: str, workdir: Path, *, quick: bool) -> dict[str, Any]:
    """Medians over runs of p50/p95/p99 and decisions/s; ``redis_url`` is flushed (a bench-only DB)."""
    runs, n = (1, 1000) if quick else (5, 2000)
    policy = tight_policy(workdir)
    rows: dict[str, list[dict[str, float]]] = {"engine": [], "x1": [], "x100": []}
    fired: Counter[str] = Counter()
    for run in range(runs):
        rows["engine"].append({**_stats(engine_run(n, run))})
        single, batched, single_per_s, batch_per_s, f = await dispatch_run(redis_url, policy, n, run)
        rows["x1"].append({**_stats(single), "per_s": single_per_s})
        rows["x100"].append({**_stats(batched), "per_s": batch_per_s})
        fired += f
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}
    return {**med["x1"], "engine": med["engine"], "batch_100": med["x100"], "runs": runs, "tasks_per_run": n,
            "triggers": dict(sorted(fired.items()))}
