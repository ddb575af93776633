"""Every config in configs/ loads and validates; the three shipped ones keep their roles and start with the
command that runs them.

Your own configs (a copy of default.yaml, one written by `task init`) are checked too: each must load, so
a broken one fails here, naming its file. Nothing asserts the exact list of files: adding a config is
what the FAQ tells you to do, and it must not break CI.
"""

import re
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import ConfigError, load_config

CONFIG_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SHIPPED = ["default.yaml", "gpu.yaml", "smoke.yaml"]


def shipped(name: str, overrides: list[str] | None = None):
    return load_config(CONFIG_DIR / name, overrides or [])


def test_the_three_shipped_configs_are_there():
    assert [name for name in SHIPPED if not (CONFIG_DIR / name).is_file()] == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_config_loads(path):
    try:
        load_config(path)
    except ConfigError as err:
        problem = str(err)
    else:
        return
    pytest.fail(f"configs/{path.name} does not load:\n{problem}", pytrace=False)


def test_an_invalid_config_fails_naming_its_file(tmp_path):
    broken = tmp_path / "tickets.yaml"
    broken.write_text((CONFIG_DIR / "default.yaml").read_text(encoding="utf-8") + "\nfavourite_colour: blue\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(broken))}:\d+: favourite_colour"):
        load_config(broken)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_is_this_project_and_names_its_command(name):
    assert shipped(name).project == "{{ cookiecutter.project_slug }}"
    first_line = (CONFIG_DIR / name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# {{ cookiecutter.project_slug }} ")
    assert f"train --config configs/{name}" in first_line


def test_smoke_is_offline_and_small():
    config = shipped("smoke.yaml")
    assert config.model.build_tiny and config.train.device == "cpu"
    assert 0 < config.train.max_steps <= 100 and config.eval.max_samples


def test_default_fine_tunes_the_chosen_base_model():
    assert shipped("default.yaml").model.base_model == "{{ cookiecutter.base_model }}"


def test_gpu_targets_cuda_and_qlora_is_one_override_away():
    config = shipped("gpu.yaml", ["model.load_in_4bit=true"])
    assert config.train.device == "cuda" and config.model.load_in_4bit


def test_early_stopping_needs_checkpoints_on_evaluation_steps():
    with pytest.raises(ConfigError, match=r"save_steps \(25\) to be a multiple of train.eval_steps \(10\)"):
        shipped("default.yaml", ["train.early_stopping_patience=2", "train.eval_steps=10", "train.save_steps=25"])
