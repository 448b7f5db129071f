"""Bad input from a foreign client (kcat, librdkafka) through the real broker to a real worker.

Each input that once crashed or stalled the pipeline reaches the dead-letter topic with its
specific reason, while valid tasks sent around it keep getting decided and routed; a routed
task delivered twice to the example executors runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from dispatch_core.decision import decision_id_for
from dispatch_core.settings import Settings
from streams.dlq import DeadLetter
from streams.producer import idempotent_producer

from .conftest import consume
from .test_pipeline import audit_events

async def kcat(s: Settings, *args: str, stdin: bytes | None = None) -> None:
    """Produce with kcat: a client that shares no code with dispatch-core (make test installs it)."""
    binary = shutil.which("kcat")
    if binary is None:
        pytest.fail("kcat is not installed: apt-get install kcat (make test does)", pytrace=False)
    proc = await asyncio.create_subprocess_exec(
        binary, "-P", "-b", s.kafka_bootstrap, "-t", s.topic_tasks, "-X", "message.max.bytes=1048576", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    assert proc.returncode == 0, err.decode()


def valid(task_id: str, **extra: object) -> dict:
    return {"task_id": task_id, "service": "kc", "workload": "llm", "features": {"tokens": 500}, **extra}


async def test_every_poison_input_is_dead_lettered_with_its_reason_and_valid_tasks_keep_flowing(
        pipeline_settings, procs, tmp_path: Path):
    s = pipeline_settings
    procs.start("worker", s, "worker")
    near_limit = json.dumps(valid("near-limit", payload="x" * (s.max_task_bytes - 200))).encode()
    assert s.max_task_bytes - 200 < len(near_limit) <= s.max_task_bytes
    files = {
        "deep": b"[" * 100_000,
        "binary": b"\xff\xfe\x00\x9c not text \x80" * 10,
        "emoji": json.dumps({"task_id": "emoji", "service": "kc", "workload": "quantum", "payload": "🦜" * 100_000},
                            ensure_ascii=False).encode(),
        "oversize": json.dumps(valid("oversize", payload="y" * s.max_task_bytes)).encode(),
        "nan": b'{"task_id": "nan", "service": "kc", "workload": "llm", "sla_ms": NaN}',
        "near-limit": near_limit,
        "valid-1": json.dumps(valid("v1")).encode(),
        "conflict": json.dumps(valid("v1", tenant="someone-else")).encode(),
        "valid-2": json.dumps(valid("v2")).encode(),
    }
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    # keyed by task id, as producers key tasks: the conflict lands behind v1 on v1's partition
    await kcat(s, "-k", "v1", str(tmp_path / "valid-1"))
    await kcat(s, "-Z", "-K:", stdin=b"tomb:\n")  # a key and a null value: a tombstone
    for name in ("deep", "binary", "emoji", "oversize", "nan", "near-limit"):
        await kcat(s, str(tmp_path / name))  # one file = one message, byte for byte
    await kcat(s, "-k", "v1", str(tmp_path / "conflict"))
    await kcat(s, str(tmp_path / "valid-2"))

    dlq = await consume(s, [s.topic_dlq], lambda rs: len(rs) >= 7, timeout_s=90, settle_s=1.0)
    letters = {d.reason: d for d in (DeadLetter.from_record(r.key, r.value, list(r.headers)) for r in dlq)}
    assert len(dlq) == 7 and set(letters) == {"null_value", "too_deep", "not_utf8", "invalid", "too_large",
                                              "not_json", "conflict"}
    assert letters["null_value"].key == b"tomb" and letters["null_value"].value is None
    assert letters["too_deep"].value == files["deep"]
    assert letters["not_utf8"].value == files["binary"]  # binary kept exactly, no replacement characters
    assert letters["invalid"].value == files["emoji"] and letters["invalid"].task_id == "emoji"
    assert letters["too_large"].value is None and letters["too_large"].size == len(files["oversize"])
    assert letters["too_large"].sha256 == hashlib.sha256(files["oversize"]).hexdigest()
    assert letters["conflict"].task_id == "v1" and all(d.topic == s.topic_tasks for d in letters.values())

    audit = await consume(s, [s.topic_audit], lambda rs: len(rs) >= 5, settle_s=1.0)
    events = {e["decision_id"]: e for _, e in audit_events(audit)}
    routed_ids = {decision_id_for("kc", t) for t in ("v1", "v2", "near-limit")}
    assert routed_ids <= set(events) and all(events[d]["outcome"] != "rejected" for d in routed_ids)
    kinds = Counter(tuple(e["triggers"][-1:]) for e in events.values() if e["outcome"] == "rejected")
    assert kinds == {("invalid",): 1, ("conflict",): 1}
    executor_topics = [s.executor_topic(e) for e in ("llm-small", "llm-medium", "llm-large")]
    routed = await consume(s, executor_topics, lambda rs: len(rs) >= 3, settle_s=1.0)
    assert sorted(json.loads(r.value)["task_id"] for r in routed) == ["near-limit", "v1", "v2"]
    big = next(r for r in routed if b'"near-limit"' in r.value)
    assert big.value.endswith(b',"task":' + near_limit + b"}")  # the 960 KB task, as sent, in its envelope


async def test_a_routed_task_delivered_twice_runs_once(pipeline_settings, procs):
    s = pipeline_settings
    procs.start("worker", s, "worker")
    procs.start("executors", s, "executor", "llm-small", "--latency-scale", "0.1", "--instance", "only")
    producer = idempotent_producer(s.kafka_bootstrap)
    await producer.start()
    await producer.send_and_wait(s.topic_tasks, json.dumps(valid("twice", features={"tokens": 10})).encode())
    (routed,) = await consume(s, [s.executor_topic("llm-small")], lambda rs: len(rs) >= 1)
    await consume(s, [s.topic_audit], lambda rs: any(dict(r.headers)["event.kind"] == b"settled" for r in rs))
    await producer.send_and_wait(routed.topic, routed.value, key=routed.key)  # the same routed task again
    await producer.stop()
    records = await consume(s, [s.topic_audit], lambda rs: any(dict(r.headers)["event.kind"] == b"skipped"
                                                               for r in rs), settle_s=1.0)
    kinds = Counter(e.get("kind") for name, e in audit_events(records) if name == "settlement")
    assert kinds == {"settled": 1, "skipped": 1}  # ran once; the second delivery was acknowledged and skipped
