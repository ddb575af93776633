"""GRPO after SFT: reinforcement learning of the SFT adapter with a verifiable reward, TRL's GRPOTrainer.

    <project> train --config configs/grpo.yaml     # train.stage: grpo, model.adapter: the SFT run (or `make grpo`)

For each training prompt the model samples `grpo.num_generations` answers; the task's own scorer (tasks/, the one
`evaluate` uses) rewards each against the prompt's reference answer, 0 to 1; an answer's advantage is its reward
minus its group's mean, and the loss makes the answers above the mean likelier. No pairs and no learned reward
model: the reward is checked, not judged. The same `train` recipe runs around it (run folder, MLflow run,
checkpoints, registration); this module supplies the data (prompts with their references), the model (the SFT
adapter, trainable, as for DPO) and the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..data.dataset import load_splits, with_recorded_system_prompt
from ..model.device import Device, Precision
from ..tasks.kinds import task_kind
from ..train.sft import Recipe, Run, callbacks_for, trainer_arguments
from .dpo import load_sft_policy, on_parent_base
from .pairs import resolve_sft_adapter

if TYPE_CHECKING:
    from datasets import DatasetDict
    from trl import GRPOConfig, GRPOTrainer

    from ..registry import ModelSource
    from ..train.sft import TrainerCallbacks

RewardFunction = Callable[..., list[float]]


def load_data(config: Config) -> tuple[Config, DatasetDict, ModelSource]:
    """The SFT data's training prompts and the first `grpo.eval_prompts` validation ones, each with its reference
    answer, and the SFT parent (resolved first: a missing adapter fails before anything loads). The test split stays
    for `evaluate`."""
    parent = resolve_sft_adapter(config.model.adapter or "")
    splits = load_splits(config.data, system_prompt=config.task.system_prompt)
    config = with_recorded_system_prompt(config, splits["train"]["messages"])
    validation = splits["validation"].select(range(min(config.grpo.eval_prompts, len(splits["validation"]))))
    prompts = {
        name: rows.map(
            lambda row: {"prompt": row["messages"][:-1], "reference": row["messages"][-1]["content"]},
            remove_columns=["messages"],
        )
        for name, rows in (("train", splits["train"]), ("validation", validation))
    }
    return on_parent_base(config, parent), type(splits)(prompts), parent


def answer_rewards(answers: list[str], references: list[str], *, config: Config) -> list[float]:
    """Each answer's reward, 0 to 1, from the task's own row scores (`grpo.reward`): `fields`, half for a valid JSON
    object and half the share of fields right; `exact_match`, 1 for the reference answer and 0 otherwise."""
    scores = task_kind(config.task).row_scores(answers, references)
    if (config.grpo.reward or "fields") == "exact_match":
        return scores["exact_match"]
    valid, share = scores["json_valid_rate"], scores["field_accuracy"]
    return [(is_json + right) / 2 for is_json, right in zip(valid, share, strict=True)]


def reward_function(config: Config) -> RewardFunction:
    """`answer_rewards` in TRL's form: called with the sampled completions (chat messages) and the dataset's
    `reference` column; logged as `rewards/task_reward/mean` beside the total `reward`."""

    def task_reward(completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        answers = [text if isinstance(text, str) else text[-1]["content"] for text in completions]
        return answer_rewards(answers, reference, config=config)

    return task_reward


def build_grpo_trainer(run: Run, *, extra_callbacks: TrainerCallbacks = ()) -> GRPOTrainer:
    """A GRPOTrainer on the SFT PeftModel. With grpo.beta > 0 TRL copies the adapter into a frozen `ref` adapter
    for the KL term (one base model in memory, as in DPO); at 0 there is no reference pass."""
    from trl import GRPOTrainer

    return GRPOTrainer(
        model=run.model,
        reward_funcs=reward_function(run.config),
        args=grpo_config(run.config, output_dir=run.run_dir, device=run.device, precision=run.precision),
        train_dataset=run.splits["train"],
        eval_dataset=run.splits["validation"],
        processing_class=run.tokenizer,
        callbacks=[*callbacks_for(run.config.train), *extra_callbacks],
    )


def grpo_config(config: Config, *, output_dir: Path, device: Device, precision: Precision) -> GRPOConfig:
    """Our settings as TRL's GRPOConfig: the `train` section's Trainer arguments (train.batch_size counts sampled
    answers, each prompt's group whole) plus the `grpo` section."""
    from trl import GRPOConfig

    grpo = config.grpo
    return GRPOConfig(
        **trainer_arguments(config, output_dir=output_dir, device=device, precision=precision, grouped=False),
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
    )


GRPO = Recipe(name="grpo", load_data=load_data, load_model=load_sft_policy, build_trainer=build_grpo_trainer)
