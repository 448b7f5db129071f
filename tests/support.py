"""Helpers for tests that run their own private local stack (imported by conftest and tests)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from dispatch_core.settings import Settings


def free_ports(count: int) -> list[int]:
    """Free loopback ports below the ephemeral range (so client sockets do not take them first)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def local_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a private local stack under ``state_dir`` on free ports; the jar cache is shared."""
    kafka, controller, redis = free_ports(3)
    values: dict[str, object] = {
        "state_dir": state_dir,
        "kafka_port": kafka,
        "kafka_controller_port": controller,
        "redis_port": redis,
        "kafka_bootstrap": f"127.0.0.1:{kafka}",
        "redis_url": f"redis://127.0.0.1:{redis}/0",
        "stack_stop_timeout_s": 10.0,
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]
