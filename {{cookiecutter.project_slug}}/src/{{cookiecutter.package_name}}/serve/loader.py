"""From a model source (adapter folder, `latest`, MLflow URI) to a merged model ready to generate.

    source = resolve_model_source("latest")          # -> ModelSource(adapter_dir=outputs/<run>/adapter, ...)
    loaded = load_for_serving(settings)              # base + adapter, LoRA merged, eval mode

The source is resolved in exactly one place, `resolve_model_source`, so the CLI (which checks it before
starting the server) and the server agree on what is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, ModelConfig, load_config
from ..model.device import Device, resolve_device
from ..model.load import ModelError, check_adapter_dir, load_finetuned, load_tokenizer, newest_adapter
from ..registry import ModelSource, fetch_model, is_model_uri
from ..runs import run_config_path
from ..tracking import TrackingError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .settings import Settings

log = logging.getLogger(__name__)


class ModelSourceError(ModelError):
    """The model to serve cannot be found; the message names the source and what to pass instead."""


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


def resolve_model_source(source: str, *, output_dir: str | Path = "outputs") -> ModelSource:
    """What to serve, in local folders: `source` is an MLflow model URI (models:/<name>@champion,
    models:/<name>/<version>, runs:/<id>/model), an adapter folder, a run folder holding `adapter/`, or
    `latest` (the newest run under `output_dir`)."""
    if is_model_uri(source):
        try:
            return fetch_model(source)
        except TrackingError as err:
            raise ModelSourceError(f"--model {source}: {err}") from None
    return fetch_model(str(_local_adapter(source, output_dir=Path(output_dir))))


def _local_adapter(source: str, *, output_dir: Path) -> Path:
    if source == "latest":
        try:
            return newest_adapter(output_dir)
        except ModelError:
            raise ModelSourceError(
                f"no trained adapter under {output_dir}/; run `train` first or pass --model"
            ) from None
    adapter_dir = Path(source).expanduser()
    adapter_dir = adapter_dir / "adapter" if (adapter_dir / "adapter").is_dir() else adapter_dir
    if not adapter_dir.is_dir():
        raise ModelSourceError(f"--model {source}: no such folder; pass outputs/<run>/adapter, `latest` or a URI")
    check_adapter_dir(adapter_dir)
    return adapter_dir


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
    config that trained the model, else the run's name. serve/vllm.py gives vLLM the same id."""
    return override or (config.project if config else source.name)


def training_config(source: ModelSource, *, fallback: Path | None) -> Config | None:
    """The config that trained the model: config.yaml beside a local adapter, or the one logged to the
    model's MLflow run; else `fallback`; else none."""
    logged = run_config_path(run_dir=source.adapter_dir.parent, run_id=source.run_id)
    if logged is not None:
        return load_config(logged)
    return load_config(fallback) if fallback else None
