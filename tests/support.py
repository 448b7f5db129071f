"""Helpers for tests that run their own private local stack (imported by conftest and tests)."""

from __future__ import annotations

from pathlib import Path

from dispatch_core.settings import Settings
from stack.process import free_ports

__all__ = ["free_ports", "local_settings"]


def local_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a private local stack under ``state_dir`` on free ports; the jar cache is shared."""
    kafka, controller, redis, registry, management = free_ports(5)
    values: dict[str, object] = {
        "state_dir": state_dir,
        "kafka_port": kafka,
        "kafka_controller_port": controller,
        "redis_port": redis,
        "registry_port": registry,
        "registry_management_port": management,
        "kafka_bootstrap": f"127.0.0.1:{kafka}",
        "redis_url": f"redis://127.0.0.1:{redis}/0",
        "stack_stop_timeout_s": 10.0,
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]
