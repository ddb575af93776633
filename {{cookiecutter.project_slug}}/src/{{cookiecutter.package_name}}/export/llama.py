"""A GGUF file opened with llama.cpp (llama-cpp-python): what serving and evaluation of an exported model share.

    gguf = open_gguf(Path("outputs/<run>/model-q4_k_m.gguf"), context=2048)
    ids = list(gguf.tokens(prompt_ids, temperature=0.0))    # llama.cpp's next tokens, one at a time

Prompts are never formatted by llama.cpp: the run's own tokenizer applies the chat template training used and
llama.cpp gets the token ids, so both backends see the same prompt tokens. Answers end by the same rules too:
at the ids `model.load.end_token_ids` names, or (JSON tasks) once a complete JSON object stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..model.device import usable_cores
from ..model.load import end_token_ids, load_tokenizer
from ..registry import ModelSource, resolve_model_source
from ..tasks.answers import holds_complete_object
from .gguf import META_PREFIX, ExportError, require_bindings, task_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Conversation = list[dict[str, str]]


@dataclass
class Gguf:
    """An opened GGUF file with the tokenizer and facts of the run that exported it."""

    path: Path
    llm: Any
    """llama_cpp.Llama"""
    tokenizer: PreTrainedTokenizerBase
    source: ModelSource
    facts: dict[str, str]
    """This project's metadata in the file (gguf.project_facts): run, system_prompt, task, ..."""
    end_ids: list[int]

    def tokens(self, prompt_ids: list[int], *, temperature: float = 0.0, top_p: float = 1.0) -> Iterator[int]:
        """llama.cpp's next tokens after `prompt_ids`, greedy at temperature 0; stops only when the caller does.
        A prompt that shares its beginning with the last one reuses llama.cpp's cache for that part."""
        return self.llm.generate(
            prompt_ids, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True
        )


def open_gguf(path: Path, *, context: int, threads: int | None = None) -> Gguf:
    """Open a GGUF file `export gguf` wrote into a run folder, llama.cpp running `threads` threads (None: all the
    cores this process may use; llama-cpp-python's default is half of them); ExportError (exit 2) for anything else."""
    llama_cpp = require_bindings()
    if path.suffix != ".gguf" or not path.is_file():
        raise ExportError(f"{path}: no such .gguf file; run `make export-gguf RUN=<run folder>` first")
    if not (path.parent / "adapter").is_dir():
        raise ExportError(f"{path} is not in a run folder: keep it in outputs/<run>/, beside adapter/ (its tokenizer)")
    source = resolve_model_source(path.parent)
    threads = threads or usable_cores()
    llm = llama_cpp.Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)
    facts = {key.removeprefix(META_PREFIX): value for key, value in llm.metadata.items() if key.startswith(META_PREFIX)}
    tokenizer = load_tokenizer(source.tokenizer_dir)
    return Gguf(
        path=path, llm=llm, tokenizer=tokenizer, source=source, facts=facts, end_ids=_end_ids(source, tokenizer)
    )


def _end_ids(source: ModelSource, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The transformers backend's end-of-answer ids, from the same base model's generation config."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(source.base_model)
    except OSError:  # a base without generation_config.json: the tokenizer's eos alone, as transformers does
        generation = GenerationConfig()
    return end_token_ids(SimpleNamespace(generation_config=generation), tokenizer)


def check_task(gguf: Gguf, config: Config | None) -> None:
    """Refuse a file exported for another task than `config`'s (its answers would be scored or served as this one's).
    No config (a run without one, and no LLM_CONFIG): nothing to compare with."""
    if config is None:
        return
    if "task" not in gguf.facts:
        raise ExportError(f"{gguf.path} records no task: export it again with `export gguf` (this project's export)")
    if gguf.facts["task"] != task_fingerprint(config):
        raise ExportError(
            f"{gguf.path} was exported for another task than the config's (task section differs: file "
            f"{gguf.facts['task']}); serve or evaluate it with its own run's config, or export this run again"
        )


def greedy_answers(gguf: Gguf, *, rows: list[Conversation], max_new_tokens: int, json_answers: bool) -> list[str]:
    """Greedy answers to each conversation minus its final reply, by the rules of model/generate.py."""
    from tqdm.auto import tqdm

    from ..model.generate import chat_ids

    answers = []
    for row in tqdm(rows, desc="generating (llama.cpp)", unit="row", leave=False):
        ids: list[int] = []
        for token in gguf.tokens(chat_ids(gguf.tokenizer, row[:-1], add_generation_prompt=True)):
            if token in gguf.end_ids:
                break
            ids.append(token)
            if len(ids) >= max_new_tokens:
                break
            if json_answers and holds_complete_object(gguf.tokenizer.decode(ids, skip_special_tokens=True)):
                break
        answers.append(gguf.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers
