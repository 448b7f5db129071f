"""Effectively-once execution: an executor claims a routed task by decision id before running it.

Kafka delivers at least once, so an executor can see a routed task twice (a worker redelivery,
its own restart). The claim is one Redis step (``lua/claim.lua``): the first delivery gets
``run``; a delivery while another owner's run holds its lease gets ``running`` (wait for it),
after the run finished ``done`` (acknowledge it, report it as a duplicate, skip it). An owner
that died mid-run and comes back under the same name gets ``run`` again for its own claim; a
lease that lapses lets another owner claim it. A run that never completed is retried, a
completed run never repeats.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from redis.asyncio import Redis

from dispatch_core import keys
from dispatch_core.redis_io import guarded

Claim = Literal["run", "running", "done"]

#: Delete a claim only if this owner still holds it (its lease may have lapsed and been taken).
_ABANDON = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ExecutionClaims:
    """Claims on routed tasks, shared by every instance of every executor through Redis."""

    def __init__(self, redis: Redis, owner: str, *, lease_s: float = 60.0, done_ttl_s: float = 7 * 24 * 3600.0) -> None:
        """``lease_s`` must exceed the longest run; ``done_ttl_s`` how long a finished run is remembered."""
        self.redis = redis
        self.owner = owner
        self.lease_ms = int(lease_s * 1000)
        self.done_ttl_ms = int(done_ttl_s * 1000)
        self._claim = redis.register_script(resources.files("dispatch_core").joinpath("lua", "claim.lua").read_text())
        self._abandon = redis.register_script(_ABANDON)

    async def claim(self, decision_id: str) -> Claim:
        """Claim the task of ``decision_id`` for this owner; run it only on ``run``."""
        result: Claim = await guarded(lambda: self._claim(args=[decision_id, self.owner, self.lease_ms]))
        return result

    async def done(self, decision_id: str) -> None:
        """The run finished (its report is sent): no later delivery runs it again."""
        await guarded(lambda: self.redis.set(keys.claim(decision_id), "done", px=self.done_ttl_ms))

    async def abandon(self, decision_id: str) -> None:
        """This owner gives the claim up without running (e.g. shutting down): another may run it."""
        await guarded(lambda: self._abandon(keys=[keys.claim(decision_id)], args=[f"run:{self.owner}"]))
