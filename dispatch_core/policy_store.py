"""Published policy versions (immutable, content-addressed) and the rollout, in Redis.

A version is written once with SET NX under its own SHA-256, so it can never change
underneath a pinned service; workers cache versions forever and re-read the rollout
at most every ``rollout_refresh_s``.
"""

from __future__ import annotations

import time

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from dispatch_core import keys
from dispatch_core.errors import LedgerUnavailable, PolicyError
from dispatch_core.policy import Policy, policy_from_canonical
from dispatch_core.redis_io import guarded
from dispatch_core.rollout import Rollout, VersionPrefix

_PREFIX: TypeAdapter[str] = TypeAdapter(VersionPrefix)

class PolicyStore:
    """Policy versions and per-service rollout, shared by every worker through Redis."""

    def __init__(self, redis: Redis, *, rollout_refresh_s: float = 1.0) -> None:
        self.redis = redis
        self.rollout_refresh_s = rollout_refresh_s
        self._policies: dict[str, Policy] = {}
        self._rollout: Rollout | None = None
        self._rollout_at = 0.0

    async def publish(self, policy: Policy) -> str:
        """Store a policy under its version (idempotent; a version never changes)."""
        await guarded(lambda: self.redis.set(keys.policy(policy.version), policy.canonical_json(), nx=True))
        self._policies[policy.version] = policy
        return policy.version

    async def get(self, version: str) -> Policy:
        """A published version; PolicyError if it was never published."""
        if version in self._policies:
            return self._policies[version]
        text = await guarded(lambda: self.redis.get(keys.policy(version)))
        if text is None:
            raise PolicyError(f"policy version {version} is not published")
        policy = policy_from_canonical(text if isinstance(text, str) else text.decode())
        if policy.version != version:
            raise PolicyError(f"stored policy {version} hashes to {policy.version}: the store was tampered with")
        self._policies[version] = policy
        return policy

    async def resolve(self, prefix: str) -> str:
        """Full version from a unique prefix (8 to 64 hex digits), as users type them.

        The prefix is checked before it becomes a SCAN pattern, where ``*`` would match any version.
        """
        try:
            _PREFIX.validate_python(prefix)
        except ValidationError:
            raise PolicyError(f"{prefix!r} is not a policy version: give 8 to 64 of its hex digits") from None
        if len(prefix) == 64:
            return prefix
        found = await guarded(lambda: self._versions_starting(prefix))
        if len(found) != 1:
            raise PolicyError(f"{prefix!r} matches {len(found)} published versions")
        return found[0]

    async def _versions_starting(self, prefix: str) -> list[str]:
        return [k.removeprefix(keys.policy("")) async for k in self.redis.scan_iter(match=keys.policy(prefix) + "*")]

    def cached(self, version: str) -> Policy | None:
        """A version this process has already loaded, without asking Redis."""
        return self._policies.get(version)

    async def rollout(self) -> Rollout:
        """The current rollout, re-read at most every ``rollout_refresh_s``.

        While Redis is unreachable the last rollout read is kept (a shadow service must stay in
        shadow through an outage); with none read yet, LedgerUnavailable.
        """
        if self._rollout is None or time.monotonic() - self._rollout_at >= self.rollout_refresh_s:
            try:
                text = await guarded(lambda: self.redis.get(keys.ROLLOUT))
            except LedgerUnavailable:
                if self._rollout is None:
                    raise
                return self._rollout
            self._rollout = Rollout.model_validate_json(text) if text else Rollout()
            self._rollout_at = time.monotonic()
        return self._rollout

    async def set_rollout(self, rollout: Rollout) -> None:
        """Replace the rollout; every version it names must already be published."""
        for svc in [rollout.default, *rollout.services.values()]:
            for version in filter(None, [svc.version, svc.canary.version if svc.canary else None]):
                await self.get(version)
        await guarded(lambda: self.redis.set(keys.ROLLOUT, rollout.model_dump_json()))
        self._rollout, self._rollout_at = rollout, time.monotonic()
