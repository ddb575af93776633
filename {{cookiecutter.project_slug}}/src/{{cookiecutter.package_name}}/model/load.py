"""Base model and tokenizer: loading by hub id or local folder, the tiny offline model, LoRA, merging.

    tokenizer = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")   # or a local folder
    model = load_base_model(cfg.model, device=resolve_device(cfg.train.device))
    build_tiny_model("models/tiny-chat", corpus_texts=texts)             # offline smoke model
    merge_adapter("outputs/<run>/adapter", "outputs/<run>/merged")      # full weights for deployment

A hub id and a local folder go through the same `from_pretrained` calls, so the tiny model built here
exercises exactly the code path a real model takes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..errors import first_line
from .device import (
    Device,
    ModelError,
    Precision,
    attention_implementation,
    local_rank,
    placement,
    quantization_config,
    resolve_dtype,
)

if TYPE_CHECKING:
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..config import LoraConfig, ModelConfig

LossMode = Literal["assistant_only", "completion_only"]
"""How training masks the loss: by the chat template's {% generation %} markers (`assistant_only`), or by
splitting each conversation into prompt and completion (`completion_only`) for templates without them."""

CHAT_TEMPLATE = Path(__file__).with_name("chat_template.jinja")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The tiny model's special tokens: ChatML turn markers (as in SmolLM2 and Qwen), padding, end of text.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
# Written into the tiny model's config.json: its results are a smoke run's, however the folder is named to a config.
TINY_MARKER = "tiny_random_model"


class ModelSourceError(ModelError):
    """A model source (`latest`, a run or adapter folder, an MLflow URI) is not a LoRA adapter that can be found;
    the message names the source and what to pass instead."""


# ---- finding and loading models -------------------------------------------------------------------------


def check_model_source(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Fail fast, before any output is written, when `name` is neither a complete model folder nor a
    reachable hub id. Hub ids are resolved with `from_pretrained`, so HF_HUB_OFFLINE=1 uses the cache only."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        _check_model_folder(path)
        return
    if path.exists():
        raise ModelError(
            f"model.base_model={name!r} is a file; give a model folder (saved with save_pretrained) or a hub id"
        )
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"model.base_model={name!r}: no such folder, and not a hub id of the form org/name") from None
    _check_hub_id(name, revision=revision, trust_remote_code=trust_remote_code)


def _check_model_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: model folder without config.json; save the model with save_pretrained()")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{path}: model folder without weights (expected one of {', '.join(WEIGHT_FILES)})")


def _check_hub_id(name: str, *, revision: str | None, trust_remote_code: bool) -> None:
    from huggingface_hub import constants
    from transformers import AutoConfig

    unreachable = None if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
    try:  # an unreachable hub: the cache only, at once (the hub client would retry for ~25 s first)
        AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code, local_files_only=unreachable is not None
        )
    except (OSError, ValueError) as err:
        if constants.HF_HUB_OFFLINE or unreachable:
            where = "(HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else f"(the hub cannot be reached: {unreachable})"
            reason = f"it is not a local folder and not in the Hugging Face cache {where}"
            hint = f"download it once online (`hf download {name}`), or point model.base_model at a local folder"
        else:
            reason = f"the hub has no such model or it cannot be reached ({first_line(err)})"
            hint = "check the id on huggingface.co, or point model.base_model at a local folder"
        raise ModelError(f"model.base_model={name!r}: {reason}; {hint}") from None


def hub_unreachable(endpoint: str, *, timeout: float = 3.0) -> str | None:
    """Why the hub at `endpoint` cannot be reached, from one connection attempt, or None when it answers.
    Behind a proxy only the HTTP client knows the way: not probed (None)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as err:
        return f"{url.hostname}: {err.strerror or err}"
    return None


def load_tokenizer(source: str | Path, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a hub id, a model folder or an adapter folder, with a pad token set (eos if it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"{source}: cannot load the tokenizer: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; masked out of attention and loss
    return tokenizer


def load_base_model(
    model_cfg: ModelConfig, *, device: Device, training: bool = False, precision: Precision | None = None
) -> PreTrainedModel:
    """The base model on `device`, in the configured dtype (`auto`: the training `precision`'s, if given), or 4-bit
    quantized for QLoRA; `training` picks the attention kernel for training (`attention_implementation`)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"revision": model_cfg.revision, "trust_remote_code": model_cfg.trust_remote_code}
    kwargs["dtype"] = resolve_dtype(model_cfg.dtype, device=device, precision=precision)
    attention = attention_implementation(model_cfg.attn_implementation, device=device, training=training)
    if attention:
        kwargs["attn_implementation"] = attention
    if model_cfg.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(device=device)
        kwargs["device_map"] = {"": local_rank()}  # bitsandbytes places them: on this process's GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(model_cfg.base_model, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.base_model={model_cfg.base_model!r}: cannot load: {first_line(err)}") from None
    target = placement(device)  # this process's GPU; None: FSDP/DeepSpeed place the weights themselves
    return model if model_cfg.load_in_4bit or target is None else model.to(target)


def load_finetuned(model_cfg: ModelConfig, *, adapter_dir: Path, device: Device) -> PeftModel:
    """Base model + the trained LoRA adapter, for evaluation and serving (adapter switchable off)."""
    from peft import PeftModel

    check_adapter_dir(adapter_dir)
    trained_on = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if trained_on and not _same_model(trained_on, model_cfg.base_model):
        raise ModelError(
            f"{adapter_dir} was trained on {trained_on!r} but model.base_model={model_cfg.base_model!r}; "
            f"use the config of that run ({adapter_dir.parent / 'config.yaml'}) or override model.base_model"
        )
    check_model_source(model_cfg.base_model, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    base = load_base_model(model_cfg, device=device)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def _same_model(a: str, b: str) -> bool:
    """Hub ids compare as text; local folders by where they are (a relative and an absolute path agree)."""
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def check_adapter_dir(adapter_dir: Path) -> None:
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise ModelSourceError(f"{adapter_dir}: not a LoRA adapter folder (missing {', '.join(missing)})")
    read_adapter_config(adapter_dir)  # a corrupt file fails here, named, not as a traceback deep in peft


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's adapter_config.json; ModelError naming the file and line when it is not a JSON object."""
    path = adapter_dir / "adapter_config.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}); restore the file or train the adapter again"
        ) from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not UTF-8 text; restore the file or train the adapter again") from None
    if not isinstance(settings, dict):
        raise ModelError(f"{path}: expected a JSON object of LoRA settings; restore the file or train again")
    return settings


def module_names(model: PreTrainedModel, *, limit: int = 8) -> list[str]:
    """Distinct short names of the model's linear layers (what lora.target_modules may list), first `limit`."""
    import torch

    names: list[str] = []
    for name, module in model.named_modules():
        short = name.rpartition(".")[2]
        if isinstance(module, torch.nn.Linear) and short not in names:
            names.append(short)
    return names[:limit]


def newest_adapter(output_dir: str | Path, *, given_as: str = "--model") -> Path:
    """The adapter of the most recent run under `output_dir`: what the model source `latest` means."""
    adapters = [p.parent for p in Path(output_dir).glob("*/adapter/adapter_config.json")]
    if not adapters:
        raise ModelSourceError(f"no trained adapter under {output_dir}/; run `train` first or pass {given_as}")
    newest = max(adapters, key=lambda p: (p / "adapter_config.json").stat().st_mtime)
    read_adapter_config(newest)  # a corrupt file fails here, before MLflow or serving parse it
    return newest


def end_token_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer, for `generate` in evaluation and serving alike: the tokenizer's eos
    plus the model's own end-of-turn ids (chat models often list several in their generation config)."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({tokenizer.eos_token_id, *configured} - {None})


# ---- chat template and LoRA -----------------------------------------------------------------------------


def prepare_chat_template(tokenizer: PreTrainedTokenizerBase) -> LossMode:
    """Make sure only assistant tokens get loss, and return how: a template with {% generation %} markers
    is used as is; a known template gets TRL's marked twin; any other template keeps its exact format and
    training splits rows into prompt + completion instead. A tokenizer with no template but ChatML tokens
    gets this project's template. The tokenizer saved with the adapter carries the result."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = _project_template_for(tokenizer)
    if _has_generation_markers(tokenizer.chat_template):
        return "assistant_only"
    marked = _trl_training_template(tokenizer)
    if marked is None:
        return "completion_only"
    tokenizer.chat_template = marked  # renders the same text as the original, plus the markers
    return "assistant_only"


def _has_generation_markers(template: str | dict[str, str]) -> bool:
    text = template.get("default", "") if isinstance(template, dict) else template
    return re.search(r"\{%-?\s*generation\s*-?%\}", text) is not None


def _trl_training_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """TRL's copy of a known model family's template (Qwen, Llama 3, Gemma, Phi...) with markers, or None."""
    try:
        from trl.chat_template_utils import get_training_chat_template  # newer TRL 1.x releases
    except ImportError:
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # a family TRL has no marked template for
        return None


def _project_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" not in vocab or "<|im_end|>" not in vocab:
        raise ModelError(
            f"{tokenizer.name_or_path}: the tokenizer has no chat template and no ChatML tokens to use this "
            "project's; fine-tune an instruct/chat model, or add a chat_template.jinja to the model folder"
        )
    return CHAT_TEMPLATE.read_text(encoding="utf-8")


def lora_config(lora_cfg: LoraConfig) -> PeftLoraConfig:
    """Our LoRA settings as peft's LoraConfig (causal LM, no bias training)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


# ---- the tiny offline model -----------------------------------------------------------------------------


def build_tiny_model(path: str | Path, corpus_texts: Iterable[str], *, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised Llama-style chat model to `path`, like a hub model folder:
    config.json, model.safetensors, a byte-level BPE tokenizer trained on `corpus_texts` and the project's
    ChatML template. ~0.2M parameters: it knows no language, but LoRA learns the task's format in seconds."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _train_tiny_tokenizer(corpus_texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # 4 heads x 16 dims; big enough for LoRA to learn the JSON format
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in current small models
        max_position_embeddings=2048,  # tokens; longer than any example of the shipped task
        tie_word_embeddings=True,
        # 10x the usual 0.02: with random weights that small every logit is ~0, and LoRA (which leaves the
        # embeddings and norms frozen) could not make any prediction confident; 0.2 lets it in ~50 steps.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    setattr(config, TINY_MARKER, True)
    torch.manual_seed(seed)  # the same corpus and seed give the same weights
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _save_folder_atomically(path, model=model, tokenizer=tokenizer)


def is_tiny_model(model_cfg: ModelConfig) -> bool:
    """Whether the base model is the tiny random one: built by this config, or a folder built by another."""
    config_file = Path(model_cfg.base_model) / "config.json"
    if model_cfg.build_tiny or not config_file.is_file():
        return model_cfg.build_tiny
    return bool(json.loads(config_file.read_text(encoding="utf-8")).get(TINY_MARKER))


def _train_tiny_tokenizer(corpus_texts: Iterable[str], *, vocab_size: int) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # any byte sequence is encodable
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",  # ends an assistant turn, so generation stops there
        pad_token="<|pad|>",
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    return wrapped


def _save_folder_atomically(path: str | Path, *, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Save into a temporary sibling, then rename: an interrupted build leaves no half-written model folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


# ---- merging --------------------------------------------------------------------------------------------


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold the LoRA update into the base weights and save full weights + tokenizer to `out_dir`, a folder
    any transformers-based server loads without peft. The base is the one recorded in the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter_dir(adapter_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} already exists and is not empty; choose another --out (nothing was written)")
    base_name = read_adapter_config(adapter_dir)["base_model_name_or_path"]
    check_model_source(base_name)
    # Full precision, never 4-bit: merging into quantized weights would lose the update.
    base = AutoModelForCausalLM.from_pretrained(base_name, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = load_tokenizer(adapter_dir)
    return _save_folder_atomically(out_dir, model=merged, tokenizer=tokenizer)
