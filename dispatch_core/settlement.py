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
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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


class ExecutorReport(BaseModel):
    """The executor's report on the cost-feedback topic, one per routed task it received.

    ``outcome`` is ``succeeded`` (it ran; ``actual`` is what it cost) or ``duplicate`` (the
    task was delivered again after a run or during one, see the execution claim, and was not
    run again). ``report_id`` identifies one report: a report redelivered by Kafka keeps it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    decision_id: str = Field(min_length=1, max_length=100)
    report_id: str | None = Field(default=None, min_length=1, max_length=100,
                                  description="unique per report; when absent, the report's content identifies it")
    outcome: Literal["succeeded", "duplicate"] = "succeeded"
    task_id: str = Field(max_length=200)
    service: str = Field(max_length=100)
    executor: str = Field(max_length=100)
    actual: Decimal = Field(ge=0, le=MAX_REPORTED, decimal_places=6)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$", description="echoed from the routed task")
    run_ms: float = Field(ge=0)
    dispatch_ms: float = Field(description="task created_at -> executor received it")
    finished_at: AwareDatetime
    charge_scopes: list[str] = Field(default_factory=list, max_length=64, description="echoed from the routed task")

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

    @property
    def charges(self) -> bool:
        """True for the kinds that moved money in the ledger."""
        return self.kind in (SettlementKind.SETTLED, SettlementKind.SETTLED_LATE, SettlementKind.UNRESERVED,
                             SettlementKind.EXPIRED)
