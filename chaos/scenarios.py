"""The chaos scenarios: one async function each, on fresh topics of the run's private stack.

Each starts the pipeline (worker, executors), warms it up with one task, sends a seeded
workload at a fixed rate, injects its fault mid-stream (triggered by progress on the audit
topic, not by the clock), lifts it, and returns the account of what crossed Kafka and Redis
(``chaos.account``). ``quick`` picks a short variant of the same scenario, for CI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from dispatch_core.engine import estimate
from dispatch_core.money import quantize
from dispatch_core.policy import Policy, load_policy, parse_policy
from dispatch_core.task import WorkloadClass, parse_task

from .account import Row
from .harness import PrivateStack, Rig
from .workload import Input, llm_only, mixed, with_poison

Scenario = Callable[[PrivateStack, bool], Awaitable[list[Row]]]


async def _start(rig: Rig, prefix: str, *, workers: int = 1, latency_scale: float = 0.2,
                 executor_args: tuple[str, ...] = ()) -> int:
    """Workers w1..wN and the executors up, one warm-up task through; the decision count to start from."""
    for i in range(1, workers + 1):
        rig.start_worker(f"w{i}")
    rig.start_executors(latency_scale=latency_scale, extra=executor_args)
    if workers > 1:
        await rig.wait_group(workers)
    await rig.warm(mixed(1, f"{prefix}-warm"))
    return rig.decided()


async def _kill_worker(rig: Rig, base: int, n: int, kills: int) -> None:
    """SIGKILL worker w1 ``kills`` times, evenly through ``n`` decisions, restarting it at once each time."""
    for k in range(1, kills + 1):
        at = k * n // (kills + 1)
        await rig.until(lambda: rig.decided() - base >= at, f"{at} decisions", 120)  # noqa: B023
        f = rig.fault()
        rig.kill("w1")
        rig.start_worker("w1")
        rig.lift(f)


async def worker_kill(stack: PrivateStack, quick: bool) -> list[Row]:
    """The worker SIGKILLed mid-stream several times, each time restarted at once under its name."""
    n, rate, kills = (600, 200.0, 2) if quick else (3000, 300.0, 4)
    async with Rig(stack, "worker-kill", quick=quick) as rig:
        base = await _start(rig, "wk")
        rig.feed(mixed(n, "wk"), rate)
        await _kill_worker(rig, base, n, kills)
        return [await rig.finish(notes=[f"{kills} worker SIGKILLs in {n} tasks at {rate:g}/s"])]


async def redis_kill(stack: PrivateStack, quick: bool) -> list[Row]:
    """Redis SIGKILLed mid-stream and restarted; the worker keeps running (fail-closed meanwhile).

    The stream outlasts the outage, so that there is something left to decide with Redis back.
    """
    n, rate, outage = (500, 100.0, 2.5) if quick else (3000, 150.0, 10.0)
    async with Rig(stack, "redis-kill", quick=quick) as rig:
        base = await _start(rig, "rk")
        pid = rig.procs.pids["w1"]
        rig.feed(mixed(n, "rk"), rate)
        await rig.until(lambda: rig.decided() - base >= n // 5, "a fifth of the decisions", 120)
        f = rig.fault()
        stack.kill("redis")
        await rig.hold(outage)
        await stack.up(["redis"])
        rig.lift(f)
        row = await rig.finish(notes=[f"Redis down {outage:g} s"])
    kept = "worker never restarted" if not any(x.startswith("w1 ") for x in rig.exits) else f"worker pid {pid} exited"
    row.note = "; ".join([f"{row.extra['triggers'].get('ledger_unavailable', 0)} fail-closed", kept, row.note])
    return [row]


async def redis_worker(stack: PrivateStack, quick: bool) -> list[Row]:
    """Redis SIGKILLed, the worker SIGKILLed while Redis is down, then both back: one decision per task."""
    n, rate, outage = (500, 100.0, 2.5) if quick else (3000, 150.0, 10.0)
    async with Rig(stack, "redis-worker", quick=quick) as rig:
        base = await _start(rig, "rw")
        rig.feed(mixed(n, "rw"), rate)
        await rig.until(lambda: rig.decided() - base >= n // 5, "a fifth of the decisions", 120)
        f = rig.fault()
        stack.kill("redis")
        fallbacks = lambda: sum(1 for a in rig.seen.arrivals if a[3] == "fallback")  # noqa: E731
        await rig.until(lambda: fallbacks() > 0, "a fail-closed decision", 30)
        rig.kill("w1")
        await rig.hold(outage)
        await stack.up(["redis"])
        rig.start_worker("w1")
        rig.lift(f)
        row = await rig.finish(notes=[f"worker SIGKILLed {outage:g} s into a Redis outage"])
    row.note = "; ".join([f"{row.extra['triggers'].get('ledger_unavailable', 0)} fail-closed", row.note])
    return [row]


async def _broker(stack: PrivateStack, quick: bool, name: str, how: str, *, n: int, rate: float,
                  outage: float = 0.0, **overrides: Any) -> list[Row]:
    """The broker stopped (``kill``: SIGKILL, ``term``: SIGTERM) mid-stream, ``outage`` s, then started again."""
    async with Rig(stack, name, quick=quick, **overrides) as rig:
        base = await _start(rig, name[:2])
        rig.feed(mixed(n, name[:2]), rate)
        await rig.until(lambda: rig.decided() - base >= n // 4, "a quarter of the decisions", 120)
        f = rig.fault()
        t0 = time.monotonic()
        if how == "kill":
            stack.kill("kafka")
        else:
            await asyncio.to_thread(stack.stop, "kafka")
        await rig.hold(outage)
        await stack.up(["kafka"])
        rig.lift(f)
        down = time.monotonic() - t0
        return [await rig.finish(notes=[f"broker {'SIGKILL' if how == 'kill' else 'SIGTERM'}, down {down:.1f} s"])]


async def broker_term(stack: PrivateStack, quick: bool) -> list[Row]:
    """The broker shut down cleanly (SIGTERM) mid-stream and restarted."""
    n, rate = (400, 100.0) if quick else (2000, 200.0)
    return await _broker(stack, quick, "broker-term", "term", n=n, rate=rate)


async def broker_kill(stack: PrivateStack, quick: bool) -> list[Row]:
    """The broker SIGKILLed mid-stream (unclean: log recovery, open transactions) and restarted."""
    n, rate = (400, 100.0) if quick else (2000, 200.0)
    return await _broker(stack, quick, "broker-kill", "kill", n=n, rate=rate)


async def broker_long(stack: PrivateStack, quick: bool) -> list[Row]:
    """The broker down longer than the producers' request timeout: sends fail, producers are replaced."""
    timeout, outage = (5.0, 8.0) if quick else (40.0, 45.0)
    n, rate = (400, 40.0) if quick else (3000, 50.0)
    rows = await _broker(stack, quick, "broker-long", "term", n=n, rate=rate, outage=outage,
                         producer_request_timeout_s=timeout)
    rows[0].note = f"request timeout {timeout:g} s; {rows[0].note}"
    return rows


def tight_policy(base: Policy, tasks: list[Input], share: float) -> Policy:
    """``base`` with one global daily cap of ``share`` of what the tasks would cost on the middle tier.

    No soft threshold and no trend trigger: the hard cap is the only thing between the workers
    and overspend (trend would also make the run depend on the time of day).
    """
    tier = base.classes[WorkloadClass.LLM].tiers[1]
    asked = sum((estimate(tier, parse_task(t.task)) for t in tasks if t.task), Decimal(0))
    data = base.model_dump(mode="json")
    data["name"] = f"{base.name}-chaos-cap"
    data["budgets"] = [{"id": "cap", "scope": "global", "window": "day", "limit": str(quantize(asked * Decimal(share))),
                        "soft_pct": 1.0}]
    data["triggers"]["trend"] = {**data["triggers"].get("trend", {}), "enabled": False}
    return parse_policy(data, source="chaos budget policy")


async def budget(stack: PrivateStack, quick: bool) -> list[Row]:
    """Three workers on one tight global cap, the ledger sampled every 100 ms; no run costs more than its estimate."""
    n, rate = (400, 200.0) if quick else (1500, 300.0)
    tasks = llm_only(n, "bg")
    policy = tight_policy(load_policy(stack.settings.policy_file), tasks, 0.3)
    async with Rig(stack, "budget", policy=policy, quick=quick, sample_every_s=0.1) as rig:
        await _start(rig, "bg", workers=3, executor_args=("--max-cost-ratio", "1"))
        rig.feed(tasks, rate)
        row = await rig.finish(notes=["3 workers"])
    cap = policy.budgets[0].limit
    row.note = "; ".join([f"cap {cap}, max committed/cap {row.extra['max_committed_over_limit']:.4f} over "
                          f"{row.extra['ledger_samples']} samples", row.note])
    return [row]


async def executor_kill(stack: PrivateStack, quick: bool) -> list[Row]:
    """The executor process SIGKILLed mid-work, down longer than the reservation TTL, restarted as itself."""
    n, rate, ttl, down = (400, 100.0, 3.0, 5.0) if quick else (1500, 150.0, 10.0, 15.0)
    async with Rig(stack, "executor-kill", quick=quick, reservation_ttl_s=ttl) as rig:
        base = await _start(rig, "ek", latency_scale=1.0)
        rig.feed(mixed(n, "ek"), rate)
        await rig.until(lambda: rig.decided() - base >= n // 3, "a third of the decisions", 120)
        routed = {d for d, e in rig.seen.decided.items() if e["assigned_tier"]}
        in_work = len(routed - rig.seen.reported)
        f = rig.fault("report")
        rig.kill("executors")
        await rig.hold(down)
        rig.start_executors(latency_scale=1.0)
        rig.lift(f)
        row = await rig.finish(notes=[f"executors SIGKILLed with {in_work} routed tasks unreported, down {down:g} s "
                                      f"(reservation TTL {ttl:g} s)"])
    kinds = row.extra["settlements"]
    row.note = "; ".join([f"{kinds.get('expired', 0)} expired, {kinds.get('settled_late', 0)} settled late, "
                          f"{kinds.get('skipped', 0)} skipped", row.note])
    return [row]


#: Flaky executors: 30% of runs fail, a fifth of those permanently, after 30% of the work (charged).
FLAKY = ("--failure-rate", "0.3", "--permanent-share", "0.2", "--partial-cost", "0.3")


async def executor_failures(stack: PrivateStack, quick: bool) -> list[Row]:
    """Flaky executors (retryable and permanent failures with partial costs) and the worker SIGKILLed twice.

    Every task has a 60 s SLA, so fallbacks are decided on tiers and circuits, not rejected for
    the time left. Circuits open after 3 failures in a row and probe after 3 s, so they change
    within the run. The account checks each retryable failure got exactly one fallback
    (``fallbacks_doubled``), that the partial costs were charged once (``double_charges``) and
    that no task ever held two reservations (``double_reservations``).
    """
    n, rate, kills = (400, 100.0, 2) if quick else (1500, 150.0, 2)
    async with Rig(stack, "executor-failures", quick=quick, circuit_consecutive_failures=3,
                   circuit_cooldown_s=3.0, circuit_probe_pct=50.0) as rig:
        base = await _start(rig, "ef", executor_args=FLAKY)
        rig.feed(mixed(n, "ef", sla_ms=60_000), rate)
        await _kill_worker(rig, base, n, kills)
        row = await rig.finish(notes=[f"{kills} worker SIGKILLs in {n} tasks at {rate:g}/s"])
    x = row.extra
    fails, fb = x["failures"], x["fallbacks"]
    changes = sum(x["circuit_changes"].values())
    row.note = "; ".join([f"{fails.get('retryable', 0)} retryable + {fails.get('permanent', 0)} permanent failures, "
                          f"{fb.get('routed', 0)} fallbacks routed + {fb.get('rejected', 0)} rejected, "
                          f"{changes} circuit changes ({x['circuit_opens']} opens)", row.note])
    return [row]


async def poison(stack: PrivateStack, quick: bool) -> list[Row]:
    """Poison inputs interleaved with valid tasks, against a clean run of the same valid tasks at the same rate.

    Two rows: ``clean`` (the baseline) and ``poison``; the poison row's note compares the valid
    tasks' end-to-end latency (created_at -> received by a read_committed executor-topic reader).
    """
    n, rate, every = (300, 100.0, 10) if quick else (1500, 100.0, 15)
    rows = []
    for name in ("clean", "poison"):
        async with Rig(stack, name, quick=quick) as rig:
            await _start(rig, name[:2])
            inputs = mixed(n, name[:2], seed=3)
            if name == "poison":
                inputs = with_poison(inputs, every, "px", max_task_bytes=rig.settings.max_task_bytes)
            rig.feed(inputs, rate * len(inputs) / n)  # the valid tasks at the same rate in both runs
            bad = len(inputs) - n
            rows.append(await rig.finish(notes=[f"{bad} poison inputs among {n} valid" if bad else
                                                f"{n} valid tasks at {rate:g}/s"]))
    clean, bad_run = rows
    lat = lambda r: f"{r.extra['e2e_p50_ms']}/{r.extra['e2e_p95_ms']} ms"  # noqa: E731
    clean.note = "; ".join([f"e2e p50/p95 {lat(clean)}", clean.note])
    bad_run.note = "; ".join([f"valid e2e p50/p95 {lat(bad_run)} vs clean {lat(clean)}", bad_run.note])
    return rows


SCENARIOS: dict[str, Scenario] = {
    "worker-kill": worker_kill,
    "redis-kill": redis_kill,
    "redis-worker": redis_worker,
    "broker-term": broker_term,
    "broker-kill": broker_kill,
    "broker-long": broker_long,
    "budget": budget,
    "executor-kill": executor_kill,
    "poison": poison,
    "executor-failures": executor_failures,
}
