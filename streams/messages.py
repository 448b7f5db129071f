"""JSON messages on the executor, cost-feedback and load topics: the contract with executors.

Tasks themselves are ``dispatch_core.task.Task`` as JSON; audit events are Avro (``schemas``).
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

    @classmethod
    def of(cls, decision: Decision, task: dict[str, Any], created_at: datetime,
           charge_scopes: list[str] | None = None) -> RoutedTask:
        assert decision.assigned_tier and decision.executor and decision.workload, "only routed decisions"
        return cls(
            decision_id=decision.decision_id, task_id=decision.task_id, service=decision.service,
            workload=decision.workload.value, tier=decision.assigned_tier, executor=decision.executor,
            policy_version=decision.policy_version, estimate=decision.estimate_assigned,
            currency=decision.currency, created_at=created_at, routed_at=datetime.now(UTC), task=task,
            charge_scopes=charge_scopes or [],
        )


class CostReport(BaseModel):
    """An executor's report of what a task really cost (settles its reservation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    decision_id: str
    task_id: str
    service: str
    executor: str
    actual: Decimal = Field(ge=0, le=Decimal(10**11), decimal_places=6)
    run_ms: float = Field(ge=0)
    dispatch_ms: float = Field(description="task created_at -> executor received it")
    finished_at: AwareDatetime
    charge_scopes: list[str] = Field(default_factory=list, description="echoed from the routed task")


class LoadUpdate(BaseModel):
    """An executor's saturation: in-flight tasks over its capacity (feeds the ``load`` trigger)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: str
    saturation: float = Field(ge=0, le=1)
    in_flight: int = Field(ge=0)
    capacity: int = Field(gt=0)
    at: AwareDatetime
