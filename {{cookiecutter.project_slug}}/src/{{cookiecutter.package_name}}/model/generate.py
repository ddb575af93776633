"""Greedy generation for a chat model: what evaluation, preference pairs and the baselines share.

    answers = generate_answers(model, tokenizer=tokenizer, rows=rows, eval_cfg=config.eval, device=device)

Each row is a conversation whose last message is the expected answer: the model answers the messages before
it. Answers end at an end-of-turn token, and for JSON tasks as soon as they hold a complete JSON object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..tasks.answers import holds_complete_object
from .load import end_token_ids

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from ..config import EvalConfig
    from .device import Device

Conversation = list[dict[str, str]]


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Conversation, *, add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` as the chat template renders them (with the assistant's turn opened if asked)."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def generate_answers(
    model: PeftModel,
    *,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[Conversation],
    eval_cfg: EvalConfig,
    device: Device,
    json_answers: bool = False,
) -> list[str]:
    """Greedy answers to each conversation minus its final reply, in batches (left-padded, so every
    prompt ends where generation starts). Each answer ends at an end-of-turn token, and with `json_answers` also
    once it holds a complete JSON object (`JsonAnswerEnd`)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    tokenizer.padding_side = "left"
    stop_ids = end_token_ids(model, tokenizer)
    answers: list[str] = []
    batches = range(0, len(rows), eval_cfg.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", leave=False):
        prompts = [
            tokenizer.apply_chat_template(row[:-1], tokenize=False, add_generation_prompt=True)
            for row in rows[start : start + eval_cfg.batch_size]
        ]
        # The template already holds any special tokens, so the tokenizer must not add a second BOS.
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(
                **batch,
                max_new_tokens=eval_cfg.max_new_tokens,
                do_sample=False,
                # Plain greedy decoding: neutralise sampling settings and any repetition penalty that the
                # model's generation_config ships (Qwen's 1.05 would otherwise bend both models' answers).
                temperature=1.0,
                top_p=1.0,
                top_k=50,
                repetition_penalty=1.0,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList(
                    [JsonAnswerEnd(tokenizer, prompt_length=batch["input_ids"].shape[1])] if json_answers else []
                ),
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


class JsonAnswerEnd:
    """A stopping criterion for `generate` ending each row once the text after its prompt holds a complete JSON
    object starting at its first `{` (`tasks.answers`). Scoring reads that object and nothing after it, so
    the scores are those of generating on; the base model, which rambles on after its object, stops far sooner."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        answers = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor(
            [holds_complete_object(text) for text in answers], dtype=torch.bool, device=input_ids.device
        )
