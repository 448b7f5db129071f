"""Safe adoption per service: mode (off / shadow / enforce), a pinned policy version, a canary.

The rollout lives in Redis so every worker sees a change within a second, with no restart:
``dispatch rollout set`` to pin, canary or roll back. Policy versions themselves are
immutable (``PolicyStore``), so pinning a version pins behaviour exactly.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from dispatch_core.decision import Arm, Mode


class Canary(BaseModel):
    """A second policy version for a deterministic share of a service's tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=64, max_length=64)
    percent: float = Field(ge=0, le=100)


class ServiceRollout(BaseModel):
    """How one service adopts dispatch-core. ``version`` None means the worker's default policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "enforce"
    version: str | None = Field(default=None, min_length=64, max_length=64)
    canary: Canary | None = None


class Rollout(BaseModel):
    """Every service's adoption settings; services not listed get ``default``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, ServiceRollout] = Field(default_factory=dict)
    default: ServiceRollout = Field(default_factory=ServiceRollout)

    def for_service(self, service: str) -> ServiceRollout:
        return self.services.get(service, self.default)


def arm_for(service: str, task_id: str, canary: Canary | None) -> Arm:
    """Deterministic canary assignment: the same task always lands in the same arm."""
    if canary is None or canary.percent <= 0:
        return "stable"
    bucket = int.from_bytes(hashlib.sha256(f"{service}/{task_id}".encode()).digest()[:8], "big") % 10_000
    return "canary" if bucket < canary.percent * 100 else "stable"
