"""`dispatch policy` and `dispatch rollout` as a user runs them."""

import asyncio
import io
import json
from pathlib import Path

import pytest
import redis
import yaml
from rich.console import Console
from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_cli.policy import rollout_table
from dispatch_core.policy import DEFAULT_POLICY_PATH, load_policy
from dispatch_core.rollout import Canary, Rollout, ServiceRollout
from dispatch_core.settings import get_settings
from streams.topics import topic_configs

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_output(command: str) -> list[str]:
    """The lines README.md shows as the output of ``$ command`` in a console block."""
    text, head = README.read_text(), f"```console\n$ {command}\n"
    start = text.index(head) + len(head)
    return text[start:text.index("```", start)].splitlines()


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


def test_the_readme_shows_exactly_what_policy_validate_prints(tmp_path, monkeypatch):
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["classes"]["llm"]["thresholds"][1]["tier"] = "huge"  # the README's example
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["policy", "validate", "my.yaml"])
    assert res.exit_code == 1
    assert res.output.splitlines() == readme_output("dispatch policy validate my.yaml")


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


@pytest.fixture
def no_redis(tmp_path, monkeypatch, fresh_settings_cache):
    """The CLI pointed at a Redis socket that does not exist: any command that touches Redis says so."""
    monkeypatch.setenv("DISPATCH_REDIS_URL", f"unix://{tmp_path}/no-redis.sock")


@pytest.mark.parametrize(("args", "line"), [
    (["--percent", "150"], "error: --percent must be a percentage from 0 to 100, not 150.0"),
    (["--canary", "3e83d4ba", "--percent", "-5"], "error: --percent must be a percentage from 0 to 100, not -5.0"),
    (["--canary", "g" * 64], f"error: --canary must be 8 to 64 hex digits of a published policy version, not '{'g' * 64}'"),
    (["--version", "3e83d4b"], "error: --version must be 8 to 64 hex digits of a published policy version, not '3e83d4b'"),
    (["--version", "3e83d4b*"], "error: --version must be 8 to 64 hex digits of a published policy version, not '3e83d4b*'"),
    (["--mode", "loud"], "error: --mode must be off, shadow or enforce, not 'loud'"),
])
def test_rollout_set_refuses_a_bad_option_in_one_line_before_touching_redis(no_redis, args, line):
    res = runner.invoke(app, ["rollout", "set", "svc", *args])
    assert res.exit_code == 1
    assert res.output.splitlines() == [line]  # no traceback, and no "Redis unavailable": Redis was never asked


def test_rollout_set_with_valid_options_does_reach_redis(no_redis):
    """The control for the test above; also: an unreachable Redis while resolving a prefix is one line."""
    res = runner.invoke(app, ["rollout", "set", "svc", "--version", "3e83d4ba", "--canary", "9f1c2d7e", "--percent", "10"])
    assert res.exit_code == 1
    assert len(res.output.splitlines()) == 1 and res.output.startswith("error: Redis unavailable")


def test_rollout_show_shortens_versions_only_and_keeps_words_whole():
    stable, canary = "3e83d4ba" + "0" * 56, "9f1c2d7e" + "1" * 56
    rollout = Rollout(services={
        "tarotscript": ServiceRollout(mode="shadow"),
        "llm-gateway": ServiceRollout(version=stable, canary=Canary(version=canary, percent=12.5)),
    })
    out = io.StringIO()
    Console(file=out, width=120).print(rollout_table(rollout))
    rows = {line.split()[1]: line for line in out.getvalue().splitlines() if line.startswith("│")}
    assert "worker default" in rows["(default)"] and "worker default" in rows["tarotscript"]
    assert f"{stable[:12]} " in rows["llm-gateway"] and stable not in out.getvalue()
    assert f"{canary[:12]} @ 12.5%" in rows["llm-gateway"]
