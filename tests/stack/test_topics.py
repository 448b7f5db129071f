"""Topic definitions, and what the broker reports after dispatch-core creates them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from dispatch_core.settings import Settings
from streams.topics import TopicError, TopicSpec, create_topics, ensure_topics, topic_configs, topic_specs


def own_topics(settings: Settings, unique_name: Callable[[str], str], **overrides: object) -> Settings:
    """``settings`` with every topic name made unique to the calling test."""
    return settings.namespaced(unique_name("t"), **overrides)


def test_specs_cover_every_topic_once() -> None:
    s = Settings()
    specs = topic_specs(s, ["llm-small", "kernel-gpu", "llm-small"])
    assert [t.name for t in specs] == [
        s.topic_tasks, s.executor_topic("llm-small"), s.executor_topic("kernel-gpu"),
        s.topic_audit, s.topic_audit_checkpoints, s.topic_cost, s.topic_load, s.topic_dlq,
    ]
    by_name = {t.name: t for t in specs}
    assert by_name[s.topic_tasks].partitions == s.task_partitions
    assert by_name[s.executor_topic("kernel-gpu")].partitions == s.executor_partitions
    assert by_name[s.topic_audit].configs == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert not [t.name for t in specs if "compact" in t.configs.get("cleanup.policy", "")]


def test_topics_module_stays_free_of_faust() -> None:
    code = "import sys, streams.topics; assert 'faust' not in sys.modules, 'streams.topics imported faust'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.stack
async def test_audit_topic_is_delete_only_with_configured_retention(
    stack: Settings, unique_name: Callable[[str], str]
) -> None:
    settings = own_topics(stack, unique_name, audit_retention_ms=123_456_789)
    executors = ["llm-small", "kernel-gpu"]
    created = await ensure_topics(settings, executors)
    assert created == [t.name for t in topic_specs(settings, executors)]

    configs = await topic_configs(settings, [settings.topic_audit, settings.topic_tasks])
    assert configs[settings.topic_audit]["cleanup.policy"] == "delete"
    assert configs[settings.topic_audit]["retention.ms"] == "123456789"
    assert configs[settings.topic_tasks]["cleanup.policy"] == "delete"

    assert await ensure_topics(settings, executors) == []  # idempotent: nothing new, nothing differs


@pytest.mark.stack
async def test_audit_retention_defaults_to_forever(stack: Settings, unique_name: Callable[[str], str]) -> None:
    settings = own_topics(stack, unique_name)
    await ensure_topics(settings, [])
    audit = (await topic_configs(settings, [settings.topic_audit]))[settings.topic_audit]
    assert (audit["cleanup.policy"], audit["retention.ms"]) == ("delete", "-1")


@pytest.mark.stack
async def test_an_existing_compacted_audit_topic_is_refused(stack: Settings, unique_name: Callable[[str], str]) -> None:
    settings = own_topics(stack, unique_name)
    await create_topics(settings, [TopicSpec(settings.topic_audit, 3, 1, "wrong", {"cleanup.policy": "compact"})])
    with pytest.raises(TopicError, match=r"cleanup.policy=compact \(want delete\)"):
        await ensure_topics(settings, [])
