"""Shared helpers for baking the template: answers, expected files, and running commands on a bake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1]
CHOICES = {
    key: value
    for key, value in json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8")).items()
    if isinstance(value, list) and not key.startswith("_")
}

# Files of every bake, relative to the project root; {pkg} is the package name.
COMMON_FILES = """
.dockerignore
.env.example
.github/workflows/ci.yml
.github/workflows/drift.yml
.gitignore
.pre-commit-config.yaml
Dockerfile
LICENSE
Makefile
README.md
configs/accelerate/ddp.yaml
configs/accelerate/deepspeed_zero3.yaml
configs/accelerate/fsdp.yaml
configs/default.yaml
configs/dpo.yaml
configs/gpu.yaml
configs/smoke.yaml
docker-compose.yml
notebooks/train_on_colab.ipynb
ops/grafana/dashboards/llm.json
ops/mlflow/Dockerfile
ops/grafana/provisioning/dashboards/dashboards.yml
ops/grafana/provisioning/datasources/prometheus.yml
ops/prometheus/alerts.yml
ops/prometheus/prometheus.yml
pyproject.toml
scripts/benchmark_serve.py
scripts/benchmark_train.py
scripts/load_test.py
scripts/serve.sh
src/{pkg}/__init__.py
src/{pkg}/__main__.py
src/{pkg}/chat_template.jinja
src/{pkg}/cli.py
src/{pkg}/cloud/__init__.py
src/{pkg}/cloud/cli.py
src/{pkg}/cloud/entrypoint.py
src/{pkg}/cloud/importer.py
src/{pkg}/cloud/job.py
src/{pkg}/cloud/staging.py
src/{pkg}/config.py
src/{pkg}/data.py
src/{pkg}/deploy/__init__.py
src/{pkg}/deploy/bundle.py
src/{pkg}/deploy/settings.py
src/{pkg}/distributed.py
src/{pkg}/errors.py
src/{pkg}/evaluate.py
src/{pkg}/metrics.py
src/{pkg}/bootstrap.py
src/{pkg}/baselines.py
src/{pkg}/error_analysis.py
src/{pkg}/judge.py
src/{pkg}/lm_head.py
src/{pkg}/model.py
src/{pkg}/monitor/__init__.py
src/{pkg}/monitor/accounting.py
src/{pkg}/monitor/drift.py
src/{pkg}/monitor/metrics.py
src/{pkg}/monitor/request_log.py
src/{pkg}/serve/__init__.py
src/{pkg}/serve/app.py
src/{pkg}/serve/deps.py
src/{pkg}/serve/engine.py
src/{pkg}/serve/errors.py
src/{pkg}/serve/loader.py
src/{pkg}/serve/middleware.py
src/{pkg}/serve/openapi.py
src/{pkg}/serve/routes/__init__.py
src/{pkg}/serve/routes/chat.py
src/{pkg}/serve/routes/demo.py
src/{pkg}/serve/routes/health.py
src/{pkg}/serve/routes/metrics.py
src/{pkg}/serve/routes/models.py
src/{pkg}/serve/routes/sagemaker.py
src/{pkg}/serve/schemas.py
src/{pkg}/serve/settings.py
src/{pkg}/serve/static/index.html
src/{pkg}/serve/vllm.py
src/{pkg}/prefs.py
src/{pkg}/publish.py
src/{pkg}/registry.py
src/{pkg}/report/__init__.py
src/{pkg}/report/about.py
src/{pkg}/report/card.py
src/{pkg}/report/facts.py
src/{pkg}/report/lineage.py
src/{pkg}/report/markdown.py
src/{pkg}/report/model_card.md
src/{pkg}/report/plots.py
src/{pkg}/report/readme.py
src/{pkg}/report/sft_vs_dpo.py
src/{pkg}/report/summary.py
src/{pkg}/runs.py
src/{pkg}/sweep.py
src/{pkg}/task.py
src/{pkg}/task_init.py
src/{pkg}/tracking.py
src/{pkg}/train.py
tests/conftest.py
tests/test_architecture.py
tests/test_cli.py
tests/test_cloud.py
tests/test_config.py
tests/test_configs.py
tests/test_data.py
tests/test_deploy.py
tests/test_distributed.py
tests/test_train_dpo.py
tests/test_drift.py
tests/test_evaluate.py
tests/test_bootstrap.py
tests/test_baselines.py
tests/test_benchmark_train.py
tests/test_error_analysis.py
tests/test_judge.py
tests/test_lm_head.py
tests/test_model.py
tests/test_notebook.py
tests/test_ops.py
tests/test_prefs.py
tests/test_publish.py
tests/test_registry.py
tests/test_report.py
tests/test_report_dpo.py
tests/test_request_log.py
tests/test_robustness.py
tests/test_serve.py
tests/test_serve_live.py
tests/test_sweep.py
tests/test_task.py
tests/test_task_init.py
tests/test_tracking.py
tests/test_train.py
tests/test_vllm.py
tests/test_workflows.py
""".split()


# The cloud training target module of each cloud (cloud/<target>.py): a Spaces bake trains with HF Jobs.
TRAINING_TARGET = {"aws": "aws", "gcp": "gcp", "azure": "azure", "hf-spaces": "hf_jobs"}
# Files of the chosen cloud only (the post-gen hook deletes the others'); `none` adds nothing.
CLOUD_FILES = {
    cloud: [
        ".github/workflows/deploy.yml",
        f"deploy/{cloud}/README.md",
        f"deploy/{cloud}/deploy.sh",
        f"deploy/{cloud}/teardown.sh",
        f"src/{{pkg}}/deploy/{cloud.replace('-', '_')}.py",
        f"tests/test_deploy_{cloud.replace('-', '_')}.py",
        f"src/{{pkg}}/cloud/{TRAINING_TARGET[cloud]}.py",
        f"tests/test_cloud_{TRAINING_TARGET[cloud]}.py",
    ]
    for cloud in ("aws", "gcp", "azure", "hf-spaces")
}


def expected_files(package: str, cloud: str = "aws") -> set[str]:
    return {path.format(pkg=package) for path in [*COMMON_FILES, *CLOUD_FILES.get(cloud, [])]}


def generated_files(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


def run(command: list[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """Run a command on a bake with the template's interpreter first on PATH; never raise on failure."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture
def bake(cookies):
    """Bake with the given answers; assert success and return the project path."""

    def _bake(**answers: str) -> Path:
        result = cookies.bake(extra_context=answers)
        assert result.exception is None, f"bake failed for {answers}: {result.exception!r}"
        assert result.exit_code == 0
        return Path(result.project_path)

    return _bake
