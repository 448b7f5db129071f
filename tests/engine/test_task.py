import pytest

from dispatch_core.errors import TaskError
from dispatch_core.task import DEFAULT_SLA_MS, WorkloadClass, parse_task


def test_default_sla_per_class():
    for workload, sla in [("kernel", 45), ("script", 120), ("llm", 850)]:
        t = parse_task({"task_id": "a", "service": "s", "workload": workload})
        assert t.effective_sla_ms == sla == DEFAULT_SLA_MS[WorkloadClass(workload)]


def test_explicit_sla_wins_and_payload_passes_untouched():
    payload = {"prompt": "hi", "nested": [1, {"x": None}]}
    t = parse_task({"task_id": "a", "service": "s", "workload": "llm", "sla_ms": 300, "payload": payload})
    assert t.effective_sla_ms == 300
    assert t.payload == payload


def test_not_json_is_a_clear_error():
    with pytest.raises(TaskError, match="not valid JSON"):
        parse_task(b"{nope")
    with pytest.raises(TaskError, match="must be a JSON object"):
        parse_task(b"[1, 2]")


def test_invalid_fields_are_named_and_task_id_is_recovered():
    with pytest.raises(TaskError) as err:
        parse_task(b'{"task_id": "abc", "service": "s", "workload": "gpu", "features": {"tokens": -1}}')
    assert err.value.task_id == "abc"
    assert "workload" in str(err.value) and "features.tokens" in str(err.value)


def test_unknown_fields_and_naive_timestamps_are_refused():
    with pytest.raises(TaskError, match="surprise"):
        parse_task({"task_id": "a", "service": "s", "workload": "llm", "surprise": 1})
    with pytest.raises(TaskError, match="timezone"):
        parse_task({"task_id": "a", "service": "s", "workload": "llm", "created_at": "2026-11-24T10:00:00"})
