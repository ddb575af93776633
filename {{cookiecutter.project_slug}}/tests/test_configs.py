"""Every shipped config loads, validates, and starts with the command that runs it."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_the_three_configs_are_shipped():
    assert [path.name for path in CONFIGS] == ["default.yaml", "gpu.yaml", "smoke.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_loads_and_names_its_command(path):
    config = load_config(path)
    assert config.project == "{{ cookiecutter.project_slug }}"
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# {{ cookiecutter.project_slug }} ")
    assert f"train --config configs/{path.name}" in first_line


def test_smoke_is_offline_and_small():
    config = load_config(CONFIGS[-1])
    assert config.model.build_tiny and config.train.device == "cpu"
    assert 0 < config.train.max_steps <= 100 and config.eval.max_samples


def test_default_fine_tunes_the_chosen_base_model():
    assert load_config(CONFIGS[0]).model.base_model == "{{ cookiecutter.base_model }}"


def test_gpu_targets_cuda_and_qlora_is_one_override_away():
    config = load_config(CONFIGS[1], ["model.load_in_4bit=true"])
    assert config.train.device == "cuda" and config.model.load_in_4bit


def test_early_stopping_needs_checkpoints_on_evaluation_steps(tmp_path):
    with pytest.raises(ConfigError, match=r"save_steps \(25\) to be a multiple of train.eval_steps \(10\)"):
        load_config(CONFIGS[0], ["train.early_stopping_patience=2", "train.eval_steps=10", "train.save_steps=25"])
