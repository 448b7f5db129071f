"""`dispatch policy` and `dispatch rollout` as a user runs them."""

import json

import asyncio

import pytest
import redis
from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_core.policy import DEFAULT_POLICY_PATH, load_policy
from dispatch_core.settings import get_settings
from streams.topics import topic_configs

runner = CliRunner()


def test_validate_and_hash_a_policy_file():
    ok = runner.invoke(app, ["policy", "validate", str(DEFAULT_POLICY_PATH)])
    assert ok.exit_code == 0 and load_policy().version in ok.output and "small < medium < large" in ok.output
    h = runner.invoke(app, ["policy", "hash", str(DEFAULT_POLICY_PATH)])
    assert h.exit_code == 0 and h.output.strip() == load_policy().version


def test_an_invalid_policy_names_the_field_and_exits_1(tmp_path):
    data = json.loads(load_policy().canonical_json())
    data["classes"]["script"]["thresholds"][0]["tier"] = "turbo"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert "classes.script" in result.output and "unknown tier 'turbo'" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def redis_env(redis_client, stack, monkeypatch, fresh_settings_cache):
    """The CLI pointed at the test stack, and a plain (sync) client on its flushed Redis DB."""
    for key, value in stack.as_env().items():
        monkeypatch.setenv(key, value)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


def test_publish_pin_canary_and_roll_back(redis_env, tmp_path):
    data = json.loads(load_policy().canonical_json())
    data["name"] = "cheaper"
    data["classes"]["llm"]["tiers"][2]["unit_price"] = "0.0100"
    data["classes"]["llm"]["tiers"][2]["executor"] = f"llm-large-{tmp_path.name[-6:]}"  # a new executor
    new = tmp_path / "new.json"
    new.write_text(json.dumps(data))
    stable, canary = load_policy().version, load_policy(new).version
    for f in (DEFAULT_POLICY_PATH, new):
        published = runner.invoke(app, ["policy", "publish", str(f)])
        assert published.exit_code == 0, published.output
    # publishing made the new executor routable: its topic exists on the broker
    topic = get_settings().executor_topic(data["classes"]["llm"]["tiers"][2]["executor"])
    assert asyncio.run(topic_configs(get_settings(), [topic]))[topic]["cleanup.policy"] == "delete"
    res = runner.invoke(app, ["rollout", "set", "llm-gateway", "--version", stable[:10], "--canary", canary[:10],
                              "--percent", "20"])
    assert res.exit_code == 0, res.output
    stored = json.loads(redis_env.get("dc:rollout"))
    assert stored["services"]["llm-gateway"] == {"mode": "enforce", "version": stable,
                                                 "canary": {"version": canary, "percent": 20.0}}
    assert runner.invoke(app, ["rollout", "set", "llm-gateway", "--version", stable[:10]]).exit_code == 0
    assert json.loads(redis_env.get("dc:rollout"))["services"]["llm-gateway"]["canary"] is None
    shown = runner.invoke(app, ["rollout", "show"])
    assert "llm-gateway" in shown.output and stable[:12] in shown.output


def test_pinning_an_unpublished_version_is_refused(redis_env):
    res = runner.invoke(app, ["rollout", "set", "svc", "--version", "ab" * 32])
    assert res.exit_code == 1 and "not published" in res.output
    assert redis_env.get("dc:rollout") is None
    res = runner.invoke(app, ["rollout", "set", "svc", "--mode", "loud"])
    assert res.exit_code == 1 and "--mode must be" in res.output
