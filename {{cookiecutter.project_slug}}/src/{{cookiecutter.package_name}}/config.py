"""Typed configuration: one YAML file, then `key.sub=value` overrides from the command line.

Every setting is documented once, here, by the docstring under it; `config keys`
prints those texts. Unknown keys and wrong types are rejected all at once, each problem naming
the key, the file and line it came from, the type expected and, for a typo, the key meant.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BadInput


class ConfigError(BadInput, ValueError):
    """A config file or override is invalid; the message lists every problem found."""


# Keys that moved to another section: refused with the new name, so an old config says what to change.
MOVED_KEYS = {"data.task": "task.kind", "data.system_prompt": "task.system_prompt"}


class _Section(BaseModel):
    # extra="forbid": a misspelt key must fail loudly instead of being silently ignored.
    # allow_inf_nan=False: no setting means anything at inf or nan (a learning rate of inf trained NaN weights).
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )


class TaskConfig(_Section):
    name: str | None = None
    """Short title of the task: the README's intro, the model card and the served model's description.
    null uses `project`."""
    description: str = ""
    """One sentence for people: what goes in and what comes out. Empty: the README and model card say that
    no description was given."""
    kind: Literal["extraction", "generic"] = "extraction"
    """`extraction`: each answer is one JSON object, scored per field; `generic`: free text, scored by exact
    match and ROUGE-L."""
    fields: list[str] = Field(default_factory=list)
    """Extraction: the answer's JSON keys, scored per field in this order. Empty: taken from the data
    (keys in first-seen order)."""
    system_prompt: str | None = None
    """System message of every prompt: put first in each row (and served request) that has none of its own.
    null: `train` records the one all training rows start with, if they share one, in the run's config."""


class DataConfig(_Section):
    path: str = "data/shop_extraction"
    """Training data: a folder holding train/validation/test files (.jsonl, .csv or .parquet),
    a single such file (split automatically), or a Hugging Face hub dataset id."""
    format: Literal["auto", "messages", "prompt_completion", "instruction"] = "auto"
    """Row layout: chat `messages`, `prompt`/`completion`, or `instruction`/`input`/`output`.
    `auto` detects it from the columns."""
    max_seq_length: int = Field(512, gt=0)
    """Longest tokenized example, in tokens. Longer examples are reported by `data validate`."""
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    """Share of rows held out for validation when the data has no validation split."""
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    """Share of rows held out for the final test when the data has no test split."""
    max_train_samples: int | None = Field(None, gt=0)
    """Use only the first N training rows (quick experiments); null uses all."""


class ModelConfig(_Section):
    base_model: str
    """Model to fine-tune: a hub id (`org/name`) or a local folder saved with `save_pretrained`. Required: each
    config names its own (configs/default.yaml the one chosen when the project was made)."""
    build_tiny: bool = False
    """Build a tiny randomly initialised model at `base_model` when that folder does not exist yet.
    Only for offline smoke runs and tests: it has no language knowledge."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; null takes the default branch."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype. `auto`: bfloat16 on GPUs that support it, float16 on other GPUs; on a CPU bfloat16 where it
    has AMX or AVX512-BF16, else float32."""
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """Attention kernel. `auto`: eager for training on a CPU (sdpa's backward is slow there), transformers' default
    (sdpa) otherwise; flash_attention_2 needs the flash-attn package and a recent GPU."""
    load_in_4bit: bool = False
    """QLoRA: load the base model in 4-bit NF4 with bitsandbytes. CUDA only."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository to run. Keep false unless the model needs it."""
    # >>> preference_tuning
    adapter: str | None = None
    """The SFT adapter a `train.stage: dpo` or `grpo` run starts from (and `data prefs` generates with): a run folder
    (`outputs/<run>`), its `adapter/` folder or a model URI (`models:/<project>@champion`). null for SFT."""
    # <<< preference_tuning


class LoraConfig(_Section):
    # At most 1024: beyond the hidden size of most models a rank adds nothing, and lora.r=1e9 tried to allocate 256 GB.
    r: int = Field(16, gt=0, le=1024)
    """LoRA rank: the size of the low-rank update. 8-64 is usual; higher learns more, costs more. At most 1024."""
    alpha: int = Field(32, gt=0)
    """LoRA scaling numerator (update scaled by alpha/r); usually 2*r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input; 0.05-0.1 regularises small datasets."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]), or `all-linear` for every linear layer but the head."""


class TrainConfig(_Section):
    run_name: str | None = None
    """Name of the run folder under `output_dir` (a plain folder name: no `/`, `\\` or `..`); null makes
    `<config name>-<YYYYmmdd-HHMMSS>`."""
    output_dir: str = "outputs"
    """Where run folders go; each run writes `<output_dir>/<run_name>/adapter/` and `config.yaml`."""
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's seed range
    """Seed for data shuffling, LoRA initialisation and dropout, so a rerun gives the same numbers."""
    num_epochs: float = Field(1.0, gt=0)
    """Passes over the training data (ignored when `max_steps` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 trains for `num_epochs`."""
    batch_size: int = Field(8, gt=0)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Forward passes per optimizer step: effective batch = batch_size * this."""
    # At most 1: Adam's step is about the learning rate itself, so above 1 every update outweighs the weights.
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """Peak learning rate. LoRA tolerates ~10x the full fine-tuning rate: 1e-4 to 2e-3, the higher end for small models
    and short runs (default.yaml's was chosen on the validation split). At most 1."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of steps spent ramping the learning rate up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on the LoRA weights."""
    eval_steps: int = Field(50, gt=0)
    """Evaluate on the validation split every N optimizer steps."""
    save_steps: int = Field(50, gt=0)
    """Write a checkpoint (for `--resume`) every N optimizer steps."""
    save_total_limit: int = Field(2, gt=0)
    """Checkpoints kept on disk; older ones are deleted."""
    logging_steps: int = Field(10, gt=0)
    """Log training loss and learning rate every N optimizer steps."""
    early_stopping_patience: int | None = Field(None, gt=0)
    """Stop when validation loss has not improved for N evaluations; null never stops early."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to train. `auto` picks CUDA, then Apple MPS, then CPU."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision. `auto`: bf16 on GPUs that support it, fp16 on older GPUs, bf16 on CPUs with AMX or
    AVX512-BF16, fp32 elsewhere. An explicit choice the device cannot run natively is refused."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    group_by_length: bool = True
    """Batch examples of similar length together: less padding to compute. transformers' sampler sorts each
    mega-batch (up to 50 batches) longest first, so the batches then come in length order; a few-step run can learn
    less for it (configs/smoke.yaml turns it off). SFT in one process only; DPO and several processes
    (`--nproc`) sample at random."""
    packing: bool = False
    """Pack several short examples into one sequence: faster on GPUs for short data."""
    # >>> preference_tuning
    stage: Literal["sft", "dpo", "grpo"] = "sft"
    """`sft`: supervised fine-tuning of a fresh LoRA adapter on `data`; `dpo`: preference tuning (DPO) of the
    `model.adapter` SFT adapter on the pairs in `dpo.data_path` (the `dpo` section); `grpo`: reinforcement learning
    of that adapter on the training prompts, rewarded by the task's own scorer (the `grpo` section)."""
    # <<< preference_tuning

    @field_validator("run_name")
    @classmethod
    def _plain_folder_name(cls, run_name: str | None) -> str | None:
        # A name with a separator or `..` would write outside output_dir (and --resume would read there).
        if run_name is not None and (run_name in ("", ".", "..") or any(ch in run_name for ch in "/\\")):
            raise ValueError("must be a plain folder name under train.output_dir (no '/', '\\', '.' or '..')")
        return run_name


JUDGE_RUBRIC = (
    "You grade answers. Compare the ANSWER TO SCORE with the REFERENCE ANSWER to the QUESTION and score it from "
    "1 to 5: 5 = the same meaning and complete; 4 = right with small omissions; 3 = partly right; 2 = mostly wrong; "
    '1 = wrong, empty or unrelated. Reply with one JSON object only: {"score": <1-5>, "reason": "<one sentence>"}.'
)


class JudgeConfig(_Section):
    base_url: str | None = None
    """OpenAI-compatible base URL of the LLM judge for `task.kind: generic` (e.g. http://127.0.0.1:8000/v1 for
    this project's own `serve`, or a hosted API); null (the default) evaluates without a judge."""
    model: str = ""
    """Model id sent to the judge endpoint (recorded in eval.json with the rubric's sha256)."""
    api_key_env: str | None = "JUDGE_API_KEY"
    """Environment variable holding the judge's API key (sent as a bearer token, never written anywhere)."""
    rubric: str = JUDGE_RUBRIC
    """The judge's instructions (system message); it must ask for a JSON object with a `score` from 1 to 5."""
    max_tokens: int = Field(200, gt=0)
    """Longest judge answer, in tokens."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds to wait for each judge answer; a timeout counts as a judge failure, never as a score."""


class EvalConfig(_Section):
    split: Literal["validation", "test"] = "test"
    """Held-out split to score base and fine-tuned models on."""
    max_samples: int | None = Field(None, gt=0)
    """Score only the first N rows of the split; null scores all."""
    batch_size: int = Field(16, gt=0)
    """Prompts per batched greedy generation."""
    max_new_tokens: int = Field(128, gt=0)
    """Longest generated answer, in tokens."""
    num_examples: int = Field(5, ge=0)
    """Examples shown side by side (input, expected, base, fine-tuned) in reports/eval.md."""
    report_dir: str = "reports"
    """Where eval.json and eval.md are written."""
    few_shot: int = Field(3, ge=0)
    """Training examples put before each prompt for the `few_shot` baseline (the base model shown the answer
    format, as earlier chat turns); drawn with train.seed, never a scored row. 0 leaves the baseline out."""
    bootstrap_resamples: int = Field(1000, ge=100)
    """Paired bootstrap resamples of the scored rows behind every 95% interval (seeded with train.seed).
    1,000 keeps the interval ends stable to about a point; more costs milliseconds."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """LLM-as-judge scoring of generic-task answers (off unless judge.base_url is set)."""


class TrackingConfig(_Section):
    enabled: bool = True
    """Log runs to MLflow (`mlflow.db` in the project root unless MLFLOW_TRACKING_URI is set)."""
    register_model: bool = True
    """Register the fine-tuned adapter as a new model version, aliased `candidate`."""
    promote: bool = True
    """After evaluation, make the candidate `champion` when it beats the current champion."""
    promotion_metric: str = "finetuned.field_accuracy"
    """Metric the promotion gate compares, as `<model>.<metric>` from reports/eval.json."""
    promotion_direction: Literal["maximize", "minimize"] = "maximize"
    """Whether a higher (`maximize`) or lower (`minimize`) promotion metric wins."""
    require_significant: bool = False
    """Promote only when the paired-bootstrap 95% interval of the improvement over the champion (same test
    rows, eval.bootstrap_resamples) excludes zero. Off by default: on 120 test rows the interval of a mean
    field accuracy spans several points, so real but small gains would be held back; turn it on with a
    larger test split or when a noisy promotion costs more than a missed one."""


class MonitorConfig(_Section):
    drift_threshold: float = Field(0.5, gt=0, le=1)
    """Share of the compared prompt features (length, token count, out-of-vocabulary rate) that must drift
    for the verdict `drift` (exit code 1). 0.5 with three features means two of them."""
    stattest: str | None = "ks"
    """Per-feature drift test, by its evidently name (`ks`, `wasserstein`, `psi`, `jensenshannon`, `anderson`...).
    Kolmogorov-Smirnov weighs the size of both samples, so it suits windows of a few hundred requests. null lets
    evidently choose by reference size alone: normed Wasserstein above 1,000 training prompts, whose noise stays
    above its 0.1 cut-off until about 500 requests (false alarms on small windows)."""
    stattest_threshold: float | None = Field(None, gt=0)
    """Cut-off of that test: a p-value below it (tests) or a distance at or above it (distances) is drift.
    null uses the test's default (0.05 for K-S, 0.1 for normed Wasserstein)."""
    min_requests: int = Field(50, gt=0)
    """Fewest logged requests that get a verdict; with fewer, `monitor drift` exits 2 (on a handful of
    prompts a test can neither show nor rule out drift)."""
    max_requests: int | None = Field(1000, gt=0)
    """Compare only the newest N requests of the log (recent traffic); null compares the whole log."""


class ReportConfig(_Section):
    hourly_cost_usd: float = Field(0.0, ge=0)
    """Price of one hour of the machine that trains and evaluates, in US dollars: the README and model card
    estimate the cost as (training + evaluation wall time) x this. 0 = your own laptop or desktop. Cloud
    on-demand example: AWS g5.xlarge (1x A10G) 1.006 (us-east-1, Linux, as listed in June 2026; the source is
    cited in configs/gpu.yaml); check aws.amazon.com/ec2/pricing/on-demand for your machine and region."""
    num_samples: int = Field(3, ge=0)
    """Sample generations (input, base, fine-tuned) shown in the README results section."""


# >>> preference_tuning
DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "sft"]  # of TRL's DPOConfig.loss_type


class DpoConfig(_Section):
    data_path: str = "data/prefs"
    """Preference pairs for `train.stage: dpo`: a folder of train (+ validation) files or one file (.jsonl,
    .csv, .parquet) with `prompt`, `chosen` and `rejected` (text or chat messages); `data prefs` writes them."""
    beta: float = Field(0.1, gt=0)
    """Strength of the pull back to the reference (the SFT model): the loss scores beta x (log-ratio policy /
    reference of chosen minus that of rejected). Small (0.01-0.05): the model may move far from SFT to fit the
    pairs (and forget); large (0.5): it stays close and learns little. 0.1 is the usual start."""
    loss_type: DpoLoss | list[DpoLoss] = Field(default_factory=lambda: ["sigmoid", "sft"])
    """`sigmoid`: the DPO paper's loss; `ipo`: a squared loss whose margin stops growing (suits near-certain
    preferences such as rule-made pairs); `hinge`: SLiC's margin loss; `robust`: tolerates mislabelled pairs;
    `apo_zero`: pushes the chosen answers' likelihood up, the rejected down; `sft`: cross-entropy on the chosen
    answer. A list sums its losses, weighted by `loss_weights`: ["sigmoid", "sft"] keeps the chosen answers likely
    while DPO separates pairs that differ in one or two tokens (plain DPO lowers both), hence the default."""
    loss_weights: list[float] | None = None
    """One weight per entry of a `loss_type` list (default: 1.0 each), e.g. [1.0, 0.5]."""
    prompts: int = Field(256, gt=0)
    """`data prefs`: training rows the SFT model answers (drawn with train.seed); each wrong answer is a pair.
    More finds more of its mistakes; each costs one greedy generation."""
    min_pairs: int = Field(200, ge=0)
    """`data prefs`: fewest pairs to write; when the model's own wrong answers are fewer, rule-based
    corruptions of other training answers (extraction task) fill up to it. 0 keeps on-policy pairs only."""
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    """`data prefs`: share of the pairs held out as DPO's validation split (its eval loss and reward margins)."""

    @model_validator(mode="after")
    def _check_weights(self) -> DpoConfig:
        losses = self.loss_type if isinstance(self.loss_type, list) else [self.loss_type]
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(
                f"dpo.loss_weights has {len(self.loss_weights)} weight(s) for {len(losses)} loss(es) in dpo.loss_type "
                f"{losses}: give one weight per loss, e.g. loss_weights: {[1.0] * len(losses)}"
            )
        return self


class GrpoConfig(_Section):
    num_generations: int = Field(4, ge=2)
    """Answers sampled per training prompt. GRPO scores each against the others of its group (reward minus the
    group's mean), so it needs at least 2, and a group whose answers all score alike teaches nothing. Must divide
    train.batch_size, which counts answers: 8 with 4 generations is 2 prompts a step."""
    max_completion_length: int = Field(64, gt=0)
    """Tokens a sampled answer may have; longer ones are cut (and score as cut). Keep it near the longest
    reference answer: sampling is most of a GRPO step's time."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature: the answers of a group must differ for their rewards to differ."""
    beta: float = Field(0.0, ge=0)
    """Weight of the KL pull back to the SFT model. 0 (TRL's default): no reference pass, a faster step; above
    0 the SFT adapter's frozen copy is the reference, as in DPO."""
    eval_prompts: int = Field(32, gt=0)
    """Validation prompts sampled at each evaluation (and at the end; their mean reward is `eval_reward`): the first
    this many of the validation split, as sampling them all would cost more than the training steps."""
    reward: Literal["fields", "exact_match"] | None = None
    """The verifiable reward of an answer, 0 to 1. `fields` (extraction task): half for a valid JSON object, half
    the share of fields right; `exact_match`: 1 when the answer equals the reference (trimmed). null: the task's
    own, `fields` for extraction; a generic task must choose exact_match, the only one it can verify."""

    def check_fits(self, *, task_kind: str, batch_size: int) -> None:
        """ValueError naming the key and the fix when a GRPO run of this task and batch size cannot run."""
        if task_kind == "generic" and self.reward != "exact_match":
            raise ValueError(
                f"grpo.reward={self.reward}: a generic task has no verifiable reward of its own (ROUGE or a judge "
                "would reward near misses); set grpo.reward=exact_match for answers that must equal the reference, "
                "or tune with DPO instead"
            )
        if batch_size % self.num_generations:  # TRL puts a prompt's whole group of answers in one batch
            raise ValueError(
                f"grpo.num_generations={self.num_generations} must divide train.batch_size={batch_size} (answers "
                f"per step, each prompt's group whole): set train.batch_size to a multiple, e.g. "
                f"{self.num_generations * 2}"
            )


# <<< preference_tuning


# >>> sweeps
class SweepParam(_Section):
    type: Literal["log_uniform", "uniform", "int", "categorical"]
    """`log_uniform`: a float drawn evenly on a log scale between low and high (learning rates); `uniform`: a
    float drawn evenly between them; `int`: an integer from low to high, both included; `categorical`: one of
    `choices` (LoRA rank, scheduler)."""
    low: float | None = None
    """Smallest value (log_uniform, uniform, int); log_uniform needs it above 0."""
    high: float | None = None
    """Largest value (log_uniform, uniform, int); must be above `low`."""
    choices: list[bool | int | float | str] | None = None
    """The values a `categorical` setting may take, e.g. [4, 8, 16]."""

    @model_validator(mode="after")
    def _check_range(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("categorical needs a non-empty `choices` list and no low/high")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"{self.type} needs `low` and `high` (and no `choices`)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError(f"log_uniform needs low above 0 (got {self.low:g}); a log scale has no 0")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"int needs whole numbers for low and high (got {self.low:g}, {self.high:g})")
        return self


class SweepConfig(_Section):
    space: dict[str, SweepParam] = Field(default_factory=dict)
    """The searched settings, each a dotted config key (`train.learning_rate`, `lora.r`) mapped to
    {type, low, high} or {type: categorical, choices}. Every other setting stays as the config sets it."""
    objective: str = "eval_loss"
    """Metric of the validation evaluations that scores a trial (its value at the last evaluation), as the
    Trainer logs it: `eval_loss`, `eval_mean_token_accuracy`, ... Validation loss by default: it exists for
    every task, moves smoothly, and keeps the test split untouched for `evaluate`."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether a lower (`minimize`, losses) or higher (`maximize`, accuracies) objective is better."""
    study_name: str | None = None
    """Name of the Optuna study (and its MLflow parent run); the same name continues an interrupted sweep.
    null: `<config file name>-sweep`."""
    storage: str = "sqlite:///optuna.db"
    """Optuna study storage: an SQLite file beside mlflow.db by default, so a sweep survives being stopped."""
    pruner: Literal["median", "none"] = "median"
    """`median`: stop a trial whose objective at an evaluation is worse than the median of the finished
    trials at the same step (Optuna's MedianPruner); `none`: every trial trains to the end."""
    n_startup_trials: int = Field(2, ge=0)
    """Trials that finish before the pruner may stop any: the median needs finished trials to compare with."""
    n_warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of each trial before the pruner may stop it: early losses of a good setting can be
    high while its learning rate warms up."""
    seed: int = Field(0, ge=0)
    """Seed of Optuna's sampler (TPE): the same seed draws the same trial values, so a sweep can be repeated."""


# <<< sweeps


class Config(_Section):
    project: str
    """Project slug: the MLflow experiment and registered model name."""
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # >>> preference_tuning
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    # <<< preference_tuning
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    # >>> sweeps
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    # <<< sweeps

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        if self.task.name is None:
            self.task.name = self.project  # a neutral title, never the shop example's
        if self.model.load_in_4bit and self.train.device in ("cpu", "mps"):
            raise ValueError("model.load_in_4bit needs CUDA; set train.device=auto or cuda, or load_in_4bit=false")
        # >>> preference_tuning
        if self.train.stage != "sft" and not self.model.adapter:
            raise ValueError(
                f"train.stage={self.train.stage} needs model.adapter, the SFT adapter to start from: a run folder "
                f"(outputs/<run>), its adapter folder or a model URI (models:/{self.project}@champion)"
            )
        if self.train.stage == "grpo":
            self.grpo.check_fits(task_kind=self.task.kind, batch_size=self.train.batch_size)
        # <<< preference_tuning
        if self.eval.split == "validation" and self.train.early_stopping_patience:
            # Early stopping selects on validation, so scoring on it would overstate the result.
            raise ValueError("eval.split=validation with early stopping leaks; use eval.split=test")
        if self.train.early_stopping_patience and self.train.save_steps % self.train.eval_steps:
            # Early stopping restores the best checkpoint, so every evaluation must fall on a saved step.
            raise ValueError(
                f"early stopping needs train.save_steps ({self.train.save_steps}) to be a multiple of "
                f"train.eval_steps ({self.train.eval_steps})"
            )
        return self


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read `path`, apply `key.sub=value` overrides, validate; raise ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found (shipped configs are in configs/: smoke.yaml, default.yaml, gpu.yaml)"
        )
    text = path.read_text(encoding="utf-8")
    try:
        _refuse_aliases(text, where=str(path))
        raw = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections (data, model, lora, train, ...)")

    sources = {key: f"{path}:{line}" for key, line in lines.items()}
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(raw, key, value)
        sources[key] = f"command line ({override})"

    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, sources, default_source=str(path))) from None


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, so a run folder records exactly what trained it."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def describe_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help text) for every setting: the source of `config keys`."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_keys(annotation, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((f"{prefix}{name}", default, " ".join((field.description or "").split())))
    return rows


def key_lines(path: str | Path) -> dict[str, int]:
    """The 1-based line of each dotted key of a YAML config file ({} when it is not valid YAML or has aliases)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        _refuse_aliases(text, where=str(path))
        return _key_lines(yaml.compose(text))
    except (yaml.YAMLError, ConfigError):
        return {}


def _refuse_aliases(text: str, *, where: str, with_line: bool = True) -> None:
    """Raise ConfigError at a YAML alias (`*name`): a few KB of nested aliases expand to billions of items (an
    "alias bomb" took 54 s and 1 GB), and a config has no need of them. Reads parser events: linear, nothing built."""
    anchors = set()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.NodeEvent) and not isinstance(event, yaml.AliasEvent) and event.anchor:
            anchors.add(event.anchor)
        # An undefined alias is left to the YAML error (a file) or taken as text (an override such as `*proj`).
        if isinstance(event, yaml.AliasEvent) and event.anchor in anchors:
            line = f":{event.start_mark.line + 1}" if with_line and event.start_mark else ""
            raise ConfigError(
                f"{where}{line}: YAML aliases (*{event.anchor}) are not accepted in a config; write the value out"
            )


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"command line: '{override}' is not an override; write key.sub=value, e.g. train.max_steps=20"
        )
    try:
        _refuse_aliases(value, where=f"command line ({override})", with_line=False)
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return key.strip(), value  # not YAML: take it as a plain string


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"command line: cannot set '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Map each dotted key of a YAML mapping to its 1-based line number."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, f"{key}."))
    return lines


def _describe(err: ValidationError, sources: dict[str, str], default_source: str) -> str:
    problems: dict[str, str] = {}  # one message per key: a union type reports each member
    for error in err.errors():
        loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
        # Union types add the tried member type to loc (e.g. 'list[str]'); keep only real keys.
        loc = [part for part in loc if not any(ch in part for ch in "[]'\"")]
        key = ".".join(loc) or "(top level)"
        source = _nearest_source(key, sources, default_source)
        if error["type"] == "extra_forbidden" and key in MOVED_KEYS:
            problems.setdefault(key, f"{source}: {key} moved to {MOVED_KEYS[key]} (the `task` section)")
            continue
        if error["type"] == "extra_forbidden":
            message = f"unknown key{_suggest(loc)}"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif not loc:  # a check across sections (Config._check_combinations): its input is the whole config
            message = error["msg"].removeprefix("Value error, ")
        else:
            message = f"{error['msg']} (got {error.get('input')!r}){_expected(loc)}"
        problems.setdefault(key, f"{source}: {key}: {message}")
    header = f"invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
    return "\n".join([header, *(f"  {p}" for p in problems.values())])


def _nearest_source(key: str, sources: dict[str, str], default: str) -> str:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return default


def _section_for(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _suggest(loc: list[str]) -> str:
    model = _section_for(loc) if loc else None
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f" (known keys here: {', '.join(known)}){hint}"


def _expected(loc: list[str]) -> str:
    model = _section_for(loc) if loc else None
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None:
        return ""
    return f"; expected {_type_name(field.annotation)}"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in get_args(annotation))}]"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))
