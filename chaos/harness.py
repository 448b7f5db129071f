"""The chaos rig: a private stack per run, and per scenario a world of its own on it.

``PrivateStack``: Kafka and Redis of the run's own, under ``<state_dir>/chaos/<run id>`` on
free loopback ports (the Kafka jar cache is shared), with the service faults: SIGKILL or
SIGTERM one, start it again on the same ports and data.

``Rig``: one scenario: fresh topics (its own names and consumer group), a flushed Redis DB,
the worker(s) and executors as real processes (``ProcessGroup`` with this checkout as cwd, so
the children import this code), a seeded producer pacing inputs at a rate, a live
``read_committed`` tail of every output topic (progress, arrival times), and a ledger sampler.
At the end it waits until nothing is pending, stops every process, and counts what crossed
Kafka and Redis (``chaos.account``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispatch_core import keys
from dispatch_core.policy import Policy, load_policy
from dispatch_core.settings import Settings
from stack import LocalStack, process
from stack.process import free_ports
from stack.children import ProcessGroup
from stack.kafka import quiet_aiokafka
from streams.audit import verify_topic
from streams.producer import idempotent_producer
from streams.topics import admin_client, ensure_topics

from .account import REPORTED, TERMINAL, Crossed, Expect, Ledger, Row, account, read_all, topics
from .workload import Input

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]  # the checkout whose code the children run
#: How long the worker leases an expiry whose event is not written yet before handing it out again
#: (Dispatcher.expire_overdue's default): a late settlement can reach the audit topic this much earlier.
EXPIRY_LEASE_S = 30.0


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Unavailable|Exit|Interrupt)(: |$)")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)|(/\S+\.py):(\d+) in (\w+)')


def last_error(log_tail: str) -> str:
    """What a child's log says it died of: its last exception (a cancellation only if nothing else)
    and the project frames of the traceback that led to it."""
    lines = [ln.strip(" │") for ln in log_tail.splitlines() if ln.strip(" │")]
    errors = [i for i, ln in enumerate(lines) if _EXCEPTION.match(ln)]
    causes = [i for i in errors if "CancelledError" not in lines[i]]  # a cancellation is the consequence
    if not (causes or errors):
        return lines[-1][:200] if lines else ""
    at = (causes or errors)[-1]
    start = max([i for i in errors if i < at], default=-1) + 1
    frames = []
    for ln in lines[start:at]:
        if (m := _FRAME.search(ln)) is not None:
            path, line, func = (m[1], m[2], m[3]) if m[1] else (m[4], m[5], m[6])
            if "site-packages" not in path and "/lib/python" not in path:
                frames.append(f"{Path(path).name}:{line} {func}")
    where = f" (via {' > '.join(frames[-4:])})" if frames else ""
    return lines[at][:200] + where


class PrivateStack:
    """Kafka + Redis for one chaos run, started and stopped by it alone."""

    def __init__(self, base: Settings, run_id: str) -> None:
        self.dir = base.state_dir / "chaos" / run_id
        kafka, controller, redis = free_ports(3)
        self.settings = base.model_copy(update={
            "state_dir": self.dir, "kafka_port": kafka, "kafka_controller_port": controller, "redis_port": redis,
            "kafka_bootstrap": f"127.0.0.1:{kafka}", "redis_url": f"redis://127.0.0.1:{redis}/0",
            "stack_stop_timeout_s": 15.0, "metrics_port": 0, "worker_id": None,
        })
        self.local = LocalStack(self.settings)

    async def up(self, only: Iterable[str] | None = None) -> None:
        """Start the services (or those of ``only``) that are not running; return once they answer."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with quiet_aiokafka():  # no schema registry: the scenarios need none
            await self.local.up(only if only is not None else ("kafka", "redis"))

    def down(self) -> None:
        self.local.down()

    def kill(self, service: str) -> None:
        """SIGKILL one service: no shutdown of any kind. Returns once it is gone."""
        svc = self.local.kafka if service == "kafka" else self.local.redis
        pid = svc.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.stop(pid, timeout_s=1)  # reaps it
        svc.pid_file.unlink(missing_ok=True)

    def stop(self, service: str) -> None:
        """SIGTERM one service (its clean shutdown), SIGKILL after the grace period."""
        self.local.down([service])


@dataclass
class Fault:
    """One fault: when it began (wall ms, as Kafka timestamps), when it was lifted (monotonic)."""

    began_ms: int
    flow: str  # the flow it interrupts: "decision" or "report"
    lifted: float | None = None


class Feeder:
    """Sends inputs at a pace; an input counts once the broker acknowledged it; a failed send is resent.

    Its producer is the product's kind (idempotent, acks=all) with the scenario's request
    timeout; after any failure it is replaced, since an idempotent producer can lose its
    sequence in a long outage.
    """

    def __init__(self, settings: Settings, inputs: list[Input], rate: float, *, timed: bool = True) -> None:
        """``timed``: its valid tasks count for end-to-end latency (a warm-up's do not)."""
        self.settings = settings
        self.inputs = inputs
        self.rate = rate
        self.timed = timed
        self.acked: set[int] = set()
        self.resends = 0
        self._inflight: dict[int, asyncio.Future[Any]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # replaced producers, stopping in the background

    async def _reset(self) -> AIOKafkaProducer:
        """A fresh, started producer (the old one stops in the background), waiting out a broker outage."""
        old, self._producer = self._producer, None
        if old is not None:
            self._retire(old)
        delay = 0.2
        while True:
            producer = idempotent_producer(self.settings.kafka_bootstrap, linger_ms=5,
                                           request_timeout_s=self.settings.producer_request_timeout_s)
            try:
                await producer.start()
                self._producer = producer
                return producer
            except KafkaError:
                self._retire(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer without waiting for it: its pending sends fail (and are resent) or land."""
        async def stop() -> None:
            with contextlib.suppress(Exception):
                await producer.stop()

        task = asyncio.create_task(stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _send(self, i: int) -> None:
        inp = self.inputs[i]
        while True:
            producer = self._producer or await self._reset()
            try:
                self._inflight[i] = await producer.send(self.settings.topic_tasks, key=inp.key, value=inp.value())
                return
            except KafkaError:
                await self._reset()

    async def _collect(self) -> None:
        """Count acknowledged sends; resend failed ones on a new producer."""
        failed = []
        for i, fut in list(self._inflight.items()):
            if fut.done():
                del self._inflight[i]
                if fut.cancelled() or fut.exception() is not None:
                    failed.append(i)
                else:
                    self.acked.add(i)
        if failed:
            await self._reset()
            self.resends += len(failed)
            for i in failed:
                await self._send(i)

    async def run(self) -> None:
        """Send every input at ``rate`` per second, then until each one is acknowledged."""
        await self._reset()
        try:
            start = time.monotonic()
            for i in range(len(self.inputs)):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._send(i)
                await self._collect()
            while len(self.acked) < len(self.inputs):
                if self._inflight:
                    await asyncio.wait(list(self._inflight.values()), timeout=0.5)
                await self._collect()
        finally:
            if self._producer is not None:
                self._retire(self._producer)
            if self._retiring:
                await asyncio.wait(list(self._retiring), timeout=self.settings.producer_request_timeout_s + 5)

    def acknowledged(self) -> list[Input]:
        return [self.inputs[i] for i in sorted(self.acked)]


class Rig:
    """One scenario on the private stack: use as ``async with Rig(...) as rig``."""

    def __init__(self, stack: PrivateStack, name: str, *, policy: Policy | None = None, quick: bool = True,
                 sample_every_s: float = 0.1, **overrides: Any) -> None:
        self.stack = stack
        self.name = name
        self.quick = quick
        self.dir = stack.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        policy_file = stack.settings.policy_file
        if policy is not None:
            policy_file = self.dir / "policy.json"
            policy_file.write_text(policy.canonical_json())
        self.settings = stack.settings.namespaced(name, **{
            "app_id": f"chaos-{name}", "state_dir": self.dir, "policy_file": policy_file, "metrics_port": 0,
            "reservation_ttl_s": 30.0 if quick else 60.0, **overrides,
        })
        self.executors = load_policy(self.settings.policy_file).executors()
        self.procs = ProcessGroup(self.dir, cwd=REPO, stop_timeout_s=15)
        self.seen = Crossed()
        self.ledger = Ledger()
        self.feeders: list[Feeder] = []
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self.exits: list[str] = []
        self.workers: set[str] = set()
        self.executor_procs: set[str] = set()
        self._sample_every_s = sample_every_s
        self._tasks: list[asyncio.Task[None]] = []  # the tail and the sampler: they end when _done is set
        self._done = asyncio.Event()
        self._feeds: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Rig:
        await ensure_topics(self.settings, self.executors)
        redis = Redis.from_url(self.settings.redis_url)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()
        self._tasks = [asyncio.create_task(self._tail()), asyncio.create_task(self._sample())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every process of the scenario (first, synchronously), then the feeds, the tail and the sampler.

        The tail and the sampler are asked to stop rather than cancelled: a Redis client cancelled
        in the middle of a pipeline can hang in its ``aclose()``. Nothing here waits unbounded.
        """
        try:
            self._stop_children()
        finally:
            self._done.set()
            for task in self._feeds:
                task.cancel()
            tasks = [*self._tasks, *self._feeds]
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=15)
                for task in stuck:
                    task.cancel()
                    log.warning("chaos: %s did not stop in time", task.get_name())
            self._tasks, self._feeds = [], []

    def _stop_children(self) -> None:
        """SIGTERM every child at once (their shutdowns overlap), then wait for each, SIGKILL past the grace."""
        pids = list(self.procs.pids.values())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.procs.stop_all()

    # --- processes -------------------------------------------------------------------------

    def start_worker(self, name: str = "w1", **overrides: Any) -> int:
        """A dispatcher worker whose static group membership is ``name`` (a restart rejoins at once)."""
        self.watch()
        self.workers.add(name)
        return self.procs.start(name, self.settings.model_copy(update={"worker_id": name, **overrides}), "worker")

    def start_executors(self, name: str = "executors", *, latency_scale: float = 0.2, capacity: int = 16,
                        extra: Iterable[str] = ()) -> int:
        """Every executor of the policy in one process, under the stable instance name ``name``."""
        self.watch()
        self.executor_procs.add(name)
        return self.procs.start(name, self.settings, "executor", "--all", "--instance", name, "--latency-scale",
                                str(latency_scale), "--capacity", str(capacity), *extra)

    def kill(self, name: str) -> None:
        """SIGKILL one child process (if it has not exited by itself already)."""
        self.watch()
        if name in self.procs.pids:
            self.procs.kill(name)

    def terminate(self, name: str) -> None:
        """SIGTERM one child process (its clean shutdown), SIGKILL after the group's grace period."""
        self.watch()
        if name in self.procs.pids:
            process.stop(self.procs.pids.pop(name), timeout_s=self.procs.stop_timeout_s)

    def stalled(self) -> str | None:
        """Why nothing can progress any more, if so: every worker exited unasked."""
        if self.workers and not any(n in self.procs.pids for n in self.workers):
            return "no worker process left running"
        return None

    def executing(self) -> bool:
        """False once every executor process exited unasked (their work can no longer be waited for)."""
        return not self.executor_procs or any(n in self.procs.pids for n in self.executor_procs)

    def watch(self) -> None:
        """Note children that exited without being asked to (they are not restarted: that is a finding)."""
        for name, pid in list(self.procs.pids.items()):
            if not process.is_running(pid):
                self.procs.pids.pop(name)
                process.stop(pid, timeout_s=1)  # reap it
                self.exits.append(f"{name} exited unasked: {last_error(process.tail(self.procs.log(name), 80))}")

    # --- faults ----------------------------------------------------------------------------

    def fault(self, flow: str = "decision") -> Fault:
        """Mark a fault's start (call just before injecting it)."""
        f = Fault(int(time.time() * 1000), flow)
        self.faults.append(f)
        return f

    @staticmethod
    def lift(f: Fault) -> None:
        """Mark the fault lifted (call right after the restart is issued or the service answers)."""
        f.lifted = time.monotonic()

    async def hold(self, seconds: float) -> None:
        """Keep a fault on for ``seconds`` (its length is the scenario's choice), watching the children."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.watch()
            await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def recover(self) -> list[float | None]:
        """Per lifted fault: seconds to the first new event of its flow (see chaos.account, recover_s)."""
        out: list[float | None] = []
        for f in self.faults:
            if f.lifted is None:
                out.append(None)
                continue
            before = {did for at, _, did, what in self.seen.arrivals if what == f.flow and at < f.lifted}
            first = min((at for at, ts, did, what in self.seen.arrivals
                         if what == f.flow and at >= f.lifted and ts >= f.began_ms and did not in before), default=None)
            out.append(None if first is None else first - f.lifted)
        return out

    # --- inputs and progress ----------------------------------------------------------------

    def feed(self, inputs: list[Input], rate: float, *, timed: bool = True) -> asyncio.Task[None]:
        """Start sending ``inputs`` at ``rate`` per second in the background."""
        feeder = Feeder(self.settings, inputs, rate, timed=timed)
        self.feeders.append(feeder)
        task = asyncio.create_task(feeder.run())
        self._feeds.append(task)
        return task

    async def warm(self, inputs: list[Input]) -> None:
        """Send ``inputs`` and wait until each is decided and, when routed, received: the pipeline runs."""
        await asyncio.wait([self.feed(inputs, rate=1000, timed=False)], timeout=120)
        ids = {i.decision_id for i in inputs if i.decision_id}
        await self.until(lambda: ids <= self.seen.decided.keys() and all(
            d in self.seen.reported for d in ids if self.seen.decided[d]["assigned_tier"]), "the pipeline to start", 120)

    def decided(self) -> int:
        """Decisions seen so far (read committed), fallbacks included."""
        return len(self.seen.decided)

    async def until(self, cond: Callable[[], bool], what: str, timeout_s: float) -> bool:
        """Poll ``cond`` until it holds (True) or ``timeout_s`` passes (False, noted)."""
        deadline = time.monotonic() + timeout_s
        while not cond():
            self.watch()
            stalled = self.stalled()
            if stalled or time.monotonic() > deadline:
                self.notes.append(f"gave up waiting for {what}: {stalled or f'timed out after {timeout_s:.0f} s'}")
                return False
            await asyncio.sleep(0.05)
        return True

    async def group_stable(self, members: int) -> bool:
        """True once the worker group is Stable with ``members`` members."""
        admin = admin_client(self.settings)
        try:
            await admin.start()
            (group,) = await admin.describe_consumer_groups([self.settings.app_id])
            _, _, state, _, _, found = group.groups[0][:6]
            return bool(state == "Stable" and len(found) == members)
        except KafkaError:
            return False
        finally:
            await admin.close()

    async def wait_group(self, members: int, timeout_s: float = 90) -> bool:
        deadline = time.monotonic() + timeout_s
        while not await self.group_stable(members):
            self.watch()
            if time.monotonic() > deadline:
                self.notes.append(f"the worker group never had {members} stable members")
                return False
            await asyncio.sleep(0.2)
        return True

    def expect(self) -> Expect:
        """What the acknowledged inputs must become."""
        e = Expect()
        for feeder in self.feeders:
            for inp in feeder.acknowledged():
                if inp.decision_id:
                    e.decisions.add(inp.decision_id)
                    if inp.valid and feeder.timed:
                        e.valid.add(inp.decision_id)
                if inp.dead_letter:
                    e.dead_letters[inp.dead_letter] += 1
        return e

    def pending(self, expect: Expect) -> list[str]:
        """What is still to happen before the scenario's end state can be counted."""
        s = self.seen
        routed = {d for d, e in s.decided.items() if e["assigned_tier"]}
        waits = {
            "decisions": len(expect.decisions - s.decided.keys()),
            "reservations settled or expired": sum(1 for d, e in s.decided.items()
                                                   if e["reserved"] > 0 and not s.kinds[d] & TERMINAL),
            "reports settled": sum(1 for d in s.succeeded if not s.kinds[d] & REPORTED),
            # a late settlement can be written before its expiry's event (re-leased after a failed write)
            "expiry events of late settlements": sum(1 for ks in s.kinds.values()
                                                     if "settled_late" in ks and "expired" not in ks),
            "dead letters": sum(max(0, n - Counter(x.reason for x in s.dead)[r]) for r, n in expect.dead_letters.items()),
        }
        if self.executing():  # with every executor gone, unreceived tasks stay so (and are counted as lost)
            waits["routed tasks received"] = len(routed - s.reported)
        return [f"{n} {what}" for what, n in waits.items() if n]

    async def finish(self, *, notes: Iterable[str] = (), drain_s: float | None = None) -> Row:
        """Wait for the feeds and for nothing to be pending, stop everything, count what crossed."""
        drain_s = drain_s if drain_s is not None else (90 if self.quick else 180)
        if self._feeds:
            done, running = await asyncio.wait(self._feeds, timeout=drain_s)
            self.notes += [f"producer failed: {t.exception()!r}" for t in done if t.exception() is not None]
            if running:
                self.notes.append(f"the producer was still sending after {drain_s:.0f} s")
        expect = self.expect()
        await self._drain(expect, drain_s, stall_s=max(self.settings.reservation_ttl_s, EXPIRY_LEASE_S) + 10)
        resends = sum(f.resends for f in self.feeders)
        if resends:
            self.notes.append(f"{resends} producer resends")
        await self.close()
        with quiet_aiokafka():
            crossed = await read_all(self.settings, self.executors)
            verified = await verify_topic(self.settings)
        breaks = [c.broken for c in verified.chains.values() if c.broken] + verified.problems
        self.notes += [f"audit chain broken: {b.kind} at {b.partition}/{b.offset}: {b.detail}" for b in breaks[:3]]
        self.ledger.final = await self._budgets()
        self.ledger.final_open = await self._open_reservations()
        held = await self._held_claims()
        if held:
            self.notes.append(f"{held} execution claims still held (run:<owner>, never done)")
        row = account(self.name, crossed, expect, self.ledger, live=self.seen,
                      recover=self.recover() if self.faults else None, notes=[*notes, *self.notes, *self.exits])
        return replace(row, chain_breaks=len(breaks))

    async def _drain(self, expect: Expect, timeout_s: float, stall_s: float) -> None:
        """Wait until nothing is pending; give up (noted) when no worker is left, nothing moved for
        ``stall_s`` (longer than the reservation TTL, after which every reservation has expired), or at
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: list[str] = []
        moved = time.monotonic()
        while pending := self.pending(expect):
            self.watch()
            now = time.monotonic()
            if pending != last:
                last, moved = pending, now
            why = self.stalled() or (f"nothing moved for {stall_s:.0f} s" if now - moved > stall_s else None) or (
                f"timed out after {timeout_s:.0f} s" if now > deadline else None)
            if why:
                self.notes.append(f"gave up waiting ({why}) with {', '.join(pending)} pending")
                return
            await asyncio.sleep(0.1)

    # --- background readers ---------------------------------------------------------------------

    async def _tail(self) -> None:
        """Follow every output topic (read_committed) into ``self.seen``, timing each arrival."""
        consumer = AIOKafkaConsumer(*topics(self.settings, self.executors), bootstrap_servers=self.settings.kafka_bootstrap,
                                    group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed", max_partition_fetch_bytes=2 << 20)
        with quiet_aiokafka():
            await consumer.start()
            try:
                while not self._done.is_set():
                    try:
                        batches = await consumer.getmany(timeout_ms=100)
                    except KafkaError as exc:
                        log.info("tail: %r", exc)
                        await asyncio.sleep(0.2)
                        continue
                    at, received = time.monotonic(), datetime.now(UTC)
                    for msgs in batches.values():
                        for m in msgs:
                            self.seen.add(self.settings, m, at, received)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), timeout=10)

    async def _sample(self) -> None:
        """Sample every budget key's committed spend (spent + reserved) every ``sample_every_s``."""
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True, socket_timeout=0.5,
                               socket_connect_timeout=0.5)
        try:
            while not self._done.is_set():
                try:
                    found = [k async for k in redis.scan_iter("dc:budget:*", count=1000)]
                    if found:
                        async with redis.pipeline(transaction=False) as pipe:
                            for k in found:
                                pipe.hmget(k, "spent", "reserved")
                            values = await pipe.execute()
                        for k, (spent, reserved) in zip(found, values, strict=True):
                            self.ledger.sample(k, int(spent or 0), int(reserved or 0))
                    held = await redis.zrange(keys.OPEN_RESERVATIONS, 0, -1)  # one atomic read of the open set
                    if len(held) > 1:  # one reservation cannot be two of one task
                        self.ledger.open_samples.append(tuple(str(d) for d in held))
                    self.ledger.samples += 1
                except (RedisError, OSError):
                    pass  # Redis is down on purpose in some scenarios
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), timeout=self._sample_every_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(redis.aclose(), timeout=5)

    async def _held_claims(self) -> int:
        """Executor claims left at ``run:<owner>``: runs that started and never finished (evidence of a stuck executor)."""
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            claims = [k async for k in redis.scan_iter("dc:claim:*", count=1000)]
            values = await redis.mget(claims) if claims else []
            return len([v for v in values if isinstance(v, str) and v.startswith("run:")])
        finally:
            await redis.aclose()

    async def _open_reservations(self) -> list[str]:
        """Decision ids whose reservation record (``dc:resv:<id>``) is still ``reserved``."""
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        prefix = keys.reservation("")
        try:
            found = [k async for k in redis.scan_iter(f"{prefix}*", count=1000)
                     if k not in (keys.OPEN_RESERVATIONS, keys.UNRECORDED_EXPIRIES)]
            out = []
            for k in found:
                if await redis.type(k) == "hash" and await redis.hget(k, "status") == "reserved":
                    out.append(k.removeprefix(prefix))
            return out
        finally:
            await redis.aclose()

    async def _budgets(self) -> dict[str, dict[str, int]]:
        """Every budget key's final spent/reserved/presumed (micro-units)."""
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            out = {}
            async for k in redis.scan_iter("dc:budget:*", count=1000):
                h = await redis.hgetall(k)
                out[k] = {f: int(h.get(f) or 0) for f in ("spent", "reserved", "presumed")}
            return out
        finally:
            await redis.aclose()

