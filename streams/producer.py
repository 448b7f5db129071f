"""Producers: tasks onto the task topic (``TaskProducer``), and the idempotent producer every
other writer uses.

**Tasks are keyed by task id.** Two things could want a key: budgets, and repeats of one task.

- Budgets need no partition: every cap is checked and reserved in one atomic Lua script on the
  global Redis ledger, whichever partition and worker a task comes from (baselines and rollout
  live in Redis too). So nothing requires one service's tasks to be decided in order, or by
  one worker.
- Repeats do: a task id sent again (a retry, a redrive, ``dispatch submit`` run twice), or sent
  with other content, must be decided after the first send, so that the first is decided and
  the later one gets the stored decision back or is refused as a conflict. Keyed by task id,
  every send of one id lands on one partition, one worker reads them in order and writes
  their decisions in that order into that partition's audit chain.

The per-key order kept is therefore per task id: one producer's records with one key reach
their partition in the order they were handed over (one open batch per partition, appended in
call order; the producer is idempotent, so a retried batch cannot overtake or duplicate).
Nothing is ordered across task ids, nor across producers. Keyed by service, 30,000 tasks of the
benchmark workload put 21,015 / 8,985 / 0 on three partitions (three services, one partition
idle); keyed by task id they spread evenly (``tests/streams/test_producer.py`` checks that no
partition gets over 1.5x the mean).

A task is validated before anything is sent (``TaskError`` with the reason); nothing is reported
as sent until the broker has acknowledged it (``acks=all``, idempotent).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from dispatch_core.settings import Settings
from dispatch_core.errors import TaskError
from dispatch_core.task import InputLimits, Task, parse_task, read_task

log = logging.getLogger(__name__)


def idempotent_producer(bootstrap: str, linger_ms: int = 2, request_timeout_s: float = 40.0,
                        max_batch_bytes: int = 16_384) -> AIOKafkaProducer:
    """The producer every dispatch-core writer uses: idempotent, acks from all in-sync replicas.

    ``request_timeout_s`` also bounds how long a send waits through a broker outage before it fails.
    """
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=linger_ms,
                            max_batch_size=max_batch_bytes, request_timeout_ms=int(request_timeout_s * 1000))


class Deliverer:
    """An idempotent producer that is replaced whenever a delivery fails, for writers that must
    deliver (an executor's reports) through broker outages of any length.

    After a failed delivery aiokafka's idempotent producer can hold a sequence number the broker
    never saw, and every later batch to that partition then fails with OutOfOrderSequenceNumber
    (aiokafka #1017): a new producer (a new producer id) is the cure.
    """

    def __init__(self, bootstrap: str, *, request_timeout_s: float = 40.0, max_delay_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.request_timeout_s = request_timeout_s
        self.max_delay_s = max_delay_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None

    async def _current(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = idempotent_producer(self.bootstrap, request_timeout_s=self.request_timeout_s)
                try:
                    await producer.start()
                except BaseException:
                    await _stop_quietly(producer)
                    raise
                self._producer = producer
            return self._producer

    async def _replace(self, failed: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is failed:
                self._producer = None
                asyncio.get_running_loop().create_task(_stop_quietly(failed))

    async def deliver(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send and wait until the broker has it, however long that takes (backing off meanwhile)."""
        delay = 0.1
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = await self._current()
                await (await producer.send(topic, value, key=key))
                if self._failing_since is not None:
                    log.warning("delivering again after %.1f s", time.monotonic() - self._failing_since)
                    self._failing_since = None
                return
            except (KafkaError, OSError, AssertionError) as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("delivery to %s failed, retrying with a new producer: %r", topic, exc)
                if producer is not None:
                    await self._replace(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)

    async def stop(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)
            self._producer = None


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a producer without waiting on an outage for longer than ``timeout_s``."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except (KafkaError, OSError, TimeoutError):
        pass


#: The task producer's batching, chosen by measurement (``benchmarks.producer``; README "Performance").
TASK_LINGER_MS = 0
TASK_MAX_BATCH_BYTES = 262_144

TaskInput = Task | dict[str, Any] | bytes | str  # a task, or its JSON


def task_record(raw: bytes | str, limits: InputLimits = InputLimits()) -> tuple[Task, bytes]:
    """A JSON task validated exactly as the worker will read it, and the bytes to send for it.

    The input is checked by ``read_task`` (what the worker runs on every record) and sent as it
    is, so executors receive the producer's own JSON. A task without ``created_at`` gets the
    time of validation spliced in as its first member (the worker would otherwise stamp its own,
    later one, on every read): the returned task is then exactly what the worker parses.
    """
    value = raw.encode() if isinstance(raw, str) else raw
    task = read_task(value, limits)[0]
    if "created_at" not in task.model_fields_set:
        members = value.index(b"{") + 1  # a valid task is a non-empty JSON object: '{' + members + '}'
        value = b'{"created_at":"' + task.created_at.isoformat().encode() + b'",' + value[members:]
        if len(value) > limits.max_bytes:
            raise TaskError(f"task is {len(value)} bytes with its created_at, over the {limits.max_bytes}-byte limit",
                            task.task_id, reason="too_large")
    return task, value


def records_from_lines(lines: Iterable[bytes], limits: InputLimits = InputLimits(), *, skip_blank: bool = True
                       ) -> tuple[list[tuple[str, bytes]], list[tuple[int, TaskError]]]:
    """(task id, bytes to send) of every line of a JSON-lines input, as ``task_record`` makes them
    (blank lines skipped), and the number (from 1) and error of each invalid line. The tasks
    themselves are not kept: 100,000 of them held 400 MB."""
    records: list[tuple[str, bytes]] = []
    problems: list[tuple[int, TaskError]] = []
    with _gc_paused():
        for lineno, line in enumerate(lines, 1):
            if skip_blank and not line.strip():
                continue
            try:
                task, value = task_record(line, limits)
            except TaskError as exc:
                problems.append((lineno, exc))
                continue
            records.append((task.task_id, value))
    return records, problems


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while tasks are validated in bulk: each of the collector's full
    passes re-scans every live object (the tasks kept so far and every imported module's objects),
    which was 40% of the time of validating 50,000 tasks; validation makes no cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TaskProducer:
    """Publishes tasks to ``settings.topic_tasks`` with an idempotent producer, keyed by task id.

    Confirmed: ``submit``, ``submit_many``, ``submit_records`` and ``send_raw`` return once the
    broker has acknowledged every record they sent. Pipelined: ``enqueue`` and ``enqueue_raw``
    hand one record to the producer and return its future at once; ``flush`` waits for all of
    them and raises the first failure (leaving the ``async with`` block normally flushes too).
    Every task is validated before anything of its call is sent; an invalid one raises
    ``TaskError`` with the reason.
    """

    def __init__(self, settings: Settings, *, linger_ms: int = TASK_LINGER_MS,
                 max_batch_bytes: int = TASK_MAX_BATCH_BYTES) -> None:
        self.settings = settings
        self.limits = InputLimits(settings.max_task_bytes, settings.max_task_depth)
        self._topic = settings.topic_tasks
        self._producer = idempotent_producer(settings.kafka_bootstrap, linger_ms=linger_ms,
                                             request_timeout_s=settings.producer_request_timeout_s,
                                             max_batch_bytes=max_batch_bytes)
        self._partitioner = DefaultPartitioner()
        self._pending: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []

    async def __aenter__(self) -> TaskProducer:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # else it is left half-started, and reported unclosed
            raise
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self._producer.stop()

    def record(self, task: TaskInput) -> tuple[Task, bytes]:
        """A task validated (TaskError with the reason if not) and the bytes to send for it: JSON
        as it came (``task_record``), a dict or Task as its model's JSON."""
        if isinstance(task, (bytes, str)):
            return task_record(task, self.limits)
        if not isinstance(task, Task):
            task = parse_task(task)
        value = task.model_dump_json(exclude_none=True).encode()
        if len(value) > self.limits.max_bytes or value.count(b"[") + value.count(b"{") > self.limits.max_depth:
            read_task(value, self.limits)  # raises what the worker would find (too large, too deep), if anything
        return task, value

    # --- pipelined -----------------------------------------------------------------------

    async def enqueue(self, task: TaskInput) -> asyncio.Future[Any]:
        """Validate one task (TaskError if invalid: nothing sent) and hand it to the producer without
        waiting for the broker. The future resolves when the broker has it; ``flush`` waits for all."""
        task, value = self.record(task)
        return await self.enqueue_raw(value, key=task.task_id.encode())

    async def enqueue_raw(self, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        """Hand bytes, as they are, to the producer without waiting (like ``enqueue``, unvalidated)."""
        fut: asyncio.Future[Any] = await self._producer.send(self._topic, value, key=key)
        self._pending.add(fut)
        fut.add_done_callback(self._settled)
        return fut

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self._failures.append(exc)

    async def flush(self) -> None:
        """Wait until the broker has answered for every enqueued record, then raise the first failure
        (in the order they failed) if any did. After it returns, the broker has acknowledged every
        record enqueued before the call."""
        await self._producer.flush()  # everything handed to the producer, by any method, is answered
        while self._pending:  # (enqueued meanwhile)
            await asyncio.wait(list(self._pending))
        if self._failures:
            first, *others = self._failures
            self._failures = []
            if others:
                first.add_note(f"{len(others)} more enqueued records failed")
            raise first

    # --- confirmed -----------------------------------------------------------------------

    async def submit(self, task: TaskInput) -> Task:
        """Validate and send one task; returns it once the broker has it (TaskError if invalid)."""
        return (await self.submit_many([task]))[0]

    async def submit_many(self, tasks: Iterable[TaskInput]) -> list[Task]:
        """Validate every task first (nothing is sent if one is invalid), then send all of them
        without waiting in between, and return once the broker has acknowledged every one."""
        with _gc_paused():
            records = [self.record(t) for t in tasks]
        await self.submit_records((task.task_id, value) for task, value in records)
        return [task for task, _ in records]

    async def submit_records(self, records: Iterable[tuple[str, bytes]]) -> int:
        """Send validated tasks as (task id, bytes) pairs (``record``, ``task_record``,
        ``records_from_lines`` make them), keyed by task id; return how many once the broker has
        acknowledged every one, else raise the first failure.

        The records go straight into full record batches, one open batch per partition, in order:
        per record this is a murmur2 hash and an append (aiokafka's ``send`` costs about 4x more per
        record in Python: a coroutine, a future and its result each). The same partitioner as
        ``send``, so a task id lands where any producer of this project would put it.
        """
        producer, topic = self._producer, self._topic
        partitions = sorted(await producer.partitions_for(topic))
        partition_of, batches = self._partitioner, dict[int, BatchBuilder]()
        sent: list[asyncio.Future[Any]] = []
        count = 0
        try:
            for task_id, value in records:
                key = task_id.encode()
                p = partition_of(key, partitions, partitions)
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = producer.create_batch()
                if batch.append(timestamp=None, key=key, value=value) is None:  # full (and now closed): send it
                    sent.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(timestamp=None, key=key, value=value)  # a batch always takes its first record
                count += 1
            for p, batch in batches.items():
                batch.close()  # closed: sent at once, no linger, and nothing else joins it
                sent.append(await producer.send_batch(batch, topic, partition=p))
        except BaseException:  # the batches already handed over are the producer's now; their outcome is not ours
            for fut in sent:
                fut.add_done_callback(_outcome_ignored)
            raise
        await _confirmed(sent)
        return count

    async def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are, and wait for the broker (demo and tests use it to show what
        happens to bad input)."""
        await (await self._producer.send(self._topic, value, key=key))


async def _confirmed(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for every future; raise the first failure (in send order) once all have answered."""
    failure: BaseException | None = None
    for fut in futures:
        try:
            await fut
        except Exception as exc:  # every future is awaited (its failure retrieved), failed or not
            failure = failure or exc
    if failure is not None:
        raise failure


def _outcome_ignored(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: no "exception was never retrieved" warning
