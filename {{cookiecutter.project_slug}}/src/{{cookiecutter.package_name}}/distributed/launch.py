"""Training in several processes (DDP, FSDP, DeepSpeed ZeRO-3) through Hugging Face accelerate.

    <project> train --config configs/smoke.yaml --nproc 2                   # 2 processes here (gloo on CPU)
    <project> train --config configs/gpu.yaml --nproc 8 --strategy fsdp     # 8 GPUs, sharded
    <project> train ... --nproc 8 --num-machines 2 --machine-rank 0 --main-process-ip 10.0.0.1  # on each node

`launch_command` is the one place that builds the `accelerate launch` command line: the CLI runs it, the
Makefile's `make train NPROC=N` goes through the CLI, and the cloud training jobs put it in their container's
command. `check_launch` refuses, before any model loads, what cannot run (more processes than devices, FSDP
or DeepSpeed on a CPU, a missing package, QLoRA with a sharding strategy). The rest answers, inside each
launched process, "which rank am I, how many are we, which strategy": read from the environment that
accelerate/torchrun set, so nothing here starts a process group of its own except `agree_on`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import BadInput
from ..model.device import active_strategy, usable_cores, world_size

Strategy = Literal["ddp", "fsdp", "deepspeed"]
# One accelerate config file per strategy, shipped in configs/accelerate/ (each explains when to use it).
STRATEGY_FILES: dict[str, str] = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}
ACCELERATE_CONFIG_DIR = "configs/accelerate"
DEFAULT_PORT = 29500
PACKAGE = (__package__ or "llm_portfolio").split(".")[0]


class DistributedError(BadInput, ValueError):
    """A multi-process launch that cannot run here (devices, strategy, packages); nothing was started."""


@dataclass(frozen=True)
class LaunchShape:
    """How many processes on how many machines, sharding how: `train`'s --nproc, --strategy and node options."""

    nproc: int  # processes (GPUs) per machine
    strategy: Strategy = "ddp"
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None  # the machine with machine_rank 0; needed with several machines
    main_process_port: int = DEFAULT_PORT


def launch_command(
    shape: LaunchShape, *, train_args: Sequence[str] = (), config_dir: str = ACCELERATE_CONFIG_DIR
) -> list[str]:
    """The `accelerate launch` command training `shape.nproc` processes on each of `shape.num_machines` machines.

    `nproc` counts processes (GPUs) per machine; accelerate's `--num_processes` is the total over all
    machines. `train_args` follow `<package> train` (e.g. `["--config", "configs/gpu.yaml", "lora.r=8"]`).
    The same `accelerate launch` works on CPU: with the MULTI_GPU config it starts torchrun workers, and the
    Trainer's `use_cpu` makes each join a gloo process group (accelerate's own `--cpu` would start one
    process only, or need mpirun). Run the command from the project folder (`config_dir` is relative)."""
    if shape.strategy not in STRATEGY_FILES:
        raise DistributedError(f"strategy={shape.strategy!r} is not one of {', '.join(STRATEGY_FILES)}")
    nproc, machines = shape.nproc, shape.num_machines
    if nproc < 1 or machines < 1:
        raise DistributedError(f"nproc={nproc}, num_machines={machines}: both must be at least 1")
    if not 0 <= shape.machine_rank < machines:
        raise DistributedError(f"machine_rank={shape.machine_rank} must be in 0..{machines - 1} (num_machines)")
    if machines > 1 and not shape.main_process_ip:
        raise DistributedError(
            f"num_machines={machines} needs main_process_ip: the address of the machine with machine_rank 0"
        )
    command = ["accelerate", "launch", "--config_file", f"{config_dir}/{STRATEGY_FILES[shape.strategy]}"]
    command += ["--num_processes", str(nproc * machines), "--num_machines", str(machines)]
    if machines > 1:
        command += ["--machine_rank", str(shape.machine_rank), "--main_process_ip", str(shape.main_process_ip)]
    command += ["--main_process_port", str(shape.main_process_port), "-m", PACKAGE, "train", *train_args]
    return command


def check_launch(
    *,
    nproc: int,
    strategy: Strategy,
    device: str,
    load_in_4bit: bool,
    devices_available: int,
    installed: Callable[[str], bool] | None = None,
) -> None:
    """Refuse a launch that cannot work, naming the setting and the fix. `device` is the resolved
    train.device; `devices_available` the GPUs (CUDA) or CPU cores (CPU) of this machine."""
    installed = installed or _installed
    if strategy in ("fsdp", "deepspeed") and device != "cuda":
        raise DistributedError(
            f"--strategy {strategy} shards the model over CUDA GPUs, but train.device resolves to {device}; "
            "use --strategy ddp (the default) on this machine, or train on GPUs"
        )
    if strategy == "deepspeed" and not installed("deepspeed"):
        raise DistributedError(
            "--strategy deepspeed needs the deepspeed package, which is not installed: "
            "pip install -e '.[deepspeed]' (or use --strategy fsdp, which needs nothing extra)"
        )
    if load_in_4bit and strategy != "ddp":
        raise DistributedError(
            f"model.load_in_4bit=true (QLoRA) with --strategy {strategy}: the 4-bit base model is placed whole "
            "on each GPU and cannot be sharded here; use --strategy ddp (each GPU holds the 4-bit model) or "
            "set model.load_in_4bit=false"
        )
    if device == "mps" and nproc > 1:
        raise DistributedError(f"--nproc {nproc} on Apple MPS: torch.distributed does not run there; use --nproc 1")
    if nproc > devices_available:
        what = "CUDA GPUs" if device == "cuda" else "CPU cores"
        raise DistributedError(
            f"--nproc {nproc} (NPROC) is more than the {devices_available} {what} of this machine; "
            f"use --nproc {devices_available} or fewer"
        )


def devices_available(device: str) -> int:
    """GPUs on CUDA; usable cores on CPU, since each process needs a core (more only oversubscribes them)."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    if device == "mps":
        return 1
    return usable_cores()


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_launched(*, device: str, load_in_4bit: bool) -> None:
    """`check_launch` from inside a launched process (also one started by `accelerate launch` by hand): every
    process refuses alike, before any model loads. A single plain process has nothing to check."""
    strategy = active_strategy()
    if strategy == "none":
        return
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    check_launch(
        nproc=per_machine,
        strategy=strategy,  # type: ignore[arg-type]
        device=device,
        load_in_4bit=load_in_4bit,
        devices_available=devices_available(device),
    )
