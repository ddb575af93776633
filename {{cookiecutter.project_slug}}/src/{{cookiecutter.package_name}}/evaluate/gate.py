"""The promotion gate: does the newly evaluated version beat the champion? If so it becomes `champion`.

    <project> evaluate    # runs the gate on the version it evaluated
    <project> promote     # the gate on its own, on @candidate (or --version N)

A candidate wins when it beats the champion on `tracking.promotion_metric` on the same test rows (the
`evaluation.test_digest` tags of both runs must agree); with `tracking.require_significant` the paired-bootstrap
interval of its lead must also exclude zero. A loser, or one that cannot be compared, leaves the champion as it
is. The decision is written to reports/promotion.json and to the version's tags.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..registry import CANDIDATE, CHAMPION, COMMAND, alias_or_none, logged_row_scores, version_of
from ..tracking import TEST_DIGEST_TAG, TEST_ROWS_TAG, client
from .bootstrap import excludes_zero, paired_intervals

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


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

    @property
    def verdict(self) -> str:
        """In words: promoted, kept out, or unchanged (the candidate was champion already: nothing moved)."""
        if self.champion_version == self.candidate_version:
            return "unchanged"
        return "promoted" if self.promoted else "kept out"


def promote(config: Config, *, version: str | None = None, report_dir: Path | None = None) -> Decision:
    """Make the candidate (or `version`) `champion` if it beats the current champion on the configured
    metric, or if there is no champion yet. A losing candidate leaves the champion untouched, and so does one
    that cannot be compared: scored on other test rows than the champion, or a champion without the metric."""
    mlflow_client = client()
    name, metric = config.project, config.tracking.promotion_metric
    candidate = version_of(mlflow_client, name, version=version, alias=None if version else CANDIDATE)
    champion = alias_or_none(mlflow_client, name, CHAMPION)
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
