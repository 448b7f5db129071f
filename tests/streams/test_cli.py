"""`dispatch submit` and `dispatch demo --json` against the real stack."""

import asyncio
import json

from typer.testing import CliRunner

from dispatch_cli.main import app
from .conftest import consume

runner = CliRunner()


def _env(monkeypatch, settings):
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)


def test_submit_validates_everything_before_sending_anything(pipeline_settings, monkeypatch, fresh_settings_cache, tmp_path):
    _env(monkeypatch, pipeline_settings)
    lines = tmp_path / "tasks.jsonl"
    good = {"task_id": "s1", "service": "svc", "workload": "llm", "features": {"tokens": 10}}
    lines.write_text(json.dumps(good) + "\n" + '{"task_id": "s2", "service": "svc", "workload": "nope"}\n')
    refused = runner.invoke(app, ["submit", "--file", str(lines)])
    assert refused.exit_code == 1 and "line 2" in refused.output and "workload" in refused.output
    lines.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "task_id": "s2"}) + "\n")
    sent = runner.invoke(app, ["submit", "--file", str(lines)])
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.output) == {"submitted": 2, "task_ids": ["s1", "s2"]}
    records = asyncio.run(consume(pipeline_settings, [pipeline_settings.topic_tasks], lambda rs: len(rs) >= 2, settle_s=0.5))
    assert sorted(json.loads(r.value)["task_id"] for r in records) == ["s1", "s2"]
    assert all(r.key == json.loads(r.value)["task_id"].encode() for r in records)  # keyed by task id


def test_demo_json_reports_a_run_on_the_real_stack(stack, monkeypatch, fresh_settings_cache, tmp_path):
    _env(monkeypatch, stack)
    result = runner.invoke(app, ["demo", "--tasks", "300", "--rate", "150", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    for key in ("tasks_in", "decisions", "routed", "audit_events", "dlq", "by_tier", "by_trigger",
                "decision_p95_ms", "e2e_p95_ms"):
        assert key in summary
    assert summary["tasks_in"] == 300
    with_id = summary["decisions"]
    assert with_id + summary["dlq"] >= 300 and summary["routed"] + summary["rejected"] == with_id
    assert summary["settled"] == summary["routed"]  # every routed task's actual cost came back
    assert summary["audit_events"] == summary["decisions"] + summary["settled"]
    assert "shadow" in summary["by_trigger"]
    assert summary["audit_verified"] is True and summary["audit_chains"] >= 2  # dispatch audit verify, in the demo

    # what-if on the run just recorded: replay its audit topic under the packaged default policy
    from dispatch_core.policy import DEFAULT_POLICY_PATH

    replayed = runner.invoke(app, ["policy", "replay", str(DEFAULT_POLICY_PATH), "--audit-topic",
                                   summary["audit_topic"], "--json"])
    assert replayed.exit_code == 0, replayed.output
    reports = json.loads(replayed.stdout)
    assert set(reports) == {"per-decision", "simulation"}
    invalid = summary["by_trigger"].get("invalid", 0)
    probe = 1  # the demo's start-up probe task is on its audit topic too, not in its summary
    for report in reports.values():
        assert report["decisions"] == summary["decisions"] - invalid + probe and report["skipped"] == invalid
        assert sum(report["moves"].values()) == report["changed"] and float(report["recorded_cost"]) > 0
        assert report["policy_version"] != summary["policy_version"]  # a different policy than the one recorded

    # finance on the same topic: the store's report states the demo's savings, service by service
    monkeypatch.setenv("DISPATCH_FINANCE_STORE", str(tmp_path / "finance.duckdb"))
    finance = runner.invoke(app, ["finance", "report", "--audit-topic", summary["audit_topic"], "--json"])
    assert finance.exit_code == 0, finance.output
    finance_report = json.loads(finance.stdout)
    assert finance_report["totals"]["decisions"] == summary["decisions"] + probe
    assert summary["savings"]["services"] == {k: v for k, v in finance_report["savings"]["services"].items()
                                              if k != "demo-probe"}
    assert float(summary["savings"]["total"]["vs_untiered"]["saved_pct"]) > 0


def test_finance_report_reads_the_audit_topic(pipeline_settings, procs, monkeypatch, fresh_settings_cache):
    s = pipeline_settings
    _env(monkeypatch, s)
    procs.start("worker", s, "worker")
    tasks = [{"task_id": f"f{i}", "service": svc, "workload": "kernel", "features": {"cpu_ms": 20}}
             for i in range(6) for svc in ("alpha", "beta")]
    assert runner.invoke(app, ["submit", "--file", "-"], input="\n".join(json.dumps(t) for t in tasks)).exit_code == 0
    asyncio.run(consume(s, [s.topic_audit], lambda rs: len(rs) >= 12))
    result = runner.invoke(app, ["finance", "report", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {k: v["decisions"] for k, v in report["services"].items()} == {"alpha": 6, "beta": 6}
    assert report["totals"]["decisions"] == 12


def test_a_worker_whose_executor_topics_are_missing_refuses_to_start_in_one_line(pipeline_settings, tmp_path):
    import subprocess
    import sys

    from dispatch_core.policy import load_policy, parse_policy

    data = load_policy().model_dump(mode="json")
    data["classes"]["llm"]["tiers"][0]["executor"] = "llm-nowhere"
    (tmp_path / "policy.json").write_text(parse_policy(data).canonical_json())
    s = pipeline_settings.model_copy(update={"policy_file": tmp_path / "policy.json"})
    done = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "worker"], env={**s.as_env(), "PATH": "/usr/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: missing topics ")
    assert s.executor_topic("llm-nowhere") in lines[0] and "dispatch topics create" in lines[0]
