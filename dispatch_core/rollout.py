"""Safe adoption per service: mode (off / shadow / enforce), a pinned policy version, a canary.

The rollout lives in Redis so every worker sees a change within a second, with no restart:
``dispatch rollout set`` to pin, canary or roll back. Policy versions themselves are
immutable (``PolicyStore``), so pinning a version pins behaviour exactly.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from dispatch_core.decision import Arm, Mode

# The constraints below say in words what they allow, so the CLI can name it when it refuses a value.
POLICY_VERSION = r"[0-9a-f]{64}"
PolicyVersion = Annotated[str, Field(pattern=f"^{POLICY_VERSION}$", description="64 hex digits (a policy's SHA-256)")]
VersionPrefix = Annotated[
    str, Field(pattern=r"^[0-9a-f]{8,64}$", description="8 to 64 hex digits of a published policy version")
]
Percent = Annotated[float, Field(ge=0, le=100, description="a percentage from 0 to 100")]


class Canary(BaseModel):
    """A second policy version for a deterministic share of a service's tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: PolicyVersion
    percent: Percent


class ServiceRollout(BaseModel):
    """How one service adopts dispatch-core. ``version`` None means the worker's default policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "enforce"
    version: PolicyVersion | None = None
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
