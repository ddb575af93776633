"""Score the base model and the fine-tuned adapter on held-out data, side by side.

    <project> evaluate                                    # newest outputs/*/adapter, with its run's own config
    <project> evaluate --config configs/smoke.yaml --adapter outputs/<run>/adapter
    <project> evaluate --config configs/other.yaml --other-data   # on purpose: another config's data or task

A config that disagrees with the run's own (outputs/<run>/config.yaml, or the one logged to MLflow) on the
data or the task is refused, listing the keys: scores on other data must never pass for the model's own.

Both models see identical prompts: the same base weights (the adapter switched off for `base`) and the
tokenizer + chat template saved with the adapter. Writes reports/eval.json and reports/eval.md.

Metrics, per model:
- eval_loss: mean cross-entropy per answer token (prompt tokens excluded), teacher-forced;
  perplexity = exp(eval_loss).
- extraction task: json_valid_rate (answers holding a JSON object), field_accuracy (mean over fields)
  and field_accuracy_<field>, exact_match (every field right). Fields are the keys of the expected answers.
- generic task: exact_match (after trimming whitespace) and rouge_l (ROUGE-L F1, `rouge-score`).
Every rate is the mean of per-row scores (metrics.py), which also give:
- baselines (baselines.py): `majority` (each field's most common training value, no model), `classical`
  (TF-IDF + logistic regression per field, extraction task) and `few_shot` (the base model with eval.few_shot
  training examples as earlier chat turns), on the same rows and decoding;
- intervals (bootstrap.py): paired-bootstrap 95% intervals for every metric of every column and for the
  fine-tuned model's lead over each other column;
- error_analysis (error_analysis.py): confusion per categorical field, error kinds, the worst rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, EvalConfig, ModelConfig, load_config
from ..data.dataset import training_rows
from ..errors import ProjectError
from ..model.device import Device, resolve_device
from ..model.generate import chat_ids, generate_answers
from ..model.load import load_finetuned, load_tokenizer
from ..registry import COMMAND, ModelSource, resolve_model_source  # COMMAND: the console script, named in fixes
from ..tasks.kinds import TaskKind, task_kind
from ..tasks.metrics import RowScores, means
from ..tracking import flatten
from .baselines import (
    CLASSICAL,
    check_context,
    classical_answers,
    few_shot_rows,
    pick_examples,
    prompt_token_stats,
    row_digest,
)
from .bootstrap import paired_intervals
from .markdown import answer_cell, shown_source, table

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
Conversation = list[dict[str, str]]


@dataclass
class Scored:
    """One model's results: the metrics and the generated answer for each held-out example."""

    metrics: dict[str, float]
    answers: list[str]
    row_scores: RowScores = field(default_factory=dict)  # metric -> one value per row; the rates are their means


class EvaluationError(ProjectError, ValueError):
    """The config given to `evaluate` disagrees with the run's own on what is scored; the message lists the
    differing keys and the two ways on."""


# The settings that decide which rows are scored, and how (data.max_train_samples only trims training): a
# model scored with other values than its run's own is scored on other data, or as another task.
DATA_KEYS = ("data.path", "data.format", "data.max_seq_length", "data.validation_fraction", "data.test_fraction")


def evaluate(
    config: Config, *, adapter_dir: Path | str | ModelSource | None = None, other_data: bool = False
) -> dict[str, Any]:
    """Score base and fine-tuned on `config.eval.split`; write eval.json + eval.md; return the report.

    `adapter_dir` is a model source (an adapter or run folder, `latest`, an MLflow model URI such as
    models:/<name>@champion: registry.resolve_model_source) or one already resolved; default: the newest
    outputs/*/adapter. A config that disagrees with the run's own config.yaml on the data or the task is refused
    (EvaluationError), unless `other_data`: then the metrics go to a new MLflow run tagged
    `evaluation_of=<training run>` and the gate does not run. Otherwise, with tracking on, the metrics go to the
    model's training run and the promotion gate runs."""
    started = time.perf_counter()
    source = (
        adapter_dir
        if isinstance(adapter_dir, ModelSource)
        else resolve_model_source(adapter_dir, output_dir=config.train.output_dir, given_as="--adapter")
    )
    requested = source.uri or str(source.adapter_dir)
    source = _checked_source(config, source=source, requested=requested, other_data=other_data)
    rows = scored_rows(config, system_prompt=config.task.system_prompt)
    if not other_data:  # before any model is loaded or anything written
        check_run_config(config, source=source, requested=requested, rows=rows)
    judged = _judge_ready(config)  # an unreachable judge fails now, before minutes of scoring
    # A registry model names its own base; a local adapter uses the config's, and load_finetuned refuses
    # an adapter trained on another base (the wrong config would otherwise score and log the wrong model).
    from_registry = source.uri is not None
    model_cfg = config.model.model_copy(update={"base_model": source.base_model}) if from_registry else config.model
    device = resolve_device(config.train.device)
    train_rows = training_rows(config)
    columns, notes = _score_columns(
        config, source=source, model_cfg=model_cfg, rows=rows, train_rows=train_rows, device=device
    )
    base, finetuned = columns["base"], columns["finetuned"]
    examples = _example_rows(rows, base=base, finetuned=finetuned)
    judge = _judge(config, rows=rows, columns=columns) if judged else None
    report = {
        "base": base.metrics,
        "finetuned": finetuned.metrics,
        "baselines": _baselines(columns, notes=notes),
        "intervals": paired_intervals(
            {name: column.row_scores for name, column in columns.items()},
            resamples=config.eval.bootstrap_resamples,
            seed=config.train.seed,
        ),
        "error_analysis": _error_analysis(config, rows=rows, train_rows=train_rows, columns=columns),
        **({"judge": judge} if judge else {}),
        # The promotion gate's significance check pairs these with the champion's, row by row.
        "row_scores": {
            "finetuned": {name: [round(v, 6) for v in values] for name, values in finetuned.row_scores.items()}
        },
        "run": _run_record(config, source=source, base_model=model_cfg.base_model, rows=rows, started=started)
        | {"device": device, "other_data": other_data},  # scored with another config than the run's own, on purpose
        # The first eval.num_examples answers side by side, for `report` (README and model card).
        "examples": examples[: config.eval.num_examples],
    }
    out = write_reports(report, rows=rows, base=base, finetuned=finetuned, eval_cfg=config.eval)
    if config.tracking.enabled and source.run_id:
        _track(config, report=report, report_dir=out, examples=examples)
    return report


def _checked_source(config: Config, *, source: ModelSource, requested: str, other_data: bool) -> ModelSource:
    """Before anything is loaded or written: a checkpoint refused (or, --other-data, scored as its own record),
    a run tracked in another store than the current one refused."""
    if is_checkpoint(source):
        source = _as_checkpoint(source, requested=requested, other_data=other_data)
    if config.tracking.enabled and source.run_id:
        check_recorded_tracking_uri(source, requested=requested)
    return source


def is_checkpoint(source: ModelSource) -> bool:
    """A training checkpoint (outputs/<run>/checkpoint-<step>/), not the run's final adapter."""
    name = source.adapter_dir.name
    return source.uri is None and name.startswith("checkpoint-") and name.removeprefix("checkpoint-").isdigit()


def _as_checkpoint(source: ModelSource, *, requested: str, other_data: bool) -> ModelSource:
    """A checkpoint is not its run's model: its scores must never land on the run's own metrics nor drive the
    gate on the run's version. Refused (EvaluationError) unless --other-data, which logs a separate MLflow run
    tagged evaluation_of=<its run>; the run's version is not named as the one scored."""
    if not other_data:
        run = source.adapter_dir.parent
        raise EvaluationError(
            f"{requested} is a training checkpoint, not the run's final model: scored as the run, its metrics "
            "would replace the run's own and the promotion gate would judge the run's version on them. Nothing "
            f"was written. Evaluate the run's model:\n  {COMMAND} evaluate --adapter {run / 'adapter'}\n"
            "or score the checkpoint as its own record: add --other-data (the metrics go to a new MLflow run "
            "tagged evaluation_of=<its run>; the promotion gate does not run)."
        )
    return dataclasses.replace(source, version=None)


def check_recorded_tracking_uri(source: ModelSource, *, requested: str) -> None:
    """Refuse (TrackingError) a run folder whose tracking.json names another tracking store than the current
    one: its MLflow run is not there, and the evaluation would be written, then fail to log."""
    from ..runs import read_tracking_file
    from ..tracking import TrackingError, tracking_uri

    if source.run_dir is None:  # a registry model: found in the current store already
        return
    recorded = (read_tracking_file(source.run_dir) or {}).get("tracking_uri")
    if recorded and recorded != tracking_uri():
        raise TrackingError(
            f"{requested} was trained with MLflow tracking at {recorded}, not {tracking_uri()} (the current "
            f"MLFLOW_TRACKING_URI, or ./mlflow.db when unset): its run {source.run_id} is not there. Nothing was "
            f"written. Evaluate it against its own store:\n  MLFLOW_TRACKING_URI={recorded} {COMMAND} evaluate "
            f"--adapter {requested}"
        )


def _run_record(
    config: Config, *, source: ModelSource, base_model: str, rows: list[Conversation], started: float
) -> dict[str, Any]:
    """eval.json's `run`: what was scored, on which rows, with which model, and how long it took."""
    return {
        "adapter": source.uri or str(source.adapter_dir),  # the URI of a registered model, else its folder
        "base_model": base_model,
        "split": config.eval.split,
        "num_examples": len(rows),
        # Which rows were scored: the promotion gate compares only versions scored on the same ones.
        "test_digest": rows_digest(rows),
        "test_rows": len(rows),
        "task": config.task.kind,
        "max_new_tokens": config.eval.max_new_tokens,
        "mlflow_run_id": source.run_id,
        "model_version": source.version,
        "wall_time_s": round(time.perf_counter() - started, 1),  # loading + scoring every column
    }


def scored_rows(config: Config, *, system_prompt: str | None) -> list[Conversation]:
    """The conversations `evaluate` scores: the first eval.max_samples of eval.split, `system_prompt` first
    in each row that has no system message of its own."""
    from ..data.dataset import load_splits

    splits = load_splits(config.data, system_prompt=system_prompt)
    return list(splits[config.eval.split]["messages"])[: config.eval.max_samples]


def rows_digest(rows: list[Conversation]) -> str:
    """sha256 of the scored rows as canonical JSON (sorted keys, no spaces), in order: equal digests, same rows."""
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _score_columns(
    config: Config,
    *,
    source: ModelSource,
    model_cfg: ModelConfig,
    rows: list[Conversation],
    train_rows: list[Conversation],
    device: Device,
) -> tuple[dict[str, Scored], dict[str, dict[str, Any]]]:
    """Every column on the same rows: `majority` and `classical` (no language model), then one model load for
    `base` and `few_shot` (the adapter switched off) and `finetuned` (the adapter merged into the weights, as
    `serve` runs it). Returns the columns and the baselines' settings (classical; few_shot unless eval.few_shot
    is 0). A few-shot setting that cannot work is refused before anything is generated."""
    k, kind = config.eval.few_shot, task_kind(config.task)
    examples = pick_examples(train_rows, k=k, seed=config.train.seed, scored_rows=rows) if k else []
    tokenizer = load_tokenizer(source.tokenizer_dir)  # carries the chat template training used
    model = load_finetuned(model_cfg, adapter_dir=source.adapter_dir, device=device)
    shot_rows = few_shot_rows(rows, examples=examples) if k else []
    prompt_tokens = [len(chat_ids(tokenizer, row[:-1], add_generation_prompt=True)) for row in shot_rows]
    context = getattr(model.config, "max_position_embeddings", None)
    check_context(prompt_tokens, max_new_tokens=config.eval.max_new_tokens, context=context, k=k)
    majority = kind.majority_answer([row[-1]["content"] for row in train_rows])
    columns = {"majority": score_answers([majority] * len(rows), rows=rows, kind=kind)}
    classical, notes = _classical(rows, train_rows=train_rows, kind=kind, seed=config.train.seed)
    columns |= {"classical": classical} if classical else {}
    scoring = {"tokenizer": tokenizer, "eval_cfg": config.eval, "kind": kind, "device": device}
    with model.disable_adapter():
        columns["base"] = score(model, rows=rows, **scoring)
        if k:
            columns["few_shot"] = score(model, rows=shot_rows, **scoring)
    # Merged as `serve` merges it: scores what is served, and decodes ~1.4x faster on a CPU than the adapter's
    # two extra products in every layer. Last, because merging changes the base weights in place.
    columns["finetuned"] = score(model.merge_and_unload(), rows=rows, **scoring)
    if k:
        # Recorded so that anyone can check that no scored row was shown as an example.
        few_shot = {"k": k, "prompt_tokens": prompt_token_stats(prompt_tokens), "seed": config.train.seed}
        notes["few_shot"] = few_shot | {"example_digests": [row_digest(example) for example in examples]}
    return columns, notes


def _classical(
    rows: list[Conversation], *, train_rows: list[Conversation], kind: TaskKind, seed: int
) -> tuple[Scored | None, dict[str, Any]]:
    """The classical column, scored like the others; a field it answers with its majority value is n/a (its
    per-field accuracy dropped). A free-text task has no fields to classify: no column, n/a with the reason."""
    if not kind.json_answers:
        return None, {"classical": {"n/a": "a free-text task (task.kind generic) has no fields to classify"}}
    answers, fields = classical_answers(train_rows, rows, seed=seed)
    scored = score_answers(answers, rows=rows, kind=kind)
    for name in (name for name, done in fields.items() if done.startswith("n/a")):
        scored.metrics.pop(f"field_accuracy_{name}", None)
        scored.row_scores.pop(f"field_accuracy_{name}", None)
    return scored, {"classical": {"model": CLASSICAL, "fields": fields}}


def _judge_ready(config: Config) -> bool:
    """Whether the LLM judge scores this evaluation (generic task, eval.judge.base_url set); its endpoint is
    checked now (JudgeError naming the URL when it does not answer)."""
    if not config.eval.judge.base_url or task_kind(config.task).json_answers:  # the judge reads free text
        return False
    from .judge import check_reachable

    check_reachable(config.eval.judge)
    return True


def _judge(config: Config, *, rows: list[Conversation], columns: dict[str, Scored]) -> dict[str, Any]:
    """The LLM judge's scores of the base and fine-tuned answers (generic task, eval.judge.base_url set)."""
    from .judge import judge_answers

    judged = {
        name: judge_answers(config.eval.judge, rows=rows, answers=columns[name].answers)
        for name in ("base", "finetuned")
    }
    for name, result in judged.items():
        log.info("judge %s: mean score %s, %d failures", name, result["mean_score"], result["judge_failures"])
    return judged


def _baselines(columns: dict[str, Scored], *, notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """eval.json's `baselines`: each baseline's metrics, with what it answered (majority) or how (classical,
    few-shot); a baseline that does not apply holds only {"n/a": reason}."""
    baselines: dict[str, Any] = {
        "majority": columns["majority"].metrics
        | {"answer": columns["majority"].answers[0] if columns["majority"].answers else ""}
    }
    for name, settings in notes.items():
        baselines[name] = (columns[name].metrics if name in columns else {}) | settings
    return baselines


def _error_analysis(
    config: Config, *, rows: list[Conversation], train_rows: list[Conversation], columns: dict[str, Scored]
) -> dict[str, Any]:
    """The fine-tuned model's errors (extraction task), or its worst rows by ROUGE-L (generic task)."""
    from .error_analysis import analyse, worst_rows

    answers = {name: column.answers for name, column in columns.items() if name not in ("majority", "classical")}
    kind = task_kind(config.task)
    if not kind.json_answers:  # no fields to analyse: the rows it did worst on
        scores = columns["finetuned"].row_scores
        return {
            "model": "finetuned",
            "worst_rows": worst_rows(rows, scores=scores, metric=kind.headline, answers=answers),
        }
    train_answers = [row[-1]["content"] for row in train_rows]
    return analyse(rows, train_answers=train_answers, scores=columns["finetuned"].row_scores, answers=answers)


# ---- the run's own config ------------------------------------------------------------------------------


def check_run_config(config: Config, *, source: ModelSource, requested: str, rows: list[Conversation]) -> None:
    """Refuse (EvaluationError) to score a model with a config that disagrees with its run's own on the data
    or the task: its scores would describe other data, and land on its run as if they were its own. An
    untracked adapter without a config.yaml has nothing to compare with and passes."""
    from_registry = source.uri is not None
    # With tracking off, MLflow is not asked: a local run folder holds its config.yaml anyway.
    path = source.config_path(ask_mlflow=from_registry or config.tracking.enabled)
    if path is None:
        return
    own = load_config(path)
    differences = config_differences(config, own, compare_base_model=not from_registry)
    # Training records the system message its rows carried (null in the file): the same prompts, not a difference.
    if "task.system_prompt" in differences and scored_rows(config, system_prompt=own.task.system_prompt) == rows:
        del differences["task.system_prompt"]
    if differences:
        own_config = "" if from_registry else f" --config {path}"
        raise EvaluationError(
            f"{requested} was trained with another config than the one given: scored with it, the metrics would "
            "describe other data or another task, not this model's own.\n"
            + "".join(
                f"  {key}: the run's {_shown(ours)}, given {_shown(given)}\n"
                for key, (ours, given) in differences.items()
            )
            + "Evaluate it with its own config (the default when --config is left out, as in "
            f"`make evaluate RUN={requested}` without CONFIG=):\n"
            f"  {COMMAND} evaluate{own_config} --adapter {requested}\n"
            "or score it on the given config's data on purpose: add --other-data (the metrics go to a new MLflow "
            "run tagged evaluation_of=<its run>, never over its own; the promotion gate does not run)."
        )


def config_differences(config: Config, own: Config, *, compare_base_model: bool) -> dict[str, tuple[Any, Any]]:
    """{key: (the run's value, the given value)} for each setting that changes what is scored: task.*, the
    data keys of DATA_KEYS and, for a local adapter, model.base_model (a registry model names its own base)."""
    given, ours = flatten(config.model_dump(mode="json")), flatten(own.model_dump(mode="json"))
    keys = [key for key in ours if key.startswith("task.")] + list(DATA_KEYS)
    keys += ["model.base_model"] if compare_base_model else []
    return {key: (ours.get(key), given.get(key)) for key in keys if not _same(key, ours.get(key), given.get(key))}


def _same(key: str, ours: Any, given: Any) -> bool:
    if ours == given:
        return True
    # A local folder named two ways (relative and absolute) is the same folder; a hub id is compared as text.
    if key in ("data.path", "model.base_model") and Path(str(ours)).exists() and Path(str(given)).exists():
        return Path(str(ours)).resolve() == Path(str(given)).resolve()
    return False


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + '..."'


def _track(config: Config, *, report: dict[str, Any], report_dir: Path, examples: list[dict[str, str]]) -> None:
    """Log the held-out metrics to the model's training run, then run the promotion gate on its version; an
    evaluation on other data goes to a new run instead, and is never judged by the gate."""
    from ..tracking import log_evaluation, log_other_data_evaluation
    from .gate import promote

    run_id = report["run"]["mlflow_run_id"]
    if report["run"]["other_data"]:
        logged = log_other_data_evaluation(
            config, run_id=run_id, report=report, report_dir=report_dir, examples=examples
        )
        log.info(
            "logged to MLflow run %s (evaluation_of=%s); the training run and the gate are untouched", logged, run_id
        )
        return
    log_evaluation(run_id=run_id, report=report, report_dir=report_dir, examples=examples)
    version = report["run"]["model_version"]
    if config.tracking.promote and version:
        decision = promote(config, version=version, report_dir=report_dir)
        log.info("promotion gate: version %s %s (%s)", version, decision.verdict, decision.reason)


def _example_rows(rows: list[Conversation], *, base: Scored, finetuned: Scored) -> list[dict[str, str]]:
    return [
        {"input": row[-2]["content"], "expected": row[-1]["content"], "base": b, "finetuned": f}
        for row, b, f in zip(rows, base.answers, finetuned.answers, strict=True)
    ]


def score(
    model: PeftModel | PreTrainedModel,
    *,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[Conversation],
    eval_cfg: EvalConfig,
    kind: TaskKind,
    device: Device,
) -> Scored:
    """Loss, greedy answers and task metrics of `model` as it is now (adapter on or off)."""
    loss = answer_loss(model, tokenizer=tokenizer, rows=rows, batch_size=eval_cfg.batch_size, device=device)
    answers = generate_answers(
        model, tokenizer=tokenizer, rows=rows, eval_cfg=eval_cfg, device=device, json_answers=kind.json_answers
    )
    scored = score_answers(answers, rows=rows, kind=kind)
    metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}  # capped: exp overflows past ~709
    return Scored(metrics=metrics | scored.metrics, answers=answers, row_scores=scored.row_scores)


def score_answers(answers: list[str], *, rows: list[Conversation], kind: TaskKind) -> Scored:
    """The task metrics of given answers to `rows` (per row, and their means); no loss, no model."""
    scores = kind.row_scores(answers, [row[-1]["content"] for row in rows])
    return Scored(metrics=means(scores), answers=answers, row_scores=scores)


# ---- loss -----------------------------------------------------------------------------------------------


def answer_loss(
    model: PeftModel | PreTrainedModel,
    *,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[Conversation],
    batch_size: int,
    device: Device,
) -> float:
    """Mean cross-entropy per answer token: the final assistant reply and its end-of-turn, not the prompt. The LM
    head runs on the answer positions only: a few-shot prompt's full logits (40 rows x 700 tokens x a 49k
    vocabulary) would take gigabytes for nothing."""
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = _loss_batch(tokenizer, rows[start : start + batch_size])
        input_ids, attention_mask, labels = (tensor.to(device) for tensor in batch)
        targets = labels[:, 1:]  # token t predicts token t+1
        answer = targets != -100
        with torch.no_grad():  # the LoRA layers sit inside the backbone: on or off as the adapter is
            hidden = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = causal_lm.get_output_embeddings()(hidden[:, :-1][answer]).float()
        # Summing (not averaging) per batch weights every answer token equally.
        total += torch.nn.functional.cross_entropy(logits, targets[answer], reduction="sum").item()
        count += int(answer.sum())
    return total / max(count, 1)


def _loss_batch(tokenizer: PreTrainedTokenizerBase, rows: list[Conversation]):
    """Right-padded input ids, attention mask, and labels that are -100 on prompt and padding tokens."""
    import torch

    ids, labels = [], []
    for row in rows:
        prompt = chat_ids(tokenizer, row[:-1], add_generation_prompt=True)
        full = chat_ids(tokenizer, row, add_generation_prompt=False)
        # The answer starts where the two tokenizations part (usually right after the prompt).
        split = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(prompt))
        ids.append(full)
        labels.append([-100] * split + full[split:])
    width = max(len(seq) for seq in ids)
    return (
        torch.tensor([seq + [tokenizer.pad_token_id] * (width - len(seq)) for seq in ids]),
        torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in ids]),
        torch.tensor([seq + [-100] * (width - len(seq)) for seq in labels]),
    )


# ---- reports --------------------------------------------------------------------------------------------


def write_reports(
    report: dict[str, Any], *, rows: list[Conversation], base: Scored, finetuned: Scored, eval_cfg: EvalConfig
) -> Path:
    """reports/eval.json (machine-readable) and reports/eval.md (a table and examples side by side)."""
    out = Path(eval_cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [*_metrics_table(report), *_examples(rows, base=base, finetuned=finetuned, n=eval_cfg.num_examples)]
    (out / "eval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote %s and %s", out / "eval.json", out / "eval.md")
    return out


def _metrics_table(report: dict[str, Any]) -> list[str]:
    run = report["run"]
    lines = [
        "# Evaluation: base vs fine-tuned",
        "",
        f"Adapter `{shown_source(run['adapter'])}` on `{shown_source(run['base_model'])}`; {run['num_examples']} "
        "examples of the "
        f"`{run['split']}` split, greedy decoding (at most {run['max_new_tokens']} new tokens).",
        "",
    ]
    if run.get("other_data"):
        lines += [
            "Scored on purpose with another config than the model's run (`--other-data`): these numbers describe "
            "that data or task, not the model's own results.",
            "",
        ]
    return lines + _columns_table(report)


def _columns_table(report: dict[str, Any]) -> list[str]:
    """Every metric in every column (majority, classical, base, few-shot, fine-tuned) with its 95% interval, then the
    fine-tuned model's lead over the base model with the interval of that difference."""
    from .error_analysis import markdown as error_markdown

    base, tuned, intervals = report["base"], report["finetuned"], report.get("intervals") or {}
    baselines = report.get("baselines") or {}
    columns = {"majority": baselines.get("majority"), "classical": baselines.get("classical"), "base": base}
    columns |= {"few_shot": baselines.get("few_shot"), "finetuned": tuned}
    columns = {name: values for name, values in columns.items() if values is not None and "n/a" not in values}
    lead = (intervals.get("differences") or {}).get("finetuned_minus_base", {})
    rows = []
    for name in base:
        cells = [
            _with_interval(values.get(name), (intervals.get("columns") or {}).get(column, {}).get(name))
            for column, values in columns.items()
        ]
        change = lead.get(name) or {"estimate": tuned[name] - base[name]}
        rows.append((name, *cells, _with_interval(change["estimate"], lead.get(name), sign="+")))
    headers = ("metric", *(COLUMN_TITLES[column] for column in columns), "fine-tuned - base")
    lines = table(headers, rows, align="l" + "r" * (len(headers) - 1))
    resamples = intervals.get("resamples")
    if resamples:
        lines += [
            "",
            f"[low, high]: 95% paired-bootstrap interval over the scored rows ({resamples} resamples, "
            f"seed {intervals.get('seed')}). A change whose interval holds 0 may be noise.",
        ]
    lines += _classical_note(baselines.get("classical"))
    few_shot = baselines.get("few_shot")
    if few_shot:
        lines += [
            "",
            f"few-shot: the base model with {few_shot['k']} training examples as earlier chat turns "
            f"(prompts of {few_shot['prompt_tokens']['mean']:g} tokens on average, "
            f"{few_shot['prompt_tokens']['max']} at most).",
        ]
    for column, judged in (report.get("judge") or {}).items():
        mean = "none" if judged["mean_score"] is None else f"{judged['mean_score']:.2f}"
        lines += [
            "",
            f"judge `{judged['model']}` on {column}: mean score {mean} (1-5), {judged['judge_failures']} "
            f"failures (not scored); rubric sha256 `{judged['rubric_sha256'][:12]}`, raw answers in eval.json.",
        ]
    return lines + error_markdown(report.get("error_analysis") or {})


def _classical_note(classical: dict[str, Any] | None) -> list[str]:
    if not classical:
        return []
    if "n/a" in classical:
        return ["", f"classical: n/a, {classical['n/a']}."]
    fields = classical["fields"].items()
    skipped = [f"`{name}` ({done.removeprefix('n/a: ')})" for name, done in fields if done.startswith("n/a")]
    return [
        "",
        f"classical: {classical['model']}, trained on the training split's user messages"
        + (f"; n/a, answered with the most common training value: {', '.join(skipped)}." if skipped else "."),
    ]


COLUMN_TITLES = {"majority": "majority", "classical": "classical", "base": "base", "few_shot": "few-shot",
                 "finetuned": "fine-tuned"}  # fmt: skip


def _with_interval(value: float | None, interval: dict[str, float] | None, *, sign: str = "") -> str:
    if value is None:
        return "n/a"  # a baseline without a loss (no language model) or without the field (classical)
    text = f"{value:{sign}.4f}"
    return f"{text} [{interval['low']:{sign}.4f}, {interval['high']:{sign}.4f}]" if interval else text


def _examples(rows: list[Conversation], *, base: Scored, finetuned: Scored, n: int) -> list[str]:
    lines = ["", "## Examples", ""]
    for i, row in enumerate(rows[:n], start=1):
        cells = {
            "input": row[-2]["content"],
            "expected": row[-1]["content"],
            "base": base.answers[i - 1],
            "fine-tuned": finetuned.answers[i - 1],
        }
        # Answers stay whole here (line breaks as <br>); the README's samples are cut to one line.
        table_lines = table(("", ""), [(label, answer_cell(text)) for label, text in cells.items()])
        lines += [f"### Example {i}", "", *table_lines, ""]
    return lines
