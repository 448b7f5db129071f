"""Check-then-increment against the atomic ledger: the same attempts, the same concurrency, one cap.

naive   each writer, on its own Redis connection, GETs the spend, compares spend + amount with
        the cap and INCRBYs the amount if it fits (the race LiteLLM #34732's users reported).
        Integer micro-units, no work between check and increment: the race is all there is.
atomic  each writer has its own RedisLedger and Dispatcher; an attempt is an LLM task on the
        small tier whose estimate is the amount, decided (checked and reserved in one Lua script)
        and then settled at its estimate, as an executor would report it.

Writer w makes attempts w, w + N, w + 2N, ... of one seeded list. The naive run is repeated with
fewer writers, to show the overshoot growing with concurrency. Every key is this run's own and
deleted at the end.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from benchmarks.savings import EnforcedStore, next_day, policy_data
from dispatch_core import keys
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import estimate
from dispatch_core.ledger import RedisLedger
from dispatch_core.money import from_micros, to_micros
from dispatch_core.policy import Policy, load_policy, parse_policy
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from dispatch_core.task import Task
from dispatch_core.windows import window_at

CAP = Decimal("1.00")  # a day's budget for one key, as gateways give their users: about 35 attempts' worth


def attempts(seed: int, n: int, run: str) -> list[Task]:
    """``n`` LLM tasks asking for the small tier, 16k-80k tokens (about 0.01-0.05 USD each)."""
    rnd = random.Random(seed)
    return [Task.model_validate({"task_id": f"{run}-{i}", "service": f"writer.{run}", "workload": "llm",
                                 "requested_tier": "small", "features": {"tokens": rnd.randint(16_000, 80_000)}})
            for i in range(n)]


def cap_policy(cap: Decimal, run: str) -> Policy:
    """The default policy with one global day cap (no soft threshold, no trend): only the cap decides."""
    data = policy_data(run)
    data["budgets"] = [{"id": f"naive-cap.{run}", "scope": "global", "window": "day", "limit": str(cap), "soft_pct": 1.0}]
    data["triggers"] = {"trend": {"enabled": False}}
    return parse_policy(data, source="naive ledger policy")


async def _in_parallel(writers: int, n: int, attempt: Callable[[int, int], Awaitable[None]]) -> None:
    """Writer w makes attempts w, w + writers, ... one after the other; all writers at once."""
    async def writer(w: int) -> None:
        for i in range(w, n, writers):
            await attempt(w, i)

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def naive(url: str, key: str, amounts: Sequence[int], cap: int, writers: int) -> tuple[int, int]:
    """Check-then-increment by ``writers`` clients: (final spend, accepted attempts), micro-units."""
    clients = [Redis.from_url(url, decode_responses=True) for _ in range(writers)]
    accepted = 0

    async def attempt(w: int, i: int) -> None:
        nonlocal accepted
        spent = int(await clients[w].get(key) or 0)
        if spent + amounts[i] <= cap:
            await clients[w].incrby(key, amounts[i])
            accepted += 1

    try:
        await _in_parallel(writers, len(amounts), attempt)
        return int(await clients[0].get(key) or 0), accepted
    finally:
        await clients[0].delete(key)
        for c in clients:
            await c.aclose()


async def atomic(settings: Settings, tasks: Sequence[Task], policy: Policy, writers: int) -> tuple[int, int]:
    """The same attempts through ``writers`` Dispatchers on the real ledger: (final spend, accepted)."""
    at = next_day() + timedelta(hours=12)
    ledgers = [RedisLedger.from_url(settings.redis_url, timeout_s=max(settings.redis_timeout_s, 2.0))
               for _ in range(writers)]
    deciders = [Dispatcher(lg, EnforcedStore(lg.redis), policy, clock=lambda: at) for lg in ledgers]
    key = keys.budget(policy.budgets[0].id, "global", window_at("day", at).id)
    ids: list[str] = []
    executors: set[str] = set()  # whose circuit breakers the settlements created
    accepted = 0

    async def attempt(w: int, i: int) -> None:
        nonlocal accepted
        (d,) = await deciders[w].decide([tasks[i]])
        ids.append(d.decision_id)
        if d.routed and d.executor is not None:
            executors.add(d.executor)
            accepted += 1
            await deciders[w].settle(ExecutorReport(
                decision_id=d.decision_id, report_id=d.decision_id, task_id=d.task_id, service=d.service,
                executor=d.executor, actual=d.estimate_assigned, run_ms=0.0, dispatch_ms=0.0, finished_at=at))

    try:
        await _in_parallel(writers, len(tasks), attempt)
        return (await ledgers[0].scope(key)).committed, accepted
    finally:
        r = ledgers[0].redis
        doomed = [key, keys.baseline(tasks[0].service, tasks[0].task_type), *map(keys.circuit, executors),
                  *(k for i in ids for k in (keys.decision(i), keys.reservation(i)))]
        for j in range(0, len(doomed), 1000):
            await r.unlink(*doomed[j:j + 1000])
        if ids:
            await r.zrem(keys.OPEN_RESERVATIONS, *ids)
        for lg in ledgers:
            await lg.close()


async def run_naive_ledger(settings: Settings, *, quick: bool) -> dict[str, Any]:
    """Overshoot of check-then-increment against the atomic ledger's, same attempts and writers."""
    writers, n = (16, 400) if quick else (32, 1_600)
    run = uuid.uuid4().hex[:10]
    tasks = attempts(7, n, run)
    small = load_policy().classes[tasks[0].workload].tiers[0]
    amounts = [to_micros(estimate(small, t)) for t in tasks]
    cap = to_micros(CAP)
    t0 = time.perf_counter()
    by_writers: dict[str, dict[str, Any]] = {}
    for w in sorted({1, max(1, writers // 4), writers}):  # the last one is the comparison
        spent, accepted = await naive(settings.redis_url, f"bench:naive:{run}:{w}", amounts, cap, w)
        by_writers[str(w)] = {"overshoot": float(from_micros(max(0, spent - cap))), "accepted": accepted}
    a_spent, a_accepted = await atomic(settings, tasks, cap_policy(from_micros(cap), run), writers)
    over = max(0, spent - cap)
    return {
        "writers": writers, "attempts": n, "cap": float(from_micros(cap)),
        "overshoot": float(from_micros(over)), "overshoot_pct": round(over / cap * 100, 2),
        "naive_spent": float(from_micros(spent)), "naive_accepted": accepted,
        "atomic_overshoot": float(from_micros(max(0, a_spent - cap))), "atomic_spent": float(from_micros(a_spent)),
        "atomic_accepted": a_accepted, "naive_by_writers": by_writers, "elapsed_s": round(time.perf_counter() - t0, 2),
    }
