"""Deciding a batch of tasks against the shared ledger: the engine with its I/O attached.

Per batch: one pipelined read (budgets, baselines, load, stored decisions), the pure engine
for each task in order (each plan replayed on the snapshot so the next task sees it), one
atomic Lua commit. A task whose reservation no longer fits because another worker spent
first is re-decided on fresh state; a redelivered task gets its stored decision back.
When Redis is unreachable the dispatcher fails closed (reject) or open (cheapest tier that
meets the SLA), as configured, and says so in the record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from dispatch_core.decision import Arm, Decision, Mode, Outcome, Trigger, decision_id_for
from dispatch_core.engine import Plan, Snapshot, apply_plan, decide, ledger_keys
from dispatch_core.errors import LedgerUnavailable
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import Policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import arm_for
from dispatch_core.task import Task

FailMode = Literal["closed", "open"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    policy: Policy
    mode: Mode
    arm: Arm


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """Decides tasks against the Redis ledger; safe to run in any number of workers at once."""

    def __init__(
        self,
        ledger: RedisLedger,
        store: PolicyStore,
        default_policy: Policy,
        *,
        fail_mode: FailMode = "closed",
        reservation_ttl_s: float = 600.0,
        max_rounds: int = 5,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.default_policy = default_policy
        self.fail_mode = fail_mode
        self.reservation_ttl_s = reservation_ttl_s
        self.max_rounds = max_rounds
        self.clock = clock

    async def start(self) -> None:
        """Publish the default policy so it can be pinned; a Redis outage is logged, not fatal."""
        try:
            await self.store.publish(self.default_policy)
        except LedgerUnavailable as exc:
            log.warning("could not publish policy %s yet: %s", self.default_policy.version[:12], exc)

    async def decide(self, tasks: Sequence[Task]) -> list[Decision]:
        """Decide a batch; exactly one decision per task, in order."""
        t0 = time.perf_counter()
        now = self.clock()
        try:
            routes = await self._routes(tasks)
            decisions = await self._decide(tasks, routes, now)
        except LedgerUnavailable as exc:
            decisions = [self._unavailable(task, now, str(exc)) for task in tasks]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        return [d.model_copy(update={"decision_latency_ms": latency_ms}) for d in decisions]

    async def _routes(self, tasks: Sequence[Task]) -> list[_Route]:
        rollout = await self.store.rollout()
        routes = []
        for task in tasks:
            svc = rollout.for_service(task.service)
            arm = arm_for(task.service, task.task_id, svc.canary)
            version = svc.canary.version if arm == "canary" and svc.canary else svc.version
            policy = await self.store.get(version) if version else self.default_policy
            routes.append(_Route(policy, svc.mode, arm))
        return routes

    async def _decide(self, tasks: Sequence[Task], routes: list[_Route], now: datetime) -> list[Decision]:
        results: list[Decision | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        for round_no in range(self.max_rounds):
            scope_keys: list[str] = []
            baseline_keys: list[str] = []
            for i in pending:
                s, b = ledger_keys(routes[i].policy, tasks[i], now)
                scope_keys += s
                baseline_keys.append(b)
            ids = [decision_id_for(tasks[i].service, tasks[i].task_id) for i in pending]
            snap, stored = await self.ledger.read(scope_keys, baseline_keys, ids)
            planned: list[tuple[int, Plan]] = []
            for i, did in zip(pending, ids, strict=True):
                if did in stored:
                    results[i] = stored[did]
                    continue
                route = routes[i]
                plan = decide(
                    tasks[i], route.policy, snap, now, mode=route.mode, arm=route.arm,
                    reservation_ttl_s=self.reservation_ttl_s,
                )
                if round_no == self.max_rounds - 1:
                    plan = _contention_reject(plan) if plan.amount and plan.enforce else plan
                apply_plan(snap, plan)
                planned.append((i, plan))
            commits = await self.ledger.commit([p for _, p in planned])
            pending = []
            for (i, plan), res in zip(planned, commits, strict=True):
                if res.status == "ok":
                    results[i] = plan.decision
                elif res.status == "dup":
                    results[i] = res.stored
                else:
                    pending.append(i)
            if not pending:
                break
        assert all(r is not None for r in results), "every task ends with a decision"
        return [r for r in results if r is not None]

    def _unavailable(self, task: Task, now: datetime, reason: str) -> Decision:
        """A decision made without the ledger: closed rejects, open takes the cheapest tier meeting the SLA."""
        policy = self.default_policy
        d = decide(task, policy, Snapshot(), now, mode="off").decision
        cls = policy.classes[task.workload]
        cheapest = next((t for t in cls.tiers if t.p95_ms <= task.effective_sla_ms), None)
        if self.fail_mode == "open" and cheapest is not None:
            update = {
                "assigned_tier": cheapest.name, "enforced_tier": cheapest.name, "executor": cheapest.executor,
                "executor_p95_ms": cheapest.p95_ms,
                "outcome": Outcome.ROUTED if cheapest.name == d.asked_tier else Outcome.DOWNGRADED,
                "rationale": f"ledger unavailable ({reason}); fail-open: cheapest tier meeting the SLA, unreserved",
            }
        else:
            update = {
                "assigned_tier": None, "enforced_tier": None, "executor": None, "executor_p95_ms": None,
                "outcome": Outcome.REJECTED, "rationale": f"ledger unavailable ({reason}); fail-closed: rejected",
            }
        return d.model_copy(update=update | {"mode": "enforce", "triggers": [Trigger.LEDGER_UNAVAILABLE], "budgets": []})


def _contention_reject(plan: Plan) -> Plan:
    """Last round of a batch that kept losing races for the same cap: reject rather than loop."""
    d = plan.decision.model_copy(
        update={
            "assigned_tier": None, "enforced_tier": None, "executor": None, "executor_p95_ms": None,
            "outcome": Outcome.REJECTED, "triggers": [*plan.decision.triggers, Trigger.BUDGET_HARD],
            "rationale": plan.decision.rationale + "; rejected: cap kept being taken by concurrent decisions",
            "reserved": type(plan.decision.reserved)(0), "estimate_assigned": type(plan.decision.reserved)(0),
        }
    )
    return dataclasses.replace(plan, decision=d, amount=0, charges=())
