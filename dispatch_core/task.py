"""The task a producer submits: what it is, who sent it, what it needs, and its payload.

Validation is strict about the fields the engine reads (unknown fields are refused, numbers
must be non-negative) and leaves ``payload`` untouched: it is the producer's, passed through.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dispatch_core.errors import TaskError


class WorkloadClass(StrEnum):
    """The three kinds of work dispatch-core routes under one policy."""

    LLM = "llm"
    SCRIPT = "script"
    KERNEL = "kernel"


#: Default latency SLA per workload class, used when a task states none.
DEFAULT_SLA_MS: dict[WorkloadClass, float] = {
    WorkloadClass.KERNEL: 45.0,
    WorkloadClass.SCRIPT: 120.0,
    WorkloadClass.LLM: 850.0,
}

_ID_PATTERN = r"^[A-Za-z0-9._:@/\-]+$"
MAX_TOKENS = 10_000_000  # 10M tokens: 10^4 cost units
MAX_CPU_MS = 100_000_000.0  # ~28 hours: 10^5 cost units


class Features(BaseModel):
    """What the engine knows of a task's size; each workload class uses its own."""

    # Bounded so that every estimate fits the audit schema's decimal(18,6) under any valid policy.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS, description="estimated tokens (llm)")
    cpu_ms: float | None = Field(default=None, ge=0, le=MAX_CPU_MS, description="estimated cpu time (script, kernel)")
    payload_bytes: int | None = Field(default=None, ge=0, le=10**13, description="input size (script, kernel)")
    depth: int | None = Field(default=None, ge=0, le=10_000, description="spread / call depth (script)")


class Task(BaseModel):
    """One unit of work to be routed to an executor tier."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task_id: str = Field(min_length=1, max_length=200, pattern=_ID_PATTERN)
    service: str = Field(min_length=1, max_length=100, pattern=_ID_PATTERN)
    workload: WorkloadClass
    task_type: str = Field(default="default", min_length=1, max_length=100, pattern=_ID_PATTERN)
    tenant: str | None = Field(default=None, min_length=1, max_length=100, pattern=_ID_PATTERN)
    requested_tier: str | None = Field(default=None, min_length=1, max_length=100)
    features: Features = Field(default_factory=Features)
    sla_ms: float | None = Field(default=None, gt=0, le=86_400_000, description="latency SLA; class default when absent")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    payload: Any = None

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a timezone (e.g. 2026-11-24T10:00:00Z)")
        return value.astimezone(UTC)

    @property
    def effective_sla_ms(self) -> float:
        """The task's own SLA, or its class default."""
        return self.sla_ms if self.sla_ms is not None else DEFAULT_SLA_MS[self.workload]


def parse_task(raw: bytes | str | dict[str, Any]) -> Task:
    """Validate a task from JSON (bytes/str) or a dict; raise TaskError with a readable reason.

    The task id is recovered from the raw input where possible so that even an invalid task
    can get a ``rejected`` provenance event.
    """
    data: Any = raw
    if isinstance(raw, (bytes, str)):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TaskError(f"task is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskError(f"task must be a JSON object, got {type(data).__name__}")
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        task_id = data.get("task_id")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'task'}: {err['msg']}" for err in exc.errors()
        )
        raise TaskError(f"invalid task: {problems}", task_id if isinstance(task_id, str) else None) from exc
