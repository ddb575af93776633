"""Config loading: YAML + overrides, and every kind of bad input named by key, file and line."""

from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.config import Config, ConfigError, describe_keys, dump_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_overrides_then_defaults(tmp_path):
    path = write(tmp_path, "project: demo\ntrain:\n  max_steps: 7\n  learning_rate: 1.0e-3\n")
    config = load_config(path, ["train.max_steps=9", "lora.target_modules=[q_proj, v_proj]", "data.system_prompt=hi"])
    assert config.train.max_steps == 9  # the command line wins over the file
    assert config.train.learning_rate == 1e-3  # the file wins over the default
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.data.system_prompt == "hi"
    assert config.lora.r == Config.model_fields["lora"].default_factory().r


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "project: demo\ntrain:\n  seed: 1\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:4: train.lerning_rate: unknown key" in str(err.value)
    assert "did you mean 'learning_rate'?" in str(err.value)


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path, "project: demo\nlora:\n  r: many\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: lora.r: .*got 'many'.*expected int"):
        load_config(path)


def test_every_problem_reported_at_once(tmp_path):
    path = write(tmp_path, "project: demo\ntrain:\n  batch_size: 0\n  bogus: 1\nlora:\n  dropout: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["eval.max_new_tokens=lots"])
    message = str(err.value)
    assert message.startswith("invalid config (4 problems):")
    for fragment in (
        f"{path}:3: train.batch_size",
        f"{path}:4: train.bogus: unknown key",
        f"{path}:6: lora.dropout",
        "command line (eval.max_new_tokens=lots): eval.max_new_tokens",
    ):
        assert fragment in message


def test_missing_project_and_unknown_section(tmp_path):
    path = write(tmp_path, "trainer:\n  seed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "project: required key is missing" in str(err.value)
    assert f"{path}:1: trainer: unknown key" in str(err.value)
    assert "did you mean 'train'?" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("project: demo\ntrain: [1, 2\n", ":3: invalid YAML"),
        ("- just\n- a list\n", ":1: the config must be a mapping"),
    ],
)
def test_malformed_files(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text))


def test_missing_file_says_where_configs_are(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found.*configs/"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["train.max_steps", "=3", "project.name=x"])
def test_bad_override_syntax(tmp_path, override):
    path = write(tmp_path, "project: demo\n")
    with pytest.raises(ConfigError, match="command line"):
        load_config(path, [override])


def test_qlora_on_cpu_rejected(tmp_path):
    path = write(tmp_path, "project: demo\nmodel:\n  load_in_4bit: true\ntrain:\n  device: cpu\n")
    with pytest.raises(ConfigError, match="load_in_4bit needs CUDA"):
        load_config(path)


def test_dump_round_trips(tmp_path):
    config = load_config(write(tmp_path, "project: demo\nlora:\n  r: 4\n"), ["train.seed=3"])
    dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["train"]["seed"] == 3


def test_every_key_is_documented():
    rows = describe_keys()
    assert len(rows) > 40
    undocumented = [key for key, _, text in rows if not text]
    assert undocumented == []
