"""The command-line interface: help, config commands and clean failures."""

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app

runner = CliRunner()


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("config",):
        assert command in result.output


def test_config_show_applies_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("project: demo\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config), "lora.r=4"])
    assert result.exit_code == 0, result.output
    assert "  r: 4\n" in result.output
    assert "project: demo\n" in result.output


def test_bad_config_exits_2_with_message_and_no_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("project: demo\nlora:\n  rank: 4\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:3: lora.rank: unknown key" in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_runs_the_same_app():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "config" in result.stdout
