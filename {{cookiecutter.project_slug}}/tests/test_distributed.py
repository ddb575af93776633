"""Training in several processes: the launch command, what is refused before it starts, the shipped accelerate
configs (validated by accelerate's own parser and loader: FSDP and DeepSpeed need GPUs), and a real 2-process
DDP run on the CPU (gloo) against a single-process run with the same effective batch."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.distributed.launch import (
    DistributedError,
    LaunchShape,
    check_launch,
    launch_command,
)
from {{ cookiecutter.package_name }}.model import device
from {{ cookiecutter.package_name }}.model.device import run_params

PROJECT = Path(__file__).parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
TRAIN_ARGS = ["--config", "configs/gpu.yaml", "lora.r=8"]
SHARDED = "SHARDED_STATE_DICT"  # fsdp.yaml's checkpoints: each rank writes its part; the final adapter is gathered


def test_launch_command_for_one_machine():
    assert launch_command(LaunchShape(nproc=4), train_args=TRAIN_ARGS) == [
        "accelerate", "launch", "--config_file", "configs/accelerate/ddp.yaml",
        "--num_processes", "4", "--num_machines", "1", "--main_process_port", "29500",
        "-m", PACKAGE, "train", "--config", "configs/gpu.yaml", "lora.r=8",
    ]  # fmt: skip


def test_launch_command_for_two_machines_counts_every_process():
    shape = LaunchShape(nproc=8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", strategy="fsdp")
    command = launch_command(shape, train_args=TRAIN_ARGS)
    assert command[:12] == [
        "accelerate", "launch", "--config_file", "configs/accelerate/fsdp.yaml",
        "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc": 2, "strategy": "zero2"}, "strategy='zero2' is not one of ddp, fsdp, deepspeed"),
        ({"nproc": 0}, "nproc=0, num_machines=1: both must be at least 1"),
        ({"nproc": 2, "num_machines": 2, "machine_rank": 2, "main_process_ip": "h"}, "machine_rank=2 must be in 0..1"),
        ({"nproc": 2, "num_machines": 2}, "num_machines=2 needs main_process_ip"),
    ],
)
def test_launch_command_refuses_impossible_shapes(kwargs, message):
    with pytest.raises(DistributedError, match=re.escape(message)):
        launch_command(LaunchShape(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc": 3, "device": "cpu", "devices_available": 2}, "--nproc 3 (NPROC) is more than the 2 CPU cores"),
        ({"nproc": 4, "device": "cuda", "devices_available": 2}, "use --nproc 2 or fewer"),
        ({"nproc": 1, "strategy": "fsdp", "device": "cpu"}, "--strategy fsdp shards the model over CUDA GPUs"),
        ({"nproc": 2, "strategy": "deepspeed", "device": "cpu"}, "use --strategy ddp"),
        ({"nproc": 2, "strategy": "deepspeed"}, "pip install -e '.[deepspeed]'"),
        ({"nproc": 2, "strategy": "fsdp", "load_in_4bit": True}, "load_in_4bit=true (QLoRA) with --strategy fsdp"),
        ({"nproc": 2, "device": "mps", "devices_available": 1}, "--nproc 2 on Apple MPS"),
    ],
)
def test_check_launch_names_the_setting_and_the_fix(kwargs, message):
    settings = {"strategy": "ddp", "device": "cuda", "load_in_4bit": False, "devices_available": 8} | kwargs
    with pytest.raises(DistributedError, match=re.escape(message)):
        check_launch(**settings, installed=lambda package: False)


def test_check_launch_accepts_what_runs():
    check_launch(nproc=2, strategy="ddp", device="cpu", load_in_4bit=False, devices_available=2)
    check_launch(nproc=2, strategy="ddp", device="cuda", load_in_4bit=True, devices_available=2)  # QLoRA + DDP
    check_launch(
        nproc=8, strategy="deepspeed", device="cuda", load_in_4bit=False, devices_available=8, installed=lambda _: True
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nproc", "999"], "--nproc 999 (NPROC) is more than the"),
        (["--strategy", "fsdp"], "--strategy fsdp shards the model over CUDA GPUs"),
    ],
)
def test_cli_refuses_before_launching_with_exit_2(options, message, tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may be launched"))
    outputs = tmp_path / "outputs"
    command = ["train", "--config", "configs/smoke.yaml", *options, f"train.output_dir={outputs}"]
    result = CliRunner().invoke(app, command, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not outputs.exists()


def test_run_params_state_the_effective_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert run_params(device="cuda", batch_size=8, accumulation=2) == {
        "distributed.world_size": 4,
        "distributed.backend": "nccl",
        "distributed.strategy": "ddp",
        "distributed.effective_batch_size": 64,
    }
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_params(device="cpu", batch_size=8, accumulation=2)["distributed.backend"] == "none"


@pytest.mark.parametrize(
    ("strategy", "distributed_type", "env"),
    [
        ("ddp", "MULTI_GPU", {}),
        ("fsdp", "FSDP", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": SHARDED}),
        ("deepspeed", "DEEPSPEED", {}),
    ],
)
def test_shipped_accelerate_configs_load_and_parse_with_our_command(strategy, distributed_type, env, monkeypatch):
    """No GPU here: what can be checked without one. accelerate's own parser reads the command we build, its
    loader reads the config file, and (DDP, FSDP) its launcher turns both into the workers' environment."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    monkeypatch.chdir(PROJECT)
    shape = LaunchShape(nproc=2, strategy=strategy, main_process_port=0)
    command = launch_command(shape, train_args=["--config", "c.yaml"])
    config = load_config_from_file(command[3])
    assert config.distributed_type.value == distributed_type
    assert config.mixed_precision == "no"  # precision is train.precision's, through the Trainer
    args = launch_command_parser().parse_args(command[2:])
    assert (args.training_script, args.training_script_args) == (PACKAGE, ["train", "--config", "c.yaml"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 2
    if strategy == "deepspeed":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
        return
    workers_env = prepare_multi_gpu_env(args)
    assert {key: workers_env.get(key) for key in env} == env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert device.active_strategy() == ("fsdp" if strategy == "fsdp" else "none")


def test_agree_on_in_one_process_returns_or_raises_the_decision():
    assert device.agree_on(lambda: "smoke-20250101-120000", "cpu") == "smoke-20250101-120000"

    def refuse():
        raise DistributedError("outputs/x already exists")

    with pytest.raises(DistributedError, match="already exists"):
        device.agree_on(refuse, "cpu")


# ---- a real 2-process run (gloo) -------------------------------------------------------------------------

# 6 optimizer steps of 16 rows: one process x 16, or 2 processes x 8 (same effective batch, same rows per step),
# over the first 96 training rows (less to tokenize in each process).
STEPS = ["train.max_steps=6", "train.logging_steps=3", "train.eval_steps=100", "train.save_steps=6"]
STEPS += ["data.max_train_samples=96", "train.group_by_length=false"]  # the same random order in both runs
# The two runs see the same rows in each step and average the loss over the same tokens (transformers'
# average_tokens_across_devices), so they differ only in floating-point summation order: measured 1e-7 relative
# at steps 3 and 6. 0.1% leaves room for other CPUs' kernels; another effective batch, other rows per step or
# gradients not averaged across the processes move the step-6 loss by far more than that.
LOSS_TOLERANCE = 1e-3


# Loaded by each launched process (Python imports sitecustomize at startup): before `train` saves the adapter,
# the process writes the SHA-256 of its own LoRA weights, so the test checks that DDP kept the replicas identical.
# A test instrument, so it lives here and not in the package.
DIGEST_HOOK = """
import hashlib, os
from pathlib import Path

if "LOCAL_RANK" in os.environ:
    from {{ cookiecutter.package_name }}.train import sft

    saving = sft._save_adapter

    def digest_then_save(trainer, **kwargs):
        digest = hashlib.sha256()
        for name, parameter in sorted(trainer.model.named_parameters()):
            if parameter.requires_grad:
                digest.update(name.encode())
                digest.update(parameter.detach().float().cpu().numpy().tobytes())
        folder = Path(os.environ["DIGEST_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{os.environ['RANK']}.sha256").write_text(digest.hexdigest())
        return saving(trainer, **kwargs)

    sft._save_adapter = digest_then_save
"""


def _losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "train_log.json").read_text())["log_history"]
    return {row["step"]: row["loss"] for row in history if "loss" in row}


@pytest.mark.e2e
def test_two_processes_train_one_run_like_one_process(
    smoke_config, workdir, tiny_model, tmp_path, free_port, monkeypatch
):
    import torch

    from {{ cookiecutter.package_name }}.tracking import client as tracking_client
    from {{ cookiecutter.package_name }}.train.sft import train

    # A registry of its own: the session's store must keep the smoke run as its first version.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 processes below: on 2 busy cores, several threads only contend
    try:
        reference = train(smoke_config(*STEPS, "train.run_name=reference", root=tmp_path / "one"), config_name="smoke")
    finally:
        torch.set_num_threads(threads)
    outputs, digests, hook = tmp_path / "two" / "outputs", tmp_path / "digests", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIGEST_HOOK)
    paths = [f"data.path={workdir / 'data' / 'shop_extraction'}", f"model.base_model={tiny_model}"]
    env = os.environ | {
        "PYTHONPATH": f"{PROJECT / 'src'}{os.pathsep}{hook}",
        "DIGEST_DIR": str(digests),
        "OMP_NUM_THREADS": "1",  # 2 processes on 2 cores
    }
    command = [sys.executable, "-m", PACKAGE, "train", "--config", "configs/smoke.yaml", "--nproc", "2"]
    command += ["--main-process-port", str(free_port()), *STEPS, "train.batch_size=8", f"train.output_dir={outputs}"]
    result = subprocess.run([*command, *paths], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2" in result.stderr

    (run_dir,) = outputs.iterdir()  # both processes wrote into the one folder rank 0 named
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "adapter", "checkpoint-6", "config.yaml", "tracking.json", "train_log.json"
    ]  # fmt: skip
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "adapter").iterdir()}
    rank_digests = {p.name: p.read_text() for p in digests.iterdir()}
    assert set(rank_digests) == {"rank-0.sha256", "rank-1.sha256"}
    assert rank_digests["rank-0.sha256"] == rank_digests["rank-1.sha256"]  # DDP kept the replicas identical

    tracked = json.loads((run_dir / "tracking.json").read_text())
    client = tracking_client()
    runs = client.search_runs(
        [client.get_run(tracked["run_id"]).info.experiment_id], f"attributes.run_name = '{run_dir.name}'"
    )
    assert [(r.info.run_id, r.info.status) for r in runs] == [(tracked["run_id"], "FINISHED")]
    params = runs[0].data.params
    assert (params["distributed.world_size"], params["distributed.backend"]) == ("2", "gloo")
    assert (params["distributed.strategy"], params["distributed.effective_batch_size"]) == ("ddp", "16")
    versions = client.search_model_versions()  # the registry of this test alone: one launch, one version
    assert [(v.run_id, str(v.version)) for v in versions] == [(tracked["run_id"], tracked["model_version"])]

    one, two = _losses(reference), _losses(run_dir)
    assert sorted(two) == sorted(one) == [3, 6]
    assert two[6] == pytest.approx(one[6], rel=LOSS_TOLERANCE), (one, two)
