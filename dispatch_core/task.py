"""The task a producer submits: what it is, who sent it, what it needs, and its payload.

Validation is strict about the fields the engine reads (unknown fields are refused, numbers
must be non-negative) and leaves ``payload`` untouched: it is the producer's, passed through.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
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

    @property
    def content_hash(self) -> str:
        """SHA-256 of what the task asks for: every field but ``created_at``, in canonical JSON.

        A task id is one task: the decision store keeps this hash, so a redelivery (same hash)
        gets its decision back and the same id with other content is refused as a conflict.
        ``created_at`` is left out because a producer that re-sends a task stamps it anew.
        (Not cached: ``model_copy(update=...)`` would carry a cached hash over to other content.)
        """
        canonical = json.dumps(self.model_dump(mode="json", exclude={"created_at"}), sort_keys=True,
                               separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds checked on a raw input before any JSON work, so no record can exhaust the parser."""

    max_bytes: int = 983_040  # 960 KiB: the routed envelope and the dead letter stay under 1 MiB
    max_depth: int = 64  # nesting of arrays and objects, payload included


#: A JSON string (skipped whole, escapes included) or a bracket: what the depth scan looks at.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """True if ``text`` nests arrays/objects deeper than ``max_depth`` (brackets in strings don't count).

    Linear and iterative, unlike a recursive parser on 100k ``[``; stops at the first excess.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: ``json.loads(text, parse_constant=...)`` builds a decoder (and its C scanner) on every call:
#: one shared decoder does the same parse without it (about 15% of read_task's time, measured).
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _validate(data: Any) -> Task:
    if not isinstance(data, dict):
        raise TaskError(f"task must be a JSON object, got {type(data).__name__}", reason="not_object")
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        task_id = data.get("task_id")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'task'}: {err['msg']}" for err in exc.errors()
        )
        raise TaskError(f"invalid task: {problems}", task_id if isinstance(task_id, str) else None,
                        fields=data) from exc


def read_task(value: bytes | None, limits: InputLimits = InputLimits()) -> tuple[Task, str]:
    """A task from a raw record value, checked in order of cost: presence, size, UTF-8, depth, JSON.

    Returns the task and the input's text (what executors receive, byte for byte). Raises
    TaskError whose ``reason`` says which check failed; nothing here can raise anything else.
    """
    if value is None:
        raise TaskError("record has no value (a tombstone): a task must be a JSON object", reason="null_value")
    if len(value) > limits.max_bytes:
        raise TaskError(f"task is {len(value)} bytes, over the {limits.max_bytes}-byte limit", reason="too_large")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"task is not UTF-8: {exc.reason} at byte {exc.start}", reason="not_utf8") from exc
    if json_depth_exceeds(text, limits.max_depth):
        raise TaskError(f"task nests deeper than {limits.max_depth} levels", reason="too_deep")
    try:
        data = _DECODER.decode(text)
    except ValueError as exc:
        raise TaskError(f"task is not valid JSON: {exc}", reason="not_json") from exc
    return _validate(data), text


def parse_task(raw: bytes | str | dict[str, Any], limits: InputLimits = InputLimits()) -> Task:
    """Validate a task from JSON (bytes/str) or a dict; raise TaskError with a readable reason.

    The task id is recovered from the raw input where possible so that even an invalid task
    can get a ``rejected`` provenance event.
    """
    if isinstance(raw, dict):
        return _validate(raw)
    return read_task(raw.encode() if isinstance(raw, str) else raw, limits)[0]
