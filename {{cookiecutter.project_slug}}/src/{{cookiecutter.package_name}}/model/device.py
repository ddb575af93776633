"""Where this process runs: the device, the numeric precision, and (when several processes train together)
which process this is.

    device = resolve_device(cfg.train.device)             # auto: CUDA, then Apple MPS, then CPU
    precision = resolve_precision(cfg.train.precision, device=device)

The process questions are answered from the environment that a launcher (accelerate, torchrun) sets; a plain
single process is rank 0 of 1, so the training code reads the same in both cases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ProjectError

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig

Device = Literal["cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16"]
TORCH_DTYPES: dict[Precision, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class ModelError(ProjectError, ValueError):
    """A base model, tokenizer or adapter cannot be found or loaded; the message says which and what to do."""


# ---- device and precision -------------------------------------------------------------------------------


def resolve_device(requested: Literal["auto", "cpu", "cuda", "mps"]) -> Device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit choice that is not available is an error."""
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if requested == "auto":
        return next(device for device, ok in available.items() if ok)  # type: ignore[return-value]
    if not available[requested]:
        raise ModelError(
            f"train.device={requested}, but this machine has no {requested.upper()} device; use auto or cpu"
        )
    return requested


def auto_precision(device: Device) -> Precision:
    """What `auto` means for weights, training and QLoRA's compute dtype alike: bf16 on GPUs that support it,
    fp16 on older GPUs, bf16 on CPUs with fast bf16 matrix units (`cpu_has_fast_bf16`), fp32 on other CPUs and
    on MPS (they train reliably only in float32)."""
    if device == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if device != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 (Intel Xeon since Cooper Lake, AMD Zen 4+): bf16 matrix products in hardware. Measured
    on 2 cores of a Xeon with AMX: 2,011 GFLOPS in bf16 against 290 in fp32 for a 1360x576 @ 576x1536 product.
    Elsewhere PyTorch emulates bf16 on a CPU, slower than fp32."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: Precision | Literal["auto"], *, device: Device) -> Precision:
    """Mixed precision for training: `auto_precision`, or the one asked for if this device runs it natively."""
    if requested == "auto":
        return auto_precision(device)
    if requested == "fp16" and device != "cuda":
        raise ModelError(
            f"train.precision=fp16 needs a CUDA GPU, not {device}; use auto or fp32 (or bf16 where supported)"
        )
    if requested == "bf16" and device == "cpu" and not cpu_has_fast_bf16():
        raise ModelError(
            "train.precision=bf16, but this CPU has neither AMX nor AVX512-BF16: bf16 would be emulated, slower "
            "than fp32; use auto or fp32"
        )
    if requested == "bf16" and device == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(0)
            raise ModelError(f"train.precision=bf16, but {name} has no bf16 support; use auto or fp16")
    return requested


def attention_implementation(requested: str, *, device: Device, training: bool) -> str | None:
    """`auto`: for training on a CPU eager attention, where PyTorch's fused (sdpa) kernel has a slow backward pass;
    otherwise None, transformers' own choice (sdpa). Measured with SmolLM2-135M in bf16 on 2 cores: a training step
    (batch 8 x 170 tokens) 2.72 s eager, 3.62 s sdpa; generation (batch 60) 302 tokens/s sdpa, 242 eager."""
    if requested != "auto":
        return requested
    return "eager" if device == "cpu" and training else None


def resolve_dtype(
    requested: Literal["auto", "float32", "bfloat16", "float16"], *, device: Device, precision: Precision | None = None
) -> torch.dtype:
    """Weight dtype: the requested one; for `auto` the training precision's when training (`precision`), else the
    dtype of `auto_precision(device)`."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    return getattr(torch, TORCH_DTYPES[precision or auto_precision(device)])


def quantization_config(*, device: Device) -> BitsAndBytesConfig:
    """QLoRA: 4-bit NF4 weights with double quantization, computing in bfloat16 (float16 on older GPUs)."""
    import torch
    from transformers import BitsAndBytesConfig

    if device != "cuda":
        raise ModelError(
            f"model.load_in_4bit needs a CUDA GPU, but training runs on {device}; set model.load_in_4bit=false"
        )
    try:
        import bitsandbytes  # noqa: F401  (only checks that it is installed)
    except ImportError:
        raise ModelError("model.load_in_4bit needs bitsandbytes: pip install -e '.[gpu]'") from None
    compute = getattr(torch, TORCH_DTYPES[auto_precision(device)])
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


# ---- inside a launched process (several only with the multi_gpu extra) --------------------------------


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's share; os.cpu_count() elsewhere)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def world_size() -> int:
    """Processes in the whole job (torchrun's WORLD_SIZE); 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's GPU on its machine (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 of the whole job (or a plain single process): the only one that writes outputs and logs."""
    return int(os.environ.get("RANK", "0")) == 0


def active_strategy() -> str:
    """What accelerate launched this process with: fsdp, deepspeed, ddp, or none for one process."""
    # >>> multi_gpu
    for strategy in ("fsdp", "deepspeed"):
        if os.environ.get(f"ACCELERATE_USE_{strategy.upper()}", "").lower() == "true":
            return strategy
    # <<< multi_gpu
    return "ddp" if world_size() > 1 else "none"


def run_params(*, device: str, batch_size: int, accumulation: int) -> dict[str, int | str]:
    """MLflow parameters of the job's shape: effective batch = per-device batch x accumulation x world size."""
    size = world_size()
    return {
        "distributed.world_size": size,
        "distributed.backend": ("nccl" if device == "cuda" else "gloo") if size > 1 else "none",
        "distributed.strategy": active_strategy(),
        "distributed.effective_batch_size": batch_size * accumulation * size,
    }


def agree_on(decide: Callable[[], Any], device: str) -> Any:
    """`decide()`, the same answer in every process: the run folder's name carries a timestamp, which two
    processes starting a second apart would choose differently (one process here without multi_gpu)."""
    # >>> !multi_gpu
    return decide()
    # <<< !multi_gpu
    # >>> multi_gpu
    # Rank 0's answer, broadcast; its error is raised in every process (not only there, which would leave the
    # others waiting for it).
    try:
        outcome: tuple[bool, Any] = (True, decide())
    except ProjectError as err:
        outcome = (False, err)
    if world_size() > 1:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState(cpu=device == "cpu")  # the Trainer's own process group, started a little earlier
        outcome = broadcast_object_list([outcome], from_process=0)[0]
    ok, value = outcome
    if not ok:
        raise value
    return value
    # <<< multi_gpu


@contextmanager
def local_main_process_first(device: str) -> Iterator[None]:
    """Run the block in this machine's first process, then in the others (a file they all need is made once)."""
    # >>> multi_gpu
    if world_size() > 1:
        from accelerate import PartialState

        with PartialState(cpu=device == "cpu").local_main_process_first():
            yield
        return
    # <<< multi_gpu
    yield


def placement(device: str) -> str | None:
    """Where `model.load_base_model` puts the weights: this process's own GPU (not GPU 0 for all of them);
    with the multi_gpu extra None under FSDP/DeepSpeed, which shard the model from the CPU onto the GPUs."""
    if device != "cuda":
        return device
    # >>> multi_gpu
    if active_strategy() in ("fsdp", "deepspeed"):
        return None
    # <<< multi_gpu
    return f"cuda:{local_rank()}"
