"""What-if replay on what a real worker recorded: the recording policy reproduces every decision.

A real worker process decides a mixed workload in waves, under budget pressure, with load reports
and settlements arriving between the waves on their Kafka topics; `dispatch policy replay` then
reads the audit topic back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal

from aiokafka import AIOKafkaProducer
from dispatch_core import keys
from dispatch_core.policy import load_policy, parse_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Rollout, ServiceRollout
from dispatch_core.settlement import ExecutorReport
from streams.messages import LoadUpdate
from streams.producer import TaskProducer

from .conftest import consume, wait_for
from .test_pipeline import audit_events, mixed_tasks

def recording_policy():
    """Tight caps so soft and hard triggers fire; load reports stay valid for the whole test."""
    data = load_policy().model_dump(mode="json")
    data["budgets"] = [{"id": "tenant-day", "scope": "tenant", "window": "day", "limit": "0.30", "soft_pct": 0.5},
                       {"id": "service-day", "scope": "service", "window": "day", "limit": "20.00", "soft_pct": 0.8}]
    data["triggers"] = {"load": {"enabled": True, "saturation": 0.9, "max_age_s": 3600}}
    return parse_policy(data)


def candidate_policy():
    data = recording_policy().model_dump(mode="json")
    data["budgets"][0]["limit"] = "0.60"
    data["classes"]["llm"]["tiers"][1]["unit_price"] = "0.0005"
    return parse_policy(data)


async def _send(producer: AIOKafkaProducer, topic: str, key: str, value: str) -> None:
    await producer.send_and_wait(topic, key=key.encode(), value=value.encode())


async def test_replaying_what_a_real_worker_recorded(pipeline_settings, procs, redis_client, tmp_path):
    recorder, candidate = recording_policy(), candidate_policy()
    (tmp_path / "recording.json").write_text(recorder.canonical_json())
    (tmp_path / "candidate.json").write_text(candidate.canonical_json())
    s = pipeline_settings.model_copy(update={"policy_file": tmp_path / "recording.json", "batch_size": 16,
                                             "reservation_ttl_s": 3600.0})
    await PolicyStore(redis_client).set_rollout(Rollout(services={"aegis": ServiceRollout(mode="shadow")}))
    procs.start("worker", s, "worker")
    kafka = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await kafka.start()
    waves = [mixed_tasks(40, f"w{n}", tenant=f"t{n % 2}") for n in range(3)]
    seen = 0
    try:
        async with TaskProducer(s) as tasks:
            for n, wave in enumerate(waves):
                saturation = 0.97 if n == 1 else 0.1  # llm-large saturated during the second wave only
                update = LoadUpdate(executor="llm-large", saturation=saturation, in_flight=1, capacity=1,
                                    at=datetime.now(UTC))
                await _send(kafka, s.topic_load, "llm-large", update.model_dump_json())
                await wait_for(lambda: _load_is(redis_client, saturation), timeout_s=60)
                await tasks.submit_many(wave)
                if n == 2:
                    await tasks.send_raw(json.dumps({"task_id": "bad", "service": "aegis", "workload": "x"}).encode())
                records = await consume(s, [s.topic_audit], lambda rs: _decisions(rs) >= seen + len(wave))
                seen = _decisions(records)
                events = [e for name, e in audit_events(records) if name == "decision"]
                routed = [e for e in events if e["task_id"].startswith(f"w{n}-") and e["assigned_tier"]]
                for e in routed[: len(routed) * 2 // 3]:  # most of the wave's costs come back before the next
                    report = ExecutorReport(
                        decision_id=e["decision_id"], report_id=f"r-{e['decision_id']}", task_id=e["task_id"],
                        service=e["service"], executor=e["executor"], actual=(e["estimate_assigned"] * Decimal("0.9")).quantize(Decimal("0.000001")),
                        run_ms=5, dispatch_ms=10, finished_at=datetime.now(UTC))
                    await _send(kafka, s.topic_cost, e["decision_id"], report.model_dump_json())
                settled = len(routed[: len(routed) * 2 // 3])
                records = await consume(s, [s.topic_audit], lambda rs: _settlements(rs, f"w{n}-") >= settled)
    finally:
        await kafka.stop()

    events = [e for name, e in audit_events(records) if name == "decision"]
    assert len(events) == 121 and _settlements(records, "w") > 0
    triggers = {t for e in events for t in e["triggers"]}
    assert {"load", "shadow"} <= triggers and triggers & {"budget_soft", "budget_hard"}, triggers
    numbered = sorted(e["sequence"] for e in events if e["sequence"] is not None)
    assert numbered == list(range(1, 121))  # every decision but the invalid input, in one commit order

    replays = [await _replay_cli(s, tmp_path / f"{policy}.json") for policy in ("recording", "candidate", "candidate")]
    same = replays[0]["per-decision"]
    assert same["decisions"] == 120 and same["skipped_by_reason"] == {"invalid": 1}
    assert same["agreed"] == 120 and same["changed"] == 0 and same["disagreements"] == []
    assert same["recorded_cost"] == same["replayed_cost"]
    assert replays[1] == replays[2]  # both modes, byte for byte
    assert replays[1]["per-decision"]["agreed"] < 120 and replays[1]["simulation"]["agreed"] < 120
    print("simulation of the recording policy agrees on", replays[0]["simulation"]["agreed"], "of 120;",
          "candidate changes", replays[1]["per-decision"]["changed"], "/", replays[1]["simulation"]["changed"])


async def _replay_cli(s, policy_file) -> dict:
    """``dispatch policy replay FILE --json`` as a user runs it: its own process, on this test's topics."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatch_cli.main", "policy", "replay", str(policy_file), "--json",
        env={**os.environ, **s.as_env()}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def _load_is(redis_client, saturation: float) -> bool:
    raw = await redis_client.hget(keys.LOAD, "llm-large")
    return raw is not None and json.loads(raw)["saturation"] == saturation


def _decisions(records) -> int:
    return len({e["decision_id"] for name, e in audit_events(records) if name == "decision"})


def _settlements(records, prefix: str) -> int:
    return sum(1 for name, e in audit_events(records) if name == "settlement" and e["task_id"].startswith(prefix))
