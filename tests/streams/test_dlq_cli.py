"""`dispatch dlq show|redrive` on the real broker, against dead letters a real worker wrote."""

import asyncio
import base64
import json

from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_core.decision import decision_id_for
from streams.dlq import DeadLetter, Incoming
from streams.producer import TaskProducer, idempotent_producer

from .conftest import consume
from .test_cli import _env
from .test_pipeline import audit_events

runner = CliRunner()


def test_show_lists_dead_letters_and_redrive_sends_the_original_bytes_back(
        pipeline_settings, procs, monkeypatch, fresh_settings_cache):
    s = pipeline_settings
    _env(monkeypatch, s)
    procs.start("worker", s, "worker")
    good = {"task_id": "fixed-later", "service": "svc", "workload": "llm", "features": {"tokens": 40}}

    async def setup() -> None:
        async with TaskProducer(s) as producer:
            await producer.send_raw(b"\xff\xfe binary", key=b"k1")
            await producer.send_raw(b"{not json")
        # a valid task once dead-lettered as poison (say, a bug since fixed), as a worker writes it
        letter = DeadLetter.of(Incoming(json.dumps(good).encode(), s.topic_tasks, 0, 7, key=b"svc"), "poison",
                               "ZeroDivisionError: fixed in 0.1.1", attempts=3, worker="w-old")
        producer = idempotent_producer(s.kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(s.topic_dlq, letter.record_value(), key=letter.key, headers=letter.headers())
        await producer.stop()
        await consume(s, [s.topic_dlq], lambda rs: len(rs) >= 3)

    asyncio.run(setup())
    shown = runner.invoke(app, ["dlq", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    letters = {d["reason"]: d for d in json.loads(shown.stdout)}
    assert set(letters) == {"not_utf8", "not_json", "poison"}
    assert letters["not_utf8"]["value_encoding"] == "base64"
    assert base64.b64decode(letters["not_utf8"]["value"]) == b"\xff\xfe binary" and letters["not_utf8"]["key"] == "k1"
    assert letters["not_json"]["origin"]["topic"] == s.topic_tasks and letters["poison"]["attempts"] == 3
    table = runner.invoke(app, ["dlq", "show", "--reason", "poison"])
    assert "ZeroDivisionError: fixed in 0.1.1" in table.output and "1 dead letters" in table.output

    dry = runner.invoke(app, ["dlq", "redrive", "--reason", "poison", "--dry-run"])
    assert json.loads(dry.stdout) == {"matched": 1, "skipped_without_bytes": 0,
                                      "last_offset": letters["poison"]["dlq_offset"], "would_send": 1}
    sent = runner.invoke(app, ["dlq", "redrive", "--reason", "poison"])
    assert sent.exit_code == 0 and json.loads(sent.stdout)["sent"] == 1
    events = audit_events(asyncio.run(consume(s, [s.topic_audit], lambda rs: len(rs) >= 1, settle_s=0.5)))
    assert [e["decision_id"] for _, e in events] == [decision_id_for("svc", "fixed-later")]
