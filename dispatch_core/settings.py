"""All configuration, in one typed model: the only module that reads the environment.

Every setting can be given as an environment variable with the ``DISPATCH_`` prefix,
e.g. ``DISPATCH_KAFKA_BOOTSTRAP=broker:9092`` or ``DISPATCH_REDIS_URL=redis://h:6379/0``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatch_core.circuit import CircuitConfig


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
    # A Confluent-compatible schema registry (e.g. http://127.0.0.1:18080/apis/ccompat/v7): audit
    # events are then written in the Confluent wire format (schemas/registry.py). None: the
    # registry-free Avro single-object encoding.
    schema_registry_url: str | None = None
    schema_registry_timeout_s: float = 5.0

    # --- the local stack (`dispatch stack up`) ----------------------------------
    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    kafka_version: str = "3.9.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    registry_port: int = 18080  # the local Apicurio Registry (stack/registry.py)
    registry_management_port: int = 18081  # its health endpoints
    registry_heap: str = "-Xmx256m"
    registry_java: Path | None = None  # None: the newest java found on the machine (21+ runs Apicurio 3.3.3)
    kafka_heap: str = "-Xms256m -Xmx512m"
    stack_ready_timeout_s: float = 120.0  # how long `stack up` waits for every service to answer
    stack_stop_timeout_s: float = 20.0  # SIGTERM grace before SIGKILL on `stack down`

    # --- topics -------------------------------------------------------------------
    topic_tasks: str = "dispatch.tasks"
    topic_executor_prefix: str = "dispatch.exec."
    topic_audit: str = "dispatch.audit"
    topic_audit_checkpoints: str = "dispatch.audit.checkpoints"  # chain heads, apart from the audit topic
    audit_checkpoint_interval_s: float = 10.0  # a chain's head is checkpointed at most this often
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
    # circuit breakers per executor (dispatch_core.circuit): see CircuitConfig for each
    circuit_window: int = Field(default=20, ge=1, le=1000)
    circuit_min_calls: int = Field(default=10, ge=1)
    circuit_failure_rate: float = Field(default=0.5, gt=0, le=1)
    circuit_consecutive_failures: int = Field(default=5, ge=1)
    circuit_cooldown_s: float = Field(default=30.0, gt=0)
    circuit_probe_pct: float = Field(default=10.0, gt=0, le=100)
    circuit_close_after: int = Field(default=2, ge=1)

    # --- inputs ---------------------------------------------------------------------
    # A task larger than this is dead-lettered by size and hash. 1 MiB (the producer's default
    # max_request_size and about the broker's message.max.bytes) minus 64 KiB: the routed
    # envelope (task + decision fields, < 8 KiB) and a dead letter (input + < 3 KiB of headers)
    # always fit; the worker checks this against its topics at start-up.
    max_task_bytes: int = 983_040
    max_task_depth: int = 64  # JSON nesting of a task, payload included

    # --- the worker -----------------------------------------------------------------
    app_id: str = "dispatch-core"
    # A stable name per worker process (e.g. its pod name): with it, a restarted worker rejoins
    # its consumer group at once with its old partitions (static membership), instead of after
    # a rebalance. Unset: dynamic membership.
    worker_id: str | None = None
    session_timeout_s: float = 10.0  # how long the group waits for a silent worker before moving its partitions
    metrics_port: int = 9464
    batch_size: int = 200
    batch_within_s: float = 0.01  # at saturation Faust fills ~120 per batch in 10 ms (5 ms: ~45; measured: +60-80% tasks/s)
    commit_interval_s: float = 0.5  # how often Faust commits offsets it tracks (the load topic)
    # exactly_once: each batch's outputs and input offsets in one Kafka transaction (readers use
    # read_committed); at_least_once: offsets committed right after the outputs are acknowledged
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    # HMAC-SHA-256 key of the audit hash chains (README "Tamper evidence"); without one, plain SHA-256
    audit_key: SecretStr | None = None
    transaction_timeout_s: float = 10.0  # an abandoned transaction is aborted by the broker after this
    # aiokafka waits a fixed 20 ms whenever a transaction starts while the last one's commit
    # markers are still being written (CONCURRENT_TRANSACTIONS, KAFKA-5477), i.e. on nearly every
    # back-to-back batch: 25 ms a transaction against 6-7 ms with 2 ms (measured, one producer)
    transaction_retry_backoff_ms: float = 2.0
    producer_linger_ms: int = 2
    producer_request_timeout_s: float = 40.0  # aiokafka's default; a send fails after this long without the broker
    producer_close_timeout_s: float = 5.0
    max_attempts: int = 3  # tries of a failing record before it is dead-lettered as poison
    retry_max_delay_s: float = 5.0  # backoff cap while Redis or the broker is unavailable

    # --- finance --------------------------------------------------------------------
    finance_store: Path | None = None  # the DuckDB file `dispatch finance sync` fills; None: <state_dir>/finance.duckdb

    def as_env(self) -> dict[str, str]:
        """These settings as DISPATCH_* variables, to hand to a child process (secrets included)."""
        return {f"DISPATCH_{k.upper()}": str(v.get_secret_value() if isinstance(v, SecretStr) else v)
                for k, v in self.model_dump().items() if v is not None}

    def namespaced(self, ns: str, **update: object) -> Settings:
        """These settings with a private set of topics, all named ``<ns>.<topic>``."""
        topics = {"topic_tasks": f"{ns}.tasks", "topic_executor_prefix": f"{ns}.exec.", "topic_audit": f"{ns}.audit",
                  "topic_audit_checkpoints": f"{ns}.audit.checkpoints", "topic_cost": f"{ns}.cost",
                  "topic_load": f"{ns}.load", "topic_dlq": f"{ns}.dlq"}
        return self.model_copy(update={**topics, **update})

    def circuit(self) -> CircuitConfig:
        """The circuit breakers' thresholds."""
        return CircuitConfig(self.circuit_window, self.circuit_min_calls, self.circuit_failure_rate,
                             self.circuit_consecutive_failures, self.circuit_cooldown_s, self.circuit_probe_pct,
                             self.circuit_close_after)

    @property
    def finance_store_path(self) -> Path:
        """Where the finance store lives (``finance_store``, else under the state dir)."""
        return self.finance_store or self.state_dir / "finance.duckdb"

    def executor_topic(self, executor: str) -> str:
        """Kafka topic that carries the routed tasks of one executor."""
        return f"{self.topic_executor_prefix}{executor}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
