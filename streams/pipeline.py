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
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import invalid
from dispatch_core.errors import DispatchError, TaskError
from dispatch_core.ledger import RedisLedger, Settlement
from dispatch_core.task import Task, parse_task
from streams import metrics
from streams.messages import CostReport, LoadUpdate, RoutedTask
from streams.outputs import Delivery, Outputs, delivered

log = logging.getLogger(__name__)

_SETTLEMENT_KIND = {"settled": "settled", "dup": "settled", "late": "settled_late", "unknown": "unreserved"}


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
        valid: list[tuple[Task, dict[str, Any]]] = []
        for rec in batch:
            data = _json_object(rec.value)
            try:
                task = parse_task(data if data is not None else rec.value)
            except TaskError as exc:
                writes += await self._reject_invalid(rec, data, str(exc))
                continue
            assert data is not None, "parse_task accepts only a JSON object"
            valid.append((task, data))
        decisions = await self.dispatcher.decide([t for t, _ in valid]) if valid else []
        for decision, (task, data) in zip(decisions, valid, strict=True):
            if decision.routed:
                writes.append(await self.outputs.route(RoutedTask.of(decision, data, task.created_at)))
            writes.append(await self.outputs.audit_decision(decision))
            metrics.observe(decision)
        await delivered(writes)

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
            settlement = await self.ledger.settle(report.decision_id, report.actual)
            kind = _SETTLEMENT_KIND[settlement.status]
            metrics.SETTLEMENTS.labels(kind=kind).inc()
            writes.append(await self.outputs.audit_settlement(self._settlement_event(report, settlement, kind)))
        await delivered(writes)

    def _settlement_event(self, report: CostReport, s: Settlement, kind: str) -> dict[str, Any]:
        return {
            "decision_id": report.decision_id, "kind": kind, "task_id": report.task_id, "service": report.service,
            "executor": report.executor, "currency": self.dispatcher.default_policy.currency,
            "reserved": s.reserved, "actual": report.actual, "scopes": s.scopes, "run_ms": report.run_ms,
            "dispatch_ms": report.dispatch_ms,
            "recorded_at": datetime.now(UTC),
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
        events: list[dict[str, Any]] = [{
            "decision_id": r.decision_id, "kind": "released", "task_id": None, "service": None,
            "executor": None, "currency": self.dispatcher.default_policy.currency, "reserved": r.amount,
            "actual": None, "scopes": [], "run_ms": None, "dispatch_ms": None, "recorded_at": datetime.now(UTC),
        } for r in released]

        async def write(_: object) -> None:
            await delivered([await self.outputs.audit_settlement(e) for e in events])

        if events:
            await until_done(write, [])
            metrics.SETTLEMENTS.labels(kind="released").inc(len(events))
        return len(released)


__all__ = ["Incoming", "Pipeline"]
