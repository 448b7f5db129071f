"""What TaskProducer sends for a task, checked without a broker: exactly what the worker will read."""

from __future__ import annotations

import json

import pytest

from dispatch_core.errors import TaskError
from dispatch_core.task import InputLimits, parse_task, read_task
from streams.producer import records_from_lines, task_record

TASK = {"task_id": "t-1", "service": "svc", "workload": "llm", "features": {"tokens": 10}, "payload": {"a": None}}


def test_a_json_task_with_created_at_is_sent_byte_for_byte():
    raw = json.dumps({**TASK, "created_at": "2026-11-25T10:00:00+01:00"}).encode()
    task, value = task_record(raw)
    assert value == raw and read_task(value)[0] == task


def test_a_json_task_without_created_at_gets_the_validation_time_spliced_in():
    raw = b'  ' + json.dumps(TASK, indent=1).encode() + b' \n'
    task, value = task_record(raw)
    assert value.startswith(b'{"created_at":"')
    assert read_task(value)[0] == task  # what the worker parses is the task validated here, created_at included
    assert json.loads(value) == {**TASK, "created_at": task.created_at.isoformat()}


def test_the_spliced_created_at_counts_against_the_size_limit():
    raw = json.dumps(TASK).encode()
    with pytest.raises(TaskError) as refused:
        task_record(raw, InputLimits(max_bytes=len(raw) + 10))
    assert refused.value.reason == "too_large" and refused.value.task_id == "t-1"


def test_records_from_lines_skips_blank_lines_and_numbers_invalid_ones_from_1():
    lines = [json.dumps(TASK).encode(), b"", b"   ", b'{"task_id": "x"}', b"[1]", json.dumps({**TASK, "task_id": "t-2"}).encode()]
    records, invalid = records_from_lines(lines)
    assert [task_id for task_id, _ in records] == ["t-1", "t-2"]
    assert records[0][1].startswith(b'{"created_at":"')
    assert [(n, e.reason) for n, e in invalid] == [(4, "invalid"), (5, "not_object")]
    assert records_from_lines([b""], skip_blank=False)[1][0][1].reason == "not_json"


def test_a_task_from_a_dict_round_trips_through_its_json():
    from streams.producer import TaskProducer
    from dispatch_core.settings import Settings

    async def record():
        return TaskProducer(Settings()).record(TASK)  # no broker needed: nothing is started

    import asyncio

    task, value = asyncio.run(record())
    assert parse_task(value) == task


def test_a_line_separator_inside_a_json_string_does_not_split_a_task():
    """Lines are split on bytes, on \\n and \\r only: U+2028 and NEL are valid raw inside JSON strings."""
    data = json.dumps({**TASK, "payload": "one\u2028two\x85three"}, ensure_ascii=False).encode() + b"\n"
    records, invalid = records_from_lines(data.splitlines())
    assert invalid == [] and json.loads(records[0][1])["payload"] == "one\u2028two\x85three"
