"""`dispatch topics list|create` with a policy file that cannot be used."""

import pytest
from typer.testing import CliRunner

from dispatch_cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["list", "create"])
def test_an_invalid_policy_file_is_an_error_not_a_traceback(command, tmp_path, monkeypatch, fresh_settings_cache):
    bad = tmp_path / "policy.json"
    bad.write_text('{"name": "x"}')
    monkeypatch.setenv("DISPATCH_POLICY_FILE", str(bad))
    res = runner.invoke(app, ["topics", command])
    assert res.exit_code == 1
    assert res.output.splitlines() == [f"error: {bad} is invalid:", "  classes: Field required"]
