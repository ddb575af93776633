"""The LM head on the answer tokens only, for training on a CPU.

TRL's SFTTrainer swaps the model's forward for a fused LM head (`trl.trainer.utils.add_fused_lm_head`) that
returns each next token's log-probability without building the (batch, length, vocabulary) logits. On a GPU it
projects only the positions that carry a label; on a CPU it projects every position, prompt and padding included,
and in float32. Here three tokens of four are prompt or padding, and the vocabulary has 49,152 entries: measured
with SmolLM2-135M, batch 8, bf16 on 2 cores (`scripts/benchmark_train.py`), the head and loss took 0.70 s of a
step's forward and its backward as much again. `answer_tokens_only` puts a forward in front of TRL's that projects
the labelled positions only, in the autocast dtype, and returns the same fields, so TRL's loss, gradients and
metrics (entropy, token accuracy) stay as they were. DPOTrainer uses the same fused head for the policy and
its reference (preference/dpo.py puts this one in front of it too).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Config fields that rescale or cap the logits; TRL's head applies them, this one does not, so it stays out of the way.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def answer_tokens_only(model: PreTrainedModel) -> bool:
    """Put the labelled-positions-only head in front of TRL's fused one on `model` (the causal LM under peft's
    wrapper, as TRL patched it). Returns False, changing nothing, for a model whose logits are rescaled or capped."""
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in _LOGIT_TRANSFORMS):
        return False
    trl_forward = model.forward

    def forward(self, *args: Any, fused_lm_head: bool = False, labels=None, num_items_in_batch=None, **kwargs: Any):
        # Anything but the plain fused call (generation, shifted labels from sequence parallelism, MoE aux
        # losses) goes to TRL's forward unchanged.
        if not fused_lm_head or labels is None or "shift_labels" in kwargs or kwargs.get("output_router_logits"):
            return trl_forward(
                *args, fused_lm_head=fused_lm_head, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs
            )
        return _answer_token_outputs(self, args, kwargs, labels=labels, num_items_in_batch=num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    return True


def _answer_token_outputs(model: PreTrainedModel, args: tuple, kwargs: dict, *, labels, num_items_in_batch):
    """TRL's FusedCausalLMOutput, from the LM head applied at the positions whose next token has a label."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != -100
    logits = model.get_output_embeddings()(hidden[mask]).float()  # (answer tokens, vocabulary)
    log_softmax = logits.log_softmax(dim=-1)
    chosen = log_softmax.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
        mean_logits = logits.mean(dim=-1)  # DPOTrainer's `logits/*` metrics
        is_top1 = logits.argmax(dim=-1) == targets[mask]

    def spread(values: torch.Tensor) -> torch.Tensor:  # back to (batch, length - 1), zero where there is no label
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    log_probs = spread(chosen)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / count,
        log_probs=log_probs,
        entropy=spread(entropy),
        mean_logits=spread(mean_logits),
        is_top1=spread(is_top1),
        label_mask=mask,
    )
