"""What every command prints: plain unwrapped text when not on a terminal; project errors as one line."""

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_core.policy import DEFAULT_POLICY_PATH, load_policy

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def dispatch_piped(*args: str, **env: str) -> str:
    """Run the real command with stdout a pipe (as in CI or `| grep`), in a CI-like environment
    that asks for colour and 40 columns; return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "dispatch_cli.main", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "40", **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_piped_output_is_plain_and_never_wraps_a_version():
    out = dispatch_piped("policy", "validate", str(DEFAULT_POLICY_PATH))
    version = load_policy().version
    assert f"valid policy 'default', version {version}" in out.splitlines()
    assert "\x1b" not in out  # no colour or control codes
    assert any(line.split("│")[1:3] == [" llm    ", " small < medium < large  "] for line in out.splitlines())


def test_piped_tables_keep_long_topic_names_on_one_line():
    prefix = "dispatch.team-with-a-rather-long-name.executor-topics."
    out = dispatch_piped("topics", "list", DISPATCH_TOPIC_EXECUTOR_PREFIX=prefix)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows[prefix + "script-standard"] == ["3", "tasks", "routed", "to", "script-standard"]
    assert "\x1b" not in out


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, fresh_settings_cache):
    monkeypatch.setenv("DISPATCH_TASK_PARTITIONS", "three")
    res = runner.invoke(app, ["topics", "list"])
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "error: DISPATCH_TASK_PARTITIONS='three': Input should be a valid integer, unable to parse string as an integer"]
