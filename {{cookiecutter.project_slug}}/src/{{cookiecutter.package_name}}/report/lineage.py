"""The SFT parent of a DPO or GRPO run and the parent's own evaluation, read from MLflow: what the report's
"SFT vs SFT+DPO" (or +GRPO) table (sft_vs_dpo.py) compares the evaluated model with.

A DPO (GRPO) training run is tagged `stage=dpo` (`grpo`) and `parent.run_id` / `parent.model_version` /
`parent.source` (train/sft.py); `evaluate` of the SFT parent logged `finetuned.<metric>`, the
`evaluation.test_digest` tag and an `evaluation/eval.json` artifact with per-row scores to the parent's run. When
any of that is missing the parent is still returned, with `missing` saying why: the report says so in one
sentence and never fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..config import Config
from ..registry import logged_row_scores  # the promotion gate's reader of the same eval.json artifact
from ..tracking import TEST_DIGEST_TAG, TEST_ROWS_TAG, client

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SftParent:
    """The SFT model a DPO or GRPO run started from, and its evaluation as its own MLflow run recorded it."""

    source: str | None  # the run's model.adapter (a run folder or a model URI)
    version: str | None = None  # its registered model version
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # its fine-tuned metrics by name (`field_accuracy`)
    test_digest: str | None = None  # which test rows its evaluation scored
    test_rows: str | None = None
    row_scores: dict[str, list[float]] = field(default_factory=dict)  # per-row fine-tuned scores, {} if not logged
    missing: str | None = None  # why its evaluation cannot be compared; None when it can


def sft_parent(
    config: Config, *, run_id: str | None, test_digest: str | None, tracking: bool = True
) -> SftParent | None:
    """The parent of the evaluated run when that run is a DPO or GRPO run (None for an SFT run). `config` is the run's
    own config, `run_id` its MLflow run (None with tracking off: `tracking` false), `test_digest` the rows its
    evaluation scored."""
    source = config.model.adapter
    if run_id is None:
        if config.train.stage == "sft":
            return None
        why = (
            "tracking is off (`tracking.enabled=false`), so the parent's evaluation cannot be looked up in MLflow"
            if not tracking
            else "this evaluation has no MLflow run that names the parent"
        )
        return SftParent(source=source, missing=why)
    from mlflow.exceptions import MlflowException

    tags: dict[str, str] = {}
    try:
        mlflow_client = client()
        tags = mlflow_client.get_run(run_id).data.tags
        if tags.get("stage", config.train.stage) == "sft":
            return None
        parent = SftParent(source=tags.get("parent.source") or source, version=tags.get("parent.model_version"))
        return _with_evaluation(mlflow_client, parent, run_id=tags.get("parent.run_id"), test_digest=test_digest)
    except (MlflowException, OSError) as err:  # a tracking hiccup must not stop the report
        log.warning("the SFT parent of run %s could not be read from MLflow: %s", run_id, err)
        if tags.get("stage", config.train.stage) == "sft":
            return None
        found = {"source": tags.get("parent.source") or source, "version": tags.get("parent.model_version")}
        return SftParent(**found, missing=f"MLflow could not be read ({err})")


def _with_evaluation(
    mlflow_client: MlflowClient, parent: SftParent, *, run_id: str | None, test_digest: str | None
) -> SftParent:
    """`parent` with its run's evaluation: metrics, test digest and per-row scores, or why they are missing."""
    if not run_id:
        return replace(parent, missing="the parent has no MLflow run (it was trained with tracking off)")
    run = mlflow_client.get_run(run_id)
    metrics = {
        key.removeprefix("finetuned."): value
        for key, value in run.data.metrics.items()
        # `finetuned.<metric>` only; `finetuned.<metric>.ci_low` and the like are interval ends
        if key.startswith("finetuned.") and "." not in key.removeprefix("finetuned.")
    }
    digest, rows = run.data.tags.get(TEST_DIGEST_TAG), run.data.tags.get(TEST_ROWS_TAG)
    found = replace(parent, run_id=run_id, metrics=metrics, test_digest=digest, test_rows=rows)
    if not metrics:
        return replace(found, missing="the parent was never evaluated (its MLflow run has no `finetuned.*` metrics)")
    if digest and test_digest and digest != test_digest:
        return replace(
            found,
            missing=f"the parent was evaluated on other test rows ({rows or '?'} rows, digest {digest[:12]}; this "
            f"evaluation: digest {test_digest[:12]}), so the two sets of figures do not compare",
        )
    return replace(found, row_scores=logged_row_scores(mlflow_client, run_id).get("finetuned") or {})
