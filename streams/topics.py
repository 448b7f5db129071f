"""Every Kafka topic of dispatch-core, defined once, and their explicit creation.

Nothing relies on broker auto-creation (the local broker disables it): ``stack up``,
``dispatch topics create`` and the test fixtures all call :func:`ensure_topics`.
aiokafka only, no faust import: the CLI stays fast and tests need no Faust app.

The audit topic is the provenance record finance reads: ``cleanup.policy=delete``
(never compacted, so no decision is ever replaced by a later one with the same key)
and ``retention.ms`` from settings (-1 = forever).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from dispatch_core.errors import DispatchError
from dispatch_core.settings import Settings


LOAD_PARTITIONS = 1  # one ordered stream of saturation reports
DLQ_PARTITIONS = 1  # unkeyed, low volume, read by people


class TopicError(DispatchError):
    """A topic could not be reached or created, or exists with a shape that contradicts its spec."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic as dispatch-core needs it; ``configs`` are checked against the broker."""

    name: str
    partitions: int
    replication_factor: int
    purpose: str
    configs: Mapping[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings, executors: Iterable[str]) -> list[TopicSpec]:
    """The full topic set for a policy whose tiers route to ``executors``."""
    rf = settings.topic_replication_factor
    return [
        TopicSpec(settings.topic_tasks, settings.task_partitions, rf, "incoming tasks, keyed by task id"),
        *(
            TopicSpec(settings.executor_topic(name), settings.executor_partitions, rf, f"tasks routed to {name}")
            for name in dict.fromkeys(executors)  # de-duplicated, order kept
        ),
        TopicSpec(
            settings.topic_audit,
            settings.audit_partitions,
            rf,
            "Avro decision provenance, append-only, read by finance",
            {"cleanup.policy": "delete", "retention.ms": str(settings.audit_retention_ms)},
        ),
        TopicSpec(
            settings.topic_audit_checkpoints,
            1,
            rf,
            "audit chain heads, checkpointed: what `dispatch audit verify` checks the audit topic's end against",
            {"cleanup.policy": "delete", "retention.ms": str(settings.audit_retention_ms)},
        ),
        # same partitioning as the tasks: the settle agent runs beside the dispatch agent
        TopicSpec(settings.topic_cost, settings.task_partitions, rf, "actual cost reported by executors"),
        TopicSpec(
            settings.topic_load,
            LOAD_PARTITIONS,
            rf,
            "executor saturation reports",
            {"cleanup.policy": "delete", "retention.ms": str(settings.load_retention_ms)},
        ),
        TopicSpec(settings.topic_dlq, DLQ_PARTITIONS, rf, "inputs that could not be processed, with the error"),
    ]


def kafka_error(settings: Settings, exc: Exception) -> TopicError:
    """A Kafka client failure as one readable line (commands print it instead of a traceback)."""
    if isinstance(exc, KafkaConnectionError):
        return TopicError(f"cannot reach Kafka at {settings.kafka_bootstrap} (`dispatch stack up` starts a local one)")
    return TopicError(f"Kafka at {settings.kafka_bootstrap} failed: {exc!r}")


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.app_id}-admin")


async def ensure_topics(settings: Settings, executors: Iterable[str]) -> list[str]:
    """Create the missing topics; return the names created. Idempotent.

    Existing topics are checked, never altered: a wrong partition count or config
    (e.g. a compacted audit topic) raises TopicError rather than being "fixed",
    since shrinking retention or repartitioning would lose or reorder data.
    """
    return await create_topics(settings, topic_specs(settings, executors))


async def create_topics(settings: Settings, specs: list[TopicSpec]) -> list[str]:
    """Create the specs' missing topics and check the existing ones (see ensure_topics)."""
    admin = admin_client(settings)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        created: list[str] = []
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in missing]
            )
            for name, code, *rest in response.topic_errors:
                error = for_code(code)
                if not code:
                    created.append(name)
                elif error is TopicAlreadyExistsError:  # created meanwhile (or metadata lagged): check it below
                    existing.add(name)
                else:
                    raise TopicError(f"cannot create topic {name}: {error.__name__} {rest[0] if rest else ''}".strip())
        await _wait_until_served(admin, created)
        await _check_existing(admin, [s for s in specs if s.name in existing])
    except (KafkaError, TimeoutError) as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        await admin.close()
    return [s.name for s in specs if s.name in created]


async def _wait_until_served(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Return once the broker serves every partition of ``names`` with a leader.

    The controller acknowledges a creation before the broker's metadata catches up;
    without this wait an immediate describe or produce can get UnknownTopicOrPartition.
    """
    if not names:
        return
    async with asyncio.timeout(timeout_s):
        while True:
            topics = await admin.describe_topics(names)
            if len(topics) == len(names) and all(
                t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                for t in topics
            ):
                return
            await asyncio.sleep(0.05)


async def _check_existing(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([s.name for s in specs])}
    configs = await _describe(admin, [s.name for s in specs])
    problems = [
        f"{s.name}: partitions={partitions.get(s.name)} (want {s.partitions})"
        for s in specs
        if partitions.get(s.name) != s.partitions
    ] + [
        f"{s.name}: {key}={configs[s.name].get(key)} (want {want})"
        for s in specs
        for key, want in s.configs.items()
        if configs[s.name].get(key) != want
    ]
    if problems:
        raise TopicError("existing topics differ from their spec: " + "; ".join(problems))


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    result: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise TopicError(f"describe {resource['resource_name']}: {for_code(resource['error_code']).__name__}")
            result[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
    return result


async def topic_configs(settings: Settings, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Effective configs of topics as the broker reports them (defaults included)."""
    admin = admin_client(settings)
    try:
        await admin.start()
        return await _describe(admin, list(names))
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        await admin.close()


#: Room a record needs beyond the task it carries: a routed envelope's decision fields (< 8 KiB
#: with a policy's at most 32 budgets), or a dead letter's headers (< 9 KiB), plus batch framing.
RECORD_OVERHEAD_BYTES = 16_384
PRODUCER_MAX_REQUEST_BYTES = 1_048_576  # aiokafka's max_request_size, which the worker keeps


def max_record_bytes(settings: Settings) -> int:
    """The largest record the worker writes: the largest task it accepts plus its envelope."""
    return settings.max_task_bytes + RECORD_OVERHEAD_BYTES


async def check_worker_topics(settings: Settings, executors: Iterable[str]) -> None:
    """Refuse to start a worker whose writes could not land: one line saying what to do instead.

    Every topic must exist (the worker never creates topics), and the topics it writes whole
    tasks to must take its largest record; otherwise a valid task would be refused at write time.
    """
    need = max_record_bytes(settings)
    if need > PRODUCER_MAX_REQUEST_BYTES:
        raise TopicError(f"DISPATCH_MAX_TASK_BYTES={settings.max_task_bytes} is too large: a routed task must fit "
                         f"{PRODUCER_MAX_REQUEST_BYTES} bytes with {RECORD_OVERHEAD_BYTES} to spare")
    specs = topic_specs(settings, executors)
    admin = admin_client(settings)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [s.name for s in specs if s.name not in existing]
        if missing:
            raise TopicError(f"missing topics {', '.join(missing)}: create them with `dispatch topics create` "
                             "(a policy's executor topics also with `dispatch policy publish FILE`)")
        whole = [s.name for s in specs if s.name.startswith(settings.topic_executor_prefix)] + [settings.topic_dlq]
        small = {name: c.get("max.message.bytes") for name, c in (await _describe(admin, whole)).items()
                 if int(c.get("max.message.bytes") or 0) < need}
        if small:
            raise TopicError(f"topics {', '.join(f'{n} (max.message.bytes={v})' for n, v in small.items())} cannot "
                             f"take a task of DISPATCH_MAX_TASK_BYTES={settings.max_task_bytes}: raise their "
                             f"max.message.bytes to {need} or lower the limit")
    except (KafkaError, TimeoutError) as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        await admin.close()
