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
configs/default.yaml
configs/gpu.yaml
configs/smoke.yaml
docker-compose.yml
docs/deployment.md
docs/operations.md
docs/skills.md
docs/tour.md
docs/training.md
notebooks/train_on_colab.ipynb
ops/grafana/dashboards/llm.json
ops/grafana/provisioning/dashboards/dashboards.yml
ops/grafana/provisioning/datasources/prometheus.yml
ops/mlflow/Dockerfile
ops/prometheus/alerts.yml
ops/prometheus/prometheus.yml
pyproject.toml
scripts/benchmark_serve.py
scripts/benchmark_train.py
scripts/load_test.py
scripts/serve.sh
src/{pkg}/__init__.py
src/{pkg}/__main__.py
src/{pkg}/cli.py
src/{pkg}/clouds/__init__.py
src/{pkg}/clouds/bundle.py
src/{pkg}/clouds/cli.py
src/{pkg}/clouds/deploy.py
src/{pkg}/clouds/entrypoint.py
src/{pkg}/clouds/importer.py
src/{pkg}/clouds/settings.py
src/{pkg}/config.py
src/{pkg}/data/__init__.py
src/{pkg}/data/dataset.py
src/{pkg}/data/shop_example.py
src/{pkg}/data/task_init.py
src/{pkg}/errors.py
src/{pkg}/evaluate/__init__.py
src/{pkg}/evaluate/baselines.py
src/{pkg}/evaluate/bootstrap.py
src/{pkg}/evaluate/error_analysis.py
src/{pkg}/evaluate/evaluate.py
src/{pkg}/evaluate/gate.py
src/{pkg}/evaluate/judge.py
src/{pkg}/model/__init__.py
src/{pkg}/model/chat_template.jinja
src/{pkg}/model/device.py
src/{pkg}/model/generate.py
src/{pkg}/model/load.py
src/{pkg}/monitor/__init__.py
src/{pkg}/monitor/accounting.py
src/{pkg}/monitor/drift.py
src/{pkg}/monitor/metrics.py
src/{pkg}/monitor/request_log.py
src/{pkg}/publish.py
src/{pkg}/registry.py
src/{pkg}/report/__init__.py
src/{pkg}/report/about.py
src/{pkg}/report/card.py
src/{pkg}/report/facts.py
src/{pkg}/report/interview.py
src/{pkg}/report/journey.py
src/{pkg}/evaluate/markdown.py
src/{pkg}/report/model_card.md
src/{pkg}/report/plots.py
src/{pkg}/report/readme.py
src/{pkg}/report/summary.py
src/{pkg}/runs.py
src/{pkg}/serve/__init__.py
src/{pkg}/serve/app.py
src/{pkg}/serve/deps.py
src/{pkg}/serve/engine.py
src/{pkg}/serve/errors.py
src/{pkg}/serve/int8.py
src/{pkg}/serve/loader.py
src/{pkg}/serve/middleware.py
src/{pkg}/serve/openapi.py
src/{pkg}/serve/routes/__init__.py
src/{pkg}/serve/routes/chat.py
src/{pkg}/serve/routes/demo.py
src/{pkg}/serve/routes/health.py
src/{pkg}/serve/routes/metrics.py
src/{pkg}/serve/routes/models.py
src/{pkg}/serve/schemas.py
src/{pkg}/serve/server.py
src/{pkg}/serve/settings.py
src/{pkg}/serve/static/index.html
src/{pkg}/tasks/__init__.py
src/{pkg}/tasks/answers.py
src/{pkg}/tasks/kinds.py
src/{pkg}/tasks/metrics.py
src/{pkg}/tracking.py
src/{pkg}/train/__init__.py
src/{pkg}/train/lm_head.py
src/{pkg}/train/sft.py
tests/conftest.py
tests/test_architecture.py
tests/test_baselines.py
tests/test_benchmark_train.py
tests/test_bootstrap.py
tests/test_cli.py
tests/test_cloud.py
tests/test_config.py
tests/test_configs.py
tests/test_data.py
tests/test_deploy.py
tests/test_docs.py
tests/test_drift.py
tests/test_error_analysis.py
tests/test_evaluate.py
tests/test_journey.py
tests/test_judge.py
tests/test_lm_head.py
tests/test_makefile.py
tests/test_model.py
tests/test_notebook.py
tests/test_ops.py
tests/test_publish.py
tests/test_registry.py
tests/test_report.py
tests/test_request_log.py
tests/test_robustness.py
tests/test_serve.py
tests/test_serve_live.py
tests/test_task.py
tests/test_task_init.py
tests/test_tracking.py
tests/test_tracking_server.py
tests/test_train.py
tests/test_workflows.py
""".split()

# Files of the chosen cloud only (the post-gen hook deletes the others'); `none` adds nothing.
CLOUD_FILES = {
    cloud: [
        ".github/workflows/deploy.yml",
        f"deploy/{cloud}/README.md",
        f"deploy/{cloud}/deploy.sh",
        f"deploy/{cloud}/teardown.sh",
        f"src/{{pkg}}/clouds/{cloud.replace('-', '_')}/__init__.py",
        f"src/{{pkg}}/clouds/{cloud.replace('-', '_')}/deploy.py",
        f"tests/test_deploy_{cloud.replace('-', '_')}.py",
        *(["src/{pkg}/serve/routes/sagemaker.py", "tests/test_serve_sagemaker.py"] if cloud == "aws" else []),
    ]
    for cloud in ("aws", "gcp", "azure", "hf-spaces")
}
# Files of each extra (yes/no question), present only when it is chosen.
EXTRA_FILES = {
    "preference_tuning": [
        "configs/dpo.yaml",
        "configs/grpo.yaml",
        "src/{pkg}/preference/__init__.py",
        "src/{pkg}/preference/dpo.py",
        "src/{pkg}/preference/grpo.py",
        "src/{pkg}/preference/pairs.py",
        "src/{pkg}/report/lineage.py",
        "src/{pkg}/report/sft_vs_dpo.py",
        "tests/test_prefs.py",
        "tests/test_report_dpo.py",
        "tests/test_train_dpo.py",
        "tests/test_train_grpo.py",
    ],
    "sweeps": ["src/{pkg}/sweep/__init__.py", "src/{pkg}/sweep/sweep.py", "tests/test_sweep.py"],
    "multi_gpu": [
        "configs/accelerate/ddp.yaml",
        "configs/accelerate/deepspeed_zero3.yaml",
        "configs/accelerate/fsdp.yaml",
        "src/{pkg}/distributed/__init__.py",
        "src/{pkg}/distributed/launch.py",
        "src/{pkg}/distributed/vllm.py",
        "tests/test_distributed.py",
        "tests/test_vllm.py",
    ],
    "cloud_training": [
        "src/{pkg}/clouds/jobs/__init__.py",
        "src/{pkg}/clouds/jobs/cli.py",
        "src/{pkg}/clouds/jobs/job.py",
        "src/{pkg}/clouds/jobs/staging.py",
        "src/{pkg}/clouds/{cloud}/training.py",
        "tests/test_cloud_jobs.py",
        "tests/test_cloud_{cloud}.py",
    ],
    "llama_cpp": [
        "src/{pkg}/clouds/llama_cpp.py",
        "src/{pkg}/evaluate/gguf.py",
        "src/{pkg}/export/__init__.py",
        "src/{pkg}/export/gguf.py",
        "src/{pkg}/export/llama.py",
        "src/{pkg}/report/quantization.py",
        "src/{pkg}/serve/llama_cpp.py",
        "tests/test_llama_cpp.py",
    ],
}
EXTRAS = tuple(EXTRA_FILES)


def truthy(value: object) -> bool:
    return value is True or str(value).lower() in ("y", "yes", "true", "1", "on")


def expected_files(package: str, cloud: str = "aws", answers: dict | None = None) -> set[str]:
    answers = answers or {}
    chosen = [extra for extra in EXTRAS if truthy(answers.get(extra, False))]
    if cloud == "none" and "cloud_training" in chosen:
        chosen.remove("cloud_training")
    paths = [*COMMON_FILES, *CLOUD_FILES.get(cloud, []), *(path for extra in chosen for path in EXTRA_FILES[extra])]
    return {path.format(pkg=package, cloud=cloud.replace("-", "_")) for path in paths}


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
