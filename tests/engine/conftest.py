"""Engine fixtures on the real Redis of the test stack (``redis_client`` comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from dispatch_core.dispatcher import Dispatcher
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import Policy
from dispatch_core.policy_store import PolicyStore

from .factories import NOON


def redis_url_of(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


@pytest.fixture
def ledger(redis_client) -> RedisLedger:
    return RedisLedger(redis_client)


@pytest.fixture
def make_dispatcher(ledger):
    """Build a dispatcher on the shared ledger with a fixed clock (NOON)."""

    async def make(policy: Policy, **kw) -> Dispatcher:
        kw.setdefault("clock", lambda: NOON)
        d = Dispatcher(ledger, PolicyStore(ledger.redis, rollout_refresh_s=0), policy, **kw)
        await d.start()
        return d

    return make
