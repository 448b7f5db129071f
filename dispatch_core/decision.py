"""The decision record: every routing decision with the provenance that explains it.

Every field a finance or incident review needs is mandatory: the model has no defaults for
them, so a record missing one cannot be constructed (and the Avro schema, whose fields are
not nullable either, cannot encode one).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dispatch_core.task import WorkloadClass

#: Namespace of decision ids: uuid5(namespace, "service/task_id") is stable across workers.
DECISION_NAMESPACE = uuid.UUID("5b7f0c1e-8d2a-4e6b-9a41-0d15c0de0001")

Mode = Literal["off", "shadow", "enforce"]
Arm = Literal["stable", "canary"]


class Trigger(StrEnum):
    """The standard reasons a decision departs from the tier a task asked for."""

    BUDGET_SOFT = "budget_soft"  # spend past a budget's soft threshold: one step down
    BUDGET_HARD = "budget_hard"  # the estimate would cross a cap: down to a tier that fits, or reject
    TREND = "trend"  # spend projected to window end crosses a cap: one step down, pre-emptively
    LOAD = "load"  # the chosen executor reports saturation: next cheaper tier meeting the SLA
    SLA_GUARD = "sla_guard"  # the tier's p95 exceeds the task's SLA: nearest tier that meets it
    POLICY = "policy"  # a policy rule forced the tier, or the request was not allowed
    SHADOW = "shadow"  # shadow mode: decided in full, routed as asked
    FLAG = "flag"  # the service's adoption flag is off: routed as asked, unmanaged
    LEDGER_UNAVAILABLE = "ledger_unavailable"  # Redis unreachable: fail closed or open
    INVALID = "invalid"  # the task failed validation
    CONFLICT = "conflict"  # the task id was decided before for other content: refused, never routed
    EXECUTOR_FAILURE = "executor_failure"  # a fallback: the executor of the previous attempt failed (retryable)
    CIRCUIT_OPEN = "circuit_open"  # the tier's executor has an open circuit (failing): avoided like a saturated one


class Outcome(StrEnum):
    ROUTED = "routed"  # assigned the tier it asked for
    DOWNGRADED = "downgraded"  # assigned a cheaper tier
    REROUTED = "rerouted"  # assigned another tier that is not cheaper (e.g. to meet its SLA)
    REJECTED = "rejected"  # not routed at all


@lru_cache(maxsize=65_536)  # asked several times per task in a batch (ledger keys, engine, verdicts)
def decision_id_for(service: str, task_id: str) -> str:
    """Deterministic decision id: a redelivered task maps to the same decision."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{service}/{task_id}"))


def attempt_decision_id(service: str, task_id: str, attempt: int) -> str:
    """Id of a task's ``attempt``-th decision: the first is ``decision_id_for``, each fallback its own.

    Deterministic, so a redelivered failure report finds the fallback it already caused.
    """
    if attempt <= 1:
        return decision_id_for(service, task_id)
    return str(uuid.uuid5(DECISION_NAMESPACE, f"attempt/{service}/{task_id}/{attempt}"))


def invalid_decision_id(service: str, task_id: str) -> str:
    """Id of the rejection of an invalid input: apart from the id a corrected resend will get."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"invalid/{service}/{task_id}"))


def conflict_decision_id(service: str, task_id: str, task_hash: str) -> str:
    """Id of the refusal of a reused task id: one per (task id, content), apart from the first decision's."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"conflict/{service}/{task_id}/{task_hash}"))


class BudgetState(BaseModel):
    """One budget scope as the decision saw it, and what the decision added to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_id: str
    scope: str
    window: str
    window_start: datetime
    window_end: datetime
    limit: Decimal
    soft_pct: float
    spent: Decimal
    reserved_before: Decimal
    committed_after: Decimal
    projected: Decimal
    trend_active: bool


class Decision(BaseModel):
    """A routing decision and its full provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str
    task_id: str
    service: str
    # Decisions stored before this field existed have none; every new one carries it.
    task_hash: str | None = Field(default=None, description="Task.content_hash of what was decided; None if invalid")
    workload: WorkloadClass | None = Field(description="None only for an invalid task whose class was unreadable")
    task_type: str
    tenant: str | None
    outcome: Outcome
    mode: Mode
    canary_arm: Arm
    policy_version: str
    policy_name: str
    rule_id: str
    complexity_score: float
    complexity_raw: float
    complexity_inputs: dict[str, float]
    baseline_mean: float
    baseline_std: float
    baseline_n: int
    requested_tier: str | None
    asked_tier: str | None = Field(description="what the task would get with no enforcement")
    enforced_tier: str | None = Field(description="what enforcement decides (differs from assigned in shadow)")
    assigned_tier: str | None = Field(description="where the task is actually routed; None if rejected")
    executor: str | None
    triggers: list[Trigger]
    rationale: str
    currency: str
    estimate_asked: Decimal
    estimate_assigned: Decimal
    reserved: Decimal
    budgets: list[BudgetState]
    sla_ms: float
    executor_p95_ms: float | None
    engine_version: str
    decided_at: datetime
    decision_latency_ms: float
    # Added in schema v3; decisions stored before have none.
    complexity_tier: str | None = Field(default=None, description="the tier the complexity score alone maps to")
    estimate_complexity: Decimal | None = Field(default=None, description="estimated cost on complexity_tier")
    untiered_tier: str | None = Field(default=None, description="requested tier, else the class's most capable")
    estimate_untiered: Decimal | None = Field(default=None, description="estimated cost on untiered_tier")
    executor_load: dict[str, float] = Field(default_factory=dict, description="saturation per executor, as seen")
    sequence: int | None = Field(default=None, description="the ledger's commit order; None without Redis")
    # Added in schema v4: fallbacks after an executor failure, and deadlines.
    attempt: int = Field(default=1, ge=1, description="1 for a task's first decision, n for its (n-1)th fallback")
    parent_decision_id: str | None = Field(default=None, description="the failed attempt this one falls back from")
    excluded_executors: list[str] = Field(default_factory=list, description="executors that failed this task before")
    deadline: datetime | None = Field(default=None, description="created_at + SLA: the task is worthless after it")
    time_left_ms: float | None = Field(default=None, description="deadline - decided_at: the SLA left to spend")
    executor_circuits: dict[str, str] = Field(default_factory=dict, description="executors whose circuit was not closed")

    @property
    def routed(self) -> bool:
        return self.assigned_tier is not None
