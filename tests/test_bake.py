"""Bake the template with every option value and odd names; check files, rendering, lint and the bake's own tests."""

from __future__ import annotations

import json
import py_compile
import re
import sys
from pathlib import Path

import pytest
from conftest import CHOICES, TEMPLATE, expected_files, generated_files, run

ALL_EXTRAS = {
    "preference_tuning": "yes",
    "sweeps": "yes",
    "multi_gpu": "yes",
    "cloud_training": "yes",
    "llama_cpp": "yes",
}
# Every value of every choice option appears in at least one bake; odd but valid names ride along. The default
# bake is the core (no extras); one bake takes every extra.
MATRIX = [
    pytest.param({}, id="defaults"),  # cloud=aws
    pytest.param(
        {"license": "Apache-2.0", "python_version": "3.12", "cloud": "gcp", "project_name": "Ünïcödé Façade Modèle"},
        id="unicode",
    ),
    pytest.param(
        {"license": "BSD-3-Clause", "python_version": "3.13", "cloud": "azure", "project_name": "2024 Bot 9000"},
        id="digits",
    ),
    pytest.param(
        {"license": "GPL-3.0-only", "cloud": "hf-spaces", "project_name": "A " + "very long project name " * 6},
        id="long",
    ),
    pytest.param(
        {
            "license": "Proprietary",
            "cloud": "none",
            "project_name": 'Quote "It\'s" \\ back',
            "author_name": 'O\'Brien "Ace" \\',
        },
        id="quotes",
    ),
    pytest.param(ALL_EXTRAS, id="extras"),  # cloud=aws
]
# Left over in a rendered file, these mean a template expression was not rendered; GitHub's ${{ }} is
# legitimate. src/ and ops/ are copied verbatim (the chat template is Jinja on purpose; Prometheus and
# Grafana use {{ }} themselves), so there only a stray `cookiecutter.` reference would be a mistake.
LEFTOVER = re.compile(r"(?<!\$)\{\{|\{%|cookiecutter\.")
VERBATIM_LEFTOVER = re.compile(r"cookiecutter\.")
VERBATIM_DIRS = {"src", "ops"}  # cookiecutter.json's _copy_without_render


def test_matrix_covers_every_choice():
    for key, values in CHOICES.items():
        chosen = {params.values[0].get(key, values[0]) for params in MATRIX}
        assert chosen == set(values), f"{key}: no bake uses {set(values) - chosen}"


@pytest.mark.parametrize("answers", MATRIX)
def test_bake_renders_cleanly(bake, answers):
    project = bake(**answers)
    package = next((project / "src").iterdir()).name

    assert generated_files(project) == expected_files(package, answers.get("cloud", CHOICES["cloud"][0]), answers)
    for path in project.rglob("*"):
        if path.is_file():
            relative = path.relative_to(project)
            pattern = VERBATIM_LEFTOVER if relative.parts[0] in VERBATIM_DIRS else LEFTOVER
            assert not pattern.search(path.read_text(encoding="utf-8")), f"unrendered template syntax in {relative}"
    for path in project.rglob("*.py"):
        py_compile.compile(str(path), doraise=True)

    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        result = run(command, cwd=project)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


def test_answers_land_in_the_project(bake):
    project = bake(project_name="Return Desk", author_name="Ada Lovelace", license="Apache-2.0", python_version="3.12")
    pyproject = (project / "pyproject.toml").read_text()
    assert project.name == "return-desk"
    assert 'name = "return-desk"' in pyproject
    assert 'requires-python = ">=3.12"' in pyproject
    assert 'license = "Apache-2.0"' in pyproject
    assert 'return-desk = "return_desk.cli:app"' in pyproject
    assert "Apache License" in (project / "LICENSE").read_text()
    assert 'python-version: "3.12"' in (project / ".github/workflows/ci.yml").read_text()
    assert "project: return-desk" in (project / "configs/smoke.yaml").read_text()


def test_publish_dry_run_on_a_fresh_default_bake_lists_the_placeholders_and_stops(bake):
    """The generated project recognises the template's own default answers (cookiecutter.json), as baked into its
    pyproject.toml, and stops before anything is created."""
    project = bake()
    package = next((project / "src").iterdir()).name
    defaults = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    before = generated_files(project)
    command = [sys.executable, "-m", package, "publish", "--dry-run"]
    result = run(command, cwd=project, PYTHONPATH=str(project / "src"), PYTHONDONTWRITEBYTECODE="1")
    assert result.returncode == 2, result.stdout + result.stderr
    listed = result.stdout.split("Still the template (each with its fix):\n")[1].splitlines()
    assert listed == [
        f"  - pyproject.toml: the author's name is the placeholder '{defaults['author_name']}': put yours there and "
        "in LICENSE",
        f"  - pyproject.toml: the author's email is the placeholder '{defaults['author_email']}': put yours there",
        f"  - pyproject.toml [project.urls] and README.md's CI badge name '{defaults['github_username']}': put yours",
        "  - pyproject.toml and README.md: the template's description: say what your project does",
        "  - the shop example task and data (data/shop_extraction): `task init` starts your own task",
        "  - docs/experiments.md lists 0 run(s): train and evaluate a change, then `make report`",
    ]
    assert "pass --anyway to publish as it is; nothing was done" in result.stderr
    assert generated_files(project) == before  # no git repository, nothing written


def test_quotes_in_answers_keep_files_parseable(bake):
    import tomllib

    project = bake(project_name='Q "x" \\ y', description='Say "hi" \\ bye', author_name='O\'Brien "A"')
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == 'Say "hi" \\ bye'
    assert pyproject["project"]["authors"][0]["name"] == 'O\'Brien "A"'


def bake_command(out: Path, answer: str) -> list[str]:
    return [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE), answer]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("project_slug=My Project!", "project_slug='My Project!' must be lower-case letters"),
        ("package_name=import", "package_name='import' is a Python keyword"),
        ("package_name=torch", "package_name='torch' would shadow the module 'torch'"),
        ("base_model=not a model", "base_model='not a model' must be a Hugging Face hub id"),
        ("author_email=nobody", "author_email='nobody' must look like name@example.com"),
    ],
)
def test_bad_answer_fails_with_one_message_and_writes_nothing(tmp_path, answer, message):
    out = tmp_path / "out"
    result = run(bake_command(out, answer), tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ") and "=" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"ERROR: {message}")
    assert not out.exists() or not any(out.iterdir()), f"left behind: {list(out.iterdir())}"


def test_out_of_range_python_version_rejected(tmp_path):
    out = tmp_path / "out"
    result = run(bake_command(out, "python_version=3.8"), tmp_path)
    assert result.returncode != 0
    assert "3.8" in result.stderr + result.stdout
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.xdist_group("worker-b")
def test_pip_install_and_console_script(bake, tmp_path):
    sys.path.insert(0, str(TEMPLATE / "scripts"))
    from overlay_venv import overlay_venv

    project = bake()
    python = overlay_venv(tmp_path / "venv")
    install = run([str(python), "-m", "pip", "install", "--quiet", "-e", str(project)], cwd=project)
    assert install.returncode == 0, install.stderr[-2000:]
    result = run([str(python.parent / project.name), "--help"], cwd=project)
    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "data", "config", "merge"):
        assert re.search(rf"│ {command}\s", result.stdout), f"'{command}' missing from --help:\n{result.stdout}"


# What differs between bakes is rendered text: names, licence, Python target, the chosen cloud. The Python
# under src/ is copied verbatim, so it is byte-identical in every bake and the default bake's full suite
# covers it; the other bakes run the tests that read rendered files, plus the import and structure checks.
RENDERED_FILE_TESTS = [
    "tests/test_architecture.py",  # every module imports under this bake's package name
    "tests/test_configs.py",  # configs/*.yaml (project name, base model)
    "tests/test_workflows.py",  # .github/workflows for this cloud and Python version
    "tests/test_ops.py",  # Dockerfile, docker-compose.yml, ops/
    "tests/test_deploy.py",  # Dockerfile stages, .gitignore, the bundled image
    "tests/test_publish.py",  # README.md and pyproject.toml metadata
    "tests/test_report.py",  # README.md results markers
    "tests/test_docs.py",  # README.md, docs/tour.md and docs/skills.md name files and targets this bake has
    "tests/test_makefile.py",  # the Makefile's install and evaluate commands (make -n)
]


# The default bake's whole suite runs as two pytest items, so that `make test`'s two workers share it. These
# files train, launch or execute on their own fixtures (none uses the session's smoke run or served model), so
# splitting them off repeats only the tiny model's build.
SECOND_SHARD = [
    "tests/test_benchmark_train.py",  # both training loops, in a process of its own
    "tests/test_cli.py",  # the smoke pipeline as a user runs it, in its own processes
    "tests/test_cloud.py",  # a cloud job's entrypoint, stopped, resumed and imported
    "tests/test_notebook.py",  # the Colab notebook executed headless
    "tests/test_tracking_server.py",  # a real `mlflow server`: a run over HTTP, and one whose server dies
]
# The all-extras bake runs the extras' own tests (the core's are the default bake's), plus the structure checks.
EXTRA_TESTS = [
    "tests/test_architecture.py",  # the stage order holds with every extra plugged in
    "tests/test_config.py",  # the extras' config sections
    "tests/test_cloud_jobs.py",
    "tests/test_cloud_aws.py",
    # make deploy BACKEND=llama.cpp on AWS (the default bake runs the rest of the file; the other clouds' llama_cpp
    # tests run where a bake has both, e.g. cloud=gcp llama_cpp=yes)
    "tests/test_deploy_aws.py::test_llama_cpp_dry_run_bundles_the_export_builds_llama_cpp_in_and_sets_the_backend",
    "tests/test_deploy_aws.py::test_llama_cpp_deploy_of_a_run_without_its_export_stops_before_docker_and_aws",
    "tests/test_distributed.py",  # two processes over gloo
    "tests/test_llama_cpp.py",  # GGUF export of the tiny model once, served and scored with llama.cpp
    "tests/test_prefs.py",
    "tests/test_report_dpo.py",
    "tests/test_sweep.py",  # Optuna trials, each a short training
    "tests/test_train_dpo.py",
    "tests/test_train_grpo.py",
    "tests/test_vllm.py",
    "tests/test_workflows.py",  # the llama_cpp extra's CI steps (make llama-cpp, its cache)
]
# (answers, shard): the default bake twice (its suite in two shards), the others once. `make test` runs two
# workers with --dist loadgroup: each group below stays on one worker, so the two long shards never queue
# behind each other (measured in CI: shard 1 316 s + unicode 75 s; shard 2 165 s + the other bakes 246 s).
WORKER_A, WORKER_B = pytest.mark.xdist_group("worker-a"), pytest.mark.xdist_group("worker-b")
SUITES = [
    pytest.param({}, "first", id="defaults", marks=WORKER_A),
    pytest.param({}, "second", id="defaults-second", marks=WORKER_B),
    *(
        pytest.param(params.values[0], "rendered", id=params.id, marks=worker)
        for params, worker in zip(MATRIX[1:-1], [WORKER_A, WORKER_B, WORKER_B, WORKER_B], strict=True)
    ),
    pytest.param(ALL_EXTRAS, "extras", id="extras", marks=WORKER_A),
]


def project_files(project: Path) -> set[str]:
    """Every file and folder of a project but Python's and the tools' caches."""
    caches = {"__pycache__", ".pytest_cache", ".ruff_cache"}
    return {path.relative_to(project).as_posix() for path in project.rglob("*") if not caches & set(path.parts)}


def suite_selection(project: Path, answers: dict[str, str], shard: str = "first") -> list[str]:
    """pytest arguments for a bake's own suite: all of it for the default bake (in two shards), else
    RENDERED_FILE_TESTS and the chosen cloud's deploy and training tests, without training or servers."""
    if not answers:
        if shard == "second":
            return SECOND_SHARD
        return [f"--ignore={path}" for path in SECOND_SHARD]
    if shard == "extras":
        return EXTRA_TESTS
    cloud_tests = sorted(
        str(path.relative_to(project))
        for pattern in ("tests/test_deploy_*.py", "tests/test_cloud_*.py")  # deployment, cloud training
        for path in project.glob(pattern)
    )
    return ["-m", "not e2e and not slow", *RENDERED_FILE_TESTS, *cloud_tests]


def test_every_rendered_file_test_exists(bake):
    project = bake()
    assert [path for path in RENDERED_FILE_TESTS if not (project / path).is_file()] == []


def test_the_two_shards_of_the_default_suite_split_it(bake):
    """Every file of the second shard exists (a renamed one would fail only there) and the first shard leaves
    out exactly those."""
    project = bake()
    assert [path for path in SECOND_SHARD if not (project / path).is_file()] == []
    assert suite_selection(project, {}, "second") == SECOND_SHARD
    assert suite_selection(project, {}, "first") == [f"--ignore={path}" for path in SECOND_SHARD]


@pytest.mark.bake_suite
@pytest.mark.parametrize(("answers", "shard"), SUITES)
def test_bake_own_test_suite_passes(bake, answers, shard):
    project = bake(**answers)
    selection = suite_selection(project, answers, shard)
    before = project_files(project)
    smoke_report = project.parent / "smoke_report.json"  # written by the bake's session smoke run, if it ran
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    # The llama_cpp extra's tests run llama.cpp's converter from the source `make llama-cpp` unpacked (make install).
    converter = TEMPLATE / ".cache" / "llama.cpp"
    result = run(command, cwd=project, SMOKE_REPORT_COPY=str(smoke_report), LLAMA_CPP_DIR=str(converter))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    # `make test` in a user's project leaves it as it was: no mlruns/, outputs/ or reports/ of the tests'.
    assert sorted(project_files(project) - before) == []
    if not answers and shard == "first":  # the default bake's smoke run: the figures the docs quote
        assert_docs_quote_the_smoke_run(json.loads(smoke_report.read_text(encoding="utf-8"))["finetuned"])
    cloud = answers.get("cloud", CHOICES["cloud"][0])
    if answers and cloud != "none" and shard == "rendered":  # the chosen cloud's deploy tests were selected
        assert f"tests/test_deploy_{cloud.replace('-', '_')}.py" in selection


def assert_docs_quote_the_smoke_run(finetuned: dict[str, float]) -> None:
    """docs/walkthrough.md and docs/faq.md quote the smoke run's fine-tuned figures as `make evaluate` prints
    them (a rate may differ by one of the 32 scored answers and the loss by 0.01 on another CPU)."""
    walkthrough = (TEMPLATE / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    printed = re.search(r"^finetuned: (.*)$", walkthrough, re.M).group(1)
    quoted = {key: float(value) for key, value in (item.split() for item in printed.split(", "))}
    tolerance = {"eval_loss": 0.01, "perplexity": 0.1, "json_valid_rate": 1 / 32, "field_accuracy": 1 / 32}
    for key, allowed in tolerance.items():
        assert abs(quoted[key] - finetuned[key]) <= allowed + 1e-9, f"walkthrough.md {key}: {quoted[key]} ({finetuned})"
    valid = re.search(r"^\| Valid JSON \|.*\| ([\d.]+%) \[[^|]*\| [^|]*\|$", walkthrough, re.M)
    assert valid and valid.group(1) == f"{quoted['json_valid_rate']:.1%}", "walkthrough.md: the results table"
    assert f"| Loss per answer token | n/a | n/a | 8.394 | 8.656 | {quoted['eval_loss']:.3f} |" in walkthrough
    faq = (TEMPLATE / "docs" / "faq.md").read_text(encoding="utf-8")
    assert f"({quoted['json_valid_rate']:.0%} valid)" in faq and f"fine-tune's {quoted['field_accuracy']:.0%}." in faq
