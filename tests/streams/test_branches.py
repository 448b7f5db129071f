"""Every branch of the pipeline, in process: the real engine and Redis, outputs in memory.

What the broker would receive is what ``MemoryOutputs`` records, per input offset; faults of
the broker are raised by it on demand. The real-Kafka tests (test_pipeline.py, test_poison.py)
prove the wiring; these prove each path, in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from decimal import Decimal

import pytest
from aiokafka import TopicPartition

from dispatch_core import keys
from dispatch_core.decision import decision_id_for
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.errors import LedgerUnavailable
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout, ServiceRollout
from dispatch_core.settings import Settings
from schemas import decode
from streams.dlq import DeadLetter, Incoming
from streams.errors import BrokerUnavailable, Fenced
from streams.messages import RoutedTask
from streams.outputs import MemoryOutputs, Out
from streams.pipeline import Pipeline

pytestmark = pytest.mark.stack  # the real Redis

SETTINGS = Settings(topic_tasks="t.tasks", topic_executor_prefix="t.exec.", topic_audit="t.audit",
                    topic_cost="t.cost", topic_dlq="t.dlq", max_task_bytes=10_000, max_task_depth=8,
                    retry_max_delay_s=0.01)
TASKS = TopicPartition("t.tasks", 0)


def task(task_id: str, **kw) -> bytes:
    body = {"task_id": task_id, "service": "svc", "workload": "llm", "features": {"tokens": 300}, **kw}
    return json.dumps(body).encode()


def records(*values: bytes | None, partition: int = 0, topic: str = "t.tasks") -> list[Incoming]:
    return [Incoming(v, topic, partition, offset, key=b"k", timestamp_ms=1) for offset, v in enumerate(values)]


@pytest.fixture
async def world(redis_client):
    """(pipeline, outputs) over a dispatcher on the real, flushed Redis."""
    ledger = RedisLedger(redis_client)
    dispatcher = Dispatcher(ledger, PolicyStore(redis_client, rollout_refresh_s=0), load_policy())
    outputs = MemoryOutputs()
    return Pipeline(dispatcher, outputs, SETTINGS, worker="w1"), outputs


def audit(outputs: MemoryOutputs) -> list[dict]:
    return [decode(o.value)[1] for o in outputs.on("t.audit") if o.value]


def letters(outputs: MemoryOutputs) -> list[DeadLetter]:
    return [DeadLetter.from_record(o.key, o.value, o.headers) for o in outputs.on("t.dlq")]


def routed(outputs: MemoryOutputs) -> list[Out]:
    return [o for o in outputs.records if o.topic.startswith("t.exec.")]


@pytest.mark.parametrize(("value", "reason", "kept"), [
    (None, "null_value", False),
    (b"\xff\xfe\x00binary\x80", "not_utf8", True),
    (b"[" * 9_000, "too_deep", True),  # (the real-broker test sends 100k)
    (b'{"task_id": "x", "payload": ' + b"[" * 9 + b"]" * 9 + b"}", "too_deep", True),
    (b"x" * 10_001, "too_large", False),
    (b"{not json", "not_json", True),
    (b'{"task_id": "x", "service": "s", "workload": "llm", "sla_ms": NaN}', "not_json", True),
    (b"[1, 2]", "not_object", True),
    (b"\"just a string\"", "not_object", True),
])
async def test_each_bad_input_is_dead_lettered_with_its_reason_and_the_partition_moves_on(world, value, reason, kept):
    pipeline, outputs = world
    await pipeline.handle_tasks(records(task("before"), value, task("after")))
    (letter,) = letters(outputs)
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == (reason, "t.tasks", 0, 1)
    assert letter.value == (value if kept else None)  # bytes kept exactly (binary too), or only size and hash
    if value is not None:
        assert (letter.size, letter.sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert len(letter.headers()) and len(routed(outputs)) == 2  # the valid tasks around it are routed
    assert outputs.offsets == {TASKS: 3}


async def test_an_invalid_task_with_a_readable_id_also_gets_a_rejection_event(world):
    pipeline, outputs = world
    emoji = "🦜" * 100_000  # 400 KB of 4-byte characters: the dead letter stays the input's size, unescaped
    value = json.dumps({"task_id": "bad", "service": "svc", "workload": "quantum", "payload": emoji},
                       ensure_ascii=False).encode()
    pipeline.limits = pipeline.limits.__class__(max_bytes=500_000, max_depth=8)
    await pipeline.handle_tasks(records(value))
    (letter,) = letters(outputs)
    assert letter.reason == "invalid" and letter.task_id == "bad" and letter.value == value
    assert sum(len(k) + len(v) for k, v in letter.headers()) < 3_000
    (event,) = audit(outputs)
    assert event["outcome"] == "rejected" and event["triggers"] == ["invalid"] and "workload" in event["rationale"]


async def test_the_routed_task_carries_the_input_text_byte_for_byte(world):
    pipeline, outputs = world
    text = '{"task_id":"exact","service":"svc","workload":"llm","payload":{"big":1e15,"e":"caf\\u00e9","n":[1.0]}}'
    await pipeline.handle_tasks(records(text.encode()))
    (out,) = routed(outputs)
    assert out.value is not None and out.value.endswith(f',"task":{text}}}'.encode())
    msg = RoutedTask.model_validate_json(out.value)
    assert msg.decision_id == decision_id_for("svc", "exact") and msg.task["payload"]["e"] == "café"


async def test_a_reused_task_id_is_refused_recorded_and_dead_lettered_never_routed(world):
    pipeline, outputs = world
    await pipeline.handle_tasks(records(task("dup", tenant="acme"), task("dup", tenant="acme"),
                                        task("dup", tenant="globex")))
    first, conflict = audit(outputs)  # the second copy repeats the first: nothing written for it
    assert conflict["triggers"][-1] == "conflict" and conflict["decision_id"] != first["decision_id"]
    assert conflict["executor"] is None and first["decision_id"] in conflict["rationale"]
    assert len(routed(outputs)) == 1
    (letter,) = letters(outputs)
    assert (letter.reason, letter.offset, letter.task_id) == ("conflict", 2, "dup")


async def test_a_redelivered_record_writes_its_outputs_again_a_resent_copy_does_not(world):
    """A redelivery means its batch was not committed (its outputs were aborted): they are written
    again, the same. A copy sent again as another record finds its first record's outputs there."""
    pipeline, outputs = world
    batch = records(task("once"))
    await pipeline.handle_tasks(batch)
    await pipeline.handle_tasks(batch)  # the same record again
    first, again = audit(outputs)
    # (in memory the first copy stays committed, so the second is linked after it in the chain)
    assert again == first | {"decision_latency_ms": again["decision_latency_ms"], "link": again["link"]}
    assert len(routed(outputs)) == 2
    resent = [Incoming(task("once"), "t.tasks", 0, 9)]  # the same task, a later record
    await pipeline.handle_tasks(resent)
    assert len(audit(outputs)) == 2 and len(routed(outputs)) == 2 and outputs.offsets == {TASKS: 10}


async def test_the_broker_down_while_writing_retries_the_same_outputs_and_logs_once(world, caplog):
    pipeline, outputs = world
    outputs.failures = [BrokerUnavailable("broker unavailable: KafkaConnectionError")] * 4
    with caplog.at_level(logging.WARNING, logger="streams.pipeline"):
        await pipeline.handle_tasks(records(task("a"), b"{bad", task("b")))
    assert outputs.attempts == 5 and outputs.offsets == {TASKS: 3}
    assert len(audit(outputs)) == 2 and len(letters(outputs)) == 1  # written once: no repeated dead letters
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "task batches wait" in lines[0] and "available again" in lines[1]


async def test_a_partition_taken_over_by_another_worker_is_left_to_it(world):
    pipeline, outputs = world
    outputs.failures = [Fenced("fenced by the partition's new owner")]
    await pipeline.handle_tasks(records(task("a")))
    assert outputs.records == [] and outputs.offsets == {}


async def test_a_record_the_broker_refuses_is_dead_lettered_alone_the_rest_are_written(world):
    pipeline, outputs = world
    outputs.reject = lambda out: out.topic.startswith("t.exec.") and b'"task_id":"huge"' in (out.value or b"")
    await pipeline.handle_tasks(records(task("a"), task("huge"), task("b")))
    assert [letter.reason for letter in letters(outputs)] == ["undeliverable"]
    assert {json.loads(o.value)["task_id"] for o in routed(outputs)} == {"a", "b"}
    assert outputs.offsets == {TASKS: 3}


async def test_a_record_that_crashes_the_engine_is_dead_lettered_as_poison_after_bounded_tries(world, monkeypatch):
    pipeline, outputs = world
    real = pipeline.dispatcher.decide_inputs

    async def decide_inputs(tasks, sources):
        if any(t.task_id == "boom" for t in tasks):
            raise ZeroDivisionError("a bug only this task reaches")
        return await real(tasks, sources)

    monkeypatch.setattr(pipeline.dispatcher, "decide_inputs", decide_inputs)
    await pipeline.handle_tasks(records(task("a"), task("boom"), task("b")))
    (letter,) = letters(outputs)
    assert (letter.reason, letter.offset, letter.attempts) == ("poison", 1, SETTINGS.max_attempts)
    assert "ZeroDivisionError: a bug only this task reaches" in letter.error
    assert {json.loads(o.value)["task_id"] for o in routed(outputs)} == {"a", "b"}
    assert outputs.offsets == {TASKS: 3}


async def test_redis_down_fails_closed_naming_the_cause_and_shadow_services_route_as_asked(redis_client):
    store = PolicyStore(redis_client)
    await store.set_rollout(Rollout(services={"shadowed": ServiceRollout(mode="shadow")}))
    await store.rollout()  # the worker knew the rollout before Redis went away
    dead = RedisLedger.from_url("redis://127.0.0.1:1/0", timeout_s=0.1)
    store.redis = dead.redis
    store.rollout_refresh_s = 0
    outputs = MemoryOutputs()
    pipeline = Pipeline(Dispatcher(dead, store, load_policy()), outputs, SETTINGS)
    await pipeline.handle_tasks(records(task("closed"), task("shadow", service="shadowed")))
    closed, shadow = audit(outputs)
    assert closed["outcome"] == "rejected" and closed["triggers"] == ["ledger_unavailable"]
    assert "Redis unavailable" in closed["rationale"] and "adoption flag" not in closed["rationale"]
    assert shadow["mode"] == "shadow" and shadow["assigned_tier"] == shadow["asked_tier"] == "small"
    assert [json.loads(o.value)["task_id"] for o in routed(outputs)] == ["shadow"]
    await dead.close()


async def test_redis_lost_mid_commit_makes_the_batch_wait_not_guess(world, monkeypatch):
    pipeline, outputs = world
    ledger = pipeline.dispatcher.ledger
    real, calls = ledger.commit, []

    async def flaky(*a, **k):
        calls.append(1)
        result = await real(*a, **k)
        if len(calls) == 1:
            raise LedgerUnavailable("reply lost")  # it committed; the worker cannot know
        return result

    monkeypatch.setattr(ledger, "commit", flaky)
    await pipeline.handle_tasks(records(task("a")))
    (event,) = audit(outputs)
    assert event["outcome"] == "routed" and len(calls) == 2  # waited, then got the committed decision


def report(decision_id: str, report_id: str = "r1", **kw) -> bytes:
    body = {"decision_id": decision_id, "report_id": report_id, "task_id": "a", "service": "svc",
            "executor": "llm-small", "actual": "0.0004", "currency": "USD", "run_ms": 3, "dispatch_ms": 9,
            "finished_at": "2026-11-25T10:00:00Z", **kw}
    return json.dumps(body).encode()


async def test_reports_settle_once_and_everything_else_is_recorded_as_such(world):
    pipeline, outputs = world
    await pipeline.handle_tasks(records(task("a")))
    (decision,) = audit(outputs)
    did = decision["decision_id"]
    batch = records(report(did), report(did, "r2"), report(did, "r3", outcome="duplicate", actual="0"),
                    b"{not a report", None, topic="t.cost")
    await pipeline.handle_reports(batch)
    kinds = [e["kind"] for e in audit(outputs)[1:]]
    assert kinds == ["settled", "duplicate", "skipped"]
    assert [letter.reason for letter in letters(outputs)] == ["invalid_report", "invalid_report"]
    assert outputs.offsets[TopicPartition("t.cost", 0)] == 5
    b = decision["budgets"][0]
    key = keys.budget(b["budget_id"], b["scope"], b["window"])
    spent = (await pipeline.dispatcher.ledger.scope(key)).spent
    assert spent == 400  # the one actual, 0.0004
    await pipeline.handle_reports(batch[:1])  # the same record redelivered: its settlement again, no charge
    assert audit(outputs)[-1]["kind"] == "settled"
    assert (await pipeline.dispatcher.ledger.scope(key)).spent == spent


async def test_expiries_are_written_then_confirmed_once(world, redis_client):
    pipeline, outputs = world
    pipeline.dispatcher.reservation_ttl_s = 0.0
    await pipeline.handle_tasks(records(task("slow")))
    assert await pipeline.expire_overdue() == 1
    (expired,) = [e for e in audit(outputs) if e.get("kind") == "expired"]
    assert expired["task_id"] == "slow" and expired["reserved"] > Decimal(0) and expired["actual"] is None
    assert await pipeline.expire_overdue() == 0
    await pipeline.handle_tasks(records(task("slow-2"), partition=1))
    outputs.failures = [BrokerUnavailable("down")]
    assert await pipeline.expire_overdue() == 0  # could not write: left for a later round
    assert await redis_client.zrange(keys.UNRECORDED_EXPIRIES, 0, -1) == [decision_id_for("svc", "slow-2")]


async def test_load_reports_during_a_redis_outage_are_dropped_not_fatal():
    dead = RedisLedger.from_url("redis://127.0.0.1:1/0", timeout_s=0.1)
    pipeline = Pipeline(Dispatcher(dead, PolicyStore(dead.redis), load_policy()), MemoryOutputs(), SETTINGS)
    update = b'{"executor": "llm-large", "saturation": 1.0, "in_flight": 4, "capacity": 4, "at": "2026-11-25T10:00:00Z"}'
    await pipeline.handle_load(records(update, b"{garbage", None, topic="t.load"))  # returns: nothing raised
    await dead.close()


async def test_a_retry_after_a_failure_redoes_only_the_partitions_not_written_yet(world):
    pipeline, outputs = world
    real, failed = outputs.write, []

    async def write(source, outs, next_offset):
        if source is not None and source.partition == 1 and not failed:
            failed.append(source)
            raise RuntimeError("one partition's write failed, the other's went through")
        await real(source, outs, next_offset)

    outputs.write = write  # type: ignore[method-assign]
    await pipeline.handle_tasks([*records(task("p0")), *records(task("p1"), partition=1)])
    assert failed and sorted(json.loads(o.value)["task_id"] for o in routed(outputs)) == ["p0", "p1"]  # each once
    assert len(audit(outputs)) == 2
