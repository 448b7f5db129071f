"""The local stack as one unit: `up` (idempotent), `status`, `down`.

`up` reuses services that already answer, cleans up stale PID files, starts the
rest, and waits until every service answers a real request. If anything fails it
stops what *this* call started, so a failed `up` leaves no process behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from dispatch_core.settings import Settings

from . import process
from .kafka import KafkaBroker
from .redis import RedisServer
from .registry import SchemaRegistry
from .service import Service, ServiceStatus

SERVICES = ("kafka", "redis", "registry")


class LocalStack:
    """Kafka + Redis + a schema registry on loopback under ``settings.state_dir``; ``say`` receives progress lines."""

    def __init__(
        self, settings: Settings, *, kafka_version: str | None = None, say: Callable[[str], None] = lambda _: None
    ) -> None:
        self.settings = settings
        self.kafka = KafkaBroker(settings, kafka_version)
        self.redis = RedisServer(settings)
        self.registry = SchemaRegistry(settings)
        self._explicit_version = kafka_version is not None
        self._say = say

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.endpoint

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def registry_url(self) -> str:
        return self.registry.url

    def _select(self, only: Iterable[str] | None) -> list[Service]:
        names = set(SERVICES if only is None else only)
        unknown = names - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {SERVICES}")
        return [s for s in (self.kafka, self.redis, self.registry) if s.name in names]

    async def up(self, only: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Start what is not running and wait until everything answers."""
        services = self._select(only)
        if self.kafka in services and self._explicit_version:
            self.kafka.check_version()
        pids = {s.name: s.pid() for s in services}
        # Redis first: it is ready in milliseconds, while the JVMs may still fetch jars and format
        order = (self.redis, self.registry, self.kafka)
        to_start = sorted((s for s in services if pids[s.name] is None), key=order.index)
        process.require(*sorted({b for s in to_start for b in s.binaries()}))
        started: list[Service] = []
        try:
            for service in to_start:
                if service is self.kafka and not self.kafka.libs.is_dir():
                    self._say(f"fetching Kafka {self.kafka.version} jars with Maven into {self.kafka.libs} (once)")
                if service is self.registry and not self.registry.dist.is_dir():
                    self._say(f"fetching Apicurio Registry {self.registry.version} (~{self.registry.download_mb} MB) "
                              f"with Maven into {self.registry.dist} (once)")
                self._say(f"starting {service.name} on {service.endpoint}")
                pids[service.name] = await asyncio.to_thread(service.start)
                started.append(service)
            timeout_s = self.settings.stack_ready_timeout_s
            results = await asyncio.gather(
                *(s.wait_ready(pid, timeout_s) for s in services if (pid := pids[s.name]) is not None),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except BaseException:
            for service in started:
                await asyncio.to_thread(service.stop, self.settings.stack_stop_timeout_s)
            raise
        return [s.status_of(pids[s.name], True, "started" if s in started else "reused") for s in services]

    async def status(self, only: Iterable[str] | None = None) -> list[ServiceStatus]:
        return list(await asyncio.gather(*(s.status() for s in self._select(only))))

    def down(self, only: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Stop the services by PID (SIGTERM, then SIGKILL after the grace period)."""
        return [s.stop(self.settings.stack_stop_timeout_s) for s in self._select(only)]
