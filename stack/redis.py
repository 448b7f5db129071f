"""A local redis-server on loopback, persisted with an append-only file.

``appendonly yes`` matters: the budget ledger lives in Redis and must survive a
`stack down` / `stack up`. The server runs in the foreground (``daemonize no``) in
its own session, so its PID is the one we spawned and wrote down.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispatch_core.settings import Settings

from .service import Service

HOST = "127.0.0.1"


def redis_conf(settings: Settings, data_dir: str) -> str:
    return "".join(
        f"{line}\n"
        for line in (
            f"port {settings.redis_port}",
            f"bind {HOST}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',  # stdout, which the stack sends to redis.log
            f"dir {data_dir}",
            "appendonly yes",
            "appendfsync everysec",
            # the config path in the process title lets `stack down` prove a PID is ours
            'proc-title-template "{title} {listen-addr} {config-file}"',
        )
    )


async def redis_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if Redis at host:port answers PING."""
    return await redis_url_answers(f"redis://{host}:{port}/0", timeout_s)


async def redis_url_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True if the Redis at ``url`` answers PING."""
    client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


class RedisServer(Service):
    """redis-server on 127.0.0.1:``settings.redis_port``, data and AOF under ``<state_dir>/redis``."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.state_dir)
        self.settings = settings
        self.config = self.dir / "redis.conf"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.settings.redis_port}"

    @property
    def url(self) -> str:
        return f"redis://{self.endpoint}/0"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    @property
    def marker(self) -> str:
        return str(self.config)

    def binaries(self) -> list[str]:
        return ["redis-server"]

    def prepare(self) -> None:
        self.config.write_text(redis_conf(self.settings, str(self.dir)))

    def command(self) -> list[str]:
        return ["redis-server", str(self.config)]

    async def probe(self) -> bool:
        return await redis_answers(HOST, self.settings.redis_port)
