"""The one place Redis errors become dispatch-core errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as redis_errors

from dispatch_core.errors import LedgerError, LedgerUnavailable

T = TypeVar("T")


async def guarded(op: Callable[[], Awaitable[T]]) -> T:
    """Run one Redis operation; unreachable -> LedgerUnavailable, any other failure -> LedgerError."""
    try:
        return await op()
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise LedgerUnavailable(f"Redis unavailable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise LedgerError(f"Redis error: {exc}") from exc
