"""What every command prints: project errors as one line, exit 1."""

from typer.testing import CliRunner

from dispatch_cli.main import app

runner = CliRunner()


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, fresh_settings_cache):
    monkeypatch.setenv("DISPATCH_TASK_PARTITIONS", "three")
    res = runner.invoke(app, ["topics", "list"])
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "error: DISPATCH_TASK_PARTITIONS='three': Input should be a valid integer, unable to parse string as an integer"]
