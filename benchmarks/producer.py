"""Producer throughput on a running stack: ``TaskProducer.submit_many`` and ``dispatch submit --file``.

    python -m benchmarks.producer [--tasks 30000] [--rounds 3]    (prints the result as JSON)

``run_producer`` creates a fresh namespaced task topic (deleted at the end), then per round:

- ``per_s``: ``tasks`` tasks of the benchmark workload (the demo's mix, as dicts without
  ``created_at``, as a Python producer hands them over) through ``submit_many``, timed from
  the call to its return: validation, sending and every acknowledgement. ``confirmed`` is what
  the broker holds afterwards (its end offsets), not what the producer says.
- ``per_s_submit_file``: the same number of tasks as a JSON-lines file, through
  ``python -m dispatch_cli.main submit --file`` as a subprocess, timed by the command's wall
  time: interpreter start and imports, reading and validating the file, sending, every
  acknowledgement, and its JSON line. The command must exit 0 and report every task.

Each figure is the median over the rounds (the round with the median time, for ``seconds`` and
``confirmed``). Prints nothing; ``dispatch bench`` formats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from dispatch_cli.workload import demo_workload
from dispatch_core.settings import Settings, get_settings
from stack.kafka import quiet_aiokafka
from streams.producer import TaskProducer
from streams.topics import TopicSpec, admin_client, create_topics

ROUNDS = 3


def workload(tasks: int, prefix: str) -> list[dict[str, Any]]:
    """``tasks`` valid tasks of the demo's mix, ids unique to ``prefix``, without ``created_at``."""
    out: list[dict[str, Any]] = []
    for msg in demo_workload(tasks * 2, prefix):
        task = json.loads(msg) if msg.startswith(b"{\"") else None
        if task is None or task.get("workload") not in ("llm", "script", "kernel"):
            continue  # the ~1% broken on purpose
        del task["created_at"]
        out.append(task)
        if len(out) == tasks:
            return out
    raise ValueError(f"the workload gave fewer than {tasks} valid tasks")


async def _held(s: Settings) -> int:
    """How many records the task topic holds, by its end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(s.topic_tasks, p) for p in range(s.task_partitions)]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def _submit_many(s: Settings, tasks: int, rounds: int) -> list[tuple[float, int]]:
    """(seconds, confirmed) per round of ``submit_many``."""
    out = []
    async with TaskProducer(s) as producer:
        # every partition takes a record before the clock starts (a new topic's first produce can be refused once)
        await producer.submit_many([{"task_id": f"{s.app_id}-warmup-{i}", "service": "bench", "workload": "kernel"}
                                    for i in range(32)])
        for r in range(rounds):
            batch = workload(tasks, f"{s.app_id}-many{r}")
            before = await _held(s)
            start = time.perf_counter()
            await producer.submit_many(batch)
            seconds = time.perf_counter() - start
            out.append((seconds, await _held(s) - before))
    return out


def _submit_file(s: Settings, path: Path) -> float:
    """Wall seconds of ``dispatch submit --file path``; fails unless it reports every task."""
    env = {**os.environ, **s.as_env()}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "submit", "--file", str(path)], env=env,
                          capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"dispatch submit --file failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    submitted = json.loads(done.stdout)["submitted"]
    expected = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    if submitted != expected:
        raise RuntimeError(f"dispatch submit --file reported {submitted} of {expected} tasks")
    return seconds


async def run_producer(settings: Settings, *, tasks: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """Tasks per second through ``submit_many`` and ``dispatch submit --file`` (see the module doc)."""
    ns = f"bench.producer.{secrets.token_hex(4)}"
    s = settings.namespaced(ns, app_id=ns)
    await create_topics(s, [TopicSpec(s.topic_tasks, s.task_partitions, s.topic_replication_factor,
                                      "producer benchmark tasks")])
    try:
        with quiet_aiokafka():  # a retried produce is logged at WARNING; the bench prints nothing
            many = sorted(await _submit_many(s, tasks, rounds))
        seconds, confirmed = many[len(many) // 2]
        file_seconds = []
        with tempfile.TemporaryDirectory(prefix="bench-producer-") as tmp:
            for r in range(rounds):
                path = Path(tmp) / f"tasks-{r}.jsonl"
                path.write_text("".join(json.dumps(t) + "\n" for t in workload(tasks, f"{ns}-file{r}")))
                file_seconds.append(await asyncio.to_thread(_submit_file, s, path))
    finally:
        admin = admin_client(s)
        try:
            await admin.start()
            await admin.delete_topics([s.topic_tasks])
        finally:
            await admin.close()
    return {"per_s": tasks / seconds, "tasks": tasks, "confirmed": confirmed, "seconds": seconds,
            "per_s_submit_file": tasks / statistics.median(file_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run_producer(get_settings(), tasks=args.tasks, rounds=args.rounds))))


if __name__ == "__main__":
    main()
