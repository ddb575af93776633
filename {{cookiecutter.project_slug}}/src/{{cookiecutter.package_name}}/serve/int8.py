"""Int8 weights for decoding on a CPU (LLM_INT8_DECODE): faster answers for a small accuracy cost.

A decoding step computes one new token per sequence: every weight is read from memory for a few rows of
arithmetic, so on a CPU its time is the time to read the weights (2 bytes each in bf16, 4 in fp32). An int8
copy, with one scale per output row, is 1 byte. The prompt's forward pass (many rows) is arithmetic-bound and
keeps the model's own weights, which int8 would only slow down. The price: each weight rounded to one of 255
levels of its row changes logits a little, so a greedy answer can differ. Compare before you switch it on:
`scripts/benchmark_serve.py --int8-decode` times both and counts the answers that differ.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BadInput

DECODE_ROWS = 16
"""Products with at most this many rows (tokens of the batch) use the int8 weights: decoding steps of up to
max_batch_size sequences; longer ones (prompts) use the model's own weights."""


class Int8DecodeLinear(nn.Module):
    """A Linear layer that keeps its weights for prompts and an int8 copy (a scale per row) for decoding."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        # Buffers, not parameters: the copy is made at load time and never saved.
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).to(torch.int8), persistent=False)
        self.register_buffer("scales", scales.to(torch.bfloat16), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > DECODE_ROWS:
            return self.linear(x)
        # PyTorch's CPU kernel for weight-only int8 products (gpt-fast uses it); fast with bf16 rows only, so
        # an fp32 model's few rows are cast (cheap) and the result cast back.
        out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, self.scales).to(x.dtype)
        if self.linear.bias is not None:
            out = out + self.linear.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def use_int8_decoding(model: nn.Module) -> int:
    """Wrap the Linear layers of a merged model on the CPU in Int8DecodeLinear; returns how many were."""
    device = next(model.parameters()).device.type
    if device != "cpu":
        raise BadInput(
            f"LLM_INT8_DECODE is for a model on the CPU, but this one is on {device}: unset LLM_INT8_DECODE or "
            "set LLM_DEVICE=cpu (a GPU reads weights fast enough without it)"
        )
    layers = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]
    wrapped = 0
    for parent, name, child in layers:
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0:
            int8 = Int8DecodeLinear(child)
            if _agrees(int8):
                setattr(parent, name, int8)
                wrapped += 1
    return wrapped


def _agrees(layer: Int8DecodeLinear) -> bool:
    """Whether the int8 kernel computes this layer's product right. It is a private PyTorch kernel: in torch
    2.13 on an AVX512 CPU, input widths that are not a multiple of 16 gave wrong numbers or crashed (hence the
    check above), so each layer is probed once, against the product with the dequantized weights."""
    probe = torch.randn(2, layer.linear.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        got = torch._weight_int8pack_mm(probe, layer.weight_int8, layer.scales).float()
        expected = probe.float() @ (layer.weight_int8.float() * layer.scales.float()[:, None]).T
    return bool((got - expected).norm() <= 1e-2 * expected.norm())
