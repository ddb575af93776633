"""Unit tests of the hooks, rendered the way cookiecutter renders them (answers as JSON data)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from conftest import TEMPLATE

DEFAULTS = {
    "project_name": "Shop Assistant Extractor",
    "project_slug": "shop-assistant-extractor",
    "package_name": "shop_assistant_extractor",
    "description": "d",
    "author_name": "A",
    "author_email": "a@example.com",
    "github_username": "someone",
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "MIT",
    "python_version": "3.11",
}


def render_hook(name: str, answers: dict, tmp_path: Path) -> Path:
    source = (TEMPLATE / "hooks" / f"{name}.py").read_text(encoding="utf-8")
    rendered = jinja2.Environment().from_string(source).render(cookiecutter=answers)
    path = tmp_path / f"{name}.py"
    path.write_text(rendered, encoding="utf-8")
    return path


def load_hook(name: str, answers: dict, tmp_path: Path):
    path = render_hook(name, answers, tmp_path)
    spec = importlib.util.spec_from_file_location(f"hook_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pre(tmp_path):
    return load_hook("pre_gen_project", DEFAULTS, tmp_path)


HOSTILE_NAMES = [
    'He said "hi"',
    "It's O'Brien's",
    'triple """ quotes',
    "triple ''' single",
    "back\\slash\\",
    "{{ cookiecutter.author_email }} and {% if true %}x{% endif %}",
    '"""); import os; os.system("echo pwned")  #',
    "ünïcödé ✓ 模型",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("hook", ["pre_gen_project", "post_gen_project"])
def test_answers_reach_hooks_as_data(tmp_path, hook, name):
    answers = {**DEFAULTS, "project_name": name, "description": name}
    module = load_hook(hook, answers, tmp_path)
    # The exact string arrives, unrendered and unexecuted: the hook parsed it as JSON data.
    assert module.ANSWERS == answers


def test_hostile_answer_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    answers = {**DEFAULTS, "project_name": f'"""); open({str(marker)!r}, "w")  # \\'}
    path = render_hook("pre_gen_project", answers, tmp_path)
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("project_slug", "My Project!", "must be lower-case letters, digits and single dashes"),
        ("project_slug", "9lives", "starting with a letter"),
        ("project_slug", "double--dash", "single dashes"),
        ("package_name", "import", "is a Python keyword"),
        ("package_name", "match", "is a Python keyword"),
        ("package_name", "torch", "would shadow the module 'torch'"),
        ("package_name", "mlflow", "would shadow the module 'mlflow'"),
        ("package_name", "json", "would shadow the module 'json'"),
        ("package_name", "test", "would shadow the module 'test'"),
        ("package_name", "1abc", "valid ASCII Python identifier"),
        ("package_name", "my-pkg", "valid ASCII Python identifier"),
        ("package_name", "MyPkg", "must be lower case"),
        ("base_model", "not a model", "must be a Hugging Face hub id"),
        ("base_model", "relative/../x/y", "must be a Hugging Face hub id"),
        ("base_model", "./models/mine", "is a relative path"),
        ("base_model", "/definitely/not/here", "is not an existing folder"),
        ("author_email", "nobody", "must look like name@example.com"),
        ("python_version", "3.8", "must be one of 3.11, 3.12, 3.13"),
    ],
)
def test_each_bad_answer_gets_one_message(pre, field, value, fragment):
    problems = pre.validate({**DEFAULTS, field: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}={value!r} ")
    assert fragment in problems[0]


def test_defaults_are_valid(pre):
    assert pre.validate(DEFAULTS) == []


def test_bad_slug_reports_once_not_for_derived_package(pre):
    problems = pre.validate({**DEFAULTS, "project_slug": "Bad Slug", "package_name": "Bad Slug".replace("-", "_")})
    assert [p.split("=")[0] for p in problems] == ["project_slug"]


def test_local_model_folder(pre, tmp_path):
    assert "without config.json" in pre.check_base_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert pre.check_base_model(str(tmp_path)) is None


def test_main_exits_1_and_prints_to_stderr(tmp_path):
    path = render_hook("pre_gen_project", {**DEFAULTS, "package_name": "import"}, tmp_path)
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "ERROR: package_name='import' is a Python keyword" in result.stderr
    assert "Nothing was generated" in result.stderr


@pytest.mark.parametrize("license_name", ["MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-only", "Proprietary"])
def test_post_hook_keeps_only_the_chosen_license(tmp_path, license_name):
    project = tmp_path / "project"
    (project / "licenses").mkdir(parents=True)
    for name in ("MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-only", "Proprietary"):
        (project / "licenses" / f"{name}.txt").write_text(f"text of {name}")
    (project / "src" / "__pycache__").mkdir(parents=True)
    post = load_hook("post_gen_project", {**DEFAULTS, "license": license_name}, tmp_path)
    post.choose_license(project, license_name)
    post.remove_caches(project)
    assert (project / "LICENSE").read_text() == f"text of {license_name}"
    assert sorted(p.name for p in project.iterdir()) == ["LICENSE", "src"]
    assert not (project / "src" / "__pycache__").exists()


@pytest.mark.parametrize(("cloud", "deploy"), [("aws", ["DRY_RUN=1 make deploy"]), ("none", [])])
def test_next_steps_name_the_commands_to_run(tmp_path, cloud, deploy):
    answers = {**DEFAULTS, "cloud": cloud}
    post = load_hook("post_gen_project", answers, tmp_path)
    commands = [line.split("#")[0].strip() for line in post.next_steps(answers).splitlines()[1:]]
    assert commands == ["cd shop-assistant-extractor", "make install", "make train", *deploy]


def test_a_project_baked_inside_a_git_repository_is_warned_about(tmp_path):
    post = load_hook("post_gen_project", DEFAULTS, tmp_path)
    outside = tmp_path / "projects" / "shop-assistant-extractor"
    inside = tmp_path / "clone" / "shop-assistant-extractor"
    for project in (outside, inside):
        project.mkdir(parents=True)
    (tmp_path / "clone" / ".git").mkdir()
    clone = (tmp_path / "clone").resolve()
    assert post.enclosing_repository(inside) == clone
    warning = post.inside_repository_warning(inside)
    assert warning.startswith(f"warning: shop-assistant-extractor lies inside the git repository {clone}")
    assert "cookiecutter <template> -o <a folder outside clone>" in warning
    if post.enclosing_repository(outside) is None:  # tmp_path itself may lie in a repository on some machines
        assert post.inside_repository_warning(outside) is None


CLOUD_PATHS = {
    "aws": {"deploy/aws/deploy.sh", "src/pkg/clouds/aws/deploy.py", "tests/test_deploy_aws.py"},
    "gcp": {"deploy/gcp/deploy.sh", "src/pkg/clouds/gcp/deploy.py", "tests/test_deploy_gcp.py"},
    "azure": {"deploy/azure/deploy.sh", "src/pkg/clouds/azure/deploy.py", "tests/test_deploy_azure.py"},
    "hf-spaces": {"deploy/hf-spaces/deploy.sh", "src/pkg/clouds/hf_spaces/deploy.py", "tests/test_deploy_hf_spaces.py"},
}
CLOUD_PATHS["aws"].add("src/pkg/serve/routes/sagemaker.py")  # SageMaker's /ping and /invocations
COMMON_PATHS = {"src/pkg/clouds/bundle.py", "tests/test_workflows.py", ".github/workflows/ci.yml"}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "hf-spaces", "none"])
def test_post_hook_keeps_only_the_chosen_clouds_files(tmp_path, cloud):
    project = tmp_path / "project"
    for path in [*COMMON_PATHS, ".github/workflows/deploy.yml", *(p for paths in CLOUD_PATHS.values() for p in paths)]:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text("x")
    post = load_hook("post_gen_project", {**DEFAULTS, "cloud": cloud}, tmp_path)
    post.choose_cloud(project, cloud, "pkg")
    left = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    deploy_workflow = set() if cloud == "none" else {".github/workflows/deploy.yml"}
    assert left == COMMON_PATHS | CLOUD_PATHS.get(cloud, set()) | deploy_workflow
    assert (project / "deploy").is_dir() == (cloud != "none")


EXTRA_PATHS = {
    "preference_tuning": {"src/pkg/preference/dpo.py", "configs/dpo.yaml", "tests/test_prefs.py"},
    "sweeps": {"src/pkg/sweep/sweep.py", "tests/test_sweep.py"},
    "multi_gpu": {"src/pkg/distributed/launch.py", "configs/accelerate/ddp.yaml", "tests/test_vllm.py"},
    "cloud_training": {"src/pkg/clouds/jobs/job.py", "src/pkg/clouds/aws/training.py", "tests/test_cloud_aws.py"},
}


@pytest.mark.parametrize("extra", [*EXTRA_PATHS, None])
def test_post_hook_deletes_the_files_of_every_extra_not_chosen(tmp_path, extra):
    project = tmp_path / "project"
    for path in {*COMMON_PATHS, *(p for paths in EXTRA_PATHS.values() for p in paths)}:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text("x")
    answers = {**DEFAULTS, "cloud": "aws", "package_name": "pkg", **({extra: True} if extra else {})}
    post = load_hook("post_gen_project", answers, tmp_path)
    post.choose_extras(project, answers)
    left = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    assert left == COMMON_PATHS | EXTRA_PATHS.get(extra, set())


def test_cloud_training_without_a_cloud_is_off(tmp_path):
    post = load_hook("post_gen_project", DEFAULTS, tmp_path)
    assert post.chosen({"cloud": "aws", "cloud_training": "yes"}, "cloud_training")
    assert not post.chosen({"cloud": "none", "cloud_training": True}, "cloud_training")
    assert not post.chosen({"cloud": "aws"}, "sweeps")


BLOCKS = """import os


# >>> sweeps
def sweep():
    return 1


# <<< sweeps
def train():
    # >>> multi_gpu
    launch()
    # <<< multi_gpu
    # >>> !multi_gpu
    run()
    # <<< !multi_gpu
    return 2
"""


def test_blocks_of_unchosen_extras_go_and_markers_never_stay(tmp_path):
    post = load_hook("post_gen_project", DEFAULTS, tmp_path)
    assert post.strip_blocks(BLOCKS, keep=set()) == ("import os\n\n\ndef train():\n    run()\n    return 2\n")
    assert post.strip_blocks(BLOCKS, keep={"sweeps", "multi_gpu"}) == (
        "import os\n\n\ndef sweep():\n    return 1\n\n\ndef train():\n    launch()\n    return 2\n"
    )


@pytest.mark.parametrize("text", ["# >>> sweeps\nx = 1\n", "x = 1\n# <<< sweeps\n"])
def test_an_unbalanced_block_is_refused(tmp_path, text):
    post = load_hook("post_gen_project", DEFAULTS, tmp_path)
    with pytest.raises(ValueError, match=r"never closed|closes no block"):
        post.strip_blocks(text, keep=set())


@pytest.mark.parametrize("value", ["yes", True])
def test_cloud_training_without_a_cloud_is_refused_before_anything_is_written(pre, value):
    assert pre.validate({**DEFAULTS, "cloud": "none", "cloud_training": value}) == [
        "cloud_training=yes needs a cloud to train on, but cloud='none'; choose a cloud or answer cloud_training=no."
    ]
    assert pre.validate({**DEFAULTS, "cloud": "aws", "cloud_training": value}) == []
