"""The accuracy cost of quantization (llama_cpp extra): a GGUF file scored like the adapter, on the same rows.

    <project> evaluate --gguf outputs/<run>/model-q4_k_m.gguf     # after `make evaluate` for the same run

Same rows (eval.split, the run's system prompt), same greedy decoding and stop rules (export/llama.py), same
scorer. The file's row scores are paired with the fine-tuned adapter's in reports/eval.json for a bootstrap
interval on the difference, and timed: answer tokens per second, one request at a time, on this machine. The
adapter is timed the same way once, on its first SPEED_ROWS rows (transformers, merged weights, batch 1).
Writes reports/quantization.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..export.gguf import ExportError
from ..export.llama import Gguf, check_task, greedy_answers, open_gguf
from ..model.device import resolve_device
from ..model.generate import generate_answers
from ..model.load import load_finetuned
from ..tasks.kinds import task_kind
from .bootstrap import paired_intervals
from .evaluate import rows_digest, score_answers, scored_rows

QUANTIZATION_FILE = "quantization.json"
# The adapter's speed is timed on the first rows only: one request at a time takes minutes on a CPU, and its
# answers (and scores) are reports/eval.json's already.
SPEED_ROWS = 8
ADAPTER = "adapter"  # the key of the adapter's own line


def evaluate_gguf(config: Config, *, path: Path) -> dict[str, Any]:
    """Score and time the GGUF file on the rows `evaluate` scored; add its line to reports/quantization.json."""
    gguf = open_gguf(path, context=_context(config))
    check_task(gguf, config)
    rows = scored_rows(config, system_prompt=config.task.system_prompt)
    digest = rows_digest(rows)
    adapter_rows = _adapter_row_scores(config, digest=digest, gguf=gguf)
    kind = task_kind(config.task)
    started = time.perf_counter()
    answers = greedy_answers(gguf, rows=rows, max_new_tokens=config.eval.max_new_tokens, json_answers=kind.json_answers)
    seconds = time.perf_counter() - started
    scored = score_answers(answers, rows=rows, kind=kind)
    intervals = paired_intervals(
        {"finetuned": adapter_rows, "gguf": scored.row_scores},
        resamples=config.eval.bootstrap_resamples,
        seed=config.train.seed,
    )
    report = _read(config)
    if ADAPTER not in report.get("lines", {}) or report.get("test_digest") != digest:
        report = {
            "test_digest": digest,
            "run": gguf.source.name,
            "lines": {ADAPTER: _time_adapter(config, gguf=gguf, rows=rows)},
        }
        report["lines"][ADAPTER] |= {"metrics": intervals["columns"]["finetuned"]}
    report["lines"][path.stem.removeprefix("model-")] = {
        "file": str(path),
        "size_mb": round(path.stat().st_size / 1e6, 1),
        "metrics": intervals["columns"]["gguf"],
        "minus_adapter": {
            metric: _negated(entry) for metric, entry in intervals["differences"]["finetuned_minus_gguf"].items()
        },
        "tokens_per_s": round(_answer_tokens(gguf, answers) / seconds, 1),
        "answers": answers[: config.eval.num_examples],
    }
    out = Path(config.eval.report_dir) / QUANTIZATION_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _context(config: Config) -> int:
    return config.data.max_seq_length + config.eval.max_new_tokens


def _read(config: Config) -> dict[str, Any]:
    path = Path(config.eval.report_dir) / QUANTIZATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _adapter_row_scores(config: Config, *, digest: str, gguf: Gguf) -> dict[str, list[float]]:
    """The fine-tuned adapter's row scores from reports/eval.json: of this run, on these very rows."""
    eval_file = Path(config.eval.report_dir) / "eval.json"
    report = json.loads(eval_file.read_text(encoding="utf-8")) if eval_file.is_file() else {}
    run = report.get("run", {})
    if Path(run.get("adapter", "")).resolve() != gguf.source.adapter_dir.resolve():
        raise ExportError(
            f"{eval_file} does not score {gguf.source.adapter_dir}: run `make evaluate` for that run first"
        )
    if run.get("test_digest") != digest:
        raise ExportError(
            f"{eval_file} scored other rows than --config's {config.eval.split} split: evaluate the run again"
        )
    return report["row_scores"]["finetuned"]


def _time_adapter(config: Config, *, gguf: Gguf, rows: list) -> dict[str, Any]:
    """The adapter's answer tokens per second, generated as the GGUF's are (one row at a time, merged weights), on
    the first SPEED_ROWS rows."""
    device = resolve_device(config.train.device)
    model = load_finetuned(config.model, adapter_dir=gguf.source.adapter_dir, device=device).merge_and_unload().eval()
    eval_cfg = config.eval.model_copy(update={"batch_size": 1})
    started = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer=gguf.tokenizer,
        rows=rows[:SPEED_ROWS],
        eval_cfg=eval_cfg,
        device=device,
        json_answers=task_kind(config.task).json_answers,
    )
    seconds = time.perf_counter() - started
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {
        "file": str(gguf.source.adapter_dir),
        "dtype": dtype,
        "tokens_per_s": round(_answer_tokens(gguf, answers) / seconds, 1),
    }


def _answer_tokens(gguf: Gguf, answers: list[str]) -> int:
    """Tokens in the answers (end-of-turn tokens aside), counted with one tokenizer for every line."""
    return sum(len(gguf.tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers) or 1


def _negated(entry: dict[str, float]) -> dict[str, float]:
    """finetuned - gguf as gguf - finetuned: the file's change against the adapter, negative = lost."""
    return {"estimate": -entry["estimate"], "low": -entry["high"], "high": -entry["low"]}
