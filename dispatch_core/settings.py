"""All configuration, in one typed model: the only module that reads the environment.

Every setting can be given as an environment variable with the ``DISPATCH_`` prefix,
e.g. ``DISPATCH_KAFKA_BOOTSTRAP=broker:9092`` or ``DISPATCH_REDIS_URL=redis://h:6379/0``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "dispatch-core"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "dispatch-core"


class Settings(BaseSettings):
    """dispatch-core configuration (environment prefix ``DISPATCH_``)."""

    model_config = SettingsConfigDict(env_prefix="DISPATCH_", frozen=True, extra="ignore")

    # --- where the services are -------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"

    # --- the local stack (`dispatch stack up`) ----------------------------------
    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    kafka_version: str = "3.9.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    kafka_heap: str = "-Xms256m -Xmx512m"
    stack_ready_timeout_s: float = 120.0  # how long `stack up` waits for both services to answer
    stack_stop_timeout_s: float = 20.0  # SIGTERM grace before SIGKILL on `stack down`

    # --- topics -------------------------------------------------------------------
    topic_tasks: str = "dispatch.tasks"
    topic_executor_prefix: str = "dispatch.exec."
    topic_audit: str = "dispatch.audit"
    topic_cost: str = "dispatch.cost"
    topic_load: str = "dispatch.load"
    topic_dlq: str = "dispatch.dlq"
    task_partitions: int = 3
    executor_partitions: int = 3
    audit_partitions: int = 3
    audit_retention_ms: int = -1  # -1: keep forever; the audit topic is never compacted
    load_retention_ms: int = 3_600_000  # saturation reports are only useful while fresh
    topic_replication_factor: int = 1  # 1 for the one-node local/compose broker

    # --- the decision engine ------------------------------------------------------
    policy_file: Path | None = None  # None: the policy shipped with the package
    ledger_fail_mode: Literal["closed", "open"] = "closed"
    # > 0: a batch may start from the state the previous commit returned (one Redis round trip
    # per batch); caps stay exact, soft/trend see other workers' spend at most this much later
    snapshot_max_age_s: float = 0.25
    reservation_ttl_s: float = 600.0
    decision_ttl_s: float = 6 * 3600.0  # how long a redelivery gets its stored decision back (~2 KB each)
    redis_timeout_s: float = 0.5

    # --- the worker -----------------------------------------------------------------
    app_id: str = "dispatch-core"
    metrics_port: int = 9464
    batch_size: int = 200
    batch_within_s: float = 0.005
    commit_interval_s: float = 0.5  # how often the worker commits the offsets of handled batches

    def as_env(self) -> dict[str, str]:
        """These settings as DISPATCH_* variables, to hand to a child process."""
        return {f"DISPATCH_{k.upper()}": str(v) for k, v in self.model_dump().items() if v is not None}

    def executor_topic(self, executor: str) -> str:
        """Kafka topic that carries the routed tasks of one executor."""
        return f"{self.topic_executor_prefix}{executor}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
