"""The generation engine: a micro-batcher that answers concurrent requests with one `generate` call.

Requests come from the event loop (`submit`), wait in a bounded queue, and one worker thread takes what
is waiting (up to max_batch_size), left-pads the prompts and runs a single `model.generate`. Each row keeps
its own max_tokens, stop sequences, temperature, top_p and seed, through two hooks of `generate`:

- `_BatchTracker` (a StoppingCriteria) ends a row at an end-of-turn token, a stop sequence or its
  max_tokens, streams its new text, and lets `generate` return as soon as every row is done;
- `_RowSampler` (a LogitsProcessor) picks each sampling row's token at that row's temperature and top_p
  and leaves only that token possible, so one greedy `generate` serves greedy and sampling rows together.

Generation never runs on the event loop, and the bounded queue turns overload into 429s, not latency.
A batch that fails is generated again row by row, so one request that breaks `generate` fails alone.
The batch runs until its longest row ends: a short answer batched with a long one waits for it (no
continuous batching; see vLLM or TGI for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..model.load import end_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class EngineBusy(Exception):
    """Every batch slot and queue place is taken; the client should retry later (429)."""


class PromptError(ValueError):
    """The messages cannot be turned into a prompt (the chat template rejected them)."""


class GenerationFailed(RuntimeError):
    """`generate` raised; the message is the cause. The server answers 500 and keeps serving."""


class ServerStopping(GenerationFailed):
    """The server is shutting down and its grace period is over: the job ends unanswered (503)."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    """0 decodes greedily (deterministic); above 0 samples at that temperature."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]
    completion_tokens: int
    """Tokens generated, the end-of-turn token included (it cost a forward pass like any other)."""


class Job:
    """One request in the engine: the worker thread sends its text pieces and result to the event loop."""

    def __init__(self, prompt_ids: list[int], params: GenerationParams, *, stream: bool) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.stream = stream
        self.cancelled = False  # set on the event loop (timeout, client gone); the worker drops the row
        # Set by the worker: a job that has sent text cannot be generated again, one that has ended is done.
        self.started = False
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[str | Completion | Exception] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled = True

    def end(self, error: Exception) -> None:
        """End the job now with `error` (call on the event loop): its waiter gets it, the worker drops its row."""
        self.cancelled = True
        self._events.put_nowait(error)

    async def next_event(self) -> str | Completion:
        """The next text piece (streaming jobs only) or, last, the Completion; raises GenerationFailed."""
        event = await self._events.get()
        if isinstance(event, Exception):
            raise event
        return event

    async def result(self) -> Completion:
        while not isinstance(event := await self.next_event(), Completion):
            pass
        return event

    def emit(self, event: str | Completion | Exception) -> None:
        """Called from the worker thread."""
        self.started = True
        self.finished = self.finished or not isinstance(event, str)
        # RuntimeError: the event loop is closed (the server is shutting down), nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)


class Engine:
    """Owns the model: a bounded queue of jobs and one worker thread that generates them in batches."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.002,
        max_queue: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.capacity = max_batch_size + max_queue
        self.on_batch = on_batch
        self.end_ids = end_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self._encoder = tokenizer
        # A Rust tokenizer used from two threads at once can fail ("Already borrowed"): prompts are encoded
        # in one thread of their own, and the worker decodes with its own copy.
        self._prompt_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-prompt")
        self._decoder = copy.deepcopy(tokenizer)
        self._pending: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._admitted: set[Job] = set()  # queued + generating; guarded by _lock
        self._lock = threading.Lock()
        self._stopping: ServerStopping | None = None
        self._last_batch_size = 1
        self._thread = threading.Thread(target=self._work, name="llm-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._pending.put(None)
        self._prompt_thread.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout_s)

    @property
    def admitted(self) -> int:
        """Requests queued or generating now."""
        return len(self._admitted)

    def end_all(self, error: ServerStopping) -> None:
        """At shutdown (on the event loop): every job queued or generating ends now with `error`, and so does
        every job submitted later."""
        self._stopping = error
        with self._lock:
            jobs = list(self._admitted)
        for job in jobs:
            job.end(error)

    async def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids through the tokenizer's chat template, ending with the assistant's turn opener.
        Built off the event loop: 256 messages take tens of milliseconds, in which no other request is served."""
        return await asyncio.get_running_loop().run_in_executor(self._prompt_thread, self._encode, messages)

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            encoded = self._encoder.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception as err:  # a template may refuse e.g. two user turns in a row (raise_exception)
            raise PromptError(f"the model's chat template rejected the messages: {err}") from None
        return list(encoded["input_ids"])

    def submit(self, prompt_ids: list[int], params: GenerationParams, *, stream: bool = False) -> Job:
        """Queue a job (call on the event loop); EngineBusy when max_batch_size + max_queue are taken."""
        job = Job(prompt_ids, params, stream=stream)
        if self._stopping is not None:
            job.end(self._stopping)
            return job
        with self._lock:
            if len(self._admitted) >= self.capacity:
                raise EngineBusy(f"all {self.capacity} generation slots and queue places are taken")
            self._admitted.add(job)
        self._pending.put(job)
        return job

    # ---- worker thread --------------------------------------------------------------------------------

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [job for job in batch if not job.cancelled]  # timed out while queued: nobody waits
            try:
                self._generate_isolated(live)
            finally:
                with self._lock:
                    self._admitted.difference_update(batch)

    def _generate_isolated(self, jobs: list[Job]) -> None:
        """Generate `jobs` as one batch; when that fails, each job that has sent nothing yet is generated alone,
        so a row that breaks `generate` (or an out-of-memory batch) fails only itself. Never raises."""
        try:
            if jobs:
                self._generate(jobs)
            return
        except Exception as err:
            log.exception("generation failed for a batch of %d", len(jobs))
            failure = err
        for job in jobs:
            if job.cancelled or job.finished:
                continue
            if len(jobs) > 1 and not job.started:
                self._generate_isolated([job])
            else:  # alone, or text already streamed (it cannot be taken back): this job fails
                job.emit(GenerationFailed(f"generation failed: {type(failure).__name__}: {failure}"))

    def _next_batch(self) -> list[Job] | None:
        """The next jobs to generate together, or None to stop. Waits batch_wait_s for company only when
        the last batch had company: a lone client pays no waiting, concurrent clients get fuller batches."""
        first = self._pending.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + (self.batch_wait_s if self._last_batch_size > 1 else 0.0)
        while len(batch) < self.max_batch_size:
            try:
                job = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._pending.put(None)  # stop after this batch
                break
            batch.append(job)
        self._last_batch_size = len(batch)
        return batch

    def _generate(self, jobs: list[Job]) -> None:
        rows = [Row(job, decoder=self._decoder, end_ids=self.end_ids) for job in jobs]
        input_ids, attention_mask = self._left_pad([job.prompt_ids for job in jobs])
        sampler = [_RowSampler(rows)] if any(row.samples for row in rows) else []
        if self.on_batch:
            self.on_batch(len(jobs))
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max(job.params.max_tokens for job in jobs),
                do_sample=False,  # _RowSampler has already sampled where asked; argmax takes its pick
                logits_processor=LogitsProcessorList(sampler),
                stopping_criteria=StoppingCriteriaList([_BatchTracker(rows)]),
                eos_token_id=self.end_ids,
                pad_token_id=self.pad_id,
            )
        for row in rows:  # generate stopped without a verdict for this row (e.g. the model's length limit)
            row.finish("length")

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in prompts)
        ids = [[self.pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        device = self.model.device
        return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


class Row:
    """One job's state inside a batch: tokens so far, text sent, and whether it has ended."""

    def __init__(self, job: Job, *, decoder: PreTrainedTokenizerBase, end_ids: list[int]) -> None:
        self.job = job
        self.params = job.params
        self.samples = job.params.temperature > 0
        self.generator: torch.Generator | None = None  # made by _RowSampler on the model's device
        self.done = False
        self._decoder = decoder
        self._end_ids = set(end_ids)
        self._ids: list[int] = []
        self._generated = 0
        self._sent = 0  # characters of the answer already streamed
        # Decoding each step costs time: only rows that stream or watch for stop sequences need it.
        self._watch_text = job.stream or bool(job.params.stop)
        self._stops = StopScanner(job.params.stop)

    def add(self, token: int) -> None:
        """Take the row's next token; end the row at an end-of-turn token, a stop sequence or max_tokens."""
        if self.done:
            return
        if self.job.cancelled:
            self.done = True  # nobody waits for this answer; free the row without a result
            return
        self._generated += 1
        if token in self._end_ids:
            self.finish("stop")
            return
        self._ids.append(token)
        if self._watch_text and self._check_text():
            return
        if self._generated >= self.params.max_tokens:
            self.finish("length")

    def _check_text(self) -> bool:
        """End the row at its first stop sequence (which is not returned), else stream what is safe to send."""
        text = self._decoder.decode(self._ids, skip_special_tokens=True)
        cut = self._stops.scan(text)
        if cut is not None:
            self.finish("stop", text=text[:cut])
            return True
        if self.job.stream:
            end = max(self._sent, self._stops.safe_end)
            if end > self._sent:
                self.job.emit(text[self._sent : end])
                self._sent = end
        return False

    def finish(self, reason: Literal["stop", "length"], *, text: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        text = text if text is not None else self._decoder.decode(self._ids, skip_special_tokens=True)
        if self.job.stream and len(text) > self._sent:
            self.job.emit(text[self._sent :])
        self.job.emit(Completion(text=text, finish_reason=reason, completion_tokens=self._generated))


class StopScanner:
    """Finds stop sequences in an answer that grows token by token, at a cost per new character that does
    not depend on their length: one KMP automaton per sequence, whose state is the longest end of the text
    that is a beginning of the sequence (what a stream must hold back, as it may still become a stop)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._fallbacks = [_kmp_fallbacks(stop) for stop in stops]
        self._reset()

    def _reset(self) -> None:
        self._states = [0] * len(self.stops)
        self._scanned = ""  # the text fed so far: the answer without its trailing partial characters
        self.safe_end = 0
        """Characters of the text that can be streamed: none that may grow into a stop sequence."""

    def scan(self, text: str) -> int | None:
        """Feed the answer so far; where the earliest stop sequence in it starts, or None."""
        end = len(text)
        while end > 0 and text[end - 1] == "\ufffd":  # byte-level tokens split UTF-8 characters
            end -= 1
        if not text.startswith(self._scanned):
            self._reset()  # decoding rewrote earlier text (rare): scan it all again
        start = len(self._scanned)
        found: int | None = None
        for position in range(start, end):
            for index, stop in enumerate(self.stops):
                state = self._advance(index, text[position])
                if state == len(stop):
                    begin = position + 1 - state
                    found = begin if found is None else min(found, begin)
                    self._states[index] = self._fallbacks[index][state - 1]
        self._scanned = text[:end]
        self.safe_end = end - max(self._states, default=0)
        return found

    def _advance(self, index: int, char: str) -> int:
        stop, fallbacks, state = self.stops[index], self._fallbacks[index], self._states[index]
        while state and stop[state] != char:
            state = fallbacks[state - 1]
        if stop[state] == char:
            state += 1
        self._states[index] = state
        return state


def _kmp_fallbacks(stop: str) -> list[int]:
    """For each prefix stop[:i+1], the length of its longest proper prefix that is also its suffix."""
    fallbacks = [0] * len(stop)
    length = 0
    for i in range(1, len(stop)):
        while length and stop[i] != stop[length]:
            length = fallbacks[length - 1]
        if stop[i] == stop[length]:
            length += 1
        fallbacks[i] = length
    return fallbacks


class _BatchTracker(StoppingCriteria):
    """Feeds each step's tokens to the rows; a row that has ended is done for `generate` too."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            row.add(token)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


class _RowSampler(LogitsProcessor):
    """Each sampling row draws its token at its own temperature / top_p (and seed); greedy rows keep their
    argmax. Only the chosen token stays possible, so the greedy `generate` takes exactly that one."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice = scores.argmax(dim=-1)
        for i, row in enumerate(self.rows):
            if row.samples and not row.done:
                choice[i] = self._sample(scores[i], row)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, choice[:, None], 0.0)

    @staticmethod
    def _sample(logits: torch.Tensor, row: Row) -> torch.Tensor:
        if row.generator is None:
            row.generator = torch.Generator(device=logits.device)
            if row.params.seed is None:
                row.generator.seed()  # fresh randomness per request
            else:
                row.generator.manual_seed(row.params.seed)
        probs = torch.softmax(logits.float() / row.params.temperature, dim=-1)
        if row.params.top_p < 1.0:
            # Nucleus: the smallest set of most likely tokens whose mass reaches top_p (never empty).
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < row.params.top_p
            keep[0] = True  # the top token always: a top_p that rounds to 0 in float32 would keep nothing
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return torch.multinomial(probs, 1, generator=row.generator)[0]
