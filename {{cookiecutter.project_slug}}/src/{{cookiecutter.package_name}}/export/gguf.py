"""GGUF export: a run's fine-tuned model as one llama.cpp file, for cheap CPU serving and Ollama.

    <project> export gguf --model outputs/<run> --type q4_k_m    # outputs/<run>/model-q4_k_m.gguf (+ .Modelfile)
    make export-gguf RUN=outputs/<run> TYPE=q8_0

The steps: merge the LoRA update into the base weights (llama.cpp's converter takes whole models only, and
SmolLM2 ties its embeddings to its output head: a merged model is an ordinary one); convert the merged folder
with llama.cpp's own `convert_hf_to_gguf.py`; add this project's facts (the training system prompt, the task,
the run); quantize with llama.cpp's own quantizer; rename into place. Everything is written in a temporary
folder beside the target first, so a refused or interrupted export leaves no half-written file.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, ModelConfig
from ..errors import BadInput, ProjectError, first_line
from ..model.device import usable_cores
from ..model.load import check_model_source, is_tiny_model, load_tokenizer, merge_adapter
from ..registry import COMMAND, ModelSource

log = logging.getLogger(__name__)

# The llama.cpp file types offered, as llama.cpp's `llama_ftype` numbers: f16 keeps every weight (about 2 bytes
# each), q8_0 8.5 bits a weight, q4_k_m about 4.8 bits (4-bit blocks, 6-bit for the most sensitive tensors).
QUANT_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
# Where llama.cpp's converter is: a llama.cpp source folder (holding convert_hf_to_gguf.py, conversion/ and
# gguf-py/). `make llama-cpp` unpacks the one of the llama-cpp-python release it builds into .cache/llama.cpp.
LLAMA_CPP_DIR = "LLAMA_CPP_DIR"
DEFAULT_LLAMA_CPP_DIR = Path(".cache/llama.cpp")
# This project's own keys in the file's metadata: `serve --backend llama.cpp` and `evaluate --gguf` read them.
META_PREFIX = "finetune."
# The converter identifies a BPE tokenizer's pre-tokenizer by hashing how a known model's vocabulary splits a
# test text, so a vocabulary trained here (the tiny model's) is never recognised. The tiny model's pre-tokenizer
# is GPT-2's byte-level split, which llama.cpp knows as "gpt-2": for that tokenizer only, the wrapper says so.
GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_CONVERT = """
import runpy, sys
llama_dir, pre_tokenizer = sys.argv[1], sys.argv[2]
sys.path.insert(0, llama_dir)
if pre_tokenizer:
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
sys.argv = [llama_dir + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# Training-only tags of the chat template ({% generation %} marks the tokens that get loss): llama.cpp's and
# Ollama's template engines do not know them, and at inference they change nothing.
GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


class ExportError(BadInput):
    """The export cannot start: the model, the llama.cpp tools or the target file; nothing was written."""


@dataclass(frozen=True)
class Export:
    """One export asked for: what to convert, to which type, into which file."""

    source: ModelSource
    config: Config | None
    """The run's config (system prompt, task); None for a model without one."""
    quant: str
    out_dir: Path
    force: bool = False

    @property
    def target(self) -> Path:
        return self.out_dir / f"model-{self.quant}.gguf"


def export_gguf(job: Export) -> Path:
    """Write `job.target` (and its Ollama Modelfile beside it); refuse before writing anything when a tool,
    the base model's architecture or the target is wrong. Returns the file."""
    llama_dir = check_tools(job.quant)
    check_architecture(job.source.base_model, llama_dir=llama_dir)
    if job.target.exists() and not job.force:
        raise ExportError(f"{job.target} exists; pass --force to replace it (nothing was written)")
    created = not job.out_dir.exists()  # a registered version's new folder: removed again if the export fails
    job.out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=job.out_dir))
    try:
        merged = merge_adapter(job.source.adapter_dir, scratch / "merged")
        _strip_training_tags(merged)
        raw = scratch / "converted.gguf"
        # Converted at full precision when quantizing next, so the quantizer starts from the exact weights.
        _convert(merged, raw, outtype="f16" if job.quant == "f16" else "f32", llama_dir=llama_dir)
        tagged = scratch / "tagged.gguf"
        _add_metadata(raw, tagged, facts=project_facts(job))
        final = scratch / job.target.name
        if job.quant == "f16":
            tagged.rename(final)
        else:
            quantize(tagged, final, quant=job.quant)
        modelfile = scratch / "Modelfile"
        modelfile.write_text(ollama_modelfile(job.target.name, config=job.config, merged=merged), encoding="utf-8")
        final.replace(job.target)
        modelfile.replace(modelfile_path(job.target))
        if job.source.run_dir is None:  # a registered version: its adapter and config beside the file
            copy_run_folder(job.source, job.out_dir)
    except BaseException:
        if created:
            shutil.rmtree(job.out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return job.target


def log_export(source: ModelSource, written: Path) -> str:
    """Log the file and its Modelfile to the model's MLflow run (artifacts under gguf/); a sentence saying what
    happened. A tracking failure does not undo the export: the files are in place."""
    from ..tracking import client

    if source.run_id is None:
        return "MLflow: the model has no tracked run; nothing logged"
    try:
        for path in (written, modelfile_path(written)):
            client().log_artifact(source.run_id, str(path), artifact_path="gguf")
    except Exception as err:  # an unreachable server: the export itself has succeeded
        return f"warning: MLflow logging failed ({first_line(err)}); the files are written"
    return f"MLflow: logged to run {source.run_id} (artifacts gguf/{written.name}, gguf/{modelfile_path(written).name})"


def copy_run_folder(source: ModelSource, folder: Path) -> Path:
    """A registered version, downloaded: its adapter (with the tokenizer) and config copied into `folder`, a run
    folder like a local one, so that `serve --backend llama.cpp` and `evaluate --gguf` can use the file there."""
    if not (folder / "adapter").is_dir():
        shutil.copytree(source.adapter_dir, folder / "adapter")
        shutil.copytree(source.tokenizer_dir, folder / "adapter", dirs_exist_ok=True)
    config = source.config_path()
    if config is not None and not (folder / "config.yaml").is_file():
        shutil.copyfile(config, folder / "config.yaml")
    return folder


def export_folder(source: ModelSource, output_dir: str | Path = "outputs") -> Path:
    """Where `export gguf` writes a model's files: its run folder, or <output_dir>/<name>-v<version> for a
    registered version (downloaded from MLflow, so it has no run folder here)."""
    return source.run_dir or Path(output_dir) / f"{source.name}-v{source.version}"


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


# ---- checks, before anything is written -----------------------------------------------------------------


def check_tools(quant: str) -> Path:
    """The llama.cpp converter folder; the llama-cpp-python bindings too when quantizing. ExportError with the fix."""
    if quant not in QUANT_TYPES:
        raise ExportError(f"--type {quant}: not offered; choose one of {', '.join(QUANT_TYPES)}")
    llama_dir = Path(os.environ.get(LLAMA_CPP_DIR) or DEFAULT_LLAMA_CPP_DIR)
    if not (llama_dir / "convert_hf_to_gguf.py").is_file():
        raise ExportError(
            f"llama.cpp's converter is not in {llama_dir}/ (convert_hf_to_gguf.py): run `make llama-cpp`, or set "
            f"{LLAMA_CPP_DIR} to a llama.cpp source folder (nothing was written)"
        )
    if quant != "f16":
        require_bindings()
    return llama_dir


def require_bindings():  # -> the llama_cpp module
    """The llama-cpp-python bindings, or ExportError saying how to build them."""
    try:
        import llama_cpp
    except ImportError as err:
        raise ExportError(
            f"llama-cpp-python is not installed ({first_line(err)}): run `make llama-cpp` (builds it for this CPU, "
            "about 5 minutes), or `pip install '.[llama-cpp]'` (nothing was written)"
        ) from None
    return llama_cpp


def check_architecture(base_model: str, *, llama_dir: Path) -> None:
    """Refuse a base model whose architecture llama.cpp's converter has no code for (read from its list)."""
    from transformers import AutoConfig

    check_model_source(base_model)  # a missing folder or an unreachable hub id: named, with the fix
    architectures = AutoConfig.from_pretrained(base_model).architectures or []
    supported = supported_architectures(llama_dir)
    if supported is not None and not any(name in supported for name in architectures):
        raise ExportError(
            f"base model {base_model} ({', '.join(architectures) or 'no architecture'}) is not supported by "
            f"llama.cpp's converter in {llama_dir}/: pick a base model of an architecture it lists (Llama, Qwen2, "
            "Mistral, Gemma, ...) or a newer llama.cpp (nothing was written)"
        )


def supported_architectures(llama_dir: Path) -> set[str] | None:
    """The `architectures` names the converter knows: the keys of TEXT_MODEL_MAP in conversion/__init__.py, read
    without importing it; None for a layout this code does not know (the converter then decides)."""
    index = llama_dir / "conversion" / "__init__.py"
    if not index.is_file():
        return None
    for node in ast.parse(index.read_text(encoding="utf-8")).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if getattr(target, "id", None) == "TEXT_MODEL_MAP":
            return set(ast.literal_eval(node.value))
    return None


# ---- the steps ------------------------------------------------------------------------------------------


def _strip_training_tags(merged: Path) -> None:
    for path in (merged / "chat_template.jinja", merged / "tokenizer_config.json"):
        if path.is_file():
            path.write_text(GENERATION_TAGS.sub("", path.read_text(encoding="utf-8")), encoding="utf-8")


def known_pre_tokenizer(merged: Path) -> str:
    """`gpt-2` for this project's tiny model with GPT-2's byte-level split; "" otherwise (the converter decides)."""
    tokenizer = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))
    tiny = is_tiny_model(ModelConfig(base_model=str(merged)))
    return "gpt-2" if tiny and tokenizer.get("pre_tokenizer") == GPT2_PRE_TOKENIZER else ""


def _convert(merged: Path, out: Path, *, outtype: str, llama_dir: Path) -> None:
    command = [sys.executable, "-c", _CONVERT, str(llama_dir), known_pre_tokenizer(merged), str(merged)]
    command += ["--outfile", str(out), "--outtype", outtype]
    log.info("converting %s with llama.cpp's convert_hf_to_gguf.py", merged)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n  ".join(done.stderr.strip().splitlines()[-4:])
        raise ProjectError(f"llama.cpp's converter failed (exit {done.returncode}):\n  {tail}")


def project_facts(job: Export) -> dict[str, str]:
    """What the file records about its training, under META_PREFIX: the served system prompt and the task."""
    config = job.config
    facts = {"run": job.source.name, "model_version": job.source.version or ""}
    if config is not None:
        facts |= {"project": config.project, "system_prompt": config.task.system_prompt or ""}
        facts |= {"task": task_fingerprint(config)}
    return facts


def task_fingerprint(config: Config) -> str:
    """The task as canonical JSON: a file exported for one task is refused as another's."""
    return json.dumps(config.task.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _add_metadata(source: Path, out: Path, *, facts: dict[str, str]) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    extra = {META_PREFIX + key: MetadataDetails(gguf.GGUFValueType.STRING, value) for key, value in facts.items()}
    copy_with_new_metadata(reader, gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess), extra, [])


def quantize(source: Path, out: Path, *, quant: str) -> None:
    """llama.cpp's quantizer through the bindings (no llama-quantize binary needed); copies the metadata."""
    llama_cpp = require_bindings()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = usable_cores()
    log.info("quantizing to %s", quant)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ProjectError(f"llama.cpp could not quantize {source.name} to {quant}")


def ollama_modelfile(gguf_name: str, *, config: Config | None, merged: Path) -> str:
    """An Ollama Modelfile: `ollama create <name> -f <this file>`. The system prompt is the one training used;
    the template is ChatML written for Ollama when the model's template is ChatML."""
    lines = [f"# ollama create {COMMAND} -f {gguf_name.removesuffix('.gguf')}.Modelfile", f"FROM ./{gguf_name}"]
    if "<|im_start|>" in str(load_tokenizer(merged).chat_template):
        lines += [
            'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
            '<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"""',
            'PARAMETER stop "<|im_end|>"',
        ]
    if config is not None and config.task.system_prompt:
        lines.append(f'SYSTEM """{config.task.system_prompt}"""')
    lines += ["# Greedy decoding, as in evaluation.", "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"
