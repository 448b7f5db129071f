"""What becomes of a decision's money: the executor's report, and the settlement event it causes.

An executor reports once per routed task it received (``ExecutorReport``). The dispatcher
turns the report into exactly one ledger operation and one ``SettlementEvent`` on the audit
stream, beside the ``Decision``; reservations nobody reported on in time become ``expired``
events. One settlement per decision: a second report is recorded as ``duplicate`` and charges
nothing; the same report redelivered gets its first settlement again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

MAX_REPORTED = Decimal(10**11)


class SettlementKind(StrEnum):
    """How a decision's reservation ended (the ``kind`` of a settlement event)."""

    SETTLED = "settled"  # the reservation was swapped for the actual cost
    SETTLED_LATE = "settled_late"  # it had expired into presumed spend; the actual cost replaced the estimate
    UNRESERVED = "unreserved"  # nothing was reserved (fail-open, or an unmanaged route): actual charged/recorded
    EXPIRED = "expired"  # no report in time: the estimate stays counted as presumed spend
    DUPLICATE = "duplicate"  # a second report for a settled decision: recorded, charges nothing
    SKIPPED = "skipped"  # an executor received the task again and did not run it a second time
    RELEASED = "released"  # older releases (before expiry kept room as presumed spend); no longer written


#: What an executor says happened to a routed task it received.
ReportOutcome = Literal["succeeded", "failed", "expired", "duplicate"]
#: retryable: the executor's fault or state (timeout, overloaded, unavailable): another executor may do it;
#: permanent: the task's (invalid input, content refused): no executor will, so it is not retried.
ErrorClass = Literal["retryable", "permanent"]


class ExecutorReport(BaseModel):
    """The executor's report on the cost-feedback topic, one per routed task it received.

    ``outcome``:

    - ``succeeded``: it ran; ``actual`` is what it cost.
    - ``failed``: it did not complete; ``error_class`` says whether another executor may try
      (``retryable``: the dispatcher decides a fallback) or not (``permanent``); ``actual`` is
      the partial cost of the work done (0 if none). A retryable failure echoes the routed
      task's ``task`` back, so the dispatcher can route it again without storing payloads.
    - ``expired``: the task's ``deadline`` had passed when the executor got to it: not run, no cost.
    - ``duplicate``: the task was delivered again after a run or during one (see the execution
      claim) and was not run again.

    ``report_id`` identifies one report: a report redelivered by Kafka keeps it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    decision_id: str = Field(min_length=1, max_length=100)
    report_id: str | None = Field(default=None, min_length=1, max_length=100,
                                  description="unique per report; when absent, the report's content identifies it")
    outcome: ReportOutcome = "succeeded"
    error_class: ErrorClass | None = Field(default=None, description="set exactly when outcome is failed")
    error: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$",
                              description="the failure's code, e.g. timeout, overloaded, invalid_input")
    task_id: str = Field(max_length=200)
    service: str = Field(max_length=100)
    executor: str = Field(max_length=100)
    actual: Decimal = Field(ge=0, le=MAX_REPORTED, decimal_places=6)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$", description="echoed from the routed task")
    run_ms: float = Field(ge=0)
    dispatch_ms: float = Field(description="task created_at -> executor received it (SLA spent queueing)")
    finished_at: AwareDatetime
    charge_scopes: list[str] = Field(default_factory=list, max_length=64, description="echoed from the routed task")
    deadline: AwareDatetime | None = Field(default=None, description="echoed from the routed task")
    sla_ms: float | None = Field(default=None, gt=0, description="echoed from the routed task")
    task: dict[str, Any] | None = Field(default=None, description="the routed task's task, echoed on a retryable failure")

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorReport:
        if (self.outcome == "failed") != (self.error_class is not None):
            raise ValueError("error_class is required when outcome is failed, and only then")
        if self.outcome in ("expired", "duplicate") and self.actual:
            raise ValueError(f"an {self.outcome} report costs nothing: actual must be 0")
        if self.outcome == "failed" and self.error_class == "retryable" and self.task is None:
            raise ValueError("a retryable failure must echo the routed task's 'task' so it can fall back")
        return self

    @property
    def retryable(self) -> bool:
        return self.outcome == "failed" and self.error_class == "retryable"

    @property
    def identity(self) -> str:
        """What makes two reports the same report: its id, or else its whole content."""
        return self.report_id or hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class SettlementEvent(BaseModel):
    """One settlement on the audit stream, linked to its decision by ``decision_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str
    kind: SettlementKind
    task_id: str | None
    service: str | None
    executor: str | None
    currency: str
    reserved: Decimal = Field(description="what the decision had reserved (0 when nothing)")
    actual: Decimal | None = Field(description="the reported cost; None for an expiry")
    scopes: list[str]
    run_ms: float | None
    dispatch_ms: float | None
    report_id: str | None = Field(description="the report behind it; None for an expiry")
    recorded_at: datetime
    # Added in schema v4; settlements written before have none.
    outcome: ReportOutcome | None = Field(default=None, description="the report's outcome; None for an expiry")
    error_class: ErrorClass | None = None
    error: str | None = None
    sla_ms: float | None = Field(default=None, description="the task's SLA, as routed")
    deadline: datetime | None = Field(default=None, description="created_at + SLA, as routed")
    fallback_decision_id: str | None = Field(default=None, description="the attempt this failure fell back to")

    @property
    def queue_share(self) -> float | None:
        """Share of the SLA spent before the executor started (queueing), when known."""
        if self.sla_ms is None or self.dispatch_ms is None:
            return None
        return self.dispatch_ms / self.sla_ms

    @property
    def charges(self) -> bool:
        """True for the kinds that moved money in the ledger."""
        return self.kind in (SettlementKind.SETTLED, SettlementKind.SETTLED_LATE, SettlementKind.UNRESERVED,
                             SettlementKind.EXPIRED)


CircuitState = Literal["closed", "open", "half_open"]


class CircuitEvent(BaseModel):
    """A change of one executor's circuit breaker, on the audit stream (keyed by executor).

    ``seq`` counts the executor's changes (``event_id`` = executor/seq): an event written twice
    (its worker died before confirming it) is recognisable as the same change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: str
    seq: int
    from_state: CircuitState
    to_state: CircuitState
    reason: str
    calls: int = Field(description="outcomes in the sliding window when it changed")
    failures: int = Field(description="retryable failures among them")
    consecutive_failures: int
    changed_at: datetime
    decision_id: str | None = Field(description="the settlement that changed it; None for a cool-down ending")
    _queued: str = PrivateAttr(default="")  # its entry in the ledger's queue of changes to write

    @property
    def event_id(self) -> str:
        return f"{self.executor}/{self.seq}"
