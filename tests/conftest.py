"""Shared fixtures: the real local stack (Kafka + Redis + schema registry), Redis clients, unique names.

Nothing here starts a process at import or collection time. The services start the
first time a test asks for them (``stack``, ``redis_service``, ``redis_client``,
``new_topic``, ``registry``), once per session, under a temporary state dir on free loopback ports
(the Kafka jar cache is the normal one, so only the first run ever fetches), and are
stopped at the end of the session.

With ``DISPATCH_TEST_USE_RUNNING=1`` the tests use the services the ``DISPATCH_*``
environment points at instead and start nothing (``redis_client`` flushes the DB of
``DISPATCH_REDIS_URL``!). Missing services are an error, never a skip.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from dispatch_core.settings import Settings, get_settings
from stack import LocalStack
from stack.kafka import broker_answers
from stack.redis import redis_url_answers
from streams.topics import TopicSpec, admin_client, create_topics

from .support import local_settings

USE_RUNNING = os.environ.get("DISPATCH_TEST_USE_RUNNING") == "1"
STACK_FIXTURES = {"stack", "redis_service", "redis_client", "new_topic", "registry"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a stack fixture is a stack test, so `-m "not stack"` deselects it."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where test stacks keep their state; ``DISPATCH_TEST_STATE_DIR`` pins it (CI prints its logs)."""
    pinned = os.environ.get("DISPATCH_TEST_STATE_DIR")
    if pinned:
        Path(pinned).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=pinned))
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack_settings(state_root: Path) -> Settings:
    """Settings pointing at the session's test stack; starts nothing by itself."""
    return Settings() if USE_RUNNING else local_settings(state_root / "session")


class _Services:
    """Starts the session stack's services on first request; stops only what it started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local = LocalStack(settings)
        self.started: set[str] = set()

    async def ensure(self, *names: str) -> Settings:
        if USE_RUNNING:
            await self._check_running(names)
        elif not set(names) <= self.started:
            statuses = await self.local.up(names)
            self.started |= {s.name for s in statuses if s.note == "started"}
        return self.settings

    async def _check_running(self, names: tuple[str, ...]) -> None:
        s = self.settings
        if "kafka" in names and not await broker_answers(s.kafka_bootstrap):
            pytest.fail(f"DISPATCH_TEST_USE_RUNNING=1 but no Kafka answers at {s.kafka_bootstrap}", pytrace=False)
        if "redis" in names and not await redis_url_answers(s.redis_url):
            pytest.fail(f"DISPATCH_TEST_USE_RUNNING=1 but no Redis answers at {s.redis_url}", pytrace=False)
        if "registry" in names and not await registry_answers(s.schema_registry_url):
            pytest.fail(f"DISPATCH_TEST_USE_RUNNING=1 but no schema registry answers at DISPATCH_SCHEMA_REGISTRY_URL "
                        f"({s.schema_registry_url})", pytrace=False)

    def stop(self) -> None:
        if self.started:
            self.local.down(self.started)


@pytest.fixture(scope="session")
def _services(stack_settings: Settings) -> Iterator[_Services]:
    services = _Services(stack_settings)
    yield services
    services.stop()


@pytest.fixture(scope="session")
async def redis_service(_services: _Services) -> Settings:
    """Only Redis (for tests that need no Kafka); returns the test stack's Settings."""
    return await _services.ensure("redis")


@pytest.fixture(scope="session")
async def stack(_services: _Services) -> Settings:
    """The real Kafka broker and Redis server, running; returns Settings pointing at them."""
    return await _services.ensure("kafka", "redis")


@pytest.fixture(scope="session")
async def registry(_services: _Services) -> Settings:
    """The real schema registry (Apicurio, Confluent API) besides Kafka and Redis; returns Settings with
    ``schema_registry_url`` set, so the audit events they write are in the Confluent wire format."""
    settings = await _services.ensure("kafka", "redis", "registry")
    url = settings.schema_registry_url if USE_RUNNING else _services.local.registry_url
    return settings.model_copy(update={"schema_registry_url": url})


async def registry_answers(url: str | None) -> bool:
    if not url:
        return False
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            return (await client.get(f"{url.rstrip('/')}/subjects")).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
async def redis_client(redis_service: Settings) -> AsyncIterator[Redis]:
    """redis.asyncio client (``decode_responses=True``) on the test Redis, its DB flushed first."""
    client = Redis.from_url(redis_service.redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name(kind)`` -> e.g. ``test.topic.test_round_trip.1f3a9c0e``: a fresh topic/group id per call."""
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]

    def make(kind: str = "topic") -> str:
        return f"test.{kind}.{test}.{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
async def new_topic(
    stack: Settings, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await new_topic(partitions=1, configs={"cleanup.policy": "compact"})`` -> a fresh topic's name.

    The topic exists and is served when the call returns; it is deleted after the test.
    """
    created: list[str] = []

    async def make(partitions: int = 1, configs: Mapping[str, str] | None = None) -> str:
        name = unique_name("topic")
        await create_topics(stack, [TopicSpec(name, partitions, 1, "test", dict(configs or {}))])
        created.append(name)
        return name

    yield make
    if created:
        admin = admin_client(stack)
        try:
            await admin.start()
            await admin.delete_topics(created)
        finally:
            await admin.close()


@pytest.fixture
def fresh_settings_cache() -> Iterator[None]:
    """For CLI tests that change DISPATCH_* variables: get_settings() reads the environment anew."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()

