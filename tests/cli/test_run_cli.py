"""`dispatch submit` refuses what it cannot send in one line, without a traceback."""

import socket

import pytest
from typer.testing import CliRunner

from dispatch_cli.main import app

runner = CliRunner()
TASK = '{"task_id": "t-1", "service": "llm-gateway", "workload": "llm"}'


def test_an_unreadable_task_file_is_one_error_line(tmp_path):
    res = runner.invoke(app, ["submit", "--file", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 1
    assert res.output.splitlines() == [f"error: cannot read --file {tmp_path / 'missing.jsonl'}: No such file or directory"]


def test_an_invalid_task_names_its_line_and_field(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(TASK + "\n" + TASK.replace('"llm"}', '"llm", "sla_ms": -1}') + "\n")
    res = runner.invoke(app, ["submit", "--file", str(tasks)])
    assert res.exit_code == 1
    assert res.output.splitlines()[0] == "error: nothing sent: invalid tasks"
    assert "line 2: invalid task: sla_ms: Input should be greater than 0" in res.output and "Traceback" not in res.output


@pytest.fixture
def refusing_port():
    """A loopback port that is bound but not listening, so connecting to it is refused (no fixed port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_an_unreachable_kafka_is_one_error_line(refusing_port, monkeypatch, fresh_settings_cache):
    monkeypatch.setenv("DISPATCH_KAFKA_BOOTSTRAP", f"127.0.0.1:{refusing_port}")
    res = runner.invoke(app, ["submit", TASK])
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"error: cannot reach Kafka at 127.0.0.1:{refusing_port} (`dispatch stack up` starts a local one)"]


def test_a_line_that_is_not_utf8_is_named_by_its_number(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(TASK.encode() + b"\n" + b'{"task_id": "\xff"}' + b"\n")
    res = runner.invoke(app, ["submit", "--file", str(tasks)])
    assert res.exit_code == 1
    assert res.output.splitlines()[1].startswith("line 2: task is not UTF-8")


def test_many_invalid_lines_list_the_first_20_and_count_the_rest(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join([TASK] + ['{"task_id": "x"}'] * 25) + "\n")
    res = runner.invoke(app, ["submit", "--file", str(tasks)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0] == "error: nothing sent: invalid tasks"
    assert [ln.split(":")[0] for ln in lines[1:21]] == [f"line {n}" for n in range(2, 22)]
    assert lines[21:] == ["... and 5 more invalid lines"]


def test_a_blank_task_argument_is_refused():
    res = runner.invoke(app, ["submit", " "])
    assert res.exit_code == 1 and res.output.splitlines()[1].startswith("line 1: task is not valid JSON")
