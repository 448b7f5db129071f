"""A realistic mixed workload of the three services, for the demo and for load runs.

llm-gateway sends LLM work for three tenants (chat, summarise, codegen, embeddings),
tarotscript sends scripts whose spread depth varies, aegis sends compute kernels, some with
a tight SLA. A task's SLA is end to end (its deadline is created-at + SLA, and executors drop
work past it), so scripts and kernels state budgets that cover the time in Kafka and in the
worker; the tight kernels' 30 ms does not, and shows what a deadline does. About 1% of inputs are broken on purpose, to show that they are dead-lettered
and recorded rather than lost.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any


def _llm(rnd: random.Random, i: int) -> dict[str, Any]:
    kind = rnd.choices(["chat", "summarize", "codegen", "embed"], [5, 3, 2, 1])[0]
    mean = {"chat": 6.6, "summarize": 7.6, "codegen": 8.2, "embed": 5.5}[kind]
    task: dict[str, Any] = {
        "service": "llm-gateway", "workload": "llm", "task_type": kind,
        "tenant": rnd.choices(["acme", "globex", "initech"], [5, 3, 2])[0],
        "features": {"tokens": int(rnd.lognormvariate(mean, 0.8))},
        "payload": {"prompt": f"request {i}", "max_tokens": 512},
    }
    if rnd.random() < 0.05:
        task["requested_tier"] = "large"
    return task


def _script(rnd: random.Random, i: int) -> dict[str, Any]:
    return {
        "service": "tarotscript", "workload": "script", "task_type": "spread",
        "features": {"cpu_ms": round(rnd.lognormvariate(4.0, 1.0), 2), "depth": rnd.randint(1, 10)},
        "sla_ms": 2000,
        "payload": {"script": f"spread-{i}.tarot"},
    }


def _kernel(rnd: random.Random, i: int) -> dict[str, Any]:
    task: dict[str, Any] = {
        "service": "aegis", "workload": "kernel", "task_type": rnd.choice(["matmul", "conv", "reduce"]),
        "features": {"cpu_ms": round(rnd.lognormvariate(4.5, 1.2), 2), "payload_bytes": int(rnd.lognormvariate(11, 2))},
        "sla_ms": 1000,
        "payload": {"kernel": f"k{i}"},
    }
    if rnd.random() < 0.1:
        task["sla_ms"] = 30  # only the GPU tier is fast enough, and only if it gets the task within 10 ms
    return task


def mixed_task(rnd: random.Random, i: int) -> dict[str, Any]:
    """One valid task of the three services in the workload's proportions (no id, no timestamp)."""
    return rnd.choices([_llm, _script, _kernel], [45, 30, 25])[0](rnd, i)


def demo_workload(n: int, run_id: str, seed: int = 7) -> Iterator[bytes]:
    """``n`` task messages as JSON bytes, about 1% of them invalid."""
    rnd = random.Random(seed)
    for i in range(n):
        if rnd.random() < 0.01:
            yield (b"{this is not json" if i % 2 else json.dumps(
                {"task_id": f"{run_id}-{i}", "service": "llm-gateway", "workload": "quantum"}).encode())
            continue
        task = mixed_task(rnd, i)
        task["task_id"] = f"{run_id}-{i}"
        task["created_at"] = datetime.now(UTC).isoformat()
        yield json.dumps(task).encode()
