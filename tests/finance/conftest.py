"""One recorded run for the finance tests: a real worker and executors decide and settle a mixed
workload (budgets that run short, a shadow service, a canary) onto an audit topic of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from schemas import decode

from dispatch_core.policy import load_policy, parse_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Canary, Rollout, ServiceRollout
from dispatch_core.settings import Settings
from stack.children import ProcessGroup
from streams.producer import TaskProducer
from streams.topics import ensure_topics

from ..streams.conftest import consume
from ..support import free_ports

TASKS = 240
#: Generous, so every task is served: executors drop work past its deadline (created-at + SLA), and a
#: start-up that keeps the first tasks queued for seconds would otherwise leave the run all `expired`.
SLA_MS = 60_000.0
BUDGETS = [
    {"id": "global-daily", "scope": "global", "window": "day", "limit": "2.50", "soft_pct": 0.5},
    {"id": "aegis-daily", "scope": "service", "match": "aegis", "window": "day", "limit": "0.05", "soft_pct": 0.8},
]


@dataclass
class Recorded:
    """The run's settings (its own topics) and every committed record on its audit topic."""

    settings: Settings
    records: list[ConsumerRecord]


def workload(n: int) -> list[dict]:
    kinds = [("llm-gateway", "llm", {"tokens": 300}), ("llm-gateway", "llm", {"tokens": 9000}),
             ("llm-gateway", "llm", {"tokens": 2500}), ("tarotscript", "script", {"cpu_ms": 30, "depth": 3}),
             ("aegis", "kernel", {"cpu_ms": 50}), ("llm-gateway", "llm", {"tokens": 6000})]
    out = []
    for i in range(n):
        service, cls, features = kinds[i % len(kinds)]
        out.append({"task_id": f"fin-{i}", "service": service, "workload": cls, "features": features,
                    "tenant": ("acme", "globex")[i % 2], "sla_ms": SLA_MS})
    return out


@pytest.fixture(scope="session")
async def recorded(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    tmp = tmp_path_factory.mktemp("finance-run")
    ns = f"test.fin.{uuid.uuid4().hex[:8]}"
    data = load_policy().model_dump(mode="json")
    data["budgets"] = BUDGETS
    stable = parse_policy(data)
    data["name"] = f"{stable.name}-canary"
    candidate = parse_policy(data)
    (tmp / "policy.json").write_text(stable.canonical_json())
    s = stack.model_copy(update={
        "topic_tasks": f"{ns}.tasks", "topic_executor_prefix": f"{ns}.exec.", "topic_audit": f"{ns}.audit",
        "topic_cost": f"{ns}.cost", "topic_load": f"{ns}.load", "topic_dlq": f"{ns}.dlq", "app_id": ns,
        "metrics_port": free_ports(1)[0], "state_dir": tmp, "policy_file": tmp / "policy.json",
    })
    await ensure_topics(s, stable.executors())
    redis = Redis.from_url(s.redis_url, decode_responses=True)
    await redis.flushdb()
    store = PolicyStore(redis)
    await store.publish(stable)
    await store.publish(candidate)
    await store.set_rollout(Rollout(services={
        "tarotscript": ServiceRollout(mode="shadow"),
        "llm-gateway": ServiceRollout(version=stable.version, canary=Canary(version=candidate.version, percent=30)),
    }))
    await redis.aclose()
    procs = ProcessGroup(tmp, cwd=Path.cwd())
    try:
        procs.start("worker", s, "worker")
        procs.start("executors", s, "executor", "--all", "--latency-scale", "0.05")
        tasks = workload(TASKS)
        async with TaskProducer(s) as producer:
            await producer.submit_many(tasks)

        def complete(rs: list[ConsumerRecord]) -> bool:
            """Every task decided, and every routed one settled (by a report with an actual cost)."""
            events = [decode(r.value) for r in rs]
            routed = {e["decision_id"] for sch, e in events if sch.name == "decision" and e["assigned_tier"]}
            decided = {e["decision_id"] for sch, e in events if sch.name == "decision"}
            settled = {e["decision_id"] for sch, e in events if sch.name == "settlement" and e["actual"] is not None}
            return len(decided) >= TASKS and routed <= settled

        records = await consume(s, [s.topic_audit], complete, timeout_s=180)
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
    return Recorded(s, records)
