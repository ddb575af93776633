"""LoRA supervised fine-tuning with TRL's SFTTrainer: loss on the assistant's tokens only.

    <project> train --config configs/smoke.yaml                 # tiny offline model, ~55 s on a 2-core CPU
    <project> train --config configs/default.yaml train.max_steps=50 lora.r=8
    <project> train --config configs/smoke.yaml --resume        # continue the newest smoke run

Reads top to bottom: pick the run folder, load data, model and tokenizer (every check runs before any
output is written), build the trainer, train, save `outputs/<run>/adapter/`, `config.yaml` and `train_log.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import distributed
from .config import Config, DataConfig, ModelConfig, TrainConfig, dump_config
from .data import data_record, epochs_seen, load_splits, token_length, with_recorded_system_prompt
from .errors import ProjectError
from .lm_head import answer_tokens_only
from .model import (
    Device,
    LossMode,
    Precision,
    build_tiny_model,
    check_model_source,
    load_base_model,
    load_finetuned,
    load_tokenizer,
    lora_config,
    module_names,
    prepare_chat_template,
    resolve_device,
    resolve_precision,
)
from .prefs import load_preferences, resolve_sft_adapter
from .registry import log_and_register
from .runs import CONFIG_FILE, TRAIN_LOG, read_tracking_file, write_tracking_file
from .tracking import check_tracking_server, log_training_inputs, metrics_callback, training_run

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from .registry import ModelSource

    TrainerCallbacks = Sequence[TrainerCallback]  # extra callbacks for train(): a sweep's pruner

log = logging.getLogger(__name__)
# In each checkpoint-<step>/: the run's training seconds up to it, so --resume adds the earlier sessions' time.
CHECKPOINT_RUNTIME = "train_runtime.json"


class TrainError(ProjectError, ValueError):
    """A training run cannot start (its folder exists, nothing to resume, bad settings); nothing was written."""


def train(
    config: Config, *, config_name: str, resume: bool = False, callbacks: TrainerCallbacks = (), log_model: bool = True
) -> Path:
    """Fine-tune `config.model.base_model` with LoRA; return the run folder holding adapter/ and config.yaml.
    `callbacks` join the Trainer's (a sweep's pruner); log_model=False (sweep trials) logs no model to MLflow."""
    if config.tracking.enabled:
        check_tracking_server()  # an unreachable server must fail now, not after an hour of training
    device = resolve_device(config.train.device)
    distributed.check_launched(device=device, load_in_4bit=config.model.load_in_4bit)
    run_dir = distributed.agree_on(lambda: _run_dir(config.train, config_name=config_name, resume=resume), device)
    config, splits, parent = _load_data(config)  # parent: the SFT adapter a DPO run starts from
    precision = resolve_precision(config.train.precision, device=device)
    model, tokenizer, loss_mode = load_for_training(config, splits, device=device, precision=precision, parent=parent)
    # Until training starts, any failure (a bad lora.target_modules, MLflow refusing the run) removes the new
    # run_dir, so the same train.run_name is free next time; from then on its checkpoints are kept for --resume.
    with _removed_on_failure(run_dir) as training_started:
        trainer = build_trainer(
            config,
            model=model,
            tokenizer=tokenizer,
            splits=splits,
            loss_mode=loss_mode,
            run_dir=run_dir,
            device=device,
            precision=precision,
            extra_callbacks=callbacks,
        )
        resolved = config.model_copy(update={"train": config.train.model_copy(update={"run_name": run_dir.name})})
        if distributed.is_main_process():  # the other processes of a launch write nothing but checkpoint parts
            dump_config(resolved, run_dir / CONFIG_FILE)
        action, masked = "resuming" if resume else "training", loss_mode.split("_")[0]
        log.info("%s %s on %s (%s), loss on %s tokens", action, run_dir, device, precision, masked)
        with _mlflow_run(config, run_dir=run_dir, config_name=config_name, resume=resume, parent=parent) as run_id:
            if run_id:
                write_tracking_file(run_dir, run_id=run_id, version=None)  # so --resume finds the run if this stops
                log_training_inputs(resolved, splits=splits, config_file=run_dir / CONFIG_FILE, device=device)
                trainer.add_callback(metrics_callback())
            training_started()
            runtime_s = _run_training(trainer, run_dir=run_dir, resume=resume)
            _save_adapter(trainer, tokenizer=tokenizer, adapter_dir=run_dir / "adapter")
            if not distributed.is_main_process():
                return run_dir
            write_train_log(
                run_dir,
                log_history=trainer.state.log_history,
                runtime_s=runtime_s,
                device=device,
                config_name=config_name,
                data=data_record(_data_config(config), rows={name: len(rows) for name, rows in splits.items()}),
                epochs=_epochs(trainer, train_cfg=config.train, train_rows=len(splits["train"])),
                parameters=trainable_parameters(trainer.model),
            )
            (run_dir / "README.md").unlink(missing_ok=True)  # TRL's draft model card; names no base for local models
            log.info("saved %s", run_dir / "adapter")
            if run_id and log_model:
                model = _model_to_register(trainer, config=config, adapter_dir=run_dir / "adapter")
                version = log_and_register(config, run_id=run_id, model=model, tokenizer=tokenizer)
                write_tracking_file(run_dir, run_id=run_id, version=version)
    return run_dir


def _run_training(trainer: SFTTrainer, *, run_dir: Path, resume: bool) -> float:
    """Train, from the last checkpoint when resuming; return the run's training seconds over all its sessions
    (a stopped session counts up to its last checkpoint: the steps after it are trained again)."""
    checkpoint = last_checkpoint(run_dir) if resume else None
    earlier_s = _earlier_runtime_s(run_dir, checkpoint=checkpoint)
    trainer.add_callback(_runtime_recorder(earlier_s))
    with sigterm_as_interrupt(trainer):  # `docker stop`, a spot instance: the run ends KILLED, checkpoints kept
        result = trainer.train(resume_from_checkpoint=checkpoint)
    return earlier_s + result.metrics.get("train_runtime", 0.0)


def _earlier_runtime_s(run_dir: Path, *, checkpoint: str | None) -> float:
    """Training seconds before `checkpoint`: recorded in it, else (a checkpoint of an older version) in
    train_log.json of a run that finished before being resumed, else 0."""
    if checkpoint is None:
        return 0.0
    for record in (Path(checkpoint) / CHECKPOINT_RUNTIME, run_dir / TRAIN_LOG):
        if record.is_file():
            return float(json.loads(record.read_text(encoding="utf-8"))["train_runtime_s"])
    return 0.0


def _runtime_recorder(earlier_s: float) -> TrainerCallback:
    """A callback writing the run's training seconds so far into each checkpoint, for a later --resume."""
    from transformers import TrainerCallback

    class RuntimeRecorder(TrainerCallback):
        started = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                seconds = round(earlier_s + time.monotonic() - self.started, 1)
                (folder / CHECKPOINT_RUNTIME).write_text(json.dumps({"train_runtime_s": seconds}) + "\n")

    return RuntimeRecorder()


@contextmanager
def _mlflow_run(
    config: Config, *, run_dir: Path, config_name: str, resume: bool, parent: ModelSource | None = None
) -> Iterator[str | None]:
    """The MLflow run of this training (reopened when resuming); yields None when tracking is off. It is tagged
    with `stage`, and a DPO run with its SFT parent (`parent.run_id`, `parent.model_version`, `parent.source`)."""
    if not config.tracking.enabled or not distributed.is_main_process():
        yield None
        return
    previous = read_tracking_file(run_dir) if resume else None
    parent_tags = {
        "parent.run_id": parent and parent.run_id,
        "parent.model_version": parent and parent.version,
        "parent.source": parent and config.model.adapter,
    }
    with training_run(
        config,
        run_name=run_dir.name,
        config_name=config_name,
        run_id=previous and previous["run_id"],
        tags={key: value for key, value in parent_tags.items() if value},
    ) as run_id:
        yield run_id


def _load_data(config: Config) -> tuple[Config, DatasetDict, ModelSource | None]:
    """The stage's splits and the config with its recorded system prompt (`data.with_recorded_system_prompt`).
    DPO: the preference pairs of `dpo.data_path` and the SFT parent, resolved first (a missing adapter fails
    before anything loads), whose base model becomes model.base_model (a registered one brings its own)."""
    if config.train.stage == "sft":
        splits = load_splits(config.data, system_prompt=config.task.system_prompt)
        return with_recorded_system_prompt(config, splits["train"]["messages"]), splits, None
    parent = resolve_sft_adapter(config.model.adapter or "")
    splits = load_preferences(config.dpo, seed=config.train.seed, system_prompt=config.task.system_prompt)
    config = with_recorded_system_prompt(config, [[*row["prompt"], *row["chosen"]] for row in splits["train"]])
    model_cfg = config.model.model_copy(update={"base_model": parent.base_model})
    return config.model_copy(update={"model": model_cfg}), splits, parent


def _data_config(config: Config) -> DataConfig:
    """What the run trained on, for train_log.json: the pairs' folder for DPO."""
    if config.train.stage == "dpo":
        return config.data.model_copy(update={"path": config.dpo.data_path})
    return config.data


def load_for_training(
    config: Config, splits: DatasetDict, *, device: Device, precision: Precision, parent: ModelSource | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]:
    """Base model (weights in the training precision unless model.dtype says otherwise) and tokenizer, the chat
    template ready for masked loss, and every example checked to fit. DPO (`parent` given): the SFT model instead
    (`_load_sft_policy`); TRL's max_length cuts long pairs."""
    if parent is not None:
        return _load_sft_policy(config.model, parent=parent, device=device, precision=precision)
    with distributed.local_main_process_first(device):  # one process builds the tiny model, the others load it
        _ensure_base_model(config.model, splits=splits, seed=config.train.seed)
    model_cfg = config.model
    tokenizer = load_tokenizer(
        model_cfg.base_model, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    loss_mode = prepare_chat_template(tokenizer)
    _check_lengths(splits, tokenizer=tokenizer, max_seq_length=config.data.max_seq_length)
    return load_base_model(model_cfg, device=device, training=True, precision=precision), tokenizer, loss_mode


@contextmanager
def _removed_on_failure(run_dir: Path) -> Iterator[Callable[[], None]]:
    """Delete `run_dir` if the block fails before it calls the yielded function (training started) and the
    folder did not exist before the block (never an earlier run)."""
    existed, started = run_dir.exists(), False

    def mark_started() -> None:
        nonlocal started
        started = True

    try:
        yield mark_started
    except BaseException:
        if not existed and not started:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@contextmanager
def sigterm_as_interrupt(trainer: SFTTrainer) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the MLflow run ends KILLED (not
    RUNNING) and the last checkpoint stays for --resume; the previous handler is restored after. Should a
    library swallow that exception, a callback raises it again at the next step."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    stop = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt(f"stopped by signal {signum} (SIGTERM)")

    trainer.add_callback(_stop_on(stop))
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_on(stop: threading.Event) -> TrainerCallback:
    """A callback raising KeyboardInterrupt at the next step (or evaluation batch) once `stop` is set."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop.is_set():
                raise KeyboardInterrupt("stopped by SIGTERM")

        on_substep_end = on_prediction_step = on_save = on_step_end

    return StopOnSignal()


def _run_dir(train_cfg: TrainConfig, *, config_name: str, resume: bool) -> Path:
    """The run folder: never one that exists, unless resuming it (then it must hold a checkpoint)."""
    root = Path(train_cfg.output_dir)
    if resume:
        run_dir = root / train_cfg.run_name if train_cfg.run_name else _newest_run(root, config_name=config_name)
        if last_checkpoint(run_dir) is None:
            raise TrainError(f"{run_dir}: no checkpoint-* folder to resume from; train without --resume")
        return run_dir
    if train_cfg.run_name:
        run_dir = root / train_cfg.run_name
        if run_dir.exists():
            raise TrainError(
                f"{run_dir} already exists (train.run_name={train_cfg.run_name!r}); nothing was overwritten. "
                "Choose another train.run_name, pass --resume to continue it, or delete the folder"
            )
        return run_dir
    stamp = f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir, n = root / stamp, 1
    while run_dir.exists():  # two runs in the same second: number the second one
        n += 1
        run_dir = root / f"{stamp}-{n}"
    return run_dir


def _newest_run(root: Path, *, config_name: str) -> Path:
    runs = [p for p in root.glob(f"{config_name}-*") if last_checkpoint(p) is not None]
    if not runs:
        raise TrainError(f"--resume: no run of '{config_name}' with a checkpoint under {root}/; set train.run_name")
    return max(runs, key=lambda p: p.stat().st_mtime)


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint-<step>/: one a stop (SIGTERM, Ctrl-C) cut short while it was being
    written has no trainer_state.json yet (the Trainer writes it last), and resuming from it would fail."""
    steps = {
        int(path.name.removeprefix("checkpoint-")): path
        for path in (run_dir.glob("checkpoint-*") if run_dir.is_dir() else [])
        if path.name.removeprefix("checkpoint-").isdigit() and (path / "trainer_state.json").is_file()
    }
    return str(steps[max(steps)]) if steps else None


def _ensure_base_model(model_cfg: ModelConfig, *, splits: DatasetDict, seed: int) -> None:
    """Check the base model exists; with `model.build_tiny`, build the tiny model once from the training data."""
    if model_cfg.build_tiny and not Path(model_cfg.base_model).exists():
        log.info("building the tiny offline model at %s", model_cfg.base_model)
        build_tiny_model(model_cfg.base_model, corpus_texts=_texts(splits["train"]), seed=seed)
    check_model_source(model_cfg.base_model, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)


def _texts(rows: Dataset) -> list[str]:
    return [message["content"] for messages in rows["messages"] for message in messages]


def _check_lengths(splits: DatasetDict, *, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> None:
    """Refuse examples longer than max_seq_length: training would silently cut off their answers. Counted as
    `data validate` counts them (`data.token_length`), so both agree on which rows are too long."""
    for name in ("train", "validation"):
        lengths = [token_length(messages, tokenizer) for messages in splits[name]["messages"]]
        too_long = [row for row, length in enumerate(lengths, start=1) if length > max_seq_length]
        if too_long:
            raise TrainError(
                f"{len(too_long)} {name} example(s) exceed data.max_seq_length={max_seq_length} tokens "
                f"(longest {max(lengths)}, first at row {too_long[0]}); raise data.max_seq_length or shorten them. "
                "`data validate` lists each one with its file and line"
            )


def build_trainer(
    config: Config,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: DatasetDict,
    loss_mode: LossMode,
    run_dir: Path,
    device: Device,
    precision: Precision,
    extra_callbacks: TrainerCallbacks = (),
) -> SFTTrainer:
    """An SFTTrainer that trains a fresh LoRA adapter on `splits["train"]` and evaluates on "validation"
    (with `train.stage: dpo`, a DPOTrainer on the SFT model's adapter: `build_dpo_trainer`)."""
    from trl import SFTTrainer

    if config.train.stage == "dpo":
        return build_dpo_trainer(
            config,
            model=model,
            tokenizer=tokenizer,
            splits=splits,
            run_dir=run_dir,
            device=device,
            precision=precision,
            extra_callbacks=extra_callbacks,
        )

    try:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(config, output_dir=run_dir, loss_mode=loss_mode, device=device, precision=precision),
            train_dataset=_for_loss_mode(splits["train"], loss_mode),
            eval_dataset=_for_loss_mode(splits["validation"], loss_mode),
            processing_class=tokenizer,
            peft_config=lora_config(config.lora),
            callbacks=[*_callbacks(config.train), *extra_callbacks],
        )
    except ValueError as err:  # peft wraps the model here: lora.target_modules naming no layer of it
        if "target modules" not in str(err).lower():
            raise
        raise TrainError(
            f"lora.target_modules={config.lora.target_modules!r} matches no layer of {config.model.base_model}; "
            f"its linear layers include {', '.join(module_names(model))} (or use all-linear)"
        ) from None
    if device == "cpu":  # TRL's fused head scores every position there, prompt and padding too (lm_head.py)
        answer_tokens_only(trainer.model.get_base_model())
    return trainer


def _for_loss_mode(rows: Dataset, loss_mode: LossMode) -> Dataset:
    """`completion_only`: split each conversation into prompt (all but the last message) and completion
    (the final assistant reply), so that TRL masks the prompt without needing generation markers."""
    if loss_mode == "assistant_only":
        return rows
    return rows.map(
        lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}, remove_columns=["messages"]
    )


def sft_config(
    config: Config, *, output_dir: Path, loss_mode: LossMode, device: Device, precision: Precision
) -> SFTConfig:
    """Our settings as TRL's SFTConfig (which extends transformers' TrainingArguments)."""
    from trl import SFTConfig

    return SFTConfig(
        **_trainer_arguments(config, output_dir=output_dir, device=device, precision=precision),
        max_length=config.data.max_seq_length,
        packing=config.train.packing,
        assistant_only_loss=loss_mode == "assistant_only",
        completion_only_loss=loss_mode == "completion_only",
    )


def _trainer_arguments(config: Config, *, output_dir: Path, device: Device, precision: Precision) -> dict[str, Any]:
    """transformers' TrainingArguments from our `train` section, shared by the SFT and DPO configs."""
    from transformers import TrainingArguments

    t = config.train
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # SFT in one process only: DPO's pairs have no `input_ids` to measure, and under DDP the length-grouped
    # sampler left the replicas with different weights (tests/test_distributed.py).
    grouped = t.group_by_length and t.stage == "sft" and distributed.world_size() == 1
    return dict(
        output_dir=str(output_dir),  # checkpoint-<step>/ folders go here, next to adapter/
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        train_sampling_strategy="group_by_length" if grouped else "random",
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # A ratio under its transformers 5 name: `warmup_ratio` is gone, and a `warmup_steps` value below 1 means
        # ceil(share x total steps); train.warmup_ratio is validated to be below 1, so it is always read as a share.
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        load_best_model_at_end=t.early_stopping_patience is not None,  # early stopping keeps the best checkpoint
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **{checkpointing: t.gradient_checkpointing},  # TRL defaults it on; ours is off unless asked
        report_to="none",  # MLflow comes through tracking.py's callback, not the built-in reporter
        ddp_find_unused_parameters=False,  # every LoRA weight is used in each forward: DDP need not search
        dataloader_pin_memory=device == "cuda",
    )


def _callbacks(train_cfg: TrainConfig) -> list[TrainerCallback]:
    from transformers import EarlyStoppingCallback

    if train_cfg.early_stopping_patience is None:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping_patience)]


def write_train_log(
    run_dir: Path,
    *,
    log_history: list[dict],
    runtime_s: float,
    device: Device,
    config_name: str,
    data: dict[str, Any],
    epochs: float | None,
    parameters: dict[str, Any] | None = None,
) -> None:
    """outputs/<run>/train_log.json: what `report` needs without MLflow (loss by step, wall time, hardware,
    the data's origin and digest, epochs). `runtime_s` covers every session of a resumed run
    (`_run_training`); the Trainer's log history already holds them all."""
    path = run_dir / TRAIN_LOG
    record = {
        "config_name": config_name,
        "device": device,
        "hardware": describe_hardware(device),
        "train_runtime_s": round(runtime_s, 1),
        "data": data,  # data.data_record: path, origin, digest, rows per split
        "epochs": epochs,
        "parameters": parameters,  # trainable (LoRA) vs all parameters, as peft counts them
        "log_history": log_history,
    }
    path.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")


def trainable_parameters(model: Any) -> dict[str, Any] | None:
    """{"trainable", "total", "share"} as peft's get_nb_trainable_parameters counts them (4-bit weights counted
    unpacked); None for a model without it (no LoRA)."""
    if not hasattr(model, "get_nb_trainable_parameters"):
        return None
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable": int(trainable), "total": int(total), "share": trainable / total if total else 0.0}


def _epochs(trainer: SFTTrainer, *, train_cfg: TrainConfig, train_rows: int) -> float | None:
    """Passes over the training rows (`data.epochs_seen`). With packing a batch holds packed sequences, not
    rows, so the Trainer's own count (passes over its packed dataset) is the honest one."""
    if train_cfg.packing:
        return round(trainer.state.epoch or 0.0, 2)
    return epochs_seen(
        steps=trainer.state.global_step,
        batch_size=train_cfg.batch_size,
        accumulation=train_cfg.gradient_accumulation_steps,
        train_rows=train_rows,
        devices=trainer.args.world_size,  # each device takes its own batch per step (DDP)
    )


def describe_hardware(device: Device) -> str:
    """The accelerator or CPU that trained, as a reader of the results wants it: `1x NVIDIA A10G (24 GB)`."""
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.device_count()}x {props.name} ({props.total_memory / 2**30:.0f} GB)"
    if device == "mps":
        return f"Apple GPU (MPS) on {platform.machine()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {_cpu_name()} ({cores} cores)"


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; platform.processor() there is often just "x86_64"
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    return platform.processor() or platform.machine() or "unknown"


def _model_to_register(trainer: SFTTrainer, *, config: Config, adapter_dir: Path) -> PreTrainedModel:
    """The trained PeftModel, or under FSDP/DeepSpeed (its weights sharded over the GPUs, not whole in any
    one process) the adapter just saved, on the base model on the CPU."""
    if distributed.active_strategy() not in ("fsdp", "deepspeed"):
        return trainer.model
    return load_finetuned(config.model, adapter_dir=adapter_dir, device="cpu")


def _save_adapter(trainer: SFTTrainer, *, tokenizer: PreTrainedTokenizerBase, adapter_dir: Path) -> None:
    """Write exactly the LoRA weights + config and the tokenizer with its chat template, so evaluation and
    serving format prompts as training did. Staged and renamed, so a crash leaves the previous adapter.
    Launched as several processes, every one takes part (FSDP/DeepSpeed gather their shards) and rank 0 writes."""
    digest_dir = os.environ.get(distributed.WEIGHT_DIGEST_DIR_ENV)
    if digest_dir:  # tests only: each process's LoRA weights, to check the replicas agree
        distributed.write_weight_digest(trainer.model, Path(digest_dir))
    if "ref" in getattr(trainer.model, "peft_config", {}):  # DPO's frozen reference copy: not part of the result
        trainer.model.delete_adapter("ref")
    main, staging = distributed.is_main_process(), adapter_dir.with_name("adapter.partial")
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    if distributed.active_strategy() in ("fsdp", "deepspeed"):
        if trainer.is_fsdp_enabled:  # checkpoints stay sharded (fast, per rank); the adapter is gathered whole
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(staging))  # gathered to rank 0, saved as a plain adapter (peft picks its weights)
    elif main:
        trainer.model.save_pretrained(str(staging))  # with load_best_model_at_end: the best checkpoint's weights
    if not main:
        return
    tokenizer.save_pretrained(str(staging))
    for extra in ("README.md", "training_args.bin"):  # peft's empty model-card stub; save_model's arguments
        (staging / extra).unlink(missing_ok=True)
    if adapter_dir.exists():  # only when resuming: the run's own earlier adapter
        shutil.rmtree(adapter_dir)
    staging.rename(adapter_dir)


# ---- DPO: preference tuning of an SFT adapter -----------------------------------------------------------


def _load_sft_policy(
    model_cfg: ModelConfig, *, parent: ModelSource, device: Device, precision: Precision
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]:
    """The SFT model DPO tunes: the base model once, with the parent's adapter loaded TRAINABLE (peft loads
    adapters frozen by default) and the parent's tokenizer (its chat template). No second model for the
    reference: DPOTrainer copies the adapter into a frozen `ref` adapter on the same base weights."""
    from peft import PeftModel

    tokenizer = load_tokenizer(parent.tokenizer_dir)
    base = load_base_model(model_cfg, device=device, training=True, precision=precision)
    model = PeftModel.from_pretrained(base, str(parent.adapter_dir), is_trainable=True)
    return model, tokenizer, "completion_only"  # DPO scores the answers' tokens only


def build_dpo_trainer(
    config: Config,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: DatasetDict,
    run_dir: Path,
    device: Device,
    precision: Precision,
    extra_callbacks: TrainerCallbacks = (),
) -> DPOTrainer:
    """A DPOTrainer on the SFT PeftModel, `ref_model=None`: the reference log-probabilities come from the same
    base weights under a frozen copy of the SFT adapter (TRL's `ref` adapter), so memory holds one base model."""
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=dpo_config(config, output_dir=run_dir, device=device, precision=precision),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        callbacks=[*_callbacks(config.train), *extra_callbacks],
    )


def dpo_config(config: Config, *, output_dir: Path, device: Device, precision: Precision) -> DPOConfig:
    """Our settings as TRL's DPOConfig: the `train` section's Trainer arguments plus the `dpo` section."""
    from trl import DPOConfig

    return DPOConfig(
        **_trainer_arguments(config, output_dir=output_dir, device=device, precision=precision),
        max_length=config.data.max_seq_length,  # prompt + answer, in tokens; longer pairs are cut
        beta=config.dpo.beta,
        loss_type=[config.dpo.loss_type],
    )
