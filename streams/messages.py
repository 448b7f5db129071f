"""JSON messages on the executor and load topics: the contract with executors.

Tasks themselves are ``dispatch_core.task.Task`` as JSON; executors' reports on the cost topic
are ``dispatch_core.settlement.ExecutorReport``; audit events are Avro (``schemas``).

The routed-task contract: an executor consumes its topic with ``isolation.level=read_committed``
(the dispatcher writes transactionally), claims each task by ``decision_id`` before running it
(``dispatch_core.claims.ExecutionClaims``: run only on ``run``; on ``done`` skip it and report
outcome ``duplicate``; on ``running`` wait for the other run), and reports once per task it
received (``ExecutorReport``, echoing ``currency`` and ``charge_scopes``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from dispatch_core.decision import Decision


class RoutedTask(BaseModel):
    """A task on its executor's topic: the original task plus what dispatch-core decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str
    task_id: str
    service: str
    workload: str
    tier: str
    executor: str
    policy_version: str
    estimate: Decimal
    currency: str
    created_at: datetime
    routed_at: datetime
    task: dict[str, Any] = Field(description="the task as submitted, payload untouched")
    charge_scopes: list[str] = Field(default_factory=list, description="budget keys to charge; set when nothing was reserved")
    # Added with fallbacks: executors drop work past its deadline (report ``expired``) and echo both.
    deadline: datetime | None = Field(default=None, description="created_at + SLA: do not start it after this")
    sla_ms: float | None = Field(default=None, description="the task's latency SLA")
    attempt: int = Field(default=1, description="1, or n for the (n-1)th fallback after executor failures")

    @classmethod
    def encode(cls, decision: Decision, task_text: str, created_at: datetime, charge_scopes: list[str]) -> bytes:
        """The routed message for ``decision``, with the task's own JSON text embedded byte for byte.

        Not re-serialising the task keeps the envelope exactly ``len(task) +`` a few hundred
        bytes (a re-dump can grow numbers like ``1e15`` many times), and is faster.
        """
        assert decision.assigned_tier and decision.executor and decision.workload, "only routed decisions"
        head = cls.model_construct(
            decision_id=decision.decision_id, task_id=decision.task_id, service=decision.service,
            workload=decision.workload.value, tier=decision.assigned_tier, executor=decision.executor,
            policy_version=decision.policy_version, estimate=decision.estimate_assigned,
            currency=decision.currency, created_at=created_at, routed_at=datetime.now(UTC),
            charge_scopes=charge_scopes, deadline=decision.deadline, sla_ms=decision.sla_ms, attempt=decision.attempt,
        ).model_dump_json(exclude={"task"})
        return f'{head[:-1]},"task":{task_text}}}'.encode()


class LoadUpdate(BaseModel):
    """An executor's saturation: in-flight tasks over its capacity (feeds the ``load`` trigger)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: str
    saturation: float = Field(ge=0, le=1)
    in_flight: int = Field(ge=0)
    capacity: int = Field(gt=0)
    at: AwareDatetime
