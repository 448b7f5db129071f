"""Saturation baselines: what the same shape of work costs with no dispatch logic at all.

    python -m benchmarks.baselines run [--tasks 30000] [--rounds 3] [--names NAME ...]
    python -m benchmarks.baselines NAME          # one baseline process (a child of ``run``)

Each baseline consumes a pre-loaded 3-partition topic of task JSON records and writes two
records per input, as the worker does: the task's bytes, unchanged, to a "routed" topic and a
small "audit" record (``<partition>:<offset>``) to a second topic, both keyed by the input's
key (the task id). The three:

- ``faust_passthrough``: a Faust agent configured as ``streams.app`` configures the worker's
  (raw serializers, ``take_events(batch_size, within=batch_within_s)``, concurrency 1, no web),
  writing each batch through one idempotent aiokafka producer and waiting for it; Faust acks
  and commits the input offsets itself.
- ``aiokafka_loop``: a raw aiokafka loop: ``getmany(max_records=batch_size)``, two sends per
  record, wait for the batch's sends, commit the batch's offsets.
- ``aiokafka_eos``: the same loop exactly once, as ``streams.outputs`` does it: one
  transactional producer per input partition (started, so fencing its last owner, when the
  partition is assigned), each partition's part of a batch in one transaction with its input
  offset (``send_offsets_to_transaction``), partitions written concurrently, read_committed.

``run_baselines`` times each one as a child process on topics of its own, from its first
output to its last, with its CPU (user + system) read from ``/proc`` as
``benchmarks.pipeline.saturation`` does (but to the nanosecond: see ``cpu_s``); then checks
that every input got exactly one routed and one audit record (read ``read_committed``), and
deletes the topics it created.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.structs import ConsumerRecord

from dispatch_core.errors import DispatchError
from dispatch_core.settings import Settings, get_settings
from stack.children import ProcessGroup
from stack.kafka import quiet_aiokafka
from stack.process import tail
from streams.producer import idempotent_producer
from streams.topics import TopicSpec, admin_client, create_topics

log = logging.getLogger(__name__)

ALL: tuple[str, ...] = ("faust_passthrough", "aiokafka_loop", "aiokafka_eos")
MODULE = "benchmarks.baselines"  # the children run `python -m benchmarks.baselines <name>`
ROUTED = "baseline"  # the routed topic is the executor topic of this name
POLL_S = 0.02  # how often the parent samples progress and the child's CPU
START_TIMEOUT_S = 120.0  # from the child's start to its first output (Faust joins its group slowly)
STALL_TIMEOUT_S = 60.0  # no progress for this long: the baseline failed


class BaselineFailed(DispatchError):
    """A baseline process exited, stalled, or did not write exactly two records per input."""


# --- the parent: pre-load, run, time, check ------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc: the same quantity as
    ``benchmarks.pipeline._cpu_s`` (utime + stime of /proc/<pid>/stat), but to the nanosecond
    (the sum of its threads' /proc/<pid>/task/*/schedstat) instead of to the clock tick (10 ms),
    so that a short run is measured too. Threads that exit meanwhile are not counted (no baseline
    starts and ends threads while it works)."""
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:  # the thread just ended
            pass
    return ns / 1e9


def baseline_settings(base: Settings, workdir: Path) -> Settings:
    """``base`` with a fresh topic namespace, consumer group (``app_id``) and transactional ids."""
    ns = f"base.{secrets.token_hex(4)}"
    return base.namespaced(ns, app_id=ns, metrics_port=0, state_dir=workdir)


def topics(s: Settings) -> tuple[str, str, str]:
    """(input, routed, audit) topics of a baseline's settings."""
    return s.topic_tasks, s.executor_topic(ROUTED), s.topic_audit


def input_partitions(s: Settings) -> list[TopicPartition]:
    return [TopicPartition(s.topic_tasks, p) for p in range(s.task_partitions)]


def output_partitions(s: Settings) -> list[TopicPartition]:
    _, routed, audit = topics(s)
    return ([TopicPartition(routed, p) for p in range(s.executor_partitions)]
            + [TopicPartition(audit, p) for p in range(s.audit_partitions)])


async def create_baseline_topics(s: Settings) -> None:
    rf = s.topic_replication_factor
    tasks, routed, audit = topics(s)
    await create_topics(s, [TopicSpec(tasks, s.task_partitions, rf, "baseline input"),
                            TopicSpec(routed, s.executor_partitions, rf, "baseline routed copies"),
                            TopicSpec(audit, s.audit_partitions, rf, "baseline audit records")])


async def delete_baseline_topics(s: Settings) -> None:
    admin = admin_client(s)
    try:
        await admin.start()
        await admin.delete_topics(list(topics(s)))
    finally:
        await admin.close()


def task_ids(s: Settings, tasks: int) -> list[str]:
    return [f"{s.app_id}-{j}" for j in range(tasks)]


async def preload(s: Settings, tasks: int) -> None:
    """``tasks`` task records on the input topic, keyed by task id (an even spread), sends pipelined."""
    producer = idempotent_producer(s.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending = []
        for j, task_id in enumerate(task_ids(s, tasks)):
            task = {"task_id": task_id, "service": f"svc-{j % 12}", "workload": "llm", "tenant": f"t{j % 7}",
                    "features": {"tokens": 200 + (j * 37) % 5000}}
            pending.append(await producer.send(s.topic_tasks, json.dumps(task).encode(), key=task_id.encode()))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class Progress:
    """How many inputs have both their outputs written, read cheaply while the baseline runs.

    At least once: from the output topics' end offsets (every offset is a record). Exactly once:
    transaction markers take offsets too, so from the input offsets committed in the group, which
    commit in the same transaction as the outputs (the input topic has no markers: it is
    pre-loaded without transactions).
    """

    def __init__(self, s: Settings, transactional: bool) -> None:
        self.s = s
        self.transactional = transactional
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False)
        self.admin = admin_client(s)
        self.inputs = input_partitions(s)
        self.outputs = output_partitions(s)

    async def __aenter__(self) -> Progress:
        try:
            await self.consumer.start()
            await self.admin.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def done(self) -> int:
        if self.transactional:
            committed = await self.admin.list_consumer_group_offsets(self.s.app_id, partitions=self.inputs)
            return sum(max(o.offset, 0) for o in committed.values())
        ends = await self.consumer.end_offsets(self.outputs)
        return sum(ends.values()) // 2


@dataclass(frozen=True)
class Outputs:
    """What a baseline wrote, read read_committed: per key, (routed, audit) record counts; and the
    CreateTime (ms, set by the child's producer at send) of its first and last output."""

    per_key: dict[bytes, tuple[int, int]]
    first_ms: int
    last_ms: int


async def read_outputs(s: Settings) -> Outputs:
    """Every committed record of the routed and audit topics, up to their ends as of now."""
    audit = s.topic_audit
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", auto_offset_reset="earliest")
    await consumer.start()
    counts: dict[bytes, list[int]] = {}
    first_ms, last_ms = sys.maxsize, 0
    try:
        parts = output_partitions(s)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)  # read_committed: the last stable offsets
        left = {tp for tp in parts if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(*left, timeout_ms=200, max_records=10_000)).items():
                for m in msgs:
                    counts.setdefault(m.key or b"", [0, 0])[tp.topic == audit] += 1
                    first_ms, last_ms = min(first_ms, m.timestamp), max(last_ms, m.timestamp)
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        if left:
            raise BaselineFailed(f"could not read the outputs of {s.app_id} to their end")
    finally:
        await consumer.stop()
    return Outputs({k: (r, a) for k, (r, a) in counts.items()}, first_ms, last_ms)


def check_outputs(s: Settings, tasks: int, out: Outputs) -> None:
    """BaselineFailed unless every input has exactly one routed and one audit record, and nothing else."""
    expected = {t.encode() for t in task_ids(s, tasks)}
    wrong = {k: c for k, c in out.per_key.items() if c != (1, 1) or k not in expected}
    missing = expected - out.per_key.keys()
    if wrong or missing:
        example = next(iter(wrong.items()), None)
        raise BaselineFailed(f"{s.app_id}: {len(missing)} inputs without outputs, {len(wrong)} keys with other than "
                             f"one routed + one audit record (e.g. {example})")


async def saturate(s: Settings, name: str, *, tasks: int, workdir: Path) -> dict[str, float]:
    """Pre-load ``tasks`` tasks on ``s``'s (new) topics, run baseline ``name`` on them as a child
    process and time it from its first output to its last; checks every output, keeps the topics.

    ``per_s``: tasks / (CreateTime of the last output - CreateTime of the first), both read back
    from the records. ``cpu_ms_per_task``: the child's user + system CPU from the last progress
    sample (every ``POLL_S``) before its first output to the first sample that saw every output,
    over ``tasks``.
    """
    if name not in ALL:
        raise ValueError(f"unknown baseline {name!r}: one of {', '.join(ALL)}")
    t = time.monotonic()
    await create_baseline_topics(s)
    with quiet_aiokafka():  # a fresh topic's first produce can get NotLeaderForPartition (logged, retried)
        await preload(s, tasks)
    children = ProcessGroup(workdir, stop_timeout_s=20)
    async with Progress(s, transactional=name == "aiokafka_eos") as progress:
        try:
            started = time.monotonic()
            pid = children.start(s.app_id, s, name, module=MODULE)
            while True:
                children.check()  # a child that exited fails the run with the end of its log
                cpu0 = cpu_s(pid)  # read before the progress: if that shows nothing yet, cpu0 precedes every output
                done = await progress.done()
                if done:
                    break
                if time.monotonic() - started > START_TIMEOUT_S:
                    raise BaselineFailed(f"{name} wrote nothing in {START_TIMEOUT_S:.0f} s; the end of its log:\n"
                                         f"{tail(children.log(s.app_id))}")
                await asyncio.sleep(POLL_S)
            first = time.monotonic() - started
            moved = time.monotonic()
            while done < tasks:
                children.check()
                await asyncio.sleep(POLL_S)
                now = await progress.done()
                if now != done:
                    done, moved = now, time.monotonic()
                elif time.monotonic() - moved > STALL_TIMEOUT_S:
                    raise BaselineFailed(f"{name} stalled at {done}/{tasks} tasks; the end of its log:\n"
                                         f"{tail(children.log(s.app_id))}")
            cpu = cpu_s(pid) - cpu0
        finally:
            stopping = time.monotonic()
            children.stop_all()
    stopped = time.monotonic()
    out = await read_outputs(s)
    check_outputs(s, tasks, out)
    elapsed_s = max(out.last_ms - out.first_ms, 1) / 1000
    log.info("%s: topics and pre-load %.1f s, first output %.1f s after its start, first to last output %.2f s, "
             "stopped in %.1f s, %d outputs read back in %.1f s", name, started - t, first, elapsed_s,
             stopped - stopping, 2 * tasks, time.monotonic() - stopped)
    return {"per_s": tasks / elapsed_s, "cpu_ms_per_task": cpu * 1000 / tasks}


async def run_baselines(settings: Settings, *, tasks: int, names: Sequence[str] = ALL) -> dict[str, dict]:
    """Each baseline in ``names`` saturated once with ``tasks`` pre-loaded tasks, on fresh topics
    (deleted afterwards): ``{name: {"per_s": ..., "cpu_ms_per_task": ...}}``.

    Raises BaselineFailed if a baseline process fails, stalls, or writes other than exactly one
    routed and one audit record per input; its child processes are stopped on every path.
    """
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}: choose from {', '.join(ALL)}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dispatch-baselines-") as tmp:
        for name in names:
            s = baseline_settings(settings, Path(tmp))
            try:
                results[name] = await saturate(s, name, tasks=tasks, workdir=Path(tmp))
            finally:
                await delete_baseline_topics(s)
    return results


# --- the children: one baseline process each -----------------------------------------------------


def _audit_value(partition: int, offset: int) -> bytes:
    return b"%d:%d" % (partition, offset)


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT (how ProcessGroup stops a child)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _consumer(s: Settings, **kwargs: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.app_id, enable_auto_commit=False,
                            auto_offset_reset="earliest", session_timeout_ms=int(s.session_timeout_s * 1000),
                            heartbeat_interval_ms=int(min(1.0, s.session_timeout_s / 3) * 1000), **kwargs)


async def _batches(consumer: AIOKafkaConsumer, s: Settings,
                   stop: asyncio.Event) -> AsyncIterator[dict[TopicPartition, list[ConsumerRecord]]]:
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=100, max_records=s.batch_size)
        if batch:
            yield batch


async def aiokafka_loop(s: Settings) -> None:
    """getmany, two sends per record, wait for the batch's sends, commit its offsets."""
    _, routed, audit = topics(s)
    stop = _stop_event()
    consumer = _consumer(s)
    producer = idempotent_producer(s.kafka_bootstrap, linger_ms=s.producer_linger_ms,
                                   request_timeout_s=s.producer_request_timeout_s)
    await producer.start()
    try:
        consumer.subscribe([s.topic_tasks])
        await consumer.start()
        try:
            async for batch in _batches(consumer, s, stop):
                sent = []
                for msgs in batch.values():
                    for m in msgs:
                        sent.append(await producer.send(routed, m.value, key=m.key))
                        sent.append(await producer.send(audit, _audit_value(m.partition, m.offset), key=m.key))
                await asyncio.gather(*sent)
                await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


class _Transactional(ConsumerRebalanceListener):
    """One transactional producer per assigned input partition, started (fencing the partition's
    last owner) before the partition is read, as ``streams.outputs.KafkaOutputs`` does."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        s = self.s
        new = {tp: AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, transactional_id=f"{s.app_id}.{tp.topic}.{tp.partition}",
            linger_ms=s.producer_linger_ms, transaction_timeout_ms=int(s.transaction_timeout_s * 1000),
            request_timeout_ms=int(s.producer_request_timeout_s * 1000), retry_backoff_ms=20,
        ) for tp in assigned if tp not in self.producers}
        self.producers.update(new)
        await asyncio.gather(*(p.start() for p in new.values()))

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await asyncio.gather(*(p.stop() for tp in revoked if (p := self.producers.pop(tp, None)) is not None))

    async def write(self, tp: TopicPartition, msgs: list[ConsumerRecord], routed: str, audit: str) -> None:
        producer = self.producers[tp]
        await producer.begin_transaction()
        sent = []
        for m in msgs:
            sent.append(await producer.send(routed, m.value, key=m.key))
            sent.append(await producer.send(audit, _audit_value(m.partition, m.offset), key=m.key))
        await asyncio.gather(*sent)
        await producer.send_offsets_to_transaction({tp: msgs[-1].offset + 1}, self.s.app_id)
        await producer.commit_transaction()


async def aiokafka_eos(s: Settings) -> None:
    """The loop exactly once: each partition's part of a batch and its offset in one transaction."""
    _, routed, audit = topics(s)
    aiokafka_sender.BACKOFF_OVERRIDE = s.transaction_retry_backoff_ms / 1000  # as KafkaOutputs sets it
    stop = _stop_event()
    consumer = _consumer(s, isolation_level="read_committed")
    outputs = _Transactional(s)
    consumer.subscribe([s.topic_tasks], listener=outputs)
    await consumer.start()
    try:
        async for batch in _batches(consumer, s, stop):
            await asyncio.gather(*(outputs.write(tp, msgs, routed, audit) for tp, msgs in batch.items()))
    finally:
        await consumer.stop()  # revokes the partitions: stops their producers
        await outputs.on_partitions_revoked(list(outputs.producers))


def faust_passthrough(s: Settings) -> None:
    """A Faust agent as ``streams.app`` configures the worker's, writing through an idempotent
    aiokafka producer (not Faust's ``topic.send``). Blocks until SIGTERM.

    At saturation its batches are far below ``batch_size``: while the agent writes a batch,
    ``take_events`` holds its drainer, and the next batch is what the drainer adds in the
    ``within`` window after that (20-60 events, never 200, on the busy 2-core machine on
    2026-11-25), so the batch size follows Faust's per-event speed, not the backlog."""
    import faust  # import-time side effects: only in this child

    _, routed, audit = topics(s)
    datadir = s.state_dir / "faust" / s.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.app_id, datadir=str(datadir), broker=f"kafka://{s.kafka_bootstrap}", store="memory://",
        key_serializer="raw", value_serializer="raw", topic_allow_declare=False, topic_disable_leader=True,
        web_enabled=False, consumer_auto_offset_reset="earliest", broker_commit_interval=s.commit_interval_s,
        broker_session_timeout=s.session_timeout_s, broker_heartbeat_interval=min(1.0, s.session_timeout_s / 3),
        stream_wait_empty=False,
    )
    producers: list[AIOKafkaProducer] = []

    async def producer() -> AIOKafkaProducer:
        if not producers:
            p = idempotent_producer(s.kafka_bootstrap, linger_ms=s.producer_linger_ms,
                                    request_timeout_s=s.producer_request_timeout_s)
            await p.start()
            producers.append(p)
        return producers[0]

    source = app.topic(s.topic_tasks, key_type=bytes, value_type=bytes, partitions=s.task_partitions)

    @app.agent(source, concurrency=1)
    async def passthrough(stream: Any) -> None:
        p = await producer()
        async for events in stream.take_events(s.batch_size, within=s.batch_within_s):
            sent = []
            for e in events:
                m = e.message
                sent.append(await p.send(routed, m.value, key=m.key))
                sent.append(await p.send(audit, _audit_value(m.partition, m.offset), key=m.key))
            await asyncio.gather(*sent)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers as sync
    async def close(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        for p in producers:
            await p.stop()

    class Worker(faust.Worker):
        """Without the terminal spinner (it sets the root logger to DEBUG), as ``dispatch worker``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def child(name: str) -> None:
    """Run baseline ``name`` configured by the DISPATCH_* environment, until SIGTERM."""
    logging.basicConfig(level=logging.WARNING)
    s = get_settings()
    if name == "faust_passthrough":
        faust_passthrough(s)
    elif name == "aiokafka_loop":
        asyncio.run(aiokafka_loop(s))
    elif name == "aiokafka_eos":
        asyncio.run(aiokafka_eos(s))
    else:
        raise ValueError(f"unknown baseline {name!r}")


# --- the command: rounds and medians ---------------------------------------------------------------


def main(tasks: int, rounds: int, names: Sequence[str]) -> None:
    base = get_settings()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name, result in asyncio.run(run_baselines(base, tasks=tasks, names=names)).items():
            runs[name].append(result)
            print(f"round {r + 1} {name:<18} {result['per_s']:>8,.0f} tasks/s  "
                  f"{result['cpu_ms_per_task']:.3f} ms CPU per task", flush=True)
    print(f"medians of {rounds} rounds, {tasks:,} tasks each:")
    for name, rs in runs.items():
        print(f"  {name:<18} {statistics.median(x['per_s'] for x in rs):>8,.0f} tasks/s  "
              f"{statistics.median(x['cpu_ms_per_task'] for x in rs):.3f} ms CPU per task")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ALL:
        child(sys.argv[1])
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = ap.add_subparsers(dest="command", required=True)
        run = sub.add_parser("run", help="saturate each baseline, in rounds, and print the medians")
        run.add_argument("--tasks", type=int, default=30_000)
        run.add_argument("--rounds", type=int, default=3)
        run.add_argument("--names", nargs="+", choices=ALL, default=list(ALL))
        for name in ALL:
            sub.add_parser(name, help=f"run the {name} baseline process (configured by DISPATCH_*)")
        args = ap.parse_args()
        if args.command == "run":
            logging.basicConfig(level=logging.WARNING, format="%(message)s")
            log.setLevel(logging.INFO)
            main(args.tasks, args.rounds, args.names)
        else:
            child(args.command)
