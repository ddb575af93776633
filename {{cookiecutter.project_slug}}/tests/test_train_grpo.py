"""GRPO after SFT: the reward is the task's own scorer, a config that cannot run is refused before any model loads,
and a short run tunes the SFT adapter into a registered candidate that names its parent.

The GRPO run uses an MLflow store of its own (the SFT parent is named by its run folder), so the session's
registry holds the same versions whatever order the test files run in."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.preference.grpo import answer_rewards, reward_function

CONFIGS = Path(__file__).parents[1] / "configs"
REFERENCE = '{"intent": "track", "order_id": "A1001", "product": "mug", "quantity": 1, "sentiment": "neutral", "urgency": "low"}'  # noqa: E501


def test_the_reward_is_the_tasks_own_score_of_the_answer(smoke_config):
    config = smoke_config("train.stage=grpo", "model.adapter=outputs/sft")
    half_right = '{"intent": "track", "order_id": "A1001", "product": "mug", "quantity": 3, "sentiment": "negative", "urgency": "high"}'  # noqa: E501
    answers = [REFERENCE, half_right, '{"intent": "cancel"}', '{"intent": "track", "order_id": ', "no JSON at all"]
    # half for a valid JSON object, half the share of the 6 fields right
    assert answer_rewards(answers, [REFERENCE] * 5, config=config) == [1.0, 0.75, 0.5, 0.0, 0.0]
    exact = smoke_config("train.stage=grpo", "model.adapter=outputs/sft", "grpo.reward=exact_match")
    assert answer_rewards([REFERENCE, half_right], [REFERENCE] * 2, config=exact) == [1.0, 0.0]
    # TRL calls it with chat completions and the dataset's `reference` column
    completions = [[{"role": "assistant", "content": text}] for text in (REFERENCE, "no JSON at all")]
    assert reward_function(config)(prompts=[[], []], completions=completions, reference=[REFERENCE] * 2) == [1.0, 0.0]


def test_shipped_grpo_config_is_a_grpo_stage_on_the_smoke_data():
    grpo, smoke = load_config(CONFIGS / "grpo.yaml"), load_config(CONFIGS / "smoke.yaml")
    assert (grpo.train.stage, grpo.grpo.num_generations, grpo.grpo.reward) == ("grpo", 4, None)
    assert grpo.model.adapter.endswith("@champion")  # never @candidate
    assert (grpo.task, grpo.data, grpo.eval) == (smoke.task, smoke.data, smoke.eval)  # compared on the same rows


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.adapter=null"], "train.stage=grpo needs model.adapter, the SFT adapter to start from"),
        (["task.kind=generic"], "grpo.reward=None: a generic task has no verifiable reward of its own"),
        (["task.kind=generic", "grpo.reward=fields"], "set grpo.reward=exact_match"),
        (["grpo.num_generations=1"], "grpo.num_generations"),
        (["grpo.num_generations=3"], "grpo.num_generations=3 must divide train.batch_size=16"),
        (["model.adapter=outputs/gone"], "model.adapter='outputs/gone': no SFT adapter there"),
    ],
)
def test_a_grpo_config_that_cannot_run_exits_2_before_any_model_loads(overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/ folder or model is written here
    result = CliRunner().invoke(app, ["train", "--config", str(CONFIGS / "grpo.yaml"), *overrides])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def grpo_run(smoke_run, smoke_config, tmp_path_factory):
    """A 2-step GRPO run on the session's SFT run: 2 prompts x 4 sampled answers a step, no evaluation."""
    from {{ cookiecutter.package_name }}.preference.grpo import GRPO
    from {{ cookiecutter.package_name }}.train.sft import train

    root = tmp_path_factory.mktemp("grpo")
    config = smoke_config(
        "train.stage=grpo",
        f"model.adapter={smoke_run}",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.eval_steps=2",
        "train.save_steps=2",
        "train.logging_steps=1",
        "train.learning_rate=1e-3",
        "grpo.eval_prompts=2",
        "grpo.max_completion_length=48",
        "tracking.enabled=true",
        root=root,
    )
    with pytest.MonkeyPatch.context() as store:
        store.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # a registry of its own
        yield {"config": config, "run_dir": train(config, config_name="grpo", recipe=GRPO)}


@pytest.mark.e2e
def test_grpo_tunes_the_sft_adapter_and_registers_it_with_its_parent(grpo_run, smoke_run):
    from {{ cookiecutter.package_name }}.tracking import client as tracking_client

    run_dir, config = grpo_run["run_dir"], grpo_run["config"]
    sft = load_file(smoke_run / "adapter" / "adapter_model.safetensors")
    tuned = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert sft.keys() == tuned.keys() and any(not torch.equal(sft[key], tuned[key]) for key in sft)
    saved = load_config(run_dir / "config.yaml")
    assert (saved.train.stage, saved.model.adapter) == ("grpo", str(smoke_run))

    tracked = json.loads((run_dir / "tracking.json").read_text())
    parent = json.loads((smoke_run / "tracking.json").read_text())
    client = tracking_client()
    run = client.get_run(tracked["run_id"]).data
    assert run.tags["stage"] == "grpo" and run.tags["parent.run_id"] == parent["run_id"]
    rewards = client.get_metric_history(tracked["run_id"], "reward")  # the mean reward of each step's answers
    assert [metric.step for metric in rewards] == [1, 2] and all(0 <= metric.value <= 1 for metric in rewards)
    assert "eval_reward" in run.metrics  # the validation prompts, sampled at the end
    version = client.get_model_version(config.project, tracked["model_version"])
    assert version.tags["stage"] == "grpo" and version.tags["parent.model_version"] == parent["model_version"]
    assert client.get_model_version_by_alias(config.project, "candidate").version == version.version
