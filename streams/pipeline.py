"""What the worker does with each batch it consumes, independent of Faust and of Kafka's clients.

Every input ends in exactly one place: a decision (audit event, plus the routed task when it
is routed) or the dead-letter topic (plus a rejection event when its task id is readable).
A batch is turned into outputs once, then written per input partition together with that
partition's offset (``Outputs``); the pipeline never returns before its batch is written,
skipped as poison, or handed to the partition's new owner.

Failures, by kind (``streams.errors``):

- unavailable (Redis or the broker): the batch waits and is retried with backoff, however
  long; nothing is skipped. One log line per state change, not one per retry.
- rejected (a record the broker refuses): that record is dead-lettered, never retried.
- fenced (the partition moved to another worker): the batch is left to the new owner.
- anything else (a bug): the batch is retried ``max_attempts`` times, then its records are
  tried one by one, and a record that still fails is dead-lettered as poison with the last
  error. No single record can stall a partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import TopicPartition
from pydantic import ValidationError

from dispatch_core.circuit import CircuitView
from dispatch_core.decision import Decision, Trigger
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.errors import LedgerUnavailable, TaskError
from dispatch_core.settings import Settings
from dispatch_core.settlement import CircuitEvent, ExecutorReport, SettlementEvent, SettlementKind
from dispatch_core.task import InputLimits, Task, json_depth_exceeds, read_task
from schemas import CIRCUIT, DECISION, SETTLEMENT, Framing, SingleObject, headers
from streams import metrics
from streams.dlq import DeadLetter, Incoming
from streams.errors import BrokerUnavailable, Fenced, RecordRejected
from streams.messages import LoadUpdate, RoutedTask
from streams.outputs import Out, Outputs

log = logging.getLogger(__name__)
REPORT_OVERHEAD_BYTES = 65_536  # a report's own fields; a retryable failure adds the task it echoes

Unavailable = (LedgerUnavailable, BrokerUnavailable)
E = TypeVar("E", SettlementEvent, CircuitEvent)


@dataclass
class _Part:
    """One input partition's share of a batch: its outputs and the offset to commit after them."""

    outs: list[Out] = field(default_factory=list)
    next_offset: int = 0
    decisions: list[Decision] = field(default_factory=list)  # counted in metrics once written
    settlements: list[SettlementEvent] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)  # dead-letter reasons, for metrics
    repeats: int = 0  # inputs that repeated a task already decided for another input


Plan = dict[TopicPartition, _Part]
Planner = Callable[[list[Incoming]], Awaitable[Plan]]


class _Outage:
    """Logs an outage once when it starts, every ``every_s`` while it lasts, and once when it ends.

    One per kind of batch: task batches may go on (fail-closed) while report batches wait for
    Redis, and one shared state would flip between the two several times a second.
    """

    def __init__(self, what: str, every_s: float = 30.0) -> None:
        self.what = what
        self.every_s = every_s
        self.since: float | None = None
        self._logged = 0.0

    def down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = self._logged = now
            metrics.UNAVAILABLE.labels(what=self.what).set(1)
            log.warning("%s wait and are retried, unavailable: %s", self.what, exc)
        elif now - self._logged >= self.every_s:
            self._logged = now
            log.warning("%s still waiting after %.0f s: %s", self.what, now - self.since, exc)

    def up(self) -> None:
        if self.since is not None:
            log.warning("%s go on, available again after %.1f s", self.what, time.monotonic() - self.since)
            metrics.UNAVAILABLE.labels(what=self.what).set(0)
            self.since = None


class Pipeline:
    """Task, executor-report and load handling for one worker process."""

    def __init__(self, dispatcher: Dispatcher, outputs: Outputs, settings: Settings, *, worker: str = "",
                 framing: Framing | None = None) -> None:
        self.dispatcher = dispatcher
        self.outputs = outputs
        self.settings = settings
        self.framing = framing or SingleObject()  # audit events' prefix: single-object or Confluent (registry)
        self.worker = worker
        self.limits = InputLimits(settings.max_task_bytes, settings.max_task_depth)
        self.max_report_bytes = settings.max_task_bytes + REPORT_OVERHEAD_BYTES
        self._outages: dict[str, _Outage] = {}

    # --- entry points, one per consumed topic ------------------------------------------------

    async def handle_tasks(self, batch: list[Incoming]) -> None:
        """Decide a batch of task records; route, audit or dead-letter every one, then commit it."""
        await self._run(batch, self._plan_tasks, self._outage("task batches"))

    async def handle_reports(self, batch: list[Incoming]) -> None:
        """Settle reservations with what executors report, and record each settlement."""
        await self._run(batch, self._plan_reports, self._outage("report batches"))

    def _outage(self, what: str) -> _Outage:
        return self._outages.setdefault(what, _Outage(what))

    async def handle_load(self, batch: list[Incoming]) -> None:
        """Keep the latest saturation of each executor in Redis for the ``load`` trigger."""
        latest: dict[str, LoadUpdate] = {}
        for rec in batch:
            try:
                update = LoadUpdate.model_validate_json(rec.value or b"")
            except ValidationError as exc:
                log.warning("ignoring an invalid load report at %s: %s", rec.source(), exc.errors()[0]["msg"])
                continue
            latest[update.executor] = update
        try:
            for u in latest.values():
                await self.dispatcher.report_load(u.executor, u.saturation, u.at)
        except LedgerUnavailable as exc:  # a saturation report is only worth its freshness: the next one will do
            log.info("load reports dropped while Redis is unavailable: %s", exc)

    async def expire_overdue(self) -> int:
        """Expire reservations nobody reported on in time and record each expiry, once.

        The expiry is atomic in Redis and its events wait there until written, so a worker
        that dies in between leaves them to the next round (its own or another worker's).
        """
        events = await self._write_held("expiries", self.dispatcher.expire_overdue, self._settlement_out,
                                        self.dispatcher.recorded)
        for e in events:
            metrics.SETTLEMENTS.labels(kind=e.kind.value).inc()
        return len(events)

    async def record_circuits(self) -> int:
        """End due cool-downs, write circuit changes not yet on the audit stream (once each,
        like expiries), and show every executor's circuit in the metrics."""
        states: dict[str, CircuitView] | None = None

        async def changes() -> list[CircuitEvent]:
            nonlocal states
            states, events = await self.dispatcher.circuits()
            return events

        events = await self._write_held("circuit changes", changes, self._circuit_out,
                                        self.dispatcher.circuits_recorded)
        if states is not None:
            for executor in self.dispatcher.default_policy.executors():
                metrics.CIRCUIT_STATE.labels(executor=executor).set(0)
            for executor, view in states.items():
                metrics.CIRCUIT_STATE.labels(executor=executor).set(metrics.CIRCUIT_LEVEL[view.state])
        for e in events:
            metrics.CIRCUIT_CHANGES.labels(executor=e.executor, to_state=e.to_state).inc()
            log.warning("circuit of %s: %s -> %s (%s)", e.executor, e.from_state, e.to_state, e.reason)
        return len(events)

    async def _write_held(self, what: str, take: Callable[[], Awaitable[list[E]]], out: Callable[[E], Out],
                          confirm: Callable[[list[E]], Awaitable[None]]) -> list[E]:
        """Write events Redis holds until they are confirmed (expiries, circuit changes), as outputs of
        no input, then confirm them. On any failure they wait in Redis for the next round: []."""
        try:
            events = await take()
            if events:
                await self.outputs.write(None, [out(e) for e in events], None)
                await confirm(events)
            return events
        except (*Unavailable, Fenced) as exc:
            log.info("%s wait for the next round: %s", what, exc)
        except Exception:  # noqa: BLE001 - a bug here must not stop the timer; the events wait in Redis
            log.exception("%s wait for the next round after an unexpected error", what)
        return []

    # --- one batch: plan once, write per partition, retry by kind -------------------------------

    async def _run(self, batch: list[Incoming], planner: Planner, outage: _Outage) -> None:
        plan: Plan | None = None
        attempts = 0
        delay = 0.05
        while True:
            try:
                if plan is None:
                    plan = await planner(batch)
                await self._write(plan)  # drops each partition from the plan once it is written
                outage.up()
                return
            except Unavailable as exc:
                outage.down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_delay_s)
            except RecordRejected as exc:
                await self._isolate(self._left(batch, plan), planner, outage, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a bug must cost one record, never the partition
                attempts += 1
                if attempts < self.settings.max_attempts:
                    log.error("batch of %d failed (try %d of %d), retrying: %r", len(batch), attempts,
                              self.settings.max_attempts, exc, exc_info=attempts == 1)
                    batch, plan = self._left(batch, plan), None  # plan what is not written yet again
                    if not batch:
                        return
                    await asyncio.sleep(delay)
                    continue
                await self._isolate(self._left(batch, plan), planner, outage, exc)
                return

    @staticmethod
    def _left(batch: list[Incoming], plan: Plan | None) -> list[Incoming]:
        """The records of ``batch`` whose partition is not written yet."""
        if plan is None:
            return batch
        return [r for r in batch if TopicPartition(r.topic, r.partition) in plan]

    async def _isolate(self, records: list[Incoming], planner: Planner, outage: _Outage, exc: BaseException) -> None:
        """Try records one at a time; one that fails alone is dead-lettered as poison."""
        if len(records) == 1:
            await self._dead_letter_alone(records[0], exc, outage)
            return
        log.error("batch of %d keeps failing (%r): trying its records one by one", len(records), exc)
        for rec in records:
            await self._run([rec], planner, outage)

    async def _dead_letter_alone(self, rec: Incoming, exc: BaseException, outage: _Outage) -> None:
        """Dead-letter one record that cannot be processed; if even that fails, move past it, loudly."""
        reason = "undeliverable" if isinstance(exc, RecordRejected) else "poison"
        log.error("dead-lettering %s as %s: %r", rec.source(), reason, exc)
        error = f"{type(exc).__name__}: {exc}"
        tp = TopicPartition(rec.topic, rec.partition)
        for keep in (self.limits.max_bytes, -1):  # with its bytes if they fit, else size and hash only
            letter = DeadLetter.of(rec, reason, error, attempts=self.settings.max_attempts, worker=self.worker,
                                   max_value_bytes=keep)
            try:
                await self._run_write({tp: _Part([self._dlq_out(letter)], rec.offset + 1, dead=[reason])}, outage)
                return
            except Exception as last:  # noqa: BLE001 - see below
                failure = last
        # nothing can be written for it: stalling the partition forever would be worse; the record
        # stays at its offset on its topic, and this line says where
        log.critical("could not dead-letter %s (%r): moving past it; it is still at that offset", rec.source(),
                     failure)
        await self._run_write({tp: _Part([], rec.offset + 1, dead=["dropped"])}, outage)

    async def _run_write(self, plan: Plan, outage: _Outage) -> None:
        """Write, waiting out unavailability (for dead letters, which must not fail again)."""
        delay = 0.05
        while plan:
            try:
                await self._write(plan)
                outage.up()
            except Unavailable as exc:
                outage.down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_delay_s)

    async def _write(self, plan: Plan) -> None:
        """Write every partition of ``plan`` (concurrently); written and fenced ones leave the plan."""
        parts = list(plan.items())
        results = await asyncio.gather(
            *(self.outputs.write(tp, part.outs, part.next_offset) for tp, part in parts), return_exceptions=True
        )
        failure: BaseException | None = None
        for (tp, part), result in zip(parts, results, strict=True):
            if isinstance(result, Fenced):
                log.info("%s moved to another worker: its batch is theirs now", tp)
                del plan[tp]
            elif isinstance(result, BaseException):
                failure = failure if isinstance(failure, Unavailable) else result  # unavailable wins: just wait
            else:
                del plan[tp]
                self._count(part)
        if failure is not None:
            raise failure

    @staticmethod
    def _count(part: _Part) -> None:
        metrics.observe(part.decisions)
        for e in part.settlements:
            metrics.SETTLEMENTS.labels(kind=e.kind.value).inc()
            if e.outcome is not None and e.kind != SettlementKind.DUPLICATE:
                metrics.EXECUTOR_OUTCOMES.labels(executor=e.executor or "unknown", outcome=e.outcome,
                                                 error_class=e.error_class or "").inc()
        for d in part.decisions:
            if d.parent_decision_id is not None:  # a fallback: the executor that failed is the last excluded
                metrics.FALLBACKS.labels(executor=d.excluded_executors[-1], outcome=d.outcome.value).inc()
        for reason in part.dead:
            metrics.DLQ.labels(reason=reason).inc()
        metrics.REPEATS.inc(part.repeats)

    # --- planning: what each record becomes --------------------------------------------------

    def _part(self, plan: Plan, rec: Incoming) -> _Part:
        part = plan.setdefault(TopicPartition(rec.topic, rec.partition), _Part())
        part.next_offset = max(part.next_offset, rec.offset + 1)
        return part

    async def _plan_tasks(self, batch: list[Incoming]) -> Plan:
        plan: Plan = {}
        valid: list[tuple[Task, str, Incoming]] = []
        for rec in batch:
            part = self._part(plan, rec)
            try:
                task, text = read_task(rec.value, self.limits)
            except TaskError as exc:
                part.outs.append(self._dlq_out(DeadLetter.of(rec, exc.reason, str(exc), task_id=exc.task_id,
                                                             worker=self.worker, max_value_bytes=self.limits.max_bytes)))
                part.dead.append(exc.reason)
                rejection = self.dispatcher.reject_input(exc.fields, str(exc))
                if rejection is not None:
                    part.outs.append(self._decision_out(rejection))
                    part.decisions.append(rejection)
                continue
            valid.append((task, text, rec))
        verdicts = await self.dispatcher.decide_inputs(
            [t for t, *_ in valid], [f"{r.topic}/{r.partition}/{r.offset}" for *_, r in valid]) if valid else []
        for verdict, (task, text, rec) in zip(verdicts, valid, strict=True):
            part = self._part(plan, rec)
            decision = verdict.decision
            if verdict.repeat:  # the same task sent twice: its decision and route come from the first copy
                part.repeats += 1
                continue
            part.decisions.append(decision)
            if Trigger.CONFLICT in decision.triggers:
                part.outs.append(self._decision_out(decision))
                part.outs.append(self._dlq_out(DeadLetter.of(rec, "conflict", decision.rationale,
                                                             task_id=task.task_id, worker=self.worker)))
                part.dead.append("conflict")
            else:
                part.outs.extend(self._decided(decision, task, text))
        return plan

    async def _plan_reports(self, batch: list[Incoming]) -> Plan:
        plan: Plan = {}
        for rec in batch:
            part = self._part(plan, rec)
            try:
                report = self._read_report(rec.value)
            except ValueError as exc:
                part.outs.append(self._dlq_out(DeadLetter.of(rec, "invalid_report", str(exc), worker=self.worker,
                                                             max_value_bytes=self.max_report_bytes)))
                part.dead.append("invalid_report")
                continue
            source = f"{rec.topic}/{rec.partition}/{rec.offset}"
            if not report.retryable:
                event = await self.dispatcher.settle(report, source=source)
                part.outs.append(self._settlement_out(event))
                part.settlements.append(event)
                continue
            try:
                failed = await self.dispatcher.fail_over(report, source=source)
            except ValueError as exc:  # its task is not the task decided: nothing to route
                part.outs.append(self._dlq_out(DeadLetter.of(rec, "invalid_report", str(exc), worker=self.worker,
                                                             max_value_bytes=self.max_report_bytes)))
                part.dead.append("invalid_report")
                continue
            part.outs.append(self._settlement_out(failed.settlement))
            part.settlements.append(failed.settlement)
            if failed.fallback is not None:
                part.outs.extend(self._decided(failed.fallback, failed.task, failed.task_text))
                part.decisions.append(failed.fallback)
        return plan

    def _decided(self, decision: Decision, task: Task | None, text: str) -> list[Out]:
        """A decision's audit event, and its routed task when it is routed."""
        outs = [self._decision_out(decision)]
        if decision.routed and task is not None:
            assert decision.executor is not None
            routed = RoutedTask.encode(decision, text, task.created_at, self.dispatcher.unreserved_scopes(decision, task))
            outs.append(Out(self.settings.executor_topic(decision.executor), task.task_id.encode(), routed))
        return outs

    def _read_report(self, value: bytes | None) -> ExecutorReport:
        """An executor report, bounded like tasks are; ValueError (incl. ValidationError) says why not."""
        if value is None:
            raise ValueError("record has no value (a tombstone): a report must be a JSON object")
        if len(value) > self.max_report_bytes:
            raise ValueError(f"report is {len(value)} bytes, over the {self.max_report_bytes}-byte limit")
        depth = self.limits.max_depth + 2  # the task a retryable failure echoes sits two levels down
        if json_depth_exceeds(value.decode("utf-8", errors="replace"), depth):
            raise ValueError(f"report nests deeper than {depth} levels")
        try:
            return ExecutorReport.model_validate_json(value)
        except ValidationError as exc:
            raise ValueError(f"invalid executor report: {exc}") from exc

    # --- records ----------------------------------------------------------------------------------

    def _decision_out(self, decision: Decision) -> Out:
        """The decision's provenance event (Avro), keyed by decision id."""
        return Out(self.settings.topic_audit, decision.decision_id.encode(),
                   self.framing.encode(DECISION, decision.model_dump()), headers(DECISION, decision.outcome.value),
                   chained=True)

    def _settlement_out(self, event: SettlementEvent) -> Out:
        """A settlement event (Avro), keyed by the decision it belongs to."""
        return Out(self.settings.topic_audit, event.decision_id.encode(),
                   self.framing.encode(SETTLEMENT, event.model_dump()), headers(SETTLEMENT, event.kind.value),
                   chained=True)

    def _circuit_out(self, event: CircuitEvent) -> Out:
        """A circuit change (Avro), keyed by its executor."""
        return Out(self.settings.topic_audit, event.executor.encode(),
                   self.framing.encode(CIRCUIT, event.model_dump()), headers(CIRCUIT, event.to_state), chained=True)

    def _dlq_out(self, letter: DeadLetter) -> Out:
        return Out(self.settings.topic_dlq, letter.key, letter.record_value(), letter.headers())


__all__ = ["Incoming", "Pipeline"]
