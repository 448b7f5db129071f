"""The product as users meet it: tasks in on Kafka, a real worker process, outputs on Kafka and Redis."""

from __future__ import annotations

import io
import json
import urllib.request
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import fastavro
from aiokafka.errors import KafkaError

from dispatch_core import keys
from dispatch_core.decision import decision_id_for, invalid_decision_id
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy import load_policy, parse_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout, ServiceRollout
from dispatch_core.settings import Settings
from dispatch_core.settlement import ExecutorReport
from streams.dlq import DeadLetter
from streams.producer import TaskProducer
from streams.topics import admin_client

from .conftest import consume, wait_for

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def plain_fastavro_reader():
    """An independent reader: just the .avsc files and fastavro, no project code."""
    by_name = {}
    for name in ("decision", "settlement", "circuit"):
        by_name[name] = fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))

    def read(value: bytes, fingerprint_header: bytes) -> tuple[str, dict]:
        assert value[:2] == b"\xc3\x01" and value[2:10].hex().encode() == fingerprint_header
        errors = []
        for name, schema in by_name.items():
            try:
                return name, fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
            except Exception as exc:  # noqa: BLE001 - try the other schema
                errors.append(exc)
        raise AssertionError(f"undecodable audit event: {errors}")

    return read


def audit_events(records) -> list[tuple[str, dict]]:
    read = plain_fastavro_reader()
    out = []
    for r in records:
        headers = dict(r.headers)
        out.append(read(r.value, headers["avro.fingerprint"]))
    return out


def mixed_tasks(n: int, prefix: str, **extra) -> list[dict]:
    kinds = [
        ("llm-gateway", "llm", {"tokens": 300}), ("llm-gateway", "llm", {"tokens": 9000}),
        ("tarotscript", "script", {"cpu_ms": 30, "depth": 3}), ("aegis", "kernel", {"cpu_ms": 50}),
    ]
    out = []
    for i in range(n):
        service, workload, features = kinds[i % len(kinds)]
        out.append({"task_id": f"{prefix}-{i}", "service": service, "workload": workload, "features": features,
                    "tenant": "acme", "payload": {"n": i, "note": "untouched ✓"}, **extra})
    return out


def decision_count(records) -> int:
    return sum(1 for r in records if dict(r.headers)["event.kind"] != b"settled")


async def test_every_task_gets_one_decision_one_route_and_bad_input_is_dead_lettered(pipeline_settings, procs):
    s: Settings = pipeline_settings
    procs.start("worker", s, "worker")
    tasks = mixed_tasks(40, "e2e")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
        await producer.send_raw(b"{not json at all")
        await producer.send_raw(json.dumps({"task_id": "bad-1", "service": "aegis", "workload": "quantum"}).encode())

    audit = await consume(s, [s.topic_audit], lambda rs: len(rs) >= 41, settle_s=1.5)
    events = audit_events(audit)
    assert all(kind == "decision" for kind, _ in events)
    decisions = {e["decision_id"]: e for _, e in events}
    assert len(events) == len(decisions) == 41  # exactly one provenance event per decision
    expected_ids = {decision_id_for(t["service"], t["task_id"]) for t in tasks} | {invalid_decision_id("aegis", "bad-1")}
    assert set(decisions) == expected_ids
    bad = decisions[invalid_decision_id("aegis", "bad-1")]
    assert bad["outcome"] == "rejected" and bad["triggers"] == ["invalid"] and "workload" in bad["rationale"]
    for d in decisions.values():  # mandatory provenance is there, for real
        assert d["policy_version"] == load_policy().version and d["rule_id"] and d["rationale"]
        assert isinstance(d["estimate_asked"], Decimal)

    executor_topics = [s.executor_topic(e) for e in load_policy().executors()]
    routed = await consume(s, executor_topics, lambda rs: len(rs) >= 40, settle_s=1.0)
    assert len(routed) == 40
    for r in routed:
        msg = json.loads(r.value)
        d = decisions[msg["decision_id"]]
        assert r.topic == s.executor_topic(d["executor"])  # on exactly the topic its decision names
        assert msg["tier"] == d["assigned_tier"] and msg["policy_version"] == d["policy_version"]
        original = next(t for t in tasks if t["task_id"] == msg["task_id"])
        assert msg["task"]["payload"] == original["payload"]

    dlq = await consume(s, [s.topic_dlq], lambda rs: len(rs) >= 2, settle_s=0.5)
    letters = [DeadLetter.from_record(r.key, r.value, r.headers) for r in dlq]
    assert len(letters) == 2
    assert any(x.reason == "not_json" and "not valid JSON" in x.error and x.value == b"{not json at all"
               for x in letters)
    assert any(x.reason == "invalid" and "workload" in x.error and x.task_id == "bad-1" for x in letters)
    assert all(x.topic == s.topic_tasks and x.size == len(x.value or b"") for x in letters)

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
    assert "dispatch_decisions_total" in metrics and "dispatch_dead_letters_total" in metrics


async def test_shadow_service_is_routed_as_asked_while_audit_shows_enforcement(pipeline_settings, procs, redis_client, tmp_path):
    base = load_policy()
    data = base.model_dump(mode="json")
    data["budgets"] = [{"id": "tiny", "scope": "service", "window": "day", "limit": "0.01", "soft_pct": 1.0}]
    data["triggers"] = {"trend": {"enabled": False}}
    policy = parse_policy(data)
    (tmp_path / "policy.json").write_text(policy.canonical_json())
    s = pipeline_settings.model_copy(update={"policy_file": tmp_path / "policy.json"})
    store = PolicyStore(redis_client)
    await store.publish(policy)
    await store.set_rollout(Rollout(services={"shadowed": ServiceRollout(mode="shadow")}))
    procs.start("worker", s, "worker")
    tasks = [{"task_id": f"sh-{i}", "service": svc, "workload": "llm", "features": {"tokens": 9000}}
             for i in range(5) for svc in ("shadowed", "enforced")]
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    events = dict((e["task_id"] + "/" + e["service"], e) for _, e in
                  audit_events(await consume(s, [s.topic_audit], lambda rs: len(rs) >= 10)))
    for i in range(5):
        shadow, enforced = events[f"sh-{i}/shadowed"], events[f"sh-{i}/enforced"]
        assert (shadow["mode"], shadow["assigned_tier"]) == ("shadow", "large")
        assert "shadow" in shadow["triggers"] and shadow["enforced_tier"] != "large"
        assert enforced["mode"] == "enforce" and enforced["assigned_tier"] != "large"
    routed = await consume(s, [s.executor_topic("llm-large")], lambda rs: len(rs) >= 5, settle_s=0.5)
    assert {json.loads(r.value)["service"] for r in routed} == {"shadowed"}


async def test_worker_killed_mid_stream_loses_nothing_and_charges_once(pipeline_settings, procs, redis_client):
    s = pipeline_settings.model_copy(update={"batch_size": 20})
    procs.start("worker-1", s, "worker")
    tasks = mixed_tasks(600, "crash")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks[:100])
        await consume(s, [s.topic_audit], lambda rs: len(rs) >= 50)
        await producer.submit_many(tasks[100:])
        await consume(s, [s.topic_audit], lambda rs: len(rs) >= 150)
        procs.kill("worker-1")  # SIGKILL mid-stream: no graceful commit
    procs.start("worker-2", s, "worker")
    records = await consume(s, [s.topic_audit], lambda rs: len({r.key for r in rs}) >= 600, timeout_s=120, settle_s=1.0)
    by_id: dict[str, list[dict]] = defaultdict(list)
    for _, e in audit_events(records):
        by_id[e["decision_id"]].append(e)
    assert set(by_id) == {decision_id_for(t["service"], t["task_id"]) for t in tasks}  # nothing lost
    assert all(len(copies) == 1 for copies in by_id.values())  # read committed: each decision once
    reserved = sum(copies[0]["reserved"] for copies in by_id.values())
    ledger = RedisLedger(redis_client)
    total = 0
    async for key in redis_client.scan_iter("dc:budget:global-daily:*"):
        total += (await ledger.scope(key)).reserved
    assert Decimal(total) / 1_000_000 == reserved  # every decision charged exactly once


async def test_reports_settle_once_and_unreported_reservations_expire_into_presumed_spend(
        pipeline_settings, procs, redis_client):
    s = pipeline_settings.model_copy(update={"reservation_ttl_s": 3.0})
    procs.start("worker", s, "worker")
    tasks = mixed_tasks(8, "cost")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    decisions = {e["decision_id"]: e for _, e in audit_events(await consume(s, [s.topic_audit], lambda rs: len(rs) >= 8))}
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    settled_ids = sorted(decisions)[:4]
    for did in settled_ids * 2:  # every report sent twice: settles once, the copy is recorded as a duplicate
        d = decisions[did]
        report = ExecutorReport(decision_id=did, report_id=f"r-{did}", task_id=d["task_id"], service=d["service"],
                                executor=d["executor"], actual=Decimal("0.001"), run_ms=5, dispatch_ms=10,
                                finished_at=d["decided_at"])
        await producer.send_and_wait(s.topic_cost, key=did.encode(), value=report.model_dump_json().encode())
    await producer.stop()

    records = await consume(s, [s.topic_audit], lambda rs: sum(
        dict(r.headers)["event.kind"] in (b"settled", b"expired", b"duplicate") for r in rs) >= 8 + 4, timeout_s=60)
    kinds = Counter((e["decision_id"], e.get("kind")) for name, e in audit_events(records) if name == "settlement")
    assert set(kinds.values()) == {1}  # one event of each kind per decision
    assert {d for (d, k) in kinds if k == "settled"} == set(settled_ids)
    assert {d for (d, k) in kinds if k == "duplicate"} == set(settled_ids)
    expired = set(decisions) - set(settled_ids)
    assert {d for (d, k) in kinds if k == "expired"} == expired
    ledger = RedisLedger(redis_client)
    (key,) = [k async for k in redis_client.scan_iter("dc:budget:global-daily:*")]
    state = await ledger.scope(key)
    presumed = sum(int(decisions[d]["reserved"] * 1_000_000) for d in expired)
    assert state.reserved == 0 and await ledger.presumed(key) == presumed
    assert state.spent == 4 * 1000 + presumed  # four actuals of 0.001 once each; the rest keep their room


async def test_executors_report_actual_cost_and_load(pipeline_settings, procs, redis_client):
    s = pipeline_settings
    procs.start("worker", s, "worker")
    procs.start("executors", s, "executor", "--all", "--latency-scale", "0.1")
    tasks = mixed_tasks(60, "exec")
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    records = await consume(s, [s.topic_audit], lambda rs: sum(
        dict(r.headers)["event.kind"] == b"settled" for r in rs) >= 60, timeout_s=90)
    settlements = [e for name, e in audit_events(records) if name == "settlement"]
    assert {e["task_id"] for e in settlements} == {t["task_id"] for t in tasks}
    assert all(e["actual"] is not None and e["dispatch_ms"] >= 0 for e in settlements)
    load = await redis_client.hgetall(keys.LOAD)
    assert set(load) >= {"llm-small", "llm-large", "kernel-cpu"}
    assert all(0 <= json.loads(v)["saturation"] <= 1 for v in load.values())


async def test_redis_outage_fails_closed_and_records_it(pipeline_settings, procs):
    s = pipeline_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "redis_timeout_s": 0.2})
    procs.start("worker", s, "worker")
    async with TaskProducer(s) as producer:
        await producer.submit_many(mixed_tasks(4, "outage"))
    events = audit_events(await consume(s, [s.topic_audit], lambda rs: len(rs) >= 4))
    assert all(e["outcome"] == "rejected" and e["triggers"] == ["ledger_unavailable"] for _, e in events)


async def _group_members(s: Settings, want: int = 2) -> bool:
    """True once the dispatcher's consumer group is stable with ``want`` members."""
    admin = admin_client(s)
    await admin.start()
    try:
        (group,) = await admin.describe_consumer_groups([s.app_id])
        _, _, state, _, _, members = group.groups[0][:6]
        return state == "Stable" and len(members) == want
    except KafkaError:  # no coordinator before the first member joins
        return False
    finally:
        await admin.close()


def _decided_by(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dispatch_decisions_total{"))


async def test_two_workers_share_the_partitions_and_one_global_cap(pipeline_settings, procs, redis_client, tmp_path):
    """Scale-out on Kafka itself: a second worker joins the group; the Redis ledger keeps the cap global."""
    data = load_policy().model_dump(mode="json")
    data["budgets"] = [{"id": "global", "scope": "global", "window": "day", "limit": "1.00", "soft_pct": 1.0}]
    data["triggers"] = {"trend": {"enabled": False}}
    (tmp_path / "policy.json").write_text(parse_policy(data).canonical_json())
    s = pipeline_settings.model_copy(update={"policy_file": tmp_path / "policy.json"})
    from ..support import free_ports

    port_b = free_ports(1)[0]
    procs.start("worker-a", s, "worker")
    procs.start("worker-b", s.model_copy(update={"metrics_port": port_b}), "worker")
    await wait_for(lambda: _group_members(s), timeout_s=60)  # both joined before any task is sent
    tasks = [{"task_id": f"so-{i}", "service": f"svc-{i % 12}", "workload": "llm", "features": {"tokens": 9000}}
             for i in range(240)]
    async with TaskProducer(s) as producer:
        await producer.submit_many(tasks)
    records = await consume(s, [s.topic_audit], lambda rs: len({r.key for r in rs}) >= 240, timeout_s=90)
    decisions = {e["decision_id"]: e for _, e in audit_events(records)}
    assert len(decisions) == 240
    a, b = _decided_by(s.metrics_port), _decided_by(port_b)
    assert a > 0 and b > 0 and a + b >= 240  # both workers decided a share
    (key,) = [k async for k in redis_client.scan_iter("dc:budget:global:*")]
    reserved = (await RedisLedger(redis_client).scope(key)).reserved
    assert reserved <= 1_000_000  # the cap held across both processes
    assert Decimal(reserved) / 1_000_000 == sum(d["reserved"] for d in decisions.values())
    assert any(d["outcome"] == "rejected" for d in decisions.values())


async def test_a_saturation_report_on_the_load_topic_moves_tasks_off_that_executor(pipeline_settings, procs, redis_client):
    """The load trigger on live data: executor report -> load topic -> worker -> Redis -> decisions."""
    s = pipeline_settings
    procs.start("worker", s, "worker")
    from datetime import UTC, datetime

    from streams.messages import LoadUpdate
    from streams.producer import idempotent_producer

    producer = idempotent_producer(s.kafka_bootstrap)
    await producer.start()
    update = LoadUpdate(executor="llm-large", saturation=1.0, in_flight=8, capacity=8, at=datetime.now(UTC))
    await producer.send_and_wait(s.topic_load, key=b"llm-large", value=update.model_dump_json().encode())
    await producer.stop()
    await wait_for(lambda: redis_client.hexists(keys.LOAD, "llm-large"), timeout_s=60)
    tasks = [{"task_id": f"busy-{i}", "service": "svc", "workload": "llm", "features": {"tokens": 9000}}
             for i in range(5)]
    async with TaskProducer(s) as task_producer:
        await task_producer.submit_many(tasks)
    events = [e for _, e in audit_events(await consume(s, [s.topic_audit], lambda rs: len(rs) >= 5))]
    assert all(e["asked_tier"] == "large" and e["assigned_tier"] == "medium" and "load" in e["triggers"]
               for e in events), [(e["assigned_tier"], e["triggers"]) for e in events]
