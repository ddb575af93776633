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
import math
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

from ..config import Config, ModelConfig, TrainConfig, dump_config
from ..data.dataset import data_record, epochs_seen, load_splits, token_length, with_recorded_system_prompt
from ..errors import ProjectError
from ..model.device import (
    Device,
    Precision,
    active_strategy,
    agree_on,
    is_main_process,
    local_main_process_first,
    resolve_device,
    resolve_precision,
    usable_cores,
    world_size,
)
from ..model.load import (
    LossMode,
    build_tiny_model,
    check_model_source,
    load_base_model,
    load_finetuned,
    load_tokenizer,
    lora_config,
    module_names,
    prepare_chat_template,
)
from ..registry import log_and_register
from ..runs import CONFIG_FILE, TRAIN_LOG, read_tracking_file, write_tracking_file
from ..tracking import check_tracking_server, log_training_inputs, metrics_callback, training_run
from .lm_head import answer_tokens_only

if TYPE_CHECKING:
    from types import FrameType

    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ..registry import ModelSource

    TrainerCallbacks = Sequence[TrainerCallback]  # extra callbacks for train(): a sweep's pruner

log = logging.getLogger(__name__)
# In each checkpoint-<step>/: the run's training seconds up to it, so --resume adds the earlier sessions' time.
CHECKPOINT_RUNTIME = "train_runtime.json"


class TrainError(ProjectError, ValueError):
    """A training run cannot start (its folder exists, nothing to resume, bad settings); nothing was written."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What differs between training stages; `train` runs the same steps around it. SFT is defined below; an
    extra stage (DPO in preference/dpo.py) supplies its own three functions."""

    name: str
    load_data: Callable[[Config], tuple[Config, DatasetDict, ModelSource | None]]  # -> config, splits, parent
    load_model: Callable[..., tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]]
    build_trainer: Callable[..., Trainer]  # (run: Run, *, extra_callbacks) -> a Trainer
    data_path: Callable[[Config], str] = lambda config: config.data.path  # what the run is recorded to train on


@dataclasses.dataclass
class Run:
    """One training run as `train` assembles it: everything the trainer and the records are built from, in one
    object instead of long argument lists."""

    config: Config
    config_name: str
    run_dir: Path
    device: Device
    precision: Precision
    splits: DatasetDict
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    loss_mode: LossMode
    recipe: Recipe
    parent: ModelSource | None = None  # the model a later stage (DPO) starts from


def train(
    config: Config,
    *,
    config_name: str,
    resume: bool = False,
    callbacks: TrainerCallbacks = (),
    log_model: bool = True,
    recipe: Recipe | None = None,
) -> Path:
    """Fine-tune `config.model.base_model` with LoRA; return the run folder holding adapter/ and config.yaml.
    `callbacks` join the Trainer's (a sweep's pruner); log_model=False (sweep trials) logs no model to MLflow;
    `recipe` is SFT unless a stage of an extra is given."""
    run = _prepare(config, config_name=config_name, resume=resume, recipe=recipe or SFT)
    # Until training starts, any failure (a bad lora.target_modules, MLflow refusing the run) removes the new
    # run_dir, so the same train.run_name is free next time; from then on its checkpoints are kept for --resume.
    with _removed_on_failure(run.run_dir) as training_started:
        trainer = run.recipe.build_trainer(run, extra_callbacks=callbacks)
        resolved = run.config.model_copy(
            update={"train": run.config.train.model_copy(update={"run_name": run.run_dir.name})}
        )
        if is_main_process():  # the other processes of a launch write nothing but checkpoint parts
            dump_config(resolved, run.run_dir / CONFIG_FILE)
        action, masked = "resuming" if resume else "training", run.loss_mode.split("_")[0]
        log.info("%s %s on %s (%s), loss on %s tokens", action, run.run_dir, run.device, run.precision, masked)
        with _mlflow_run(run, resume=resume) as run_id:
            if run_id:
                write_tracking_file(run.run_dir, run_id=run_id, version=None)  # --resume finds it if this stops
                data_path = run.recipe.data_path(run.config)
                config_file = run.run_dir / CONFIG_FILE
                log_training_inputs(
                    resolved, splits=run.splits, config_file=config_file, device=run.device, data_path=data_path
                )
                trainer.add_callback(metrics_callback())
            training_started()
            runtime_s = _run_training(trainer, run_dir=run.run_dir, resume=resume)
            _save_adapter(trainer, tokenizer=run.tokenizer, adapter_dir=run.run_dir / "adapter")
            if is_main_process():
                _record(run, trainer=trainer, runtime_s=runtime_s, run_id=run_id if log_model else None)
    # >>> multi_gpu
    if world_size() > 1:  # all ranks wait for rank 0's record, then leave the group together, as torch asks
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        PartialState().destroy_process_group()
    # <<< multi_gpu
    return run.run_dir


def _prepare(config: Config, *, config_name: str, resume: bool, recipe: Recipe) -> Run:
    """Every check, then the run folder's name, the data and the model: nothing is written before this returns."""
    # >>> preference_tuning
    if config.train.stage != recipe.name:  # a DPO config trained as SFT would silently train the wrong thing
        raise TrainError(
            f"train.stage={config.train.stage}, but the recipe given is {recipe.name}; pass the stage's recipe "
            "(cli.recipe_for(config) picks it)"
        )
    # <<< preference_tuning
    if config.tracking.enabled:
        check_tracking_server()  # an unreachable server must fail now, not after an hour of training
    device = resolve_device(config.train.device)
    # >>> multi_gpu
    from ..distributed.launch import check_launched  # a launch by hand that cannot run: refused before loading

    check_launched(device=device, load_in_4bit=config.model.load_in_4bit)
    # <<< multi_gpu
    run_dir = agree_on(lambda: _run_dir(config.train, config_name=config_name, resume=resume), device)
    config, splits, parent = recipe.load_data(config)  # parent: the adapter a later stage starts from
    precision = resolve_precision(config.train.precision, device=device)
    model, tokenizer, loss_mode = recipe.load_model(config, splits, device=device, precision=precision, parent=parent)
    return Run(
        config=config,
        config_name=config_name,
        run_dir=run_dir,
        device=device,
        precision=precision,
        splits=splits,
        model=model,
        tokenizer=tokenizer,
        loss_mode=loss_mode,
        recipe=recipe,
        parent=parent,
    )


def _record(run: Run, *, trainer: Trainer, runtime_s: float, run_id: str | None) -> None:
    """train_log.json beside the adapter; with `run_id`, the model logged to the MLflow run and registered."""
    write_train_log(run, trainer=trainer, runtime_s=runtime_s)
    (run.run_dir / "README.md").unlink(missing_ok=True)  # TRL's draft model card; names no base for local models
    log.info("saved %s", run.run_dir / "adapter")
    if run_id:
        model = _model_to_register(trainer, config=run.config, adapter_dir=run.run_dir / "adapter")
        example = _first_user_message(run.splits["train"][0])
        version = log_and_register(run.config, run_id=run_id, model=model, tokenizer=run.tokenizer, example=example)
        write_tracking_file(run.run_dir, run_id=run_id, version=version)


def _first_user_message(row: dict[str, Any]) -> str | None:
    """The first user message of a training row (SFT `messages`, DPO `prompt`): the registered model's example."""
    messages = row.get("messages") or row.get("prompt")
    if not isinstance(messages, list):
        return None
    return next((m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)


def _run_training(trainer: SFTTrainer, *, run_dir: Path, resume: bool) -> float:
    """Train, from the last checkpoint when resuming; return the run's training seconds over all its sessions
    (a stopped session counts up to its last checkpoint: the steps after it are trained again)."""
    checkpoint = last_checkpoint(run_dir) if resume else None
    earlier_s = _earlier_runtime_s(run_dir, checkpoint=checkpoint)
    trainer.add_callback(_runtime_recorder(earlier_s))
    trainer.add_callback(_stop_when_non_finite())
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


def _stop_when_non_finite() -> TrainerCallback:
    """A callback raising TrainError when a logged training loss or gradient norm is nan or inf: the weights are
    no longer numbers, so the run stops there (its MLflow run ends FAILED) and nothing is saved or registered.
    An infinite learning rate once trained 3 steps into an adapter of NaN weights, reported as a success."""
    from transformers import TrainerCallback

    class StopWhenNonFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, name in (("loss", "training loss"), ("grad_norm", "gradient norm")):
                value = (logs or {}).get(key)
                if isinstance(value, int | float) and not math.isfinite(value):
                    raise TrainError(
                        f"{name} is {value} at step {state.global_step}: training diverged, so the run was stopped "
                        "and not registered. Lower train.learning_rate (it was "
                        f"{args.learning_rate:g}) or check the data, and start a new run: checkpoints saved since "
                        "the last finite loss may hold the same non-numbers"
                    )

    return StopWhenNonFinite()


@contextmanager
def _mlflow_run(run: Run, *, resume: bool) -> Iterator[str | None]:
    """The MLflow run of this training (reopened when resuming), tagged with its stage and parent; yields None when
    tracking is off."""
    if not run.config.tracking.enabled or not is_main_process():
        yield None
        return
    previous = read_tracking_file(run.run_dir) if resume else None
    tags = {"stage": run.recipe.name} | _parent_tags(run.config, run.parent)
    with training_run(
        run.config,
        run_name=run.run_dir.name,
        config_name=run.config_name,
        run_id=previous and previous["run_id"],
        tags=tags,
    ) as run_id:
        yield run_id


def _parent_tags(config: Config, parent: ModelSource | None) -> dict[str, str]:
    """A run that starts from another model (DPO from SFT) names it: `parent.run_id`, `parent.model_version`,
    `parent.source`."""
    tags = {
        "parent.run_id": parent and parent.run_id,
        "parent.model_version": parent and parent.version,
        "parent.source": parent and config.model.adapter,
    }
    return {key: value for key, value in tags.items() if value}


def load_data(config: Config) -> tuple[Config, DatasetDict, None]:
    """The splits and the config with its recorded system prompt (`data.with_recorded_system_prompt`); SFT starts
    from the base model, so there is no parent."""
    splits = load_splits(config.data, system_prompt=config.task.system_prompt)
    return with_recorded_system_prompt(config, splits["train"]["messages"]), splits, None


def load_for_training(
    config: Config, splits: DatasetDict, *, device: Device, precision: Precision, parent: None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossMode]:
    """Base model (weights in the training precision unless model.dtype says otherwise) and tokenizer, the chat
    template ready for masked loss, and every example checked to fit."""
    with local_main_process_first(device):  # one process builds the tiny model, the others load it
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
    library swallow that exception, or the signal arrive during an MLflow write, a callback raises it at the
    next step."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # Not in the middle of an MLflow write: cut there, the run could not be ended KILLED afterwards (seen
        # as a run left RUNNING). The callback raises at the next step instead.
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith(("mlflow", "sqlalchemy")):
                return
            frame = frame.f_back
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


def build_trainer(run: Run, *, extra_callbacks: TrainerCallbacks = ()) -> SFTTrainer:
    """An SFTTrainer that trains a fresh LoRA adapter on the training split and evaluates on "validation"."""
    from trl import SFTTrainer

    config, loss_mode = run.config, run.loss_mode
    args = sft_config(config, output_dir=run.run_dir, loss_mode=loss_mode, device=run.device, precision=run.precision)
    try:
        trainer = SFTTrainer(
            model=run.model,
            args=args,
            train_dataset=_for_loss_mode(run.splits["train"], loss_mode),
            eval_dataset=_for_loss_mode(run.splits["validation"], loss_mode),
            processing_class=run.tokenizer,
            peft_config=lora_config(config.lora),
            callbacks=[*callbacks_for(config.train), *extra_callbacks],
        )
    except ValueError as err:  # peft wraps the model here: lora.target_modules naming no layer of it
        if "target modules" not in str(err).lower():
            raise
        raise TrainError(
            f"lora.target_modules={config.lora.target_modules!r} matches no layer of {config.model.base_model}; "
            f"its linear layers include {', '.join(module_names(run.model))} (or use all-linear)"
        ) from None
    if run.device == "cpu":  # TRL's fused head scores every position there, prompt and padding too (lm_head.py)
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
        **trainer_arguments(config, output_dir=output_dir, device=device, precision=precision),
        max_length=config.data.max_seq_length,
        packing=config.train.packing,
        assistant_only_loss=loss_mode == "assistant_only",
        completion_only_loss=loss_mode == "completion_only",
    )


def trainer_arguments(
    config: Config, *, output_dir: Path, device: Device, precision: Precision, grouped: bool = True
) -> dict[str, Any]:
    """transformers' TrainingArguments from our `train` section, shared by every stage's config. `grouped=False`
    for rows without `input_ids` to measure (DPO's pairs)."""
    from transformers import TrainingArguments

    t = config.train
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # In one process only: under DDP the length-grouped sampler left the replicas with different weights.
    grouped = grouped and t.group_by_length and world_size() == 1
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
        # A nan or inf loss is logged as such (not left out of the average), so _stop_when_non_finite sees it.
        logging_nan_inf_filter=False,
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


def callbacks_for(train_cfg: TrainConfig) -> list[TrainerCallback]:
    from transformers import EarlyStoppingCallback

    if train_cfg.early_stopping_patience is None:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping_patience)]


def write_train_log(run: Run, *, trainer: Trainer, runtime_s: float) -> None:
    """outputs/<run>/train_log.json: what `report` needs without MLflow (loss by step, wall time, hardware,
    the data's origin and digest, epochs). `runtime_s` covers every session of a resumed run
    (`_run_training`); the Trainer's log history already holds them all."""
    data = run.config.data.model_copy(update={"path": run.recipe.data_path(run.config)})
    record = {
        "config_name": run.config_name,
        "device": run.device,
        "hardware": describe_hardware(run.device),
        "train_runtime_s": round(runtime_s, 1),
        # data.data_record: path, origin, digest, rows per split
        "data": data_record(data, rows={name: len(rows) for name, rows in run.splits.items()}),
        "epochs": _epochs(trainer, train_cfg=run.config.train, train_rows=len(run.splits["train"])),
        "parameters": trainable_parameters(trainer.model),  # trainable (LoRA) vs all, as peft counts them
        "log_history": trainer.state.log_history,
    }
    (run.run_dir / TRAIN_LOG).write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")


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
    return f"CPU: {_cpu_name()} ({usable_cores()} cores)"


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
    if active_strategy() not in ("fsdp", "deepspeed"):
        return trainer.model
    return load_finetuned(config.model, adapter_dir=adapter_dir, device="cpu")


def _save_adapter(trainer: SFTTrainer, *, tokenizer: PreTrainedTokenizerBase, adapter_dir: Path) -> None:
    """Write exactly the LoRA weights + config and the tokenizer with its chat template, so evaluation and
    serving format prompts as training did. Staged and renamed, so a crash leaves the previous adapter.
    Launched as several processes, every one takes part (FSDP/DeepSpeed gather their shards) and rank 0 writes."""
    if "ref" in getattr(trainer.model, "peft_config", {}):  # a frozen reference copy (DPO): not part of the result
        trainer.model.delete_adapter("ref")
    main, staging = is_main_process(), adapter_dir.with_name("adapter.partial")
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    if active_strategy() in ("fsdp", "deepspeed"):
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


SFT = Recipe(name="sft", load_data=load_data, load_model=load_for_training, build_trainer=build_trainer)
