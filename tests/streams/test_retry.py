"""A failed batch is retried, never skipped (Faust would ack it once the agent moves on)."""

import pytest

from dispatch_core.errors import LedgerError
from streams.pipeline import until_done


async def test_transient_failures_are_retried_until_the_batch_is_handled():
    calls = []

    async def flaky(batch):
        calls.append(list(batch))
        if len(calls) < 3:
            raise LedgerError("redis said no")

    await until_done(flaky, ["a", "b"], max_delay_s=0.01)
    assert calls == [["a", "b"]] * 3


async def test_a_bug_is_not_swallowed():
    async def broken(batch):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await until_done(broken, ["a"])
