"""DPO after SFT: preference-tune the SFT adapter on chosen/rejected pairs with TRL's DPOTrainer.

    <project> data prefs --config configs/dpo.yaml     # pairs from the SFT model's own mistakes (pairs.py)
    <project> train --config configs/dpo.yaml          # train.stage: dpo, model.adapter: the SFT run

The same `train` recipe runs around it (run folder, MLflow run, checkpoints, registration); this module supplies
what differs from SFT: the data (preference pairs), the model (the SFT model, its adapter trainable) and the
trainer. There is no second base model for the reference: DPOTrainer copies the adapter into a frozen `ref`
adapter on the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..data.dataset import with_recorded_system_prompt
from ..model.device import Device, Precision
from ..model.load import LossMode, load_base_model, load_tokenizer
from ..train.sft import Recipe, Run, callbacks_for, trainer_arguments
from .pairs import load_preferences, resolve_sft_adapter

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import DPOConfig, DPOTrainer

    from ..registry import ModelSource
    from ..train.sft import TrainerCallbacks


def load_data(config: Config) -> tuple[Config, DatasetDict, ModelSource]:
    """The preference pairs of `dpo.data_path` and the SFT parent, resolved first (a missing adapter fails before
    anything loads), whose base model becomes model.base_model (a registered one brings its own)."""
    parent = resolve_sft_adapter(config.model.adapter or "")
    splits = load_preferences(config.dpo, seed=config.train.seed, system_prompt=config.task.system_prompt)
    config = with_recorded_system_prompt(config, [[*row["prompt"], *row["chosen"]] for row in splits["train"]])
    model_cfg = config.model.model_copy(update={"base_model": parent.base_model})
    return config.model_copy(update={"model": model_cfg}), splits, parent


def load_sft_policy(
    config: Config, splits: DatasetDict, *, device: Device, precision: Precision, parent: ModelSource
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]:
    """The SFT model DPO tunes: the base model once, with the parent's adapter loaded TRAINABLE (peft loads
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

    return DPOTrainer(
        model=run.model,
        ref_model=None,
        args=dpo_config(run.config, output_dir=run.run_dir, device=run.device, precision=run.precision),
        train_dataset=run.splits["train"],
        eval_dataset=run.splits["validation"],
        processing_class=run.tokenizer,
        callbacks=[*callbacks_for(run.config.train), *extra_callbacks],
    )


def dpo_config(config: Config, *, output_dir: Path, device: Device, precision: Precision) -> DPOConfig:
    """Our settings as TRL's DPOConfig: the `train` section's Trainer arguments plus the `dpo` section. Pairs have
    no `input_ids` to group by length."""
    from trl import DPOConfig

    return DPOConfig(
        **trainer_arguments(config, output_dir=output_dir, device=device, precision=precision, grouped=False),
        max_length=config.data.max_seq_length,  # prompt + answer, in tokens; longer pairs are cut
        beta=config.dpo.beta,
        loss_type=[config.dpo.loss_type],
    )


def trained_on(config: Config) -> str:
    """The data a DPO run trained on, for its train log and MLflow inputs: the pairs' folder."""
    return config.dpo.data_path


DPO = Recipe(
    name="dpo", load_data=load_data, load_model=load_sft_policy, build_trainer=build_dpo_trainer, data_path=trained_on
)
