"""From a model source (adapter or run folder, `latest`, MLflow URI) to a merged model ready to generate.

    loaded = load_for_serving(settings)              # base + adapter, LoRA merged, eval mode

The source is resolved by registry.resolve_model_source, the one resolver of every command, so the CLI (which
checks it before starting the server) and the server agree on what is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, ModelConfig, load_config
from ..model.device import Device, resolve_device
from ..model.load import load_finetuned, load_tokenizer
from ..registry import ModelSource, resolve_model_source
from .int8 import use_int8_decoding

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    """The base model with the LoRA update merged in, in eval mode."""
    tokenizer: PreTrainedTokenizerBase
    """The adapter's tokenizer: the chat template training used, left padding for batches."""
    device: Device
    name: str
    version: str
    base_model: str
    system_prompt: str | None
    """Put first when a request has no system message: LLM_SYSTEM_PROMPT, else the run config's
    task.system_prompt (the one training used), else none."""


def load_for_serving(settings: Settings) -> LoadedModel:
    """Base model + adapter from `settings.model`, merged (no LoRA cost per token), in eval mode."""
    source = resolve_model_source(settings.model, output_dir=settings.output_dir)
    config = training_config(source, fallback=settings.config)
    # Loading options (revision, dtype, trust_remote_code) from the config, the base model from the source
    # (the one the adapter fits), and never 4-bit: merging LoRA into quantized weights would lose the update.
    model_cfg = config.model if config else ModelConfig(base_model=source.base_model)
    model_cfg = model_cfg.model_copy(update={"base_model": source.base_model, "load_in_4bit": False})
    device = resolve_device(settings.device)
    log.info("loading %s on %s (base model %s)", source.adapter_dir, device, model_cfg.base_model)
    model = load_finetuned(model_cfg, adapter_dir=source.adapter_dir, device=device).merge_and_unload().eval()
    if settings.int8_decode:
        log.info("int8 decoding: %d linear layers", use_int8_decoding(model))
    tokenizer = load_tokenizer(source.tokenizer_dir)
    tokenizer.padding_side = "left"  # every prompt of a batch then ends where generation starts
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        name=served_model_name(override=settings.served_model_name, config=config, source=source),
        version=source.version or source.name,
        base_model=model_cfg.base_model,
        # The prompt training used (train records it in the run's config), so a plain user message gets the
        # same prompt tokens as in evaluation; never another task's prompt.
        system_prompt=settings.system_prompt or (config.task.system_prompt if config else None),
    )


def served_model_name(*, override: str | None, config: Config | None, source: ModelSource) -> str:
    """The id /v1/models lists and clients put in `model`: LLM_SERVED_MODEL_NAME, else the project of the
    config that trained the model, else the run's name. distributed/vllm.py gives vLLM the same id."""
    return override or (config.project if config else source.name)


def training_config(source: ModelSource, *, fallback: Path | None) -> Config | None:
    """The config that trained the model: config.yaml beside a local adapter, or the one logged to the
    model's MLflow run; else `fallback`; else none."""
    logged = source.config_path()
    if logged is not None:
        return load_config(logged)
    return load_config(fallback) if fallback else None
