"""The llama.cpp backend (llama_cpp extra): `serve --backend llama.cpp` answers with a GGUF file `export gguf` wrote.

    <project> export gguf --model outputs/<run> --type q4_k_m
    LLM_BACKEND=llama.cpp <project> serve --model outputs/<run>        # outputs/<run>/model-<LLM_GGUF_TYPE>.gguf

Everything but generation is the same server: API, auth, limits, metrics, request log, demo page, the model id
and system prompt of the run's config, the prompt token ids (the run's tokenizer applies the chat template;
llama.cpp gets the ids) and the stop rules (the engine's `Row`: end-of-turn ids, stop sequences, max_tokens).
llama.cpp generates one sequence at a time: requests that arrive together are answered one after the other.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..export.llama import Gguf, check_task, open_gguf
from ..registry import resolve_model_source
from .engine import Engine, Job, Row
from .loader import LoadedModel, served_model_name, training_config

if TYPE_CHECKING:
    from .settings import Settings


def gguf_to_serve(settings: Settings) -> Path:
    """LLM_MODEL itself when it is a .gguf file, else model-<gguf_type>.gguf in the run folder it names."""
    from ..export.gguf import ExportError, require_bindings

    require_bindings()  # a missing build fails before the server starts
    if settings.model.endswith(".gguf"):
        path = Path(settings.model)
    else:
        source = resolve_model_source(settings.model, output_dir=settings.output_dir)
        if source.run_dir is None:
            raise ExportError(f"{settings.model} is not a local run: export it, then serve outputs/<run>/model-*.gguf")
        path = source.run_dir / f"model-{settings.gguf_type}.gguf"
    if not path.is_file():
        raise ExportError(
            f"{path}: no such file; export it first: make export-gguf RUN={path.parent} TYPE={settings.gguf_type}"
        )
    return path


def load_gguf_for_serving(settings: Settings) -> LoadedModel:
    """The GGUF file opened with llama.cpp, named and prompted as the run's config says; refuses another task's file."""
    context = settings.max_prompt_tokens + settings.max_tokens
    gguf = open_gguf(gguf_to_serve(settings), context=context, threads=settings.llama_threads)
    config = training_config(gguf.source, fallback=settings.config)
    check_task(gguf, config)
    return LoadedModel(
        model=gguf,
        tokenizer=gguf.tokenizer,
        device="cpu",
        name=served_model_name(override=settings.served_model_name, config=config, source=gguf.source),
        version=gguf.source.version or gguf.source.name,
        base_model=gguf.source.base_model,
        system_prompt=settings.system_prompt or (config.task.system_prompt if config else None),
    )


class LlamaCppEngine(Engine):
    """The micro-batching engine's queue, limits and stop rules, with llama.cpp generating each job in turn."""

    def __init__(self, model: Gguf, tokenizer, **options) -> None:
        self.gguf = model
        # Engine takes its end-of-answer ids from a model's generation config: the same ids open_gguf found.
        super().__init__(
            SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=model.end_ids)), tokenizer, **options
        )

    def _generate(self, jobs: list[Job]) -> None:
        for job in jobs:
            if self.on_batch:
                self.on_batch(1)
            row = Row(job, decoder=self._decoder, end_ids=self.end_ids)
            if row.samples:  # a fixed seed gives the same answer again; none, a fresh one
                self.gguf.llm.set_seed(job.params.seed if job.params.seed is not None else random.getrandbits(31))
            tokens = self.gguf.tokens(job.prompt_ids, temperature=job.params.temperature, top_p=job.params.top_p)
            for token in tokens:
                row.add(token)
                if row.done:
                    break
            row.finish("length")  # the model's context ended first (a no-op for a row that has ended)
