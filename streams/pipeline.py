"""What the dispatcher worker does with each batch it consumes, independent of Faust.

Every input ends in exactly one place: a decision (routed task + audit event, or a rejection
audit event) or the dead-letter topic (plus a rejection audit event when its task id is
readable). All writes of a batch are acknowledged by the broker before the batch returns,
so the caller's input offsets are committed only after its outputs exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from dispatch_core.decision import Decision, Trigger
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import invalid, ledger_keys
from dispatch_core.errors import DispatchError, TaskError
from dispatch_core.ledger import RedisLedger
from dispatch_core.task import Task, parse_task
from schemas import AuditEncodingError
from streams import metrics
from streams.messages import CostReport, LoadUpdate, RoutedTask
from streams.outputs import Delivery, Outputs, delivered

log = logging.getLogger(__name__)

_SETTLEMENT_KIND = {
    "settled": "settled", "dup": "settled", "late": "settled_late", "unreserved": "unreserved", "unknown": "unreserved",
}


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed Kafka record, with where it came from (for dead letters)."""

    value: bytes
    topic: str
    partition: int
    offset: int

    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


async def until_done(handle: Callable[[list[Any]], Awaitable[Any]], batch: list[Any],
                     max_delay_s: float = 5.0) -> None:
    """Run ``handle(batch)`` until it succeeds, backing off between tries.

    Faust acks a ``take_events`` batch once the agent moves on, even if the handler raised,
    so a failure must not escape the agent: that would lose the batch. Every handler here is
    idempotent (decisions are stored by id, settlements are idempotent, outputs carry the
    decision id), so trying again is safe; the partition waits meanwhile instead of skipping.
    """
    delay = 0.1
    while True:
        try:
            await handle(batch)
            return
        except (DispatchError, KafkaError, OSError) as exc:
            log.error("batch of %d failed, retrying in %.1f s: %s", len(batch), delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


class Pipeline:
    """Task, cost-feedback and load handling for one worker process."""

    def __init__(self, dispatcher: Dispatcher, outputs: Outputs) -> None:
        self.dispatcher = dispatcher
        self.ledger: RedisLedger = dispatcher.ledger
        self.outputs = outputs

    async def handle_tasks(self, batch: list[Incoming]) -> None:
        """Decide a batch of task records; route, audit or dead-letter every one."""
        writes: list[Delivery] = []
        valid: list[tuple[Task, dict[str, Any], Incoming]] = []
        for rec in batch:
            data = _json_object(rec.value)
            try:
                task = parse_task(data if data is not None else rec.value)
            except TaskError as exc:
                writes += await self._reject_invalid(rec, data, str(exc))
                continue
            assert data is not None, "parse_task accepts only a JSON object"
            valid.append((task, data, rec))
        decisions = await self.dispatcher.decide([t for t, *_ in valid]) if valid else []
        for decision, (task, data, rec) in zip(decisions, valid, strict=True):
            try:
                audit = await self.outputs.audit_decision(decision)  # first: what cannot be recorded is not routed
            except AuditEncodingError as exc:
                log.error("decision %s cannot be recorded, dead-lettering its task: %s", decision.decision_id, exc)
                metrics.DLQ.labels(source=rec.topic).inc()
                writes.append(await self.outputs.dead_letter(rec.value, f"decision cannot be recorded: {exc}",
                                                             rec.source()))
                continue
            if decision.routed:
                routed = RoutedTask.of(decision, data, task.created_at, self._charge_scopes(decision, task))
                writes.append(await self.outputs.route(routed))
            writes.append(audit)
            metrics.observe(decision)
        await delivered(writes)

    def _charge_scopes(self, decision: Decision, task: Task) -> list[str]:
        """Budget keys a fail-open decision's actual cost is charged to (it reserved nothing)."""
        if Trigger.LEDGER_UNAVAILABLE not in decision.triggers:
            return []
        return ledger_keys(self.dispatcher.default_policy, task, decision.decided_at)[0]

    async def _reject_invalid(self, rec: Incoming, data: dict[str, Any] | None, error: str) -> list[Delivery]:
        metrics.DLQ.labels(source=rec.topic).inc()
        writes = [await self.outputs.dead_letter(rec.value, error, rec.source())]
        if data is not None and isinstance(data.get("task_id"), str) and data["task_id"]:
            decision = invalid(data, error, self.dispatcher.default_policy, datetime.now(UTC))
            writes.append(await self.outputs.audit_decision(decision))
            metrics.observe(decision)
        return writes

    async def handle_costs(self, batch: list[Incoming]) -> None:
        """Settle reservations with the actual costs executors report, and record each settlement."""
        writes: list[Delivery] = []
        for rec in batch:
            try:
                report = CostReport.model_validate_json(rec.value)
            except ValidationError as exc:
                metrics.DLQ.labels(source=rec.topic).inc()
                writes.append(await self.outputs.dead_letter(rec.value, f"invalid cost report: {exc}", rec.source()))
                continue
            s = await self.ledger.settle(report.decision_id, report.actual, report.charge_scopes)
            kind = _SETTLEMENT_KIND[s.status]
            event = self._settlement(report.decision_id, kind, s.reserved, s.scopes, report)
            try:
                writes.append(await self.outputs.audit_settlement(event))
            except AuditEncodingError as exc:
                metrics.DLQ.labels(source=rec.topic).inc()
                writes.append(await self.outputs.dead_letter(rec.value, f"settlement cannot be recorded: {exc}",
                                                             rec.source()))
                continue
            metrics.SETTLEMENTS.labels(kind=kind).inc()
        await delivered(writes)

    def _settlement(self, decision_id: str, kind: str, reserved: Decimal, scopes: list[str],
                    report: CostReport | None = None) -> dict[str, Any]:
        """A settlement audit event; ``report`` is None for a release (no executor ever reported)."""
        return {
            "decision_id": decision_id, "kind": kind, "task_id": report and report.task_id,
            "service": report and report.service, "executor": report and report.executor,
            "currency": self.dispatcher.default_policy.currency, "reserved": reserved,
            "actual": report and report.actual, "scopes": scopes, "run_ms": report and report.run_ms,
            "dispatch_ms": report and report.dispatch_ms, "recorded_at": datetime.now(UTC),
        }

    async def handle_load(self, batch: list[Incoming]) -> None:
        """Keep the latest saturation of each executor in Redis for the ``load`` trigger."""
        latest: dict[str, LoadUpdate] = {}
        for rec in batch:
            try:
                update = LoadUpdate.model_validate_json(rec.value)
            except ValidationError as exc:
                log.warning("ignoring invalid load report at %s: %s", rec.source(), exc)
                continue
            latest[update.executor] = update
        for u in latest.values():
            await self.ledger.report_load(u.executor, u.saturation, u.at)

    async def release_expired(self) -> int:
        """Release reservations never settled in time and record each release.

        The release is atomic in Redis; its audit events are then written until the broker
        has them (a crash between the two is the one window where a release goes unrecorded).
        """
        try:
            released = await self.ledger.release_expired(datetime.now(UTC))
        except DispatchError as exc:
            log.warning("could not release expired reservations this round: %s", exc)
            return 0
        events = [self._settlement(r.decision_id, "released", r.amount, []) for r in released]

        async def write(_: object) -> None:
            await delivered([await self.outputs.audit_settlement(e) for e in events])

        if events:
            await until_done(write, [])
            metrics.SETTLEMENTS.labels(kind="released").inc(len(events))
        return len(released)


__all__ = ["Incoming", "Pipeline"]
