"""Training speed: our `train` path against a bare PyTorch + peft loop, same model, LoRA, batches and precision.

    python scripts/benchmark_train.py --config configs/default.yaml --steps 8
    python scripts/benchmark_train.py --config configs/default.yaml train.precision=fp32 lora.dropout=0.05

Run it in the project folder after `make data`. Both sides run in this process, one after the other:
- ours: the Trainer that `train` builds (`train.load_for_training` + `train.build_trainer`: TRL's SFTTrainer on a
  peft LoRA model), run by `trainer.train()` for --warmup + --steps optimizer steps, no evaluation or checkpoint;
- bare: a fresh copy of the same base model with the same LoRA settings, a plain AdamW and the textbook loop
  (`model(**batch).loss`, backward, step) over exactly the batches ours trained on (recorded from its
  collator), under the same autocast precision.
The first --warmup steps of each are not timed. Prints, for each: tokens/s (tokens that are not padding), seconds
per step, the share of padding, peak memory (GPU memory on CUDA, the process's resident memory on a CPU), a
per-phase profile of one step (data collation, backbone forward, lm_head + loss, backward, optimizer) and its
top operators from torch.profiler; then the ratio ours / bare, and each side's model FLOPs utilization (MFU):
the model FLOPs its tokens/s stand for (4 x parameters per token: the forward pass, and a backward pass that
computes activation gradients only, since LoRA leaves the base weights frozen) over the peak of a matmul in the
run's precision, measured in this same process. --out writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from {{ cookiecutter.package_name }}.config import Config, load_config
from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.model.device import resolve_device, resolve_precision
from {{ cookiecutter.package_name }}.model.load import lora_config
from {{ cookiecutter.package_name }}.train.sft import (
    SFT,
    Run,
    build_trainer,
    describe_hardware,
    load_for_training,
)

PHASES = ("data collation", "forward (backbone)", "lm_head + loss", "backward", "optimizer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps of each side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, kernel choice)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides, as for `train`")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="benchmark-train-") as tmp:
        config = load_config(args.config, [*args.overrides, *_quiet_run(total, output_dir=tmp)])
        device = resolve_device(config.train.device)
        precision = resolve_precision(config.train.precision, device=device)
        splits = load_splits(config.data, seed=config.train.seed, system_prompt=config.task.system_prompt)
        print(
            f"{config.model.base_model} on {describe_hardware(device)}, precision {precision}, "
            f"batch {config.train.batch_size} x {config.train.gradient_accumulation_steps} accumulation, "
            f"{args.warmup} warm-up + {args.steps} timed steps, torch threads {torch.get_num_threads()}",
            flush=True,
        )
        ours, batches = _ours(config, splits=splits, device=device, precision=precision, warmup=args.warmup, out=tmp)
    gc.collect()
    bare = _bare(config, batches=batches, device=device, precision=precision, warmup=args.warmup)

    peak = _matmul_peak(device, precision)
    for side in (ours, bare):
        side["mfu"] = round(side["tokens_per_s"] * side["flops_per_token"] / peak, 4)
    ratio = ours["tokens_per_s"] / bare["tokens_per_s"]
    _print_results({"ours": ours, "bare": bare}, ratio=ratio)
    print(
        f"MFU: ours {ours['mfu']:.1%}, bare {bare['mfu']:.1%} of a {precision} matmul peak of {peak / 1e9:,.0f} GFLOPS"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "config": args.config,
            "overrides": args.overrides,
            "model": config.model.base_model,
            "hardware": describe_hardware(device),
            "precision": precision,
            "batch_size": config.train.batch_size,
            "steps": args.steps,
            "ours": ours,
            "bare": bare,
            "ratio_ours_over_bare": round(ratio, 3),
            "matmul_peak_gflops": round(peak / 1e9, 1),
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _quiet_run(steps: int, *, output_dir: str) -> list[str]:
    """Overrides for a run that only trains: no evaluation, checkpoint, log line or MLflow run in the way."""
    return [
        f"train.max_steps={steps}",
        f"train.eval_steps={steps + 1}",
        f"train.save_steps={steps + 1}",
        f"train.logging_steps={steps + 1}",
        "train.early_stopping_patience=null",
        f"train.output_dir={output_dir}",
        "tracking.enabled=false",
    ]


# ---- ours: the Trainer `train` builds ---------------------------------------------------------------------


def _ours(config: Config, *, splits, device: str, precision: str, warmup: int, out: str) -> tuple[dict, list[dict]]:
    """Time `trainer.train()` step by step (each step from the end of the one before: collation, forward, backward,
    optimizer, the Trainer's own bookkeeping); return the figures and the collated batches in training order."""
    from transformers import TrainerCallback

    model, tokenizer, loss_mode = load_for_training(config, splits=splits, device=device, precision=precision)
    trainer = build_trainer(
        Run(
            config=config,
            config_name="test",
            model=model,
            tokenizer=tokenizer,
            splits=splits,
            loss_mode=loss_mode,
            run_dir=Path(out) / "run",
            device=device,
            precision=precision,
            recipe=SFT,
        )
    )
    # Only training steps: no evaluation or checkpoint at the last step (the Trainer's default) inside the timing.
    trainer.args.eval_strategy, trainer.args.save_strategy = "no", "no"
    batches: list[dict] = []
    collation_s: list[float] = []
    collate = trainer.data_collator

    def recording_collator(features):
        started = time.perf_counter()
        batch = collate(features)
        collation_s.append(time.perf_counter() - started)
        batches.append({key: value.clone() for key, value in batch.items() if isinstance(value, torch.Tensor)})
        return batch

    trainer.data_collator = recording_collator
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepClock())
    with _peak_memory(device) as peak:
        trainer.train()
    accumulation = config.train.gradient_accumulation_steps
    del batches[len(step_ends) * accumulation :]  # the data loader collates one batch ahead of the last step
    # Timed from the end of the last untimed step (with --warmup 0, the first step still has no start: skipped).
    first = max(warmup, 1)
    step_s = [b - a for a, b in itertools.pairwise(step_ends[first - 1 :])]
    timed = batches[first * accumulation :]
    figures = _figures(step_s, timed, memory=peak())
    figures["flops_per_token"] = _flops_per_token(model)
    step_model, target = trainer.model_wrapped, trainer.args.device  # accelerate's wrapper applies the autocast
    figures["phases_ms"], figures["top_operators"] = _profile_step(
        step_model,
        batch=batches[-1],
        loss_of=lambda batch: trainer.compute_loss(step_model, {k: v.to(target) for k, v in batch.items()}),
        backward=trainer.accelerator.backward,
        optimizer=trainer.optimizer,
        device=device,
        autocast=nullcontext,  # accelerate's wrapper of the model applies the autocast
    )
    figures["phases_ms"]["data collation"] = round(1000 * sum(collation_s) / len(collation_s), 1)
    return figures, batches


# ---- bare: the textbook loop ------------------------------------------------------------------------------


def _bare(config: Config, *, batches: list[dict], device: str, precision: str, warmup: int) -> dict:
    """The same base model and LoRA settings, trained over `batches` by the loop every PyTorch tutorial writes."""
    from peft import get_peft_model

    from {{ cookiecutter.package_name }}.model.load import load_base_model

    torch.manual_seed(config.train.seed)
    base = load_base_model(config.model, device=device, training=True, precision=precision)
    model = get_peft_model(base, lora_config(config.lora))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    autocast = _autocast(device, precision)
    accumulation = config.train.gradient_accumulation_steps
    target = next(model.parameters()).device

    def loss_of(batch: dict) -> torch.Tensor:
        return model(**{key: value.to(target) for key, value in batch.items()}).loss

    step_ends = [time.perf_counter()]
    with _peak_memory(device) as peak:
        for start in range(0, len(batches), accumulation):
            for batch in batches[start : start + accumulation]:
                with autocast():
                    loss = loss_of(batch) / accumulation
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            step_ends.append(time.perf_counter())
    first = max(warmup, 1)  # the same steps as ours
    step_s = [b - a for a, b in itertools.pairwise(step_ends[first:])]
    figures = _figures(step_s, batches[first * accumulation :], memory=peak())
    figures["flops_per_token"] = _flops_per_token(model)
    figures["phases_ms"], figures["top_operators"] = _profile_step(
        model,
        batch=batches[-1],
        loss_of=loss_of,
        backward=lambda loss: loss.backward(),
        optimizer=optimizer,
        device=device,
        autocast=autocast,
    )
    figures["phases_ms"]["data collation"] = 0.0  # it reuses the batches ours collated
    return figures


# ---- measuring --------------------------------------------------------------------------------------------


def _figures(step_s: list[float], batches: list[dict], *, memory: float) -> dict:
    tokens = sum(_real_tokens(batch) for batch in batches)
    slots = sum(batch["input_ids"].numel() for batch in batches)
    seconds = sum(step_s)
    return {
        "seconds_per_step": round(seconds / len(step_s), 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "tokens": tokens,
        "padding_share": round(1 - tokens / slots, 3),
        "peak_memory_gb": round(memory / 2**30, 2),
    }


def _flops_per_token(model) -> int:
    """Training FLOPs per token: 2 x parameters for the forward pass, 2 x for the backward pass through the frozen
    weights (activation gradients; LoRA computes no weight gradients for them). The input embedding counts only
    when it is also the output head (a lookup is not a matmul); attention scores (small at these lengths) and
    the LoRA matrices (under 1%) are left out."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding, head = inner.get_input_embeddings().weight, inner.get_output_embeddings().weight
    weights = sum(p.numel() for name, p in inner.named_parameters() if "lora_" not in name)
    return 4 * (weights - (embedding.numel() if head is not embedding else 0))


def _matmul_peak(device: str, precision: str, size: int = 2048) -> float:
    """FLOP/s of a square matmul in the run's precision on this device, the best of repeats over about 1 s: the
    ceiling that the MFU figures are a share of."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b  # first call: kernel choice, allocations
    best, deadline = float("inf"), time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        started = _now(device)
        a @ b
        best = min(best, _now(device) - started)
    return 2 * size**3 / best


def _real_tokens(batch: dict) -> int:
    """Tokens that are not padding: the attention mask's ones (padding-free batches have no padding)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def _profile_step(
    model,
    *,
    batch: dict,
    loss_of: Callable[[dict], torch.Tensor],
    backward: Callable[[torch.Tensor], None],
    optimizer,
    device: str,
    autocast: Callable,
) -> tuple[dict[str, float], list[str]]:
    """One more step, timed by phase (the backbone's forward found by hooks, lm_head + loss the rest of the
    forward), under torch.profiler; returns milliseconds per phase and the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    marks: dict[str, float] = {}
    backbone = _backbone(model)
    hooks = [
        backbone.register_forward_pre_hook(lambda *a: marks.__setitem__("backbone_start", _now(device))),
        backbone.register_forward_hook(lambda *a: marks.__setitem__("backbone_end", _now(device))),
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    model.train()
    try:
        with profile(activities=activities) as profiler:
            started = _now(device)
            with autocast():
                loss = loss_of(batch)
            forward_end = _now(device)
            backward(loss)
            backward_end = _now(device)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            optimizer_end = _now(device)
    finally:
        for hook in hooks:
            hook.remove()
    phases = {
        "forward (backbone)": marks["backbone_end"] - marks["backbone_start"],
        "lm_head + loss": (forward_end - started) - (marks["backbone_end"] - marks["backbone_start"]),
        "backward": backward_end - forward_end,
        "optimizer": optimizer_end - backward_end,
    }
    sort_by = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=8, max_name_column_width=48)
    return {name: round(1000 * seconds, 1) for name, seconds in phases.items()}, table.splitlines()


def _backbone(model) -> torch.nn.Module:
    """The transformer stack under the LM head (peft's and the Trainer's wrappers unwrapped)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)  # DDP
    return inner.get_decoder()


def _autocast(device: str, precision: str) -> Callable:
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _now(device: str) -> float:
    _sync(device)
    return time.perf_counter()


@contextmanager
def _peak_memory(device: str) -> Iterator[Callable[[], float]]:
    """Peak bytes within the block: allocated GPU memory on CUDA, else this process's resident memory (sampled
    every 20 ms; includes the model and whatever the other side left behind)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        yield torch.cuda.max_memory_allocated
        return
    peak = [_rss()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        sampler.join()


def _rss() -> float:
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _print_results(results: dict[str, dict], *, ratio: float) -> None:
    print(f"\n{'':24}{'ours':>12}{'bare':>12}")
    for key, label in [
        ("tokens_per_s", "tokens/s (no padding)"),
        ("seconds_per_step", "s/step"),
        ("padding_share", "padding share"),
        ("peak_memory_gb", "peak memory (GB)"),
    ]:
        print(f"{label:24}{results['ours'][key]:>12}{results['bare'][key]:>12}")
    print("one step by phase (ms):")
    for phase in PHASES:
        print(f"  {phase:22}{results['ours']['phases_ms'][phase]:>12}{results['bare']['phases_ms'][phase]:>12}")
    for side in ("ours", "bare"):
        print(f"\ntop operators, {side}:")
        print("\n".join(results[side]["top_operators"]))
    print(f"\nours / bare tokens/s: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
