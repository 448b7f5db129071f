"""Savings bench: one seeded day of the three services, decided by the real Dispatcher on Redis.

The same tasks are costed three ways with the policy's own cost model (``engine.estimate`` of a
tier, times the share of its estimate the run really used, which the task carries):

(a) premium   every task on its requested tier, else its class's most capable (before tiering)
(b) static    every task on the tier its complexity alone maps to (no budgets, no triggers)
(c) dispatch  what the Dispatcher decided with budgets and every trigger on, settled in the
              ledger with its actual cost, as an executor reports it

(a) and (b) are the counterfactual tiers the engine records on each decision (``untiered_tier``,
``complexity_tier``), the ones ``dispatch finance report`` compares against.

The day is simulated: the Dispatcher's clock is each batch's arrival time on a UTC day that has
not begun yet (Redis drops a budget key a day after its window ends), so the trend trigger sees
the same elapsed fractions whatever the real time. Policy: the default's tiers, prices,
thresholds, rules and triggers unchanged; only the budgets are the bench's (``BUDGETS``), sized
to the day's volume, and the global one is cut at noon by a second policy version.

The LLM executors are rate limited (``RPM``) and report their saturation on the simulated clock,
so the load trigger acts in bursts. A task misses its SLA when its tier's expected p95 exceeds it
(the policy's latency model, the one ``sla_guard`` uses).

Every Redis key the run writes is its own (run token in task ids, services, budget ids and
executor names) and deleted at the end; nothing else is flushed. Only the ledger's shared commit
counter (``dc:seq``) moves on.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from dispatch_core import keys
from dispatch_core.decision import Decision, Outcome
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import estimate
from dispatch_core.ledger import RedisLedger
from dispatch_core.money import from_micros, quantize, to_micros
from dispatch_core.policy import Policy, Tier, load_policy, parse_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from dispatch_core.task import Task, parse_task

DAY_S = 86_400
SERVICES = {"llm": "llm-gateway", "script": "tarotscript", "kernel": "aegis"}
TENANTS = ("acme", "globex", "initech")
#: (hour, what arrives): a batch job of globex summaries, a kernel storm, a run of deep spreads.
BURSTS = ((9.5, "llm"), (14.25, "kernel"), (17.75, "script"))
BURST_SHARE = 0.08  # of the day's tasks, per burst
BURST_RATE = 2.0  # tasks/s during a burst: a fixed intensity, so a bigger day has longer bursts
#: Budgets in USD per 1,000 tasks of the day (finance sizes a budget to forecast volume):
#: (id, scope, window, limit per 1k tasks, soft_pct). The global day budget is about what
#: complexity-only tiering spends on this workload (11.3-13.3 per 1k over seeds 1, 2, 3, 7); at
#: noon it is cut to CUT of itself, the tightening the budget triggers exist for.
BUDGETS = (("global-daily", "global", "day", Decimal("12.0"), 0.8),
           ("tenant-hourly", "tenant", "hour", Decimal("1.5"), 0.8))
CUT_HOUR, CUT = 12, Decimal("0.7")
#: Requests per minute the LLM executors' providers allow (the bigger models are scarcer); each
#: reports saturation = its requests over the last simulated minute / this, for the load trigger.
RPM = {"llm-small": 600, "llm-medium": 30, "llm-large": 10}
BATCH, BATCH_WINDOW_S = 50, 5.0  # a batch: up to 50 tasks that arrived within 5 s (simulated)
TIMELINE_POINTS = 2000
QUICK_TASKS, FULL_TASKS = 3_000, 20_000
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


# --- the workload: pure and seeded ------------------------------------------------------------


def _busy_second(rnd: random.Random) -> float:
    """An arrival second of the day, three times likelier 08:00-20:00 than at night."""
    while True:
        t = rnd.uniform(0, DAY_S)
        if rnd.random() < (1.0 if 8 * 3600 <= t < 20 * 3600 else 0.35):
            return t


def _tokens(rnd: random.Random, mu: float) -> int:
    """Lognormal body with a Pareto tail (alpha 1.3 from 8k tokens, capped at 200k): a few prompts dominate."""
    if rnd.random() < 0.04:
        return min(200_000, int(8_000 * (1.0 - rnd.random()) ** (-1 / 1.3)))
    return max(1, int(rnd.lognormvariate(mu, 0.9)))


def _llm(rnd: random.Random, tenant: str | None = None, kind: str | None = None) -> dict[str, Any]:
    kind = kind or rnd.choices(["chat", "summarize", "codegen", "embed"], [5, 3, 2, 1])[0]
    mu = {"chat": 6.4, "summarize": 7.6, "codegen": 8.0, "embed": 5.5}[kind]
    task: dict[str, Any] = {"workload": "llm", "task_type": kind, "tenant": tenant or rnd.choices(TENANTS, [5, 3, 2])[0],
                            "features": {"tokens": _tokens(rnd, mu)}}
    if kind == "chat" and rnd.random() < 0.3:
        task["sla_ms"] = 600  # interactive: the large tier's 800 ms p95 is too slow for it
    if rnd.random() < 0.05:
        task["requested_tier"] = "large"
    return task


def _script(rnd: random.Random) -> dict[str, Any]:
    depth = min(12, 1 + int(rnd.expovariate(1 / 3)))  # spread depth: mostly shallow, some deep
    return {"workload": "script", "task_type": "spread",
            "features": {"depth": depth, "cpu_ms": round(rnd.lognormvariate(3.2 + 0.25 * depth, 0.8), 2)}}


def _kernel(rnd: random.Random) -> dict[str, Any]:
    big = rnd.random() < 0.08  # mostly small ops, a few big ones
    task: dict[str, Any] = {"workload": "kernel", "task_type": rnd.choice(["matmul", "conv", "reduce"]),
                            "features": {"cpu_ms": round(rnd.lognormvariate(6.0 if big else 1.5, 1.0), 3),
                                         "payload_bytes": int(rnd.lognormvariate(13 if big else 9, 1.5))}}
    if rnd.random() < 0.1:
        task["sla_ms"] = 30  # only the GPU tier is fast enough
    return task


def savings_workload(seed: int, n: int, *, run: str = "bench", day: datetime = EPOCH) -> list[dict[str, Any]]:
    """``n`` tasks of one UTC ``day`` in arrival order, for ``parse_task``; the same for the same seed.

    ``run`` goes into task ids and service names, so a run never meets another run's stored
    decisions or complexity baselines. ``payload.cost_ratio`` is the share of its estimate the
    run will really cost (estimates are upper bounds: an executor's +-15%, capped at 1).
    """
    rnd = random.Random(seed)
    per_burst = int(n * BURST_SHARE)
    arrivals: list[tuple[float, str | None]] = [
        (hour * 3600 + j / BURST_RATE, kind) for hour, kind in BURSTS for j in range(per_burst)]
    arrivals += [(_busy_second(rnd), None) for _ in range(n - len(arrivals))]
    arrivals.sort(key=lambda a: a[0])
    out = []
    for i, (at, burst) in enumerate(arrivals):
        if burst == "llm":
            task = _llm(rnd, tenant="globex", kind="summarize")
        elif burst is not None:
            task = _script(rnd) if burst == "script" else _kernel(rnd)
        else:
            task = rnd.choices([_llm, _script, _kernel], [40, 25, 35])[0](rnd)
        task.update(task_id=f"{run}-{i:06d}", service=f"{SERVICES[task['workload']]}.{run}",
                    created_at=(day + timedelta(seconds=at)).isoformat(),
                    payload={"cost_ratio": round(min(1.0, rnd.uniform(0.85, 1.15)), 4), "burst": burst})
        out.append(task)
    return out


# --- the cost model and the policy --------------------------------------------------------------


def actual_cost(tier: Tier, task: Task) -> Decimal:
    """What running ``task`` on ``tier`` really costs: the tier's estimate times the task's cost ratio."""
    return quantize(estimate(tier, task) * Decimal(str(task.payload["cost_ratio"])))


def policy_data(run: str) -> dict[str, Any]:
    """The default policy as data, its executors renamed for ``run`` so that its load reports are its own."""
    data = load_policy().model_dump(mode="json")
    for cls in data["classes"].values():
        for tier in cls["tiers"]:
            tier["executor"] = f"{tier['executor']}.{run}"
    return data


def bench_policies(n: int, run: str) -> tuple[Policy, Policy]:
    """The day's policy and the one after the noon cut: the default's classes and triggers, the bench's budgets.

    Budget ids and executor names carry ``run``, so the ledger keys and load reports are this run's own.
    """
    data = policy_data(run)

    def with_budgets(global_factor: Decimal) -> Policy:
        budgets = []
        for bid, scope, window, per_1k, soft in BUDGETS:
            limit = per_1k * n / 1000 * (global_factor if scope == "global" else 1)
            budgets.append({"id": f"{bid}.{run}", "scope": scope, "window": window, "limit": str(quantize(limit)),
                            "soft_pct": soft})
        return parse_policy({**data, "name": "savings-bench", "budgets": budgets}, source="savings bench policy")

    return with_budgets(Decimal(1)), with_budgets(CUT)


class EnforcedStore(PolicyStore):
    """Every bench service enforced under the bench policy, whatever rollout this Redis holds."""

    async def rollout(self) -> Rollout:
        return Rollout()


# --- the run ------------------------------------------------------------------------------------


@dataclass
class _Load:
    """Each LLM executor's requests over the last simulated minute, against its RPM limit."""

    run: str
    starts: dict[str, deque[float]]
    said: dict[str, float]

    def started(self, executor: str, at_s: float) -> None:
        self.starts.setdefault(executor, deque()).append(at_s)

    def changed(self, now_s: float) -> dict[str, float]:
        """Saturation per executor where it differs from the last report (executors report on change)."""
        out = {}
        for name, rpm in RPM.items():
            q = self.starts.setdefault(f"{name}.{self.run}", deque())
            while q and q[0] <= now_s - 60:
                q.popleft()
            sat = round(min(1.0, len(q) / rpm), 3)
            if self.said.get(name, 0.0) != sat:
                out[f"{name}.{self.run}"] = self.said[name] = sat
        return out


def _batches(tasks: Sequence[Task], cut_at: datetime) -> Iterable[list[Task]]:
    """Consecutive tasks, up to BATCH arriving within BATCH_WINDOW_S, never across the noon cut."""
    batch: list[Task] = []
    for t in tasks:
        if batch and (len(batch) == BATCH or (t.created_at - batch[0].created_at).total_seconds() > BATCH_WINDOW_S
                      or (batch[0].created_at < cut_at) != (t.created_at < cut_at)):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def next_day() -> datetime:
    """The next UTC midnight: a day whose budget keys Redis keeps until we delete them."""
    return (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Day:
    """One simulated day as the Dispatcher decided it, with what the ledger says it cost."""

    tasks: list[Task]
    decisions: list[Decision]  # one per task, in order
    actual: dict[str, Decimal]  # decision id -> the actual cost settled for it (routed decisions)
    policies: tuple[Policy, Policy]  # before and after the noon cut
    overshoot: int  # micro-units: the most any scope was ever committed over its cap, read back from Redis
    ledger_spent: Decimal  # the global scope's spend in Redis at the end of the day
    elapsed_s: float


async def decide_day(settings: Settings, *, n: int, seed: int) -> Day:
    """Decide ``n`` seeded tasks batch by batch on the simulated clock, settling each routed one.

    Every run ends before the next batch is decided (runs take under a second), so each batch's
    reservations are settled with their actual cost first, as the executors would report them.
    """
    run = uuid.uuid4().hex[:10]
    day = next_day()
    tasks = [parse_task(t) for t in savings_workload(seed, n, run=run, day=day)]
    morning, after_cut = bench_policies(n, run)
    cut_at = day + timedelta(hours=CUT_HOUR)
    ledger = RedisLedger.from_url(settings.redis_url, timeout_s=max(settings.redis_timeout_s, 2.0))
    now = [day]
    dispatcher = Dispatcher(ledger, EnforcedStore(ledger.redis), morning, clock=lambda: now[0],
                            reservation_ttl_s=settings.reservation_ttl_s)
    decisions: list[Decision] = []
    actual: dict[str, Decimal] = {}
    load = _Load(run, {}, {})
    overshoot = 0
    t0 = time.perf_counter()
    try:
        for batch in _batches(tasks, cut_at):
            now[0] = batch[-1].created_at
            policy = dispatcher.default_policy = morning if now[0] < cut_at else after_cut
            now_s = (now[0] - day).total_seconds()
            for executor, saturation in load.changed(now_s).items():
                await dispatcher.report_load(executor, saturation, now[0])
            decided = await dispatcher.decide(batch)
            decisions += decided
            overshoot = max(overshoot, await _over(ledger, decided, policy))
            reports = []
            for task, d in zip(batch, decided, strict=True):
                tier = _tier(policy, task, d.assigned_tier)
                if tier is None or d.executor is None:
                    continue
                load.started(d.executor, now_s)
                actual[d.decision_id] = actual_cost(tier, task)
                reports.append(ExecutorReport(
                    decision_id=d.decision_id, report_id=f"{d.decision_id}/1", task_id=d.task_id, service=d.service,
                    executor=d.executor, actual=actual[d.decision_id], currency=d.currency, run_ms=tier.p95_ms / 2,
                    dispatch_ms=0.0, finished_at=now[0]))
            settled = await asyncio.gather(*(dispatcher.settle(r) for r in reports))
            assert all(s.kind == "settled" for s in settled), "every run settles its own reservation, once"
        overshoot = max(overshoot, await _over(ledger, decisions, after_cut))  # what stays spent at the end
        ledger_spent = from_micros((await ledger.scope(_global_key(decisions[-1]))).spent)
    finally:
        await _cleanup(ledger, tasks, decisions, run)
        await ledger.close()
    return Day(tasks, decisions, actual, (morning, after_cut), overshoot, ledger_spent, time.perf_counter() - t0)


async def run_savings(settings: Settings, *, quick: bool, seed: int = 7) -> dict[str, Any]:
    """The savings of (c) against (a) and (b) over a seeded day of QUICK_TASKS or FULL_TASKS tasks."""
    day = await decide_day(settings, n=QUICK_TASKS if quick else FULL_TASKS, seed=seed)
    morning, after_cut = day.policies
    out = summarise(day.tasks, day.decisions, day.actual, morning)
    out.update(
        overshoot=float(from_micros(day.overshoot)), ledger_spent=float(day.ledger_spent), currency=morning.currency,
        seed=seed, quick=quick, elapsed_s=round(day.elapsed_s, 2), cut_at=f"{CUT_HOUR:02d}:00 UTC",
        policy_versions=[morning.version, after_cut.version],
        budgets={b.id.rsplit(".", 1)[0]: {"window": b.window, "limit": float(b.limit), "after_cut": float(c.limit)}
                 for b, c in zip(morning.budgets, after_cut.budgets, strict=True)})
    return out


def _global_key(d: Decision) -> str:
    b = next(b for b in d.budgets if b.scope == "global")
    return keys.budget(b.budget_id, b.scope, b.window)


async def _over(ledger: RedisLedger, decided: Sequence[Decision], policy: Policy) -> int:
    """Micro-units by which any scope these decisions touched is committed (spent + reserved) over its cap, read back."""
    limits = {b.id: to_micros(b.limit) for b in policy.budgets}
    scopes = {keys.budget(b.budget_id, b.scope, b.window): b.budget_id for d in decided for b in d.budgets}
    snap, _ = await ledger.read(scopes, [], [])
    return max((snap.scopes[key].committed - limits[bid] for key, bid in scopes.items()), default=0)


async def _cleanup(ledger: RedisLedger, tasks: Sequence[Task], decisions: Sequence[Decision], run: str) -> None:
    """Delete every key this run wrote (the shared ``dc:seq`` counter only moved on)."""
    r = ledger.redis
    ids = [d.decision_id for d in decisions]
    doomed = {keys.baseline(t.service, t.task_type) for t in tasks}
    doomed |= {keys.budget(b.budget_id, b.scope, b.window) for d in decisions for b in d.budgets}
    doomed |= {k for i in ids for k in (keys.decision(i), keys.reservation(i))}
    doomed |= {keys.circuit(d.executor) for d in decisions if d.executor}  # the settlements' circuit state
    names = sorted(doomed)
    for i in range(0, len(names), 1000):
        await r.unlink(*names[i:i + 1000])
    for i in range(0, len(ids), 1000):
        await r.zrem(keys.OPEN_RESERVATIONS, *ids[i:i + 1000])
    await r.hdel(keys.LOAD, *(f"{ex}.{run}" for ex in RPM))


# --- the account ------------------------------------------------------------------------------


def _tier(policy: Policy, task: Task, name: str | None) -> Tier | None:
    if name is None:
        return None
    cls = policy.classes[task.workload]
    i = cls.index(name)
    return None if i is None else cls.tiers[i]


def summarise(tasks: Sequence[Task], decisions: Sequence[Decision], actual: dict[str, Decimal],
              policy: Policy) -> dict[str, Any]:
    """Costs of (a), (b), (c) over the tasks (c) served, and what (c) gave up for them.

    Tasks (c) rejected are left out of all three costs (serving none is not a saving) and counted
    in ``rejections``. A task violates its SLA when its tier's expected p95 exceeds it.
    """
    cost = {"premium": Decimal(0), "static": Decimal(0), "dispatch": Decimal(0)}
    sla = Counter[str]()
    under = 0
    triggers = Counter[str]()
    for task, d in zip(tasks, decisions, strict=True):
        triggers.update(t.value for t in d.triggers)
        if not d.routed:
            continue
        served = {"premium": _tier(policy, task, d.untiered_tier), "static": _tier(policy, task, d.complexity_tier),
                  "dispatch": _tier(policy, task, d.assigned_tier)}
        for name, tier in served.items():
            assert tier is not None, f"{d.decision_id}: no {name} tier"
            cost[name] += actual[d.decision_id] if name == "dispatch" else actual_cost(tier, task)
            sla[name] += tier.p95_ms > task.effective_sla_ms
        cls = policy.classes[task.workload]
        under += (cls.index(d.assigned_tier or "") or 0) < (cls.index(d.complexity_tier or "") or 0)
    served_n = sum(d.routed for d in decisions)
    pct = (lambda base, c: round(float((base - c) / base * 100), 2) if base else 0.0)
    return {
        "tasks": len(tasks), "served": served_n, "rejections": len(decisions) - served_n,
        "cost_premium": float(cost["premium"]), "cost_static": float(cost["static"]),
        "cost_dispatch": float(cost["dispatch"]),
        "savings_pct": pct(cost["premium"], cost["dispatch"]),
        "savings_vs_static_pct": pct(cost["static"], cost["dispatch"]),
        "static_savings_pct": pct(cost["premium"], cost["static"]),
        "sla_violations": sla["dispatch"], "sla_violations_premium": sla["premium"],
        "sla_violations_static": sla["static"],
        "underserved_pct": round(under / served_n * 100, 2) if served_n else 0.0,
        "downgrades": sum(d.outcome == Outcome.DOWNGRADED for d in decisions),
        "triggers": dict(sorted(triggers.items())),
        "timeline": timeline(decisions),
    }


def timeline(decisions: Sequence[Decision], points: int | None = None) -> list[dict[str, Any]]:
    """Global committed spend against the global cap, as each decision left it; at most ``points`` (TIMELINE_POINTS).

    A point stands for a run of consecutive decisions: its last one's spend and cap, and whether any
    of them was downgraded.
    """
    step = max(1, math.ceil(len(decisions) / (points or TIMELINE_POINTS)))
    out = []
    for start in range(0, len(decisions), step):
        chunk = decisions[start:start + step]
        last = next((b for b in chunk[-1].budgets if b.scope == "global"), None)
        out.append({"i": start + len(chunk) - 1,
                    "spend": float(last.committed_after) if last else 0.0,
                    "budget": float(last.limit) if last else 0.0,
                    "downgraded": any(d.outcome == Outcome.DOWNGRADED for d in chunk)})
    return out
