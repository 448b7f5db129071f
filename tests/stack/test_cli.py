"""`dispatch stack up|status|down`, `dispatch demo` and the missing-binary message, as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatch_cli.main import app
from dispatch_core.policy import load_policy
from stack import LocalStack, MissingDependency
from stack.process import is_running, read_pid, require
from streams.topics import topic_specs

from ..support import local_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.stack
def test_stack_up_status_down(state_root: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings_cache: None) -> None:
    settings = local_settings(state_root / "cli")
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    local = LocalStack(settings)
    runner = CliRunner()
    try:
        up = runner.invoke(app, ["stack", "up"])
        assert up.exit_code == 0, up.output
        topics = len(topic_specs(settings, load_policy(settings.policy_file).executors()))
        assert up.output.count("started") == 3 and f"topics: {topics} created" in up.output
        assert settings.kafka_bootstrap in up.output and str(local.kafka.log_file) in up.output
        assert f"DISPATCH_SCHEMA_REGISTRY_URL={local.registry_url}" in up.output
        services = (local.kafka, local.redis, local.registry)
        pids = [read_pid(s.pid_file) for s in services]

        again = runner.invoke(app, ["stack", "up"])
        assert again.exit_code == 0, again.output
        assert again.output.count("reused") == 3 and "topics: all present" in again.output
        assert [read_pid(s.pid_file) for s in services] == pids

        status = runner.invoke(app, ["stack", "status"])
        assert status.exit_code == 0 and status.output.count("running") == 3, status.output
    finally:
        down = runner.invoke(app, ["stack", "down"])
    assert down.exit_code == 0, down.output
    assert not [pid for pid in pids if is_running(pid or 0)]
    stopped = runner.invoke(app, ["stack", "status"])
    assert stopped.exit_code == 1 and stopped.output.count("not running") == 3


def test_missing_binaries_are_named_with_their_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependency) as missing:
        require("redis-server", "java", "mvn")
    assert str(missing.value) == (
        "java, mvn, redis-server not found on PATH: "
        "install with `apt-get install -y default-jre-headless maven redis-server`"
    )


def test_stack_up_without_java_prints_one_line_and_fails(tmp_path: Path) -> None:
    """Run as a user would, with a PATH that has Maven and redis-server but no java."""
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("mvn", "redis-server"):
        found = shutil.which(tool)
        assert found, f"{tool} must be installed to run this test"
        (path / tool).symlink_to(found)
    env = {**local_settings(tmp_path / "state", cache_dir=tmp_path / "cache").as_env(), "PATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-m", "dispatch_cli.main", "stack", "up"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: java not found on PATH: install with `apt-get install -y default-jre-headless`"
    ]
