"""The vLLM profile for GPUs: the one place the `vllm serve` command line is built.

    <project> serve-vllm [--model outputs/<run>/adapter | models:/<name>@champion | outputs/<run>/merged] [--print]
    make serve-vllm [MODEL=...]                      # the same; `make up-gpu` runs it in the vllm/vllm-openai image

The model is resolved exactly as `serve` resolves it (registry.resolve_model_source), and vLLM gets the same
model id, the same chat template and the same default system prompt as our server, so the `openai` client, the
demo page's requests and scripts/benchmark_serve.py work unchanged against either. Flags (vLLM docs, "vllm serve"
CLI reference and "LoRA Adapters", https://docs.vllm.ai/en/stable/features/lora.html):
  --enable-lora --lora-modules <name>=<path>   serve an adapter on the base model; requests pick it by `model`
  --max-lora-rank N                            must be >= the adapter's r and one of VLLM_LORA_RANKS
  --served-model-name, --tokenizer, --chat-template (a file path or the template text), --dtype, --host, --port
  VLLM_API_KEY (environment, not --api-key)    requests need `Authorization: Bearer <key>`; an argument would be
                                               visible to every user of the machine in `ps`, the environment is not
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import load_config
from ..errors import BadInput
from ..model.load import CHAT_TEMPLATE, read_adapter_config
from ..registry import resolve_model_source
from ..runs import run_config_path
from ..serve.loader import served_model_name, training_config

if TYPE_CHECKING:
    from ..serve.settings import Settings

# `--max-lora-rank` accepts only these values (vLLM's LoRAConfig); an adapter's r is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's --dtype choices that our config's model.dtype can name (`auto`: bf16 where the GPU supports it).
VLLM_DTYPES = {"auto", "bfloat16", "float16", "float32"}
INSTALL_HINT = (
    "vLLM is not installed here; it needs Linux and an NVIDIA GPU: `pip install vllm`, or run the vllm/vllm-openai "
    "image with `make up-gpu` (docker-compose.yml, profile gpu). `serve-vllm --print` shows the command without it."
)


class VllmError(BadInput):
    """vLLM cannot serve this model as asked; the message names the setting and the fix."""


@dataclass(frozen=True)
class VllmTarget:
    """What `vllm serve` loads, resolved from a model source."""

    model: str
    """The positional argument: the base model (hub id or folder) for an adapter, or a merged folder."""
    tokenizer: str
    """Folder whose tokenizer our server uses (the adapter's or the merged folder's)."""
    served_name: str
    """The id our server's /v1/models lists; clients put it in `model`."""
    chat_template: str
    """A template file, or the template text when a default system prompt is folded into it."""
    adapter_dir: str | None = None
    """The LoRA adapter folder; None for merged weights."""
    lora_rank: int | None = None
    """The adapter's r (from adapter_config.json)."""
    dtype: str = "auto"


def vllm_command(target: VllmTarget, *, host: str, port: int) -> list[str]:
    """The `vllm serve` argument list for `target`; the only place it is built (the compose file's command is
    checked against it by tests/test_vllm.py). It never holds the API key: `exec_vllm` passes that in VLLM_API_KEY."""
    command = ["vllm", "serve", target.model, "--tokenizer", target.tokenizer]
    if target.adapter_dir is None:
        command += ["--served-model-name", target.served_name]
    else:
        # The adapter answers to our model id; the bare base model gets another, so that a request for our
        # id can never reach the base model without the adapter. A request with no `model` gets vLLM's first
        # served name, the base: clients must name the model (the openai client always does), or serve the
        # merged folder, where our id is the only model.
        command += ["--served-model-name", f"{target.served_name}-base", "--enable-lora"]
        command += ["--lora-modules", f"{target.served_name}={target.adapter_dir}"]
        command += ["--max-lora-rank", str(vllm_lora_rank(target.lora_rank or 1))]
    command += ["--chat-template", target.chat_template, "--dtype", target.dtype]
    return [*command, "--host", host, "--port", str(port)]


def vllm_lora_rank(rank: int) -> int:
    """The smallest value `--max-lora-rank` accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise VllmError(f"lora.r={rank}: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; merge the adapter first")


def resolve_target(settings: Settings) -> VllmTarget:
    """`settings.model` (an adapter, run folder, `latest`, MLflow URI, or a folder `merge` wrote) as vLLM loads it."""
    merged = _merged_folder(settings.model)
    if merged is not None:
        return _merged_target(merged, settings=settings)
    source = resolve_model_source(settings.model, output_dir=settings.output_dir)
    config = training_config(source, fallback=settings.config)
    dtype = config.model.dtype if config else "auto"
    return VllmTarget(
        model=source.base_model,
        tokenizer=str(source.tokenizer_dir),
        served_name=served_model_name(override=settings.served_model_name, config=config, source=source),
        chat_template=chat_template(
            source.tokenizer_dir,
            system_prompt=settings.system_prompt or (config.task.system_prompt if config else None),
        ),
        adapter_dir=str(source.adapter_dir),
        lora_rank=int(read_adapter_config(source.adapter_dir)["r"]),
        dtype=dtype if dtype in VLLM_DTYPES else "auto",
    )


def _merged_folder(source: str) -> Path | None:
    """`source` as a folder of full weights (`merge` output: config.json, no adapter), else None."""
    folder = Path(source).expanduser()
    is_adapter = (folder / "adapter_config.json").is_file() or (folder / "adapter").is_dir()
    return folder if (folder / "config.json").is_file() and not is_adapter else None


def _merged_target(folder: Path, *, settings: Settings) -> VllmTarget:
    # `merge --out outputs/<run>/merged` puts the run's config.yaml one level up: its project is the model id.
    logged = run_config_path(run_dir=folder.parent)
    config = load_config(logged) if logged else (load_config(settings.config) if settings.config else None)
    dtype = config.model.dtype if config else "auto"
    return VllmTarget(
        model=str(folder),
        tokenizer=str(folder),
        served_name=settings.served_model_name or (config.project if config else folder.name),
        chat_template=chat_template(
            folder, system_prompt=settings.system_prompt or (config.task.system_prompt if config else None)
        ),
        dtype=dtype if dtype in VLLM_DTYPES else "auto",
    )


def chat_template(tokenizer_dir: Path, *, system_prompt: str | None) -> str:
    """The chat template our server applies (the tokenizer's own, else the project's), as a file path; with a
    default system prompt, as template text that puts it first when a request has none, as our server does
    (routes/chat.py), since vLLM has no setting for a default system message."""
    template_file = tokenizer_dir / "chat_template.jinja"
    inline = _tokenizer_config_template(tokenizer_dir)
    if system_prompt is None:
        if template_file.is_file() or inline is None:
            return str(template_file if template_file.is_file() else CHAT_TEMPLATE)
        return inline
    if template_file.is_file() or inline is None:
        inline = (template_file if template_file.is_file() else CHAT_TEMPLATE).read_text(encoding="utf-8")
    # A top-level `set` rebinds `messages` for the whole template; JSON string escapes are valid Jinja ones.
    prepend = (
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return prepend + inline


def _tokenizer_config_template(tokenizer_dir: Path) -> str | None:
    """A template stored inside tokenizer_config.json (older transformers), if any."""
    path = tokenizer_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None


def printable(command: list[str], *, with_key: bool = False) -> str:
    """`command` as a shell line; `with_key`: prefixed with the API key's variable, never its value."""
    return ('VLLM_API_KEY="$LLM_API_KEY" ' if with_key else "") + shlex.join(command)


def exec_vllm(command: list[str], *, api_key: str | None = None) -> None:
    """Replace this process with vLLM (signals and exit status are then vLLM's own), with `api_key` in
    VLLM_API_KEY: the key `serve` uses (LLM_API_KEY), so an inherited VLLM_API_KEY is dropped when it has none."""
    if importlib.util.find_spec("vllm") is None:
        raise VllmError(INSTALL_HINT)
    # The `vllm` program beside this interpreter: a venv's bin/ need not be on PATH (`.venv/bin/<project>`).
    program = shutil.which(command[0]) or str(Path(sys.executable).with_name(command[0]))
    env = {name: value for name, value in os.environ.items() if name != "VLLM_API_KEY"}
    os.execve(program, command, {**env, "VLLM_API_KEY": api_key} if api_key else env)
