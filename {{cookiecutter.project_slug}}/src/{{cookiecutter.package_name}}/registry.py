"""The MLflow model registry: model versions, their aliases, the promotion gate, and loading a model by URI.

    <project> train --config configs/smoke.yaml     # registers a version, aliases it `candidate`
    <project> evaluate --config configs/smoke.yaml  # then runs the promotion gate on that version
    <project> promote --config configs/smoke.yaml   # the gate on its own
    <project> serve --model models:/<project>@champion

Registered model name = the config's `project`; alias `candidate` = the newest version, `champion` = the
version that won the gate (it beats the champion on `tracking.promotion_metric`, scored on the same test rows:
the `evaluation.test_digest` tags of both training runs must agree). Evaluation, serving and
deployment load a model through one function, `fetch_model`, whatever the source: `models:/<name>@<alias>`,
`models:/<name>/<version>`, `runs:/<run id>/model`, or a local adapter folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .config import Config
from .model import read_adapter_config
from .runs import read_tracking_file
from .tracking import (
    TEST_DIGEST_TAG,
    TEST_ROWS_TAG,
    TrackingError,
    client,
    inside_run,
    library_versions,
    tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_ARTIFACT = "model"  # name of the logged MLflow model inside each run
COMMAND = __package__.replace("_", "-")  # the console script, as in __main__.py: named in the reasons


def is_model_uri(source: str | Path) -> bool:
    """True for an MLflow model URI (`models:/...`, `runs:/...`), False for a local folder.

    The same scheme test as MLflow's `is_models_uri` / `RunsArtifactRepository.is_runs_uri`, without
    importing mlflow (seconds) to ask."""
    try:
        return urlparse(str(source)).scheme in ("models", "runs")
    except ValueError:  # e.g. an unbalanced "[" in the netloc: not a URI
        return False


# ---- registering versions -------------------------------------------------------------------------------


def log_and_register(
    config: Config, *, run_id: str, model: PeftModel, tokenizer: PreTrainedTokenizerBase
) -> ModelVersion | None:
    """Log the trained adapter (the in-memory PeftModel training just saved, so the base model is not
    loaded a second time) as an MLflow transformers model, register it, alias the new version `candidate`."""
    import mlflow

    base = Path(config.model.base_model)
    with inside_run(run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=MODEL_ARTIFACT,
            task="llm/v1/chat",  # OpenAI-style chat signature: `mlflow models serve` accepts messages
            # A local base is referenced by path (adapter only); a hub base is referenced by its id.
            base_model_path=str(base.resolve()) if base.is_dir() else None,
            pip_requirements=_pip_requirements(),
            input_example={"messages": [{"role": "user", "content": "Where is my order A12345?"}]},
            registered_model_name=config.project if config.tracking.register_model else None,
        )
    if not config.tracking.register_model:
        return None
    version = client().get_model_version(config.project, str(info.registered_model_version))
    client().set_registered_model_alias(config.project, CANDIDATE, version.version)
    # The run's stage and (DPO) SFT parent on the version too, so the registry shows what each version is.
    lineage = {k: v for k, v in client().get_run(run_id).data.tags.items() if k == "stage" or k.startswith("parent.")}
    for key, value in lineage.items():
        client().set_model_version_tag(config.project, version.version, key, value)
    log.info("registered %s version %s as @%s", config.project, version.version, CANDIDATE)
    return version


def _pip_requirements() -> list[str]:
    # Explicit, because inference on CPU-only installs otherwise fails looking for torchvision.
    versions = library_versions()
    return [f"{name}=={versions[name]}" for name in ("torch", "transformers", "peft")] + ["accelerate"]


# ---- promotion gate -------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What the gate decided and why; written to reports/promotion.json and to the version's tags."""

    model: str
    candidate_version: str
    champion_version: str | None
    metric: str
    direction: str
    candidate_value: float | None
    champion_value: float | None
    promoted: bool
    reason: str


def promote(config: Config, *, version: str | None = None, report_dir: Path | None = None) -> Decision:
    """Make the candidate (or `version`) `champion` if it beats the current champion on the configured
    metric, or if there is no champion yet. A losing candidate leaves the champion untouched, and so does one
    that cannot be compared: scored on other test rows than the champion, or a champion without the metric."""
    mlflow_client = client()
    name, metric = config.project, config.tracking.promotion_metric
    candidate = _version(mlflow_client, name, version=version, alias=None if version else CANDIDATE)
    champion = _alias_or_none(mlflow_client, name, CHAMPION)
    candidate_score = _score(mlflow_client, candidate, metric)
    champion_score = _score(mlflow_client, champion, metric) if champion else None
    if champion is not None and str(champion.version) == str(candidate.version):
        promoted, reason = True, f"version {candidate.version} is already {CHAMPION}"
    else:
        promoted, reason = _judge(candidate_score, champion_score, direction=config.tracking.promotion_direction)
        if promoted and champion_score is not None and config.tracking.require_significant:
            promoted, reason = _significant(mlflow_client, candidate_score, champion_score, config=config)
    decision = Decision(
        model=name,
        candidate_version=str(candidate.version),
        champion_version=str(champion.version) if champion else None,
        metric=metric,
        direction=config.tracking.promotion_direction,
        candidate_value=candidate_score.value,
        champion_value=champion_score.value if champion_score else None,
        promoted=promoted,
        reason=reason,
    )
    _record(mlflow_client, decision, report_dir=report_dir)
    return decision


@dataclass
class _Score:
    """A version's evaluation as its training run recorded it: the metric and which test rows gave it."""

    version: ModelVersion
    value: float | None
    test_digest: str | None
    test_rows: str | None

    def evaluate_command(self) -> str:
        return f"`{COMMAND} evaluate --adapter models:/{self.version.name}/{self.version.version}`"


def _score(mlflow_client: MlflowClient, version: ModelVersion, metric: str) -> _Score:
    run = mlflow_client.get_run(version.run_id)
    tags = run.data.tags
    return _Score(version, run.data.metrics.get(metric), tags.get(TEST_DIGEST_TAG), tags.get(TEST_ROWS_TAG))


def _judge(candidate: _Score, champion: _Score | None, *, direction: str) -> tuple[bool, str]:
    if candidate.value is None:
        return False, "the candidate has no value for the metric: run `evaluate` first"
    if champion is None:
        return True, "no champion yet"
    not_comparable = _not_comparable(candidate, champion)
    if not_comparable:
        return False, f"not compared, the champion stays: {not_comparable}"
    if champion.value is None:
        return False, (
            f"not compared, the champion stays: champion version {champion.version.version} has no value for the "
            f"metric; evaluate it ({champion.evaluate_command()}), then run the gate again (`{COMMAND} promote`)"
        )
    better = candidate.value > champion.value if direction == "maximize" else candidate.value < champion.value
    verdict = "beats" if better else "does not beat"
    return better, f"candidate {candidate.value:.4g} {verdict} champion {champion.value:.4g} ({direction})"


def _not_comparable(candidate: _Score, champion: _Score) -> str | None:
    """Why the two scores cannot be compared (other test rows, or one unknown), or None when they can.
    Two versions scored before digests were recorded are compared as they always were."""
    if candidate.test_digest == champion.test_digest:
        return None
    for score, role in ((candidate, "candidate"), (champion, "champion")):
        if score.test_digest is None:
            return (
                f"the {role} (version {score.version.version}) has no record of its test data (evaluated before "
                f"test digests were recorded, or never); evaluate it ({score.evaluate_command()})"
            )
    return (
        f"candidate and champion were scored on different test data (candidate: {candidate.test_rows} rows, "
        f"digest {candidate.test_digest[:12]}; champion version {champion.version.version}: {champion.test_rows} "
        f"rows, digest {champion.test_digest[:12]}). Evaluate both on the same data and eval settings (split, "
        "max_samples); a model of another task belongs under another `project` name (its own registered model)"
    )


def _significant(
    mlflow_client: MlflowClient, candidate: _Score, champion: _Score, *, config: Config
) -> tuple[bool, str]:
    """tracking.require_significant: the candidate wins only when the paired-bootstrap interval of its
    improvement over the champion, row by row on the same test rows, excludes zero. Both runs' eval.json
    (logged by `evaluate`) must hold per-row scores of the metric; without them nothing is promoted."""
    from .bootstrap import excludes_zero, paired_intervals

    model, _, metric = config.tracking.promotion_metric.partition(".")
    scores = {}
    for role, score in (("candidate", candidate), ("champion", champion)):
        values = logged_row_scores(mlflow_client, score.version.run_id).get(model, {}).get(metric)
        if values is None:
            return False, (
                f"not compared, the champion stays: the {role} (version {score.version.version}) has no per-row "
                f"scores of {config.tracking.promotion_metric} for tracking.require_significant (evaluated by an "
                f"older version); evaluate it again ({score.evaluate_command()})"
            )
        scores[role] = {metric: values}
    intervals = paired_intervals(
        scores, resamples=config.eval.bootstrap_resamples, seed=config.train.seed, reference="candidate"
    )
    gain = intervals["differences"]["candidate_minus_champion"][metric]
    direction = config.tracking.promotion_direction
    shown = f"{gain['estimate']:+.4g} [{gain['low']:+.4g}, {gain['high']:+.4g}] (95% paired bootstrap)"
    if excludes_zero(gain, direction=direction):
        return True, f"candidate {candidate.value:.4g} beats champion {champion.value:.4g} ({direction}): {shown}"
    return False, (
        f"candidate {candidate.value:.4g} vs champion {champion.value:.4g}: the difference {shown} includes 0, "
        "so it may be noise (tracking.require_significant); the champion stays"
    )


def logged_row_scores(mlflow_client: MlflowClient, run_id: str) -> dict[str, dict[str, list[float]]]:
    """eval.json's `row_scores` from the run's `evaluation/` artifacts; {} when it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow_client.download_artifacts(run_id, "evaluation/eval.json", folder)
            return json.loads(Path(path).read_text(encoding="utf-8")).get("row_scores") or {}
        except (MlflowException, OSError, json.JSONDecodeError):
            return {}


def _record(mlflow_client: MlflowClient, decision: Decision, *, report_dir: Path | None) -> None:
    if decision.promoted:
        mlflow_client.set_registered_model_alias(decision.model, CHAMPION, decision.candidate_version)
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.metric": decision.metric,
        "promotion.compared_to": decision.champion_version or "none",
    }
    if decision.champion_version != decision.candidate_version:  # re-judging the champion keeps its record
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(decision.model, decision.candidate_version, key, value)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "promotion.json").write_text(json.dumps(asdict(decision), indent=2) + "\n", encoding="utf-8")


def _version(mlflow_client: MlflowClient, name: str, *, version: str | None, alias: str | None) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        if alias:
            return mlflow_client.get_model_version_by_alias(name, alias)
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        wanted = f"@{alias}" if alias else f"version {version}"
        raise TrackingError(
            f"registered model '{name}' has no {wanted} in {tracking_uri()}; train first (make train) "
            "or check MLFLOW_TRACKING_URI"
        ) from None


def _alias_or_none(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


# ---- loading by URI -------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """A model ready to load from local folders: the adapter (+ tokenizer) and the base it adapts."""

    adapter_dir: Path
    tokenizer_dir: Path
    base_model: str
    name: str
    version: str | None
    run_id: str | None
    """The MLflow run that trained it (None for an untracked local adapter)."""


def fetch_model(source: str, *, download_dir: Path | None = None) -> ModelSource:
    """The one loading function of evaluation and serving. `source` is `models:/<name>@<alias>`,
    `models:/<name>/<version>`, `runs:/<run id>/model`, or a local adapter folder."""
    if is_model_uri(source):
        return _fetch_from_mlflow(source, download_dir=download_dir)
    return _local_source(Path(source))


def model_run_id(source: str) -> str | None:
    """The MLflow run that trained `source` (a model URI or an adapter folder), found without downloading the
    model; None for an untracked local adapter."""
    if is_model_uri(source):
        return _identify(source)[2]
    return (read_tracking_file(Path(source).parent) or {}).get("run_id")


def _local_source(adapter_dir: Path) -> ModelSource:
    uris = "models:/<name>@champion, models:/<name>/<version> or runs:/<id>/model"
    if not adapter_dir.exists():
        raise TrackingError(f"{adapter_dir}: no such folder; pass outputs/<run>/adapter or a model URI ({uris})")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise TrackingError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json) nor a URI ({uris})")
    base = read_adapter_config(adapter_dir)["base_model_name_or_path"]
    tracked = read_tracking_file(adapter_dir.parent) or {}
    return ModelSource(
        adapter_dir=adapter_dir,
        tokenizer_dir=adapter_dir,
        base_model=base,
        name=adapter_dir.parent.name,
        version=tracked.get("model_version"),
        run_id=tracked.get("run_id"),
    )


def _fetch_from_mlflow(source: str, *, download_dir: Path | None) -> ModelSource:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=download_dir and str(download_dir))
        )
    except MlflowException as err:
        raise TrackingError(f"model {source} not found in {tracking_uri()}: {err.message.splitlines()[0]}") from None
    # The transformers flavor of the MLmodel file names the adapter folder and the base it adapts.
    flavor = Model.load(local).flavors["transformers"]
    name, version, run_id = _identify(source)
    return ModelSource(
        adapter_dir=local / flavor["peft_adaptor"],
        tokenizer_dir=local / "components" / "tokenizer",
        base_model=flavor.get("local_base_model_path") or flavor["source_model_name"],
        name=name,
        version=version,
        run_id=run_id,
    )


def _identify(source: str) -> tuple[str, str | None, str]:
    """(name, version, run id) of a model URI: aliases resolve to a real version, so logs name it."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    # Not in mlflow's public API (neither is RunsArtifactRepository.parse_runs_uri), but the parser its own
    # `models:/` downloads use; it accepts exactly the URIs download_artifacts just did.
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if RunsArtifactRepository.is_runs_uri(source):
        run_id, _ = RunsArtifactRepository.parse_runs_uri(source)
        return run_id, None, run_id
    mlflow_client = client()
    try:
        resolved = get_model_name_and_version(mlflow_client, source)  # @alias and /latest -> a version number
    except MlflowException as err:
        raise TrackingError(f"model {source} not found in {tracking_uri()}: {err.message.splitlines()[0]}") from None
    if len(resolved) == 1:  # models:/<model id>: a logged model, not a registered version
        logged = mlflow_client.get_logged_model(resolved[0])
        return logged.name, None, logged.source_run_id
    name, number = resolved
    version = _version(mlflow_client, name, version=number, alias=None)
    return name, str(version.version), version.run_id
