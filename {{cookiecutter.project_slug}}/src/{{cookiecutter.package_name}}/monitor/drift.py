"""Prompt drift: does production traffic still look like the data the model was trained on?

    <project> monitor drift --current logs/requests.jsonl --config configs/smoke.yaml
    <project> monitor drift --reference data/shop_extraction --current logs/requests.jsonl --threshold 0.34

Exit codes, for a scheduled job: 0 no drift, 1 drift, 2 no verdict (too few requests, unreadable log or data).

The request log that `serve` writes is compared with the training prompts (the `train` split of the
reference data), one feature per prompt:

- `prompt_chars`: characters of the last user message (as the request log counts them);
- `prompt_tokens`: tokens of the chat-formatted prompt (system message included), counted with the
  served tokenizer; compared only when that tokenizer is on disk (this never downloads);
- `oov_rate`: share of the prompt's words (letters only: numbers and ids are new in every message)
  that no training prompt contains. Needs the prompt texts in the log (serve with LLM_LOG_TEXTS=1);
  training texts go through the log's own redaction first, so masks like [EMAIL] count alike. A
  training prompt gets the leave-one-out rate: its words that no *other* training prompt has, which is
  what a fresh prompt from the training distribution would score.

Each feature's distribution is tested with evidently (Kolmogorov-Smirnov by default, `monitor.stattest`);
the verdict is `drift` when the share of drifted features reaches `monitor.drift_threshold`. evidently's
own text descriptors are not used: they download NLTK data at run time, which offline machines cannot.
Writes reports/drift.json and reports/drift.html (evidently's interactive report under a summary), and
logs both to MLflow when a tracking store is configured.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from ..config import Config, MonitorConfig

FEATURES = ("prompt_chars", "prompt_tokens", "oov_rate")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script
_TOP_UNSEEN = 20  # unseen words listed in the report


class DriftError(BadInput, ValueError):
    """No verdict is possible (missing or unreadable log or data, too few requests); the message says why."""


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test: `score` is a p-value (drift below `threshold`) or a distance (drift at or above it)."""

    method: str
    score: float
    score_kind: str  # "p_value" or "distance"
    threshold: float
    drifted: bool
    reference_mean: float
    current_mean: float
    n_reference: int
    n_current: int


def check_drift(
    config: Config,
    *,
    current: str | Path,
    reference: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[dict[str, Any], Any]:
    """Compare the request log `current` with the training prompts of `reference` (default: `data.path`).

    Returns the report (the content of drift.json) and evidently's snapshot (for the HTML). Raises
    DriftError when no verdict is possible and data.DataError when the reference data is unusable.
    """
    from ..data.dataset import load_splits

    monitor, notes = config.monitor, []
    records = read_request_log(current, max_requests=monitor.max_requests)
    if len(records) < monitor.min_requests:
        raise DriftError(
            f"{current}: {len(records)} request(s), fewer than monitor.min_requests={monitor.min_requests}; "
            "wait for more traffic or lower monitor.min_requests"
        )
    data_cfg = config.data.model_copy(update={"path": reference}) if reference else config.data
    # The split and rows training used, with the prompt training put first.
    train_rows = load_splits(data_cfg, system_prompt=config.task.system_prompt)["train"]
    reference_values, current_values = reference_features(train_rows, tokenizer), current_features(records)
    vocabulary = None
    if current_values["texts"]:
        vocabulary = vocabulary_features(reference_values.pop("texts"), current_values.pop("texts"))
        reference_values["oov_rate"], current_values["oov_rate"] = vocabulary.pop("rates")
    else:
        notes.append("the log holds no prompt texts (text logging is off): out-of-vocabulary rate not compared")
    if tokenizer is None:
        notes.append("the served tokenizer is not available offline: token counts not compared, characters only")
    compared = _comparable(reference_values, current_values, minimum=monitor.min_requests, notes=notes)
    if not compared:
        raise DriftError(f"{current}: no request has a usable prompt_chars, prompt_tokens or prompt value")
    features, snapshot = run_drift_tests(
        {name: reference_values[name] for name in compared}, {name: current_values[name] for name in compared}, monitor
    )
    share = sum(result.drifted for result in features.values()) / len(features)
    report = {
        "verdict": "drift" if share >= monitor.drift_threshold else "no_drift",
        "drift_share": share,
        "drift_threshold": monitor.drift_threshold,
        "features": {name: asdict(result) for name, result in features.items()},
        "vocabulary": vocabulary,
        "n_reference": len(train_rows),
        "n_current": len(records),
        "reference": str(data_cfg.path),
        "current": str(current),
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "notes": notes,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return report, snapshot


# ---- inputs -------------------------------------------------------------------------------------------


def read_request_log(path: str | Path, *, max_requests: int | None = None) -> list[dict[str, Any]]:
    """The newest `max_requests` records of a JSONL request log (all when None).

    A cut-off last line (the server writing while this reads) is skipped; any other bad line is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DriftError(f"{path}: request log not found; serve the model, send it requests, or pass --current PATH")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DriftError(f"{path}:{number}: not valid JSON ({err.msg}); fix or delete that line") from None
        if not isinstance(record, dict):
            raise DriftError(f"{path}:{number}: expected one JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records[-max_requests:] if max_requests else records


def reference_features(rows: Dataset, tokenizer: PreTrainedTokenizerBase | None) -> dict[str, list]:
    """Per training prompt, measured as the server measures requests: last user message (text and
    characters) and chat-template tokens of everything before the answer (with a tokenizer)."""
    prompts = [messages[:-1] for messages in rows["messages"]]  # what a client sends: all but the answer
    texts = [next(m["content"] for m in reversed(prompt) if m["role"] == "user") for prompt in prompts]
    values: dict[str, list] = {"prompt_chars": [float(len(text)) for text in texts], "texts": texts}
    if tokenizer is not None:
        values["prompt_tokens"] = [float(_prompt_tokens(tokenizer, prompt)) for prompt in prompts]
    return values


def current_features(records: list[dict[str, Any]]) -> dict[str, list]:
    """Per logged request: the numeric fields the server always writes, and the prompt text when logged."""
    return {
        "prompt_chars": [float(r["prompt_chars"]) for r in records if _is_number(r.get("prompt_chars"))],
        "prompt_tokens": [float(r["prompt_tokens"]) for r in records if _is_number(r.get("prompt_tokens"))],
        "texts": [r["prompt"] for r in records if isinstance(r.get("prompt"), str)],
    }


def vocabulary_features(reference_texts: list[str], current_texts: list[str]) -> dict[str, Any]:
    """Out-of-vocabulary rates per prompt (`rates`: reference, current) and a summary for the report."""
    from .request_log import redact

    reference_words = [_words(redact(text)) for text in reference_texts]
    document_frequency = Counter(word for words in reference_words for word in set(words))
    current_words = [_words(text) for text in current_texts]
    unseen = Counter(word for words in current_words for word in words if word not in document_frequency)
    reference_rates = _rates(reference_words, lambda word: document_frequency[word] == 1)  # leave-one-out
    current_rates = _rates(current_words, lambda word: word not in document_frequency)
    return {
        "rates": (reference_rates, current_rates),
        "vocabulary_size": len(document_frequency),
        "reference_oov_rate": _pooled(reference_words, lambda word: document_frequency[word] == 1),
        "current_oov_rate": _pooled(current_words, lambda word: word not in document_frequency),
        "top_unseen_words": [[word, count] for word, count in unseen.most_common(_TOP_UNSEEN)],
    }


def served_tokenizer(config: Config, source: str | Path | None = None) -> PreTrainedTokenizerBase | None:
    """The tokenizer the server counts with: `source`, else the newest trained adapter's, else the base model's.

    Loaded from disk or the local hub cache only; None when it is not there.
    """
    from transformers import AutoTokenizer

    from ..model.load import ModelError
    from ..registry import LATEST, resolve_model_source

    if source is None:
        try:  # what `serve` serves by default
            source = resolve_model_source(LATEST, output_dir=config.train.output_dir).tokenizer_dir
        except ModelError:
            source = config.model.base_model
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError):  # not downloaded / not a model folder
        return None


def _prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]]) -> int:
    encoded = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
    return len(encoded["input_ids"])


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _rates(prompts: list[list[str]], is_unseen: Callable[[str], bool]) -> list[float]:
    # Prompts without a single word (only numbers or symbols) have no rate, rather than a rate of 0.
    return [sum(map(is_unseen, words)) / len(words) for words in prompts if words]


def _pooled(prompts: list[list[str]], is_unseen: Callable[[str], bool]) -> float:
    total = sum(len(words) for words in prompts)
    return sum(is_unseen(word) for words in prompts for word in words) / total if total else 0.0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparable(reference: dict[str, list], current: dict[str, list], *, minimum: int, notes: list[str]) -> list[str]:
    """FEATURES that both sides have, leaving out (with a note) those that too few requests have a value for."""
    compared = []
    for name in (name for name in FEATURES if name in reference and name in current):
        if len(current[name]) >= minimum:
            compared.append(name)
        else:
            notes.append(f"{name}: only {len(current[name])} request(s) have a value (< {minimum}): not compared")
    return compared


# ---- the tests ----------------------------------------------------------------------------------------


def run_drift_tests(
    reference: dict[str, list[float]], current: dict[str, list[float]], monitor: MonitorConfig
) -> tuple[dict[str, FeatureDrift], Any]:
    """Run evidently's drift test on each feature; return the results by feature and the report snapshot."""
    import pandas as pd

    try:
        from evidently import DataDefinition, Report
        from evidently import Dataset as EvidentlyDataset
        from evidently.presets import DataDriftPreset
    except ImportError:
        raise DriftError('evidently is not installed: pip install -e ".[monitor]" (make install has it)') from None

    columns = list(current)
    definition = DataDefinition(numerical_columns=columns)

    def dataset(values: dict[str, list[float]]) -> EvidentlyDataset:
        # Series of different lengths line up as NaN, which evidently leaves out per column.
        frame = pd.DataFrame({name: pd.Series(column, dtype=float) for name, column in values.items()})
        return EvidentlyDataset.from_pandas(frame, data_definition=definition)

    preset = DataDriftPreset(
        columns=columns,
        method=monitor.stattest,
        threshold=monitor.stattest_threshold,
        drift_share=monitor.drift_threshold,
    )
    try:
        snapshot = Report([preset], include_tests=True).run(
            current_data=dataset(current), reference_data=dataset(reference)
        )
    except ValueError as err:  # evidently's StatTestNotFoundError lists the known names
        raise DriftError(f"monitor.stattest={monitor.stattest!r}: {err}") from None
    return _results(snapshot.dict(), reference, current), snapshot


def _results(
    snapshot: dict[str, Any], reference: dict[str, list[float]], current: dict[str, list[float]]
) -> dict[str, FeatureDrift]:
    """Per-column drift from evidently's snapshot: each ValueDrift metric and the test bound to it."""
    failed = {test["metric_config"]["metric_id"] for test in snapshot["tests"] if str(test["status"]).endswith("FAIL")}
    results = {}
    for metric in snapshot["metrics"]:
        settings = metric["config"]
        if not settings["type"].endswith("ValueDrift"):
            continue
        name, score, threshold = settings["column"], float(metric["value"]), float(settings["threshold"])
        drifted = metric["id"] in failed
        results[name] = FeatureDrift(
            method=str(settings["method"]),
            score=score,
            # evidently flags a p-value below its threshold and a distance at or above it, and its names
            # do not always say which a test gives ("Anderson-Darling" is a p-value): the flag tells.
            score_kind="p_value" if drifted == (score < threshold) else "distance",
            threshold=threshold,
            drifted=drifted,
            reference_mean=_mean(reference[name]),
            current_mean=_mean(current[name]),
            n_reference=len(reference[name]),
            n_current=len(current[name]),
        )
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ---- outputs ------------------------------------------------------------------------------------------


def write_reports(report: dict[str, Any], snapshot: Any, out_dir: str | Path) -> list[Path]:
    """Write drift.json and drift.html (a summary above evidently's report) into `out_dir`; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "drift.json", out_dir / "drift.html"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page = snapshot.get_html_str(as_iframe=False)
    summary = _summary_html(report)
    page = page.replace("<body>", f"<body>\n{summary}", 1) if "<body>" in page else summary + page
    html_path.write_text(page, encoding="utf-8")
    return [json_path, html_path]


def _summary_html(report: dict[str, Any]) -> str:
    colour = "#b3261e" if report["verdict"] == "drift" else "#1e6b34"
    rows = "".join(
        f"<tr><td>{name}</td><td>{f['method']}</td><td>{f['score']:.3g}</td><td>{f['threshold']:g}</td>"
        f"<td>{f['reference_mean']:.3g}</td><td>{f['current_mean']:.3g}</td>"
        f"<td>{'yes' if f['drifted'] else 'no'}</td></tr>"
        for name, f in report["features"].items()
    )
    vocabulary = report["vocabulary"]
    unseen = (
        "<p>Most frequent words never seen in training: "
        + html.escape(", ".join(f"{word} ({count})" for word, count in vocabulary["top_unseen_words"]) or "none")
        + "</p>"
        if vocabulary
        else ""
    )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in report["notes"])
    return (
        '<section style="font-family: sans-serif; margin: 1.5em">'
        f'<h1 style="color: {colour}">Prompt drift: {report["verdict"].replace("_", " ")}</h1>'
        f"<p>{report['drift_share']:.0%} of features drifted (threshold {report['drift_threshold']:.0%}); "
        f"{report['n_current']} requests from {html.escape(report['current'])} against "
        f"{report['n_reference']} training prompts from {html.escape(report['reference'])}, {report['created']}.</p>"
        '<table border="1" cellpadding="4" style="border-collapse: collapse">'
        "<tr><th>feature</th><th>test</th><th>score</th><th>threshold</th><th>training mean</th>"
        f"<th>production mean</th><th>drifted</th></tr>{rows}</table>{unseen}"
        f"{f'<ul>{notes}</ul>' if notes else ''}</section>"
    )


def log_to_mlflow(report: dict[str, Any], files: list[Path], *, experiment: str) -> str | None:
    """Log the check as a run of `experiment` (metrics + both files); return the run id.

    Uses MLFLOW_TRACKING_URI, else ./mlflow.db when it exists; None (nothing logged) when neither is there,
    so a drift check never creates a tracking store of its own.
    """
    from ..tracking import DEFAULT_TRACKING_URI, check_tracking_server, tracking_uri

    uri = tracking_uri()
    if uri == DEFAULT_TRACKING_URI and not Path("mlflow.db").is_file():
        return None
    # An unreachable server fails in seconds, not after MLflow's retries.
    check_tracking_server(uri, consequence="The drift reports were written; nothing was logged to MLflow.")
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    metrics = {"drift_share": report["drift_share"], "drift_detected": float(report["verdict"] == "drift")}
    metrics |= {"n_current": report["n_current"], "n_reference": report["n_reference"]}
    for name, feature in report["features"].items():
        metrics |= {f"{name}_score": feature["score"], f"{name}_drifted": float(feature["drifted"])}
    if report["vocabulary"]:
        metrics["current_oov_rate"] = report["vocabulary"]["current_oov_rate"]
    with mlflow.start_run(run_name=f"drift-{report['created']}", tags={"kind": "drift"}) as run:
        mlflow.log_params({"drift_threshold": report["drift_threshold"], "current": report["current"]})
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="drift")
    return run.info.run_id
