"""The façade every stream and service calls: decisions, settlements, expiries and load, with I/O.

Per batch of tasks: the state to decide on (the one the previous commit returned, if fresh enough,
else one Lua read of budgets, baselines, load and stored decisions), the pure engine for each
task in order (each plan replayed on the snapshot so the next task sees it), one atomic Lua
commit that also returns the state it left. A task whose reservation no longer fits because another worker spent
first is re-decided on fresh state; a redelivered task gets its stored decision back.
A reused task id with other content is refused as a conflict, with an id of its own.
When Redis is unreachable the dispatcher fails closed (reject) or open (cheapest tier that
meets the SLA), as configured, and says so in the record.

Every ledger operation goes through here and comes back as a typed event (``Decision``,
``SettlementEvent``), so callers never build ledger keys or events themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from dispatch_core.circuit import CircuitConfig, CircuitView
from dispatch_core.decision import Arm, Decision, Mode, Trigger, decision_id_for
from dispatch_core.engine import (
    Plan,
    Retry,
    Snapshot,
    apply_plan,
    conflict,
    decide,
    fallback,
    invalid,
    ledger_keys,
    reject,
)
from dispatch_core.errors import LedgerUnavailable, PolicyError, TaskError
from dispatch_core.ledger import FailedAttempt, Health, RedisLedger, Settlement, Stored
from dispatch_core.policy import Policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout, arm_for
from dispatch_core.settlement import CircuitEvent, ExecutorReport, SettlementEvent, SettlementKind
from dispatch_core.task import Task, parse_task

FailMode = Literal["closed", "open"]
#: Why a decision was rejected after the engine's verdict: its batch kept losing the cap to other workers.
CONTENTION = "rejected: the cap kept being taken by concurrent decisions"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision for one input, and whether that input repeats a task another input already brought."""

    decision: Decision
    repeat: bool = False
    sequence: int | None = None  # given by this commit, not yet on ``decision``


@dataclass(frozen=True, slots=True)
class FailOver:
    """What a retryable failure report became: its attempt's settlement and the fallback decided.

    ``fallback`` is None when the report was a duplicate (another report settled that attempt)
    or the failed decision is no longer stored; otherwise it is routed or, when the chain is
    exhausted or nothing fits, a recorded rejection. ``task_text`` is what to route.
    """

    settlement: SettlementEvent
    fallback: Decision | None
    task: Task | None = None
    task_text: str = ""


@dataclass(frozen=True, slots=True)
class _Route:
    policy: Policy
    mode: Mode
    arm: Arm
    missing: str | None = None  # the pinned version could not be loaded


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
        snapshot_max_age_s: float = 0.0,
        circuit: CircuitConfig = CircuitConfig(),
    ) -> None:
        """``snapshot_max_age_s`` > 0 lets a batch start from the state the previous commit
        returned, if no older than that, instead of reading first: one round trip per batch.
        Caps stay exact (the commit checks them); soft, trend and baselines may then see other
        workers' spend up to that much later. 0 reads before every batch."""
        self.ledger = ledger
        self.store = store
        self.default_policy = default_policy
        self.fail_mode = fail_mode
        self.reservation_ttl_s = reservation_ttl_s
        self.max_rounds = max_rounds
        self.clock = clock
        self.circuit = circuit
        self._uncertain: set[str] = set()  # decisions whose commit may or may not have landed
        self.snapshot_max_age_s = snapshot_max_age_s
        self._cache = Snapshot()
        self._cached_at: dict[str, float] = {}
        self._load_at = float("-inf")

    async def start(self) -> None:
        """Publish the default policy so it can be pinned; a Redis outage is logged, not fatal."""
        try:
            await self.store.publish(self.default_policy)
        except LedgerUnavailable as exc:
            log.warning("could not publish policy %s yet: %s", self.default_policy.version[:12], exc)

    async def decide(self, tasks: Sequence[Task]) -> list[Decision]:
        """Decide a batch; exactly one decision per task, in order."""
        return [v.decision for v in await self.decide_inputs(tasks)]

    async def decide_inputs(self, tasks: Sequence[Task], sources: Sequence[str | None] | None = None) -> list[Verdict]:
        """Decide a batch of inputs; ``sources`` name each input record (e.g. ``topic/partition/offset``).

        A verdict is a ``repeat`` when its task was already decided for another input record:
        the same task sent twice. Its outputs exist, or will, from that record, so a stream
        writes nothing for it; the same record again (a redelivery) is not a repeat.
        """
        t0 = time.perf_counter()
        now = self.clock()
        ids = {decision_id_for(t.service, t.task_id) for t in tasks}
        sources = sources or [None] * len(tasks)
        routes = await self._routes(tasks)
        try:
            verdicts = await self._decide(tasks, sources, routes, now)
        except LedgerUnavailable as exc:
            if ids & self._uncertain:
                # a commit for these tasks may have landed before Redis went away: a fallback
                # decision could contradict it, so wait for Redis (the caller retries) instead
                raise
            verdicts = [
                Verdict(fallback(t, r.policy, now, mode=r.mode, arm=r.arm, fail_open=self.fail_mode == "open",
                                 reason=str(exc)))
                for t, r in zip(tasks, routes, strict=True)
            ]
        self._uncertain -= ids
        latency_ms = (time.perf_counter() - t0) * 1000.0
        timed: dict[str, Any] = {"decision_latency_ms": latency_ms}
        return [Verdict(v.decision.model_copy(update=timed if v.sequence is None else {**timed, "sequence": v.sequence}),
                        v.repeat)
                for v in verdicts]

    def _cached(self, scope_keys: list[str], baseline_keys: list[str]) -> Snapshot | None:
        """A snapshot from the cache if every key (and the load) is fresh enough, else None."""
        if self.snapshot_max_age_s <= 0:
            return None
        oldest = time.monotonic() - self.snapshot_max_age_s
        keys = [*scope_keys, *baseline_keys]
        if self._load_at < oldest or any(self._cached_at.get(k, float("-inf")) < oldest for k in keys):
            return None
        return Snapshot(
            scopes={k: self._cache.scopes[k] for k in scope_keys},
            baselines={k: self._cache.baselines[k] for k in baseline_keys},
            load=dict(self._cache.load), circuits=dict(self._cache.circuits),
        )

    def _remember(self, snap: Snapshot, *, with_load: bool) -> None:
        if self.snapshot_max_age_s <= 0:
            return
        at = time.monotonic()
        if len(self._cached_at) > 10_000:  # windows roll over and tenants come and go: forget the stale
            stale = {k for k, t in self._cached_at.items() if t < at - self.snapshot_max_age_s}
            for k in stale:
                self._cached_at.pop(k)
                self._cache.scopes.pop(k, None)
                self._cache.baselines.pop(k, None)
        self._cache.scopes.update(snap.scopes)
        self._cache.baselines.update(snap.baselines)
        self._cached_at.update(dict.fromkeys([*snap.scopes, *snap.baselines], at))
        if with_load:  # executor state (load and circuits) comes with reads, not with commits
            self._cache.load, self._cache.circuits, self._load_at = dict(snap.load), dict(snap.circuits), at

    async def _routes(self, tasks: Sequence[Task]) -> list[_Route]:
        """Policy, mode and arm per task; with Redis down, what this process last knew (else defaults)."""
        try:
            rollout = await self.store.rollout()
        except LedgerUnavailable:
            rollout = Rollout()
        routes = []
        for task in tasks:
            svc = rollout.for_service(task.service)
            arm = arm_for(task.service, task.task_id, svc.canary)
            version = svc.canary.version if arm == "canary" and svc.canary else svc.version
            try:
                policy = await self.store.get(version) if version else self.default_policy
            except PolicyError as exc:  # pinned to a version this Redis does not hold: refuse, visibly
                routes.append(_Route(self.default_policy, svc.mode, arm, missing=str(exc)))
                continue
            except LedgerUnavailable:  # never loaded here and Redis is down: deciding will fall back anyway
                policy = self.default_policy
            routes.append(_Route(policy, svc.mode, arm))
        return routes

    async def _decide(self, tasks: Sequence[Task], sources: Sequence[str | None], routes: list[_Route],
                      now: datetime) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(tasks)

        def again(i: int, first: Stored) -> Verdict:
            """The stored decision back: a redelivery of its record, or a repeat from another record."""
            repeat = None not in (first.source, sources[i]) and first.source != sources[i]
            return Verdict(first.decision, repeat=repeat)

        pending = list(range(len(tasks)))
        for round_no in range(self.max_rounds):
            scope_keys: list[str] = []
            baseline_keys: list[str] = []
            for i in pending:
                s, b = ledger_keys(routes[i].policy, tasks[i], now)
                scope_keys += s
                baseline_keys.append(b)
            ids = [decision_id_for(tasks[i].service, tasks[i].task_id) for i in pending]
            cached = self._cached(scope_keys, baseline_keys) if round_no == 0 else None
            if cached is not None:
                snap, stored = cached, dict[str, Stored]()  # a redelivery is still caught: the commit returns its stored decision
            else:
                snap, stored = await self.ledger.read(scope_keys, baseline_keys, ids)
                self._remember(snap, with_load=True)
            planned: list[tuple[int, Plan]] = []
            for i, did in zip(pending, ids, strict=True):
                route = routes[i]
                first = stored.get(did)
                if first is not None and first.decision.task_hash in (None, tasks[i].content_hash):
                    results[i] = again(i, first)  # its decision, and no second charge
                    continue
                plan = decide(
                    tasks[i], route.policy, snap, now, mode=route.mode, arm=route.arm,
                    reservation_ttl_s=self.reservation_ttl_s, circuit=self.circuit,
                )
                if first is not None:  # the id was decided for other content
                    results[i] = Verdict(conflict(plan.decision, first.decision))
                    continue
                if route.missing:
                    d = reject(plan.decision, Trigger.POLICY, f"rejected: {route.missing}")
                    plan = dataclasses.replace(plan, decision=d, amount=0, charges=())
                elif round_no == self.max_rounds - 1 and plan.amount and plan.enforce:
                    plan = _contention_reject(plan)
                apply_plan(snap, plan)
                planned.append((i, plan))
            try:
                commits, after = await self.ledger.commit([p for _, p in planned], scope_keys, baseline_keys,
                                                          [sources[i] for i, _ in planned])
            except LedgerUnavailable:
                self._uncertain.update(p.decision.decision_id for _, p in planned)
                raise
            self._remember(after, with_load=False)
            pending = []
            for (i, plan), res in zip(planned, commits, strict=True):
                if res.status == "ok":
                    results[i] = Verdict(plan.decision, sequence=res.sequence)
                elif res.status == "dup":
                    assert res.stored is not None
                    results[i] = again(i, res.stored)
                elif res.status == "conflict":
                    assert res.stored is not None
                    results[i] = Verdict(conflict(plan.decision, res.stored.decision))
                else:
                    pending.append(i)
            if not pending:
                break
        assert all(r is not None for r in results), "every task ends with a decision"
        return [r for r in results if r is not None]

    def reject_input(self, data: Mapping[str, Any] | None, error: str) -> Decision | None:
        """The rejection recorded for an input that is not a valid task, when its task id is readable."""
        if data is None or not isinstance(data.get("task_id"), str) or not data["task_id"]:
            return None
        return invalid(data, error, self.default_policy, self.clock())

    def unreserved_scopes(self, decision: Decision, task: Task) -> list[str]:
        """Budget keys a fail-open route's actual cost is charged to when reported (it reserved nothing)."""
        if not decision.routed or Trigger.LEDGER_UNAVAILABLE not in decision.triggers or decision.mode != "enforce":
            return []
        policy = self.store.cached(decision.policy_version) or self.default_policy
        return ledger_keys(policy, task, decision.decided_at)[0]

    async def settle(self, report: ExecutorReport, source: str | None = None) -> SettlementEvent:
        """One executor report -> one ledger settlement -> its audit event (see ``SettlementKind``).

        ``source`` names the record the report came in (e.g. ``topic/partition/offset``): that
        record redelivered gets its first settlement back (its event may not have been written),
        any other record for a settled decision, even a copy of the same report, is a
        ``duplicate``. Without one, the report's own identity decides. The executor's outcome
        goes into its circuit breaker in the same ledger step. For a retryable failure,
        ``fail_over`` settles it and also decides the fallback.
        """
        if report.outcome == "duplicate":  # the executor did not run it again: nothing to settle
            return self._settlement_event(report, None, source)
        health: Health = "ok" if report.outcome == "succeeded" else "fail" if report.retryable else ""
        s = await self.ledger.settle(report.decision_id, report.actual, source or report.identity, report.charge_scopes,
                                     executor=report.executor, health=health, now=self.clock(), circuit=self.circuit)
        return self._settlement_event(report, s, source)

    async def fail_over(self, report: ExecutorReport, source: str | None = None) -> FailOver:
        """A retryable failure: settle the failed attempt and decide its fallback, in one ledger step.

        The fallback is decided under the failed decision's policy version, mode and arm, with
        every standard trigger, never on an executor that failed this task before, never past
        the task's deadline, and at most ``max_attempts`` decisions in all; its decision id
        follows from the attempt number, so a redelivered report finds the fallback it caused
        and nothing is decided or reserved twice. ValueError if the echoed task is not the
        task that was decided (the report is then dead-lettered, its attempt left to expire).
        """
        assert report.retryable and report.task is not None
        try:
            task = parse_task(report.task)
        except TaskError as exc:
            raise ValueError(f"the failure report's task is not a valid task: {exc}") from exc
        identity = source or report.identity
        _, stored = await self.ledger.read([], [], [report.decision_id])
        parent = stored.get(report.decision_id)
        if parent is None or not parent.decision.routed:
            log.warning("no fallback for %s: its decision is no longer stored (decision_ttl_s)", report.decision_id)
            return FailOver(await self.settle(report, source), None)  # settled, its failure counted: no fallback
        first = parent.decision
        if first.task_hash not in (None, task.content_hash) or (first.service, first.task_id) != (task.service,
                                                                                                 task.task_id):
            raise ValueError(f"the failure report's task is not the task decided as {first.decision_id}")
        try:
            policy = await self.store.get(first.policy_version)
        except PolicyError:
            policy = self.default_policy
        assert first.assigned_tier is not None and first.executor is not None
        retry = Retry(
            attempt=first.attempt + 1, parent_decision_id=first.decision_id, failed_tier=first.assigned_tier,
            excluded=(*first.excluded_executors, first.executor),
            deadline=first.deadline or task.created_at + timedelta(milliseconds=task.effective_sla_ms),
        )
        failed = FailedAttempt(first.decision_id, report.actual, identity, report.executor, report.charge_scopes)
        now = self.clock()
        for round_no in range(self.max_rounds):
            scope_keys, baseline_key = ledger_keys(policy, task, now)
            snap, _ = await self.ledger.read(scope_keys, [baseline_key], [])
            await self.ledger.settled_view(snap, first.decision_id, report.actual)
            plan = decide(task, policy, snap, now, mode=first.mode, arm=first.canary_arm,
                          reservation_ttl_s=self.reservation_ttl_s, circuit=self.circuit, retry=retry)
            if round_no == self.max_rounds - 1 and plan.amount and plan.enforce:
                plan = _contention_reject(plan)
            [res], _ = await self.ledger.commit([plan], scope_keys, [baseline_key], [source], [failed], now=now,
                                                circuit=self.circuit)
            if res.status == "over":
                continue
            assert res.parent is not None, "a committed fallback settled its failed attempt"
            if res.status == "pdup":  # another report settled that attempt: this one decides nothing
                return FailOver(self._settlement_event(report, res.parent, source), None)
            child = (plan.decision.model_copy(update={"sequence": res.sequence}) if res.status == "ok"
                     else res.stored.decision if res.stored is not None else plan.decision)
            event = self._settlement_event(report, res.parent, source, fallback=child.decision_id)
            return FailOver(event, child, task, json.dumps(report.task, separators=(",", ":"), ensure_ascii=False))
        raise AssertionError("unreachable: the last round rejects rather than reserve")

    def _settlement_event(self, report: ExecutorReport, s: Settlement | None, source: str | None,
                          fallback: str | None = None) -> SettlementEvent:
        """The audit event of one report's settlement (``s`` None: nothing settled, a skipped duplicate)."""
        return SettlementEvent(
            decision_id=report.decision_id, kind=SettlementKind(s.kind) if s else SettlementKind.SKIPPED,
            task_id=report.task_id, service=report.service, executor=report.executor,
            currency=(s.currency if s else None) or report.currency or self.default_policy.currency,
            reserved=s.reserved if s else Decimal(0), actual=report.actual, scopes=s.scopes if s else [],
            run_ms=report.run_ms, dispatch_ms=report.dispatch_ms, report_id=report.identity,
            recorded_at=self.clock(), outcome=report.outcome, error_class=report.error_class, error=report.error,
            sla_ms=report.sla_ms, deadline=report.deadline, fallback_decision_id=fallback,
        )

    async def expire_overdue(self, lease_s: float = 30.0) -> list[SettlementEvent]:
        """Reservations nobody settled in time, now presumed spent: their events, still to be written.

        Call ``recorded`` with them once written; an expiry whose event is never confirmed is
        handed out again after ``lease_s`` (to this worker or another).
        """
        now = self.clock()
        return [
            SettlementEvent(
                decision_id=e.decision_id, kind=SettlementKind.EXPIRED, task_id=e.task_id, service=e.service,
                executor=e.executor, currency=e.currency or self.default_policy.currency, reserved=e.amount,
                actual=None, scopes=e.scopes, run_ms=None, dispatch_ms=None, report_id=None, recorded_at=now,
            )
            for e in await self.ledger.expire_overdue(now, lease_s=lease_s)
        ]

    async def recorded(self, events: Sequence[SettlementEvent]) -> None:
        """These expiry events are on the audit stream: stop handing them out."""
        await self.ledger.recorded([e.decision_id for e in events if e.kind == SettlementKind.EXPIRED])

    async def circuits(self) -> tuple[dict[str, CircuitView], list[CircuitEvent]]:
        """The circuit breakers' timer: end due cool-downs; the circuits not closed, and the
        changes still to write to the audit stream (then call ``circuits_recorded``)."""
        return await self.ledger.circuit_tick(self.clock(), self.circuit)

    async def circuits_recorded(self, events: Sequence[CircuitEvent]) -> None:
        """These circuit changes are on the audit stream: stop handing them out."""
        await self.ledger.circuits_recorded(events)

    async def report_load(self, executor: str, saturation: float, at: datetime) -> None:
        """An executor's saturation (0..1), for the ``load`` trigger of every worker."""
        await self.ledger.report_load(executor, saturation, at)


def _contention_reject(plan: Plan) -> Plan:
    """Last round of a batch that kept losing races for the same cap: reject rather than loop."""
    d = reject(plan.decision, Trigger.BUDGET_HARD, CONTENTION)
    return dataclasses.replace(plan, decision=d, amount=0, charges=())
