"""Config loading: YAML + overrides, and every kind of bad input named by key, file and line."""

from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.config import Config, ConfigError, describe_keys, dump_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    if text.startswith("project:") and "\nmodel:" not in text:  # every config names its base model
        text += "model:\n  base_model: org/model\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_overrides_then_defaults(tmp_path):
    path = write(tmp_path, "project: demo\ntrain:\n  max_steps: 7\n  learning_rate: 1.0e-3\n")
    config = load_config(path, ["train.max_steps=9", "lora.target_modules=[q_proj, v_proj]", "task.system_prompt=hi"])
    assert config.train.max_steps == 9  # the command line wins over the file
    assert config.train.learning_rate == 1e-3  # the file wins over the default
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.task.system_prompt == "hi"
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
    text = "project: demo\nmodel:\n  base_model: org/model\n  load_in_4bit: true\ntrain:\n  device: cpu\n"
    path = write(tmp_path, text)
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


def test_moved_keys_are_refused_with_their_new_name(tmp_path):
    from typer.testing import CliRunner

    from {{ cookiecutter.package_name }}.cli import app

    path = write(tmp_path, "project: demo\ndata:\n  path: data/x\n  task: generic\n  system_prompt: Be brief.\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).splitlines()[1:] == [
        f"  {path}:4: data.task moved to task.kind (the `task` section)",
        f"  {path}:5: data.system_prompt moved to task.system_prompt (the `task` section)",
    ]
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 2 and "data.task moved to task.kind" in result.output
    with pytest.raises(ConfigError, match=r"command line \(data.task=generic\): data.task moved to task.kind"):
        load_config(write(tmp_path, "project: demo\n"), ["data.task=generic"])


def test_task_defaults_are_neutral_not_the_shop_example(tmp_path):
    config = load_config(write(tmp_path, "project: ticket-triage\n"))
    assert config.task.model_dump() == {
        "name": "ticket-triage",  # the project's name until one is given
        "description": "",
        "kind": "extraction",
        "fields": [],
        "system_prompt": None,
    }
    config = load_config(write(tmp_path, "project: demo\ntask:\n  name: Ticket triage\n  fields: [category, x]\n"))
    assert (config.task.name, config.task.fields) == ("Ticket triage", ["category", "x"])


def test_shipped_configs_state_the_example_task():
    configs = Path(__file__).parents[1] / "configs"
    for name in ("smoke", "default", "gpu"):
        task = load_config(configs / f"{name}.yaml").task
        assert task.name == "Shop order extraction" and task.description.startswith("Reads a short customer message")
        assert (task.kind, task.system_prompt) == ("extraction", None)
        assert task.fields == ["intent", "order_id", "product", "quantity", "sentiment", "urgency"]


@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_seed_outside_numpys_range_is_refused_by_name(tmp_path, seed):
    # numpy seeds are 0 .. 2**32-1; anything else used to fail deep inside the Trainer with a ValueError.
    with pytest.raises(ConfigError, match=rf"train.seed: Input should be .* (0|4294967295) \(got {seed}\)"):
        load_config(write(tmp_path, "project: demo\n"), [f"train.seed={seed}"])
    assert load_config(write(tmp_path, "project: demo\n"), ["train.seed=4294967295"]).train.seed == 2**32 - 1


@pytest.mark.parametrize("run_name", ["../../../x", "a/b", "..", ".", "a\\b"])
def test_run_name_that_leaves_the_output_folder_is_refused(tmp_path, run_name):
    with pytest.raises(ConfigError, match=r"train.run_name: .*must be a plain folder name under train.output_dir"):
        load_config(write(tmp_path, "project: demo\n"), [f"train.run_name={run_name}"])
    assert load_config(write(tmp_path, "project: demo\n"), ["train.run_name=a..b"]).train.run_name == "a..b"


def test_base_model_has_no_hidden_default(tmp_path):
    """The package's code is copied as is into every project: a default base model there would ignore the one
    chosen when the project was made. Each config names it (configs/default.yaml: the chosen one)."""
    path = tmp_path / "mine.yaml"
    path.write_text("project: x\nmodel:\n  dtype: auto\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mine\.yaml:2: model\.base_model: required key is missing"):
        load_config(path)
    default = yaml.safe_load((Path(__file__).parents[1] / "configs" / "default.yaml").read_text(encoding="utf-8"))
    assert default["model"]["base_model"] == "{{ cookiecutter.base_model }}"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("train:\n  learning_rate: .inf\n", 3, "train.learning_rate"),  # 3 steps of it saved an adapter of NaNs
        ("report:\n  hourly_cost_usd: .nan\n", 3, "report.hourly_cost_usd"),
        ("eval:\n  judge:\n    timeout_s: .inf\n", 4, "eval.judge.timeout_s"),
    ],
)
def test_non_finite_numbers_are_refused_in_every_section(tmp_path, text, line, key):
    path = write(tmp_path, f"project: demo\n{text}")
    with pytest.raises(ConfigError, match=rf"{path}:{line}: {key}: Input should be a finite number"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"command line \({key}=-inf\): {key}: Input should be a finite number"):
        load_config(write(tmp_path, "project: demo\n"), [f"{key}=-inf"])


@pytest.mark.parametrize(
    ("key", "absurd", "limit"),
    [("lora.r", "1000000000", "1024"), ("train.learning_rate", "10.0", "1")],  # lora.r=1e9 asked for 256 GB
)
def test_absurd_values_are_refused_with_file_and_line(tmp_path, key, absurd, limit):
    from typer.testing import CliRunner

    from {{ cookiecutter.package_name }}.cli import app

    section, name = key.split(".")
    path = write(tmp_path, f"project: demo\n{section}:\n  {name}: {absurd}\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: {key}: Input should be less than or equal to {limit}"):
        load_config(path)
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 2 and f"{key}: Input should be less than or equal to {limit}" in result.output
    assert "Traceback" not in result.output
    section_cfg = getattr(load_config(write(tmp_path, "project: demo\n"), [f"{key}={limit}"]), section)
    assert getattr(section_cfg, name) == float(limit)  # the limit itself is allowed


def test_yaml_alias_bomb_is_refused_at_once_in_a_short_message(tmp_path):
    import time

    # Nine levels of nine aliases each: 4 KB of text that expands to 9**9 (387 million) items.
    levels = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = write(tmp_path, "project: demo\nmodel:\n  base_model: org/model\n" + "\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.monotonic() - started < 2
    message = str(err.value)
    assert message.startswith(f"{path}:5: YAML aliases (*a0) are not accepted in a config") and len(message) < 300
    with pytest.raises(ConfigError, match=r"command line \(lora.target_modules=.*\): YAML aliases"):
        load_config(write(tmp_path, "project: demo\n"), ["lora.target_modules=[&x q_proj, *x]"])
    # A value that merely starts with `*` (no anchor to refer to) stays text, as before.
    assert load_config(write(tmp_path, "project: demo\n"), ["model.revision=*main"]).model.revision == "*main"
