"""DPO after SFT: preference-tune the SFT adapter on chosen/rejected pairs with TRL's DPOTrainer.

    <project> data prefs --config configs/dpo.yaml     # pairs from the SFT model's own mistakes (pairs.py)
    <project> train --config configs/dpo.yaml          # train.stage: dpo, model.adapter: the SFT run

The same `train` recipe runs around it (run folder, MLflow run, checkpoints, registration); this module supplies
what differs from SFT: the data (preference pairs), the model (the SFT model, its adapter trainable) and the
trainer. There is no second base model for the reference: DPOTrainer copies the adapter into a frozen `ref`
adapter on the same weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..data.dataset import with_recorded_system_prompt
from ..model.device import Device, Precision
from ..model.load import LossMode, load_base_model, load_tokenizer
from ..train.lm_head import answer_tokens_only
from ..train.sft import Recipe, Run, callbacks_for, trainer_arguments
from .pairs import check_pairs_fit, load_preferences, resolve_sft_adapter

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from ..registry import ModelSource
    from ..train.sft import TrainerCallbacks

log = logging.getLogger(__name__)
CHOSEN_LOGPS = "logps/chosen"  # TRL's mean log-probability of the chosen answers, per logging window


def load_data(config: Config) -> tuple[Config, DatasetDict, ModelSource]:
    """The preference pairs of `dpo.data_path` and the SFT parent, resolved first (a missing adapter fails before
    anything loads), whose base model becomes model.base_model (a registered one brings its own)."""
    parent = resolve_sft_adapter(config.model.adapter or "")
    check_pairs_fit(config, parent=parent)
    splits = load_preferences(config.dpo, seed=config.train.seed, system_prompt=config.task.system_prompt)
    config = with_recorded_system_prompt(config, [[*row["prompt"], *row["chosen"]] for row in splits["train"]])
    return on_parent_base(config, parent), splits, parent


def on_parent_base(config: Config, parent: ModelSource) -> Config:
    """`config` with model.base_model set to the SFT parent's base: the adapter only fits the weights it trained on."""
    return config.model_copy(update={"model": config.model.model_copy(update={"base_model": parent.base_model})})


def load_sft_policy(
    config: Config, splits: DatasetDict, *, device: Device, precision: Precision, parent: ModelSource
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]:
    """The SFT model DPO (and GRPO) tunes: the base model once, with the parent's adapter loaded TRAINABLE (peft loads
    adapters frozen by default) and the parent's tokenizer (its chat template). TRL's max_length cuts long pairs."""
    from peft import PeftModel

    tokenizer = load_tokenizer(parent.tokenizer_dir)
    base = load_base_model(config.model, device=device, training=True, precision=precision)
    model = PeftModel.from_pretrained(base, str(parent.adapter_dir), is_trainable=True)
    return model, tokenizer, "completion_only"  # DPO scores the answers' tokens only


def build_dpo_trainer(run: Run, *, extra_callbacks: TrainerCallbacks = ()) -> DPOTrainer:
    """A DPOTrainer on the SFT PeftModel, `ref_model=None`: the reference log-probabilities come from the same
    base weights under a frozen copy of the SFT adapter (TRL's `ref` adapter), so memory holds one base model."""
    from trl import DPOTrainer

    trainer = DPOTrainer(
        model=run.model,
        ref_model=None,
        args=dpo_config(run.config, output_dir=run.run_dir, device=run.device, precision=run.precision),
        train_dataset=run.splits["train"],
        eval_dataset=run.splits["validation"],
        processing_class=run.tokenizer,
        callbacks=[*callbacks_for(run.config.train), chosen_likelihood_watch(), *extra_callbacks],
    )
    if run.device == "cpu":  # TRL's fused head scores every position there, prompt and padding too (lm_head.py)
        answer_tokens_only(trainer.model.get_base_model())
    return trainer


def chosen_likelihood_watch() -> TrainerCallback:
    """A callback that warns when training ends if the chosen answers became less likely (chosen_logps_fell)."""
    from transformers import TrainerCallback

    class ChosenLikelihoodWatch(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            warning = chosen_logps_fell(state.log_history)
            if warning and state.is_world_process_zero:
                log.warning(warning)

    return ChosenLikelihoodWatch()


def chosen_logps_fell(log_history: list[dict[str, Any]]) -> str | None:
    """A warning when the chosen answers' mean log-probability (TRL logs it; train_log.json and MLflow keep it)
    ended lower than it started: DPO on pairs that differ in a token or two can push the right answer down with
    the wrong one, which is how it lowered field accuracy on a real model. None when it held or rose."""
    values = [entry[CHOSEN_LOGPS] for entry in log_history if CHOSEN_LOGPS in entry]
    if len(values) < 2 or values[-1] >= values[0]:
        return None
    return (
        f"the chosen answers' log-probability fell during DPO ({values[0]:.3f} at the first logged step, "
        f"{values[-1]:.3f} at the last): the right answers became less likely too, which lowers accuracy. "
        "Evaluate before trusting this run; dpo.loss_type: [sigmoid, sft] (an SFT term on the chosen answers) or "
        "a lower train.learning_rate keeps them likely"
    )


def dpo_config(config: Config, *, output_dir: Path, device: Device, precision: Precision) -> DPOConfig:
    """Our settings as TRL's DPOConfig: the `train` section's Trainer arguments plus the `dpo` section. Pairs have
    no `input_ids` to group by length."""
    from trl import DPOConfig

    return DPOConfig(
        **trainer_arguments(config, output_dir=output_dir, device=device, precision=precision, grouped=False),
        max_length=config.data.max_seq_length,  # prompt + answer, in tokens; longer pairs are cut
        beta=config.dpo.beta,
        loss_type=config.dpo.loss_type if isinstance(config.dpo.loss_type, list) else [config.dpo.loss_type],
        loss_weights=config.dpo.loss_weights,
    )


def trained_on(config: Config) -> str:
    """The data a DPO run trained on, for its train log and MLflow inputs: the pairs' folder."""
    return config.dpo.data_path


DPO = Recipe(
    name="dpo", load_data=load_data, load_model=load_sft_policy, build_trainer=build_dpo_trainer, data_path=trained_on
)
