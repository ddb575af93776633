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

The backbone under it runs the prompt start that every row of the batch shares (the system prompt) once, not once
per row (`backbone_states`): same loss and gradients, about 45% fewer token positions for a shop batch of 8.
`evaluate`'s loss uses it too, where the few-shot column's rows share their three examples as well.
"""

from __future__ import annotations

import inspect
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

    if args:  # positional inputs (TRL passes keywords): every position
        hidden, start = model.base_model(*args, **kwargs | {"use_cache": False}).last_hidden_state, 0
    else:
        hidden, start = backbone_states(model, labels=labels, **kwargs)  # hidden states from position `start` on
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != -100  # False before `start`: the shared prefix holds no label (_shared_prefix)
    logits = model.get_output_embeddings()(hidden[:, :-1][mask[:, start:]]).float()  # (answer tokens, vocabulary)
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


# Below this many tokens, running the shared prefix once saves less than its extra forward call costs.
MIN_SHARED_PREFIX = 16


def backbone_states(model: PreTrainedModel, *, labels, **inputs: Any) -> tuple[Any, int]:
    """The backbone's last hidden states from position `start` on, and `start`. Rows of a batch often begin with
    the same tokens (the system prompt: 67 of the shop rows' 137 on average; 3 examples more for evaluate's
    few-shot column): that prefix runs once, for one row, and its keys and values serve every row. Attention is
    causal, so the prefix's states do not depend on what follows it, and its gradient is the sum over the rows, as
    autograd takes it through `expand`: the same loss and gradients as running each row whole, for about half the
    tokens of a shop batch. The prefix holds no label, so no position whose state is left out is scored."""
    input_ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    # peft passes inputs_embeds=None, output_attentions=None and the like; anything set (position ids of packed
    # rows, embeddings) takes the plain path.
    others = {key for key, value in inputs.items() if value is not None and value is not False}
    plain = input_ids is None or bool(others - {"input_ids", "attention_mask", "return_dict"})
    start = 0 if plain else _shared_prefix(input_ids, mask, labels)
    backbone = model.base_model
    if start < MIN_SHARED_PREFIX:
        return backbone(**inputs | {"use_cache": False}).last_hidden_state, 0
    prefix = backbone(input_ids=input_ids[:1, :start], use_cache=True)
    cache = prefix.cache if "cache" in prefix else prefix.past_key_values  # renamed in transformers 5.2x
    for layer in cache.layers:  # one row's keys and values, seen by every row (no copy)
        layer.keys, layer.values = (t.expand(len(input_ids), *t.shape[1:]) for t in (layer.keys, layer.values))
    name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    rest = backbone(input_ids=input_ids[:, start:], attention_mask=mask, use_cache=True, **{name: cache})
    return rest.last_hidden_state, start


def _shared_prefix(input_ids, attention_mask, labels) -> int:
    """Length of the leading tokens that every row has in common, unpadded and unlabelled, whose last one
    predicts no label either; at least one token is left after it. 0 for a batch of one row."""
    if len(input_ids) < 2:
        return 0
    shared = (input_ids == input_ids[:1]).all(dim=0) & (labels == -100).all(dim=0)
    if attention_mask is not None:
        shared &= attention_mask.bool().all(dim=0)
    run = int(shared.int().cumprod(dim=0).sum())  # leading positions where all of it holds
    return max(min(run - 1, input_ids.shape[1] - 1), 0)  # the token after the prefix is predicted from inside it
