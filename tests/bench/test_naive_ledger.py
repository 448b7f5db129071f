"""Check-then-increment overshoots a cap under concurrency; the atomic ledger, on the same attempts, does not."""

from __future__ import annotations

from redis.asyncio import Redis

from benchmarks.naive_ledger import run_naive_ledger
from dispatch_core.settings import Settings


async def test_naive_overshoots_where_the_atomic_ledger_holds(redis_service: Settings, redis_client: Redis) -> None:
    result = await run_naive_ledger(redis_service, quick=True)
    assert result["writers"] > 1 and result["attempts"] > 0
    assert result["overshoot"] > 0 and result["naive_spent"] > result["cap"]
    assert result["overshoot_pct"] == round(result["overshoot"] / result["cap"] * 100, 2)
    assert result["atomic_overshoot"] == 0 and 0 < result["atomic_spent"] <= result["cap"]
    assert result["naive_by_writers"]["1"]["overshoot"] == 0  # one writer alone cannot race itself
    assert await redis_client.keys("*") == ["dc:seq"]  # nothing of the run left but the shared counter
