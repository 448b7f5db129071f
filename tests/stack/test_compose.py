"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {name: field.default for name, field in Settings.model_fields.items()}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """'INTERNAL://kafka:9092,EXTERNAL://:19092' -> {'INTERNAL': ('kafka', 9092), ...}"""
    result = {}
    for item in spec.split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        result[name] = (host, int(port))
    return result


def test_kafka_is_a_one_node_kraft_broker_of_the_default_version(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["image"] == f"apache/kafka:{DEFAULTS['kafka_version']}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS"] == 1 and env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == 0
    assert "healthcheck" in kafka and "healthcheck" in services["redis"]


def test_host_ports_match_the_local_stack(services: dict[str, Any]) -> None:
    kafka_env = services["kafka"]["environment"]
    external_host, external_port = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])["EXTERNAL"]
    assert f"{external_host}:{external_port}" == DEFAULTS["kafka_bootstrap"]
    container_port = listeners(kafka_env["KAFKA_LISTENERS"])["EXTERNAL"][1]
    assert f"{DEFAULTS['kafka_port']}:{container_port}" in services["kafka"]["ports"]
    assert f"{DEFAULTS['redis_port']}:6379" in services["redis"]["ports"]
    assert urlsplit(DEFAULTS["redis_url"]).port == DEFAULTS["redis_port"]


def test_python_services_point_at_the_compose_kafka_and_redis(services: dict[str, Any]) -> None:
    internal = listeners(services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])["INTERNAL"]
    python = {name: s for name, s in services.items() if "build" in s}
    assert {"topics", "worker"} <= set(python)
    for name, service in python.items():
        env = service["environment"]
        assert env["DISPATCH_KAFKA_BOOTSTRAP"] == f"{internal[0]}:{internal[1]}", name
        redis = urlsplit(env["DISPATCH_REDIS_URL"])
        assert (redis.hostname, redis.port) == ("redis", 6379), name
        assert set(service["depends_on"]) <= set(services), name
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_example_executors_are_executors_of_the_default_policy(services: dict[str, Any]) -> None:
    executors = {s["command"][1] for s in services.values() if s.get("command", [""])[0] == "executor"}
    assert len(executors) >= 2
    assert executors <= set(load_policy().executors())
    assert (REPO / "Dockerfile").exists()


def test_a_one_node_broker_can_run_the_workers_transactions_and_restarts_keep_their_names(
        services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1 and env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 1
    assert services["worker"]["environment"]["DISPATCH_WORKER_ID"]  # static membership: fast restarts in place
    instances = [s["command"][s["command"].index("--instance") + 1]
                 for s in services.values() if s.get("command", [""])[0] == "executor"]
    assert instances and len(set(instances)) == len(instances)  # a stable, unique claim owner each


def test_the_registry_is_the_local_stacks_apicurio_and_the_worker_uses_it(services: dict[str, Any]) -> None:
    from stack.registry import CCOMPAT, VERSION

    registry = services["registry"]
    assert registry["image"] == f"apicurio/apicurio-registry:{VERSION}"
    assert registry["environment"]["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"
    assert f"127.0.0.1:{DEFAULTS['registry_port']}:8080" in registry["ports"]
    for name in ("worker", "finance"):  # the writer, and the reader of the audit topic
        service = services[name]
        assert service["environment"]["DISPATCH_SCHEMA_REGISTRY_URL"] == f"http://registry:8080{CCOMPAT}", name
        assert "registry" in service["depends_on"], name
