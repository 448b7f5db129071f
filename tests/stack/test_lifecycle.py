"""The local stack against real processes: idempotent up, stale PID files, persistence, clean down."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stack import LocalStack, PortInUse, ServiceFailed
from stack.process import is_running, read_pid

from ..support import local_settings

pytestmark = pytest.mark.stack


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


async def test_up_is_idempotent_and_down_leaves_no_process(state_root: Path) -> None:
    settings = local_settings(state_root / "lifecycle")
    local = LocalStack(settings)
    for service in (local.kafka, local.redis, local.registry):
        service.dir.mkdir(parents=True)
    local.kafka.pid_file.write_text(f"{dead_pid()}\n")  # stale: that process is gone
    local.registry.pid_file.write_text(f"{dead_pid()}\n")
    local.redis.pid_file.write_text(f"{os.getpid()}\n")  # stale: alive, but not our redis (it is this test!)
    pids: set[int] = set()
    try:
        first = {s.name: s for s in await local.up()}
        assert {n: (s.note, s.healthy) for n, s in first.items()} == {
            "kafka": ("started", True), "redis": ("started", True), "registry": ("started", True)
        }
        pids |= {s.pid for s in first.values() if s.pid}
        assert os.getpid() not in pids

        again = {s.name: (s.note, s.pid) for s in await local.up()}
        assert again == {n: ("reused", s.pid) for n, s in first.items()}
        assert all(s.healthy and s.note == "running" for s in await local.status())

        # the ledger survives a restart: appendonly yes
        client = Redis.from_url(settings.redis_url)
        await client.set("dc:test:persisted", "42")
        await client.aclose()
        local.down(["redis"])
        assert not is_running(first["redis"].pid or 0)
        (restarted,) = await local.up(["redis"])
        pids.add(restarted.pid or 0)
        assert restarted.note == "started" and restarted.pid != first["redis"].pid
        client = Redis.from_url(settings.redis_url)
        assert await client.get("dc:test:persisted") == b"42"
        await client.aclose()
    finally:
        stopped = local.down()
    assert all(s.note == "stopped" for s in stopped)
    assert not [pid for pid in pids if is_running(pid)]
    assert not any(s.pid_file.exists() for s in (local.kafka, local.redis, local.registry))
    assert is_running(os.getpid())
    assert [s.note for s in await local.status()] == ["not running"] * 3


async def test_a_failed_up_stops_what_it_started(state_root: Path) -> None:
    settings = local_settings(state_root / "failing", kafka_heap="-Xmx1k")  # the JVM refuses to start
    local = LocalStack(settings)
    with pytest.raises(ServiceFailed) as failed:
        await local.up()
    assert str(failed.value).startswith("kafka") and "heap" in failed.value.log_tail
    assert [read_pid(s.pid_file) for s in (local.kafka, local.redis, local.registry)] == [None] * 3
    assert [s.note for s in await local.status()] == ["not running"] * 3


async def test_a_port_taken_by_someone_else_is_named(state_root: Path) -> None:
    settings = local_settings(state_root / "busy")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.redis_port))
        squatter.listen()
        with pytest.raises(PortInUse, match=f"port {settings.redis_port}"):
            await LocalStack(settings).up(["redis"])
