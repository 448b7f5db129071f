"""Example executors: consume a tier topic, simulate the work, report actual cost and load.

A stand-in for the real services' executors that follows the routed-task contract
(``streams.messages``): it reads its topic with ``read_committed``, claims each task by
decision id before running it (``dispatch_core.claims``) so a task delivered twice runs once,
and reports once per delivery (``ExecutorReport``: ``succeeded`` with the actual cost,
``failed``, ``expired``, or ``duplicate`` when the task had already run or failed). Run time is
drawn below the tier's p95 (scaled by ``latency_scale``), actual cost is the estimate +-15%
(deterministic per decision), capped at ``max_cost_ratio`` x the estimate when set (a run that
must never cost more than was reserved). Offsets are committed only after each task's report is
delivered; saturation (in-flight / capacity) is published every ``load_every_s``.

Failures, for demos and tests of fallbacks and circuit breakers (``Profile``):

- a task whose ``deadline`` has passed when the executor gets to it (after claiming it) is not
  run: reported ``expired``, cost 0;
- ``failure_rate`` of runs fail, deterministically per decision id: ``permanent_share`` of those
  permanently (``invalid_input``), the rest retryably (``timeout``, ``overloaded`` or
  ``unavailable``), after doing ``partial_cost`` of the work (that share of the run time, and of
  the estimate as the reported cost);
- during an ``outages`` window (seconds after the executor started) every run fails retryably
  with ``unavailable`` at once, costing nothing.

Whatever the outcome, the claim is marked done before the report is sent: a redelivery of a
failed or expired task is a ``duplicate``, never a second attempt (a fallback is a new decision
with its own id). Every report echoes the routed task's ``deadline`` and ``sla_ms``; a retryable
failure echoes its ``task`` too, so the dispatcher can route it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import logging
import random
import socket
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis.asyncio import Redis

from dispatch_core.claims import Claim, ExecutionClaims
from dispatch_core.errors import LedgerUnavailable
from dispatch_core.money import quantize
from dispatch_core.policy import Policy
from dispatch_core.settings import Settings
from dispatch_core.settlement import ErrorClass, ExecutorReport, ReportOutcome
from streams.messages import LoadUpdate, RoutedTask
from streams.producer import Deliverer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """How an example executor behaves."""

    p95_ms: float
    capacity: int = 16
    latency_scale: float = 1.0
    cost_jitter: float = 0.15
    load_every_s: float = 0.5
    lease_s: float = 60.0  # longer than any run: a claim held longer is taken for dead
    max_cost_ratio: float | None = None  # cap the actual cost at this multiple of the estimate (None: no cap)
    failure_rate: float = 0.0  # share of runs that fail (deterministic per decision id)
    permanent_share: float = 0.0  # share of those failures that are permanent (invalid_input)
    outages: tuple[tuple[float, float], ...] = ()  # [start, end) seconds after the executor started: all fail
    partial_cost: float = 0.3  # share of the estimate (and of the run time) a failed run spends

    def __post_init__(self) -> None:
        for name in ("failure_rate", "permanent_share", "partial_cost"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        for start, end in self.outages:
            if not 0.0 <= start < end:
                raise ValueError(f"an outage runs from START to a later END (seconds >= 0), not {start}:{end}")


#: The codes of simulated failures: retryable (the executor's fault) and permanent (the task's).
RETRYABLE_ERRORS = ("timeout", "overloaded", "unavailable")
PERMANENT_ERROR = "invalid_input"
OUTAGE_ERROR = "unavailable"


@dataclass(frozen=True)
class Failure:
    """How a run fails: its class and its code."""

    error_class: ErrorClass
    error: str


def _rng(decision_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(decision_id.encode()).digest()[:8], "big"))


def fate(task: RoutedTask, profile: Profile) -> Failure | None:
    """Whether this decision's run fails (outages aside), and how: deterministic per decision id.

    Drawn from its own stream (not ``simulate``'s), so turning failures on leaves every
    succeeding run's time and cost as they were.
    """
    if profile.failure_rate <= 0:
        return None
    rng = _rng(f"{task.decision_id}/failure")
    if rng.random() >= profile.failure_rate:
        return None
    if rng.random() < profile.permanent_share:
        return Failure("permanent", PERMANENT_ERROR)
    return Failure("retryable", rng.choice(RETRYABLE_ERRORS))


def partial(task: RoutedTask, profile: Profile) -> Decimal:
    """What a failed run that did work reports: ``partial_cost`` of the estimate."""
    return quantize(task.estimate * Decimal(str(profile.partial_cost)))


def simulate(task: RoutedTask, profile: Profile) -> tuple[float, Decimal]:
    """(run time in seconds, actual cost) for a task: deterministic per decision id."""
    rng = _rng(task.decision_id)
    run_ms = profile.p95_ms * rng.uniform(0.3, 0.9) * profile.latency_scale
    actual = quantize(task.estimate * Decimal(str(rng.uniform(1 - profile.cost_jitter, 1 + profile.cost_jitter))))
    if profile.max_cost_ratio is not None:
        actual = min(actual, quantize(task.estimate * Decimal(str(profile.max_cost_ratio))))
    return run_ms / 1000.0, actual


class Executor:
    """One executor consuming its tier topic."""

    def __init__(self, settings: Settings, name: str, profile: Profile, instance: str | None = None) -> None:
        """``instance``: a stable name for this process, so after a crash it re-runs what it had claimed."""
        self.settings = settings
        self.name = name
        self.profile = profile
        self.owner = f"{name}@{instance or f'{socket.gethostname()}:{os.getpid()}'}"
        self.in_flight = 0
        self.done = 0
        self.duplicates = 0
        self.failed = 0  # runs reported failed (retryable + permanent)
        self.failed_permanent = 0
        self.expired = 0  # tasks past their deadline, not run
        self.started = time.monotonic()  # outages count from here (reset when run() starts consuming)
        self._running: dict[str, asyncio.Future[None]] = {}  # decision id -> its run in this process
        self._to_commit: dict[TopicPartition, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.executor_topic(self.name), bootstrap_servers=s.kafka_bootstrap, group_id=f"executor-{self.name}",
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
        )
        producer = Deliverer(s.kafka_bootstrap, request_timeout_s=s.producer_request_timeout_s)
        redis = Redis.from_url(s.redis_url, decode_responses=True, socket_timeout=s.redis_timeout_s)
        claims = ExecutionClaims(redis, self.owner, lease_s=self.profile.lease_s)
        await consumer.start()
        self.started = time.monotonic()
        reporter = asyncio.create_task(self._report_load(producer, stop))
        slots = asyncio.Semaphore(self.profile.capacity)
        pending: dict[TopicPartition, deque[tuple[int, asyncio.Task[None]]]] = defaultdict(deque)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=self.profile.capacity)
                for tp, msgs in batches.items():
                    for m in msgs:
                        await slots.acquire()  # backpressure: at capacity, stop taking new work
                        work = asyncio.create_task(self._execute(m.value, producer, claims, slots))
                        pending[tp].append((m.offset, work))
                await self._commit_done(consumer, pending)
        finally:
            for queue in pending.values():
                await asyncio.gather(*(t for _, t in queue), return_exceptions=True)
            await self._commit_done(consumer, pending)
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            await redis.aclose()

    async def _commit_done(self, consumer: AIOKafkaConsumer, pending: dict[TopicPartition, deque]) -> None:
        """Commit each partition up to its oldest unfinished task: at-least-once, never past one.

        A commit that fails (the broker is away) is tried again with the next one; until then a
        restart would redeliver those tasks, and their claims make the executor skip them.
        """
        for tp, queue in pending.items():
            while queue and queue[0][1].done():
                offset, task = queue.popleft()
                task.result()  # a failed report must not be committed past
                self._to_commit[tp] = offset + 1
        if self._to_commit:
            try:
                await consumer.commit(dict(self._to_commit))
                self._to_commit.clear()
            except KafkaError as exc:
                log.info("%s: offsets not committed yet: %r", self.name, exc)

    async def _claim(self, claims: ExecutionClaims, decision_id: str) -> Claim:
        """Claim the task, waiting while another owner runs it or Redis is unreachable."""
        delay = 0.05
        while True:
            try:
                state = await claims.claim(decision_id)
                if state != "running":
                    return state
            except LedgerUnavailable as exc:
                if delay == 0.05:
                    log.warning("%s: cannot claim %s yet, retrying: %s", self.name, decision_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def in_outage(self) -> bool:
        """Whether now falls in one of the profile's outage windows."""
        elapsed = time.monotonic() - self.started
        return any(start <= elapsed < end for start, end in self.profile.outages)

    async def _execute(self, raw: bytes, producer: Deliverer, claims: ExecutionClaims,
                       slots: asyncio.Semaphore) -> None:
        try:
            task = RoutedTask.model_validate_json(raw)
        except ValidationError as exc:
            slots.release()
            log.error("%s: skipping a message that is not a routed task: %s", self.name, exc)
            return
        received = datetime.now(UTC)
        did = task.decision_id
        deadline = task.deadline if task.deadline is None or task.deadline.tzinfo else task.deadline.replace(tzinfo=UTC)
        while (earlier := self._running.get(did)) is not None:  # delivered twice to this process: one at a time
            await asyncio.shield(earlier)
        mine = self._running[did] = asyncio.get_running_loop().create_future()  # no await since the check
        outcome: ReportOutcome = "duplicate"
        failure: Failure | None = None
        run_s, actual = 0.0, Decimal(0)
        try:
            if await self._claim(claims, did) == "run":
                if deadline is not None and datetime.now(UTC) > deadline:
                    outcome = "expired"  # worthless now: not run, costs nothing
                else:
                    self.in_flight += 1
                    try:
                        outcome, failure, run_s, actual = await self._run(task)
                    finally:
                        self.in_flight -= 1
                await self._finished(claims, did)  # before the report: a crash after it never re-runs
            else:
                self.duplicates += 1
                log.info("%s: %s already ran: acknowledged and skipped", self.name, did)
        finally:
            del self._running[did]
            mine.set_result(None)
            slots.release()
        report = ExecutorReport(
            decision_id=did, report_id=str(uuid.uuid4()), outcome=outcome, task_id=task.task_id,
            service=task.service, executor=self.name, actual=actual, currency=task.currency, run_ms=run_s * 1000.0,
            dispatch_ms=(received - task.created_at).total_seconds() * 1000.0, finished_at=datetime.now(UTC),
            charge_scopes=task.charge_scopes, deadline=deadline, sla_ms=task.sla_ms,
            error_class=failure.error_class if failure else None, error=failure.error if failure else None,
            task=task.task if failure and failure.error_class == "retryable" else None,
        )
        await producer.deliver(self.settings.topic_cost, report.model_dump_json().encode(), key=did.encode())
        self.done += outcome == "succeeded"
        self.expired += outcome == "expired"
        self.failed += outcome == "failed"
        self.failed_permanent += failure is not None and failure.error_class == "permanent"

    async def _run(self, task: RoutedTask) -> tuple[ReportOutcome, Failure | None, float, Decimal]:
        """Simulate the run: (outcome, failure, run time in seconds, actual cost)."""
        if self.in_outage():
            return "failed", Failure("retryable", OUTAGE_ERROR), 0.0, Decimal(0)
        run_s, actual = simulate(task, self.profile)
        failure = fate(task, self.profile)
        if failure is not None:
            run_s *= self.profile.partial_cost
            actual = partial(task, self.profile)
        await asyncio.sleep(run_s)
        return ("failed" if failure else "succeeded"), failure, run_s, actual

    async def _finished(self, claims: ExecutionClaims, decision_id: str) -> None:
        """Mark the run done, waiting out a Redis outage: the run happened and must not happen again."""
        delay = 0.05
        while True:
            try:
                await claims.done(decision_id)
                return
            except LedgerUnavailable as exc:
                if delay == 0.05:
                    log.warning("%s: cannot mark %s done yet, retrying: %s", self.name, decision_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _report_load(self, producer: Deliverer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            cap = self.profile.capacity
            update = LoadUpdate(executor=self.name, saturation=min(1.0, self.in_flight / cap),
                                in_flight=self.in_flight, capacity=cap, at=datetime.now(UTC))
            await producer.deliver(self.settings.topic_load, update.model_dump_json().encode(), key=self.name.encode())
            await asyncio.sleep(self.profile.load_every_s)


async def run_executors(
    settings: Settings, policy: Policy, names: list[str], *, capacity: int = 16, latency_scale: float = 1.0,
    stop: asyncio.Event | None = None, instance: str | None = None, lease_s: float = 60.0,
    max_cost_ratio: float | None = None, failure_rate: float = 0.0, permanent_share: float = 0.0,
    outages: tuple[tuple[float, float], ...] = (), partial_cost: float = 0.3,
) -> None:
    """Run several example executors in one process until ``stop`` is set (the failure options apply to each)."""
    stop = stop or asyncio.Event()
    executors = []
    for name in names:
        _, tier = policy.tier_of_executor(name)
        profile = Profile(tier.p95_ms, capacity, latency_scale, lease_s=lease_s, max_cost_ratio=max_cost_ratio,
                          failure_rate=failure_rate, permanent_share=permanent_share, outages=tuple(outages),
                          partial_cost=partial_cost)
        executors.append(Executor(settings, name, profile, instance))
    await asyncio.gather(*(e.run(stop) for e in executors))
