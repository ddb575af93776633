"""Deploy to a Hugging Face Docker Space: the staged repository (front matter, Dockerfile, build context,
model), the calls made on a recording HfApi, the dry run, and bad settings stopping before any upload."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.clouds.bundle import bundle_model
from {{ cookiecutter.package_name }}.clouds.hf_spaces import deploy as hf_spaces
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError
from {{ cookiecutter.package_name }}.serve.loader import resolve_model_source

ROOT = Path(__file__).parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
PROJECT = "{{ cookiecutter.project_slug }}"
TOKEN = "hf_" + "a1B2" * 8
GOOD = {"HF_SPACE_ID": "ada/shop-assistant", "HF_TOKEN": TOKEN}


def script(name: str, **env: str) -> subprocess.CompletedProcess:
    """Run deploy/hf-spaces/<name> with only `env` set (no .env), this interpreter."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "DEPLOY_ENV_FILE": os.devnull,
        **env,
    }
    command = ["bash", str(ROOT / "deploy" / "hf-spaces" / name)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records each call and what upload_folder would upload."""

    def __init__(self, files: list[str] | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.files = files  # the Space's files; None: no such Space (the read-only queries are not recorded)

    def repo_exists(self, repo_id, *, repo_type):
        return self.files is not None

    def list_repo_files(self, repo_id, *, repo_type):
        return list(self.files or [])

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        self.files = self.files if self.files is not None else [".gitattributes"]

    def add_space_secret(self, *args, **kwargs):
        self.calls.append(("add_space_secret", args, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.files = [".gitattributes", *self.uploaded]

    def delete_repo(self, *args, **kwargs):
        self.calls.append(("delete_repo", args, kwargs))


@pytest.fixture(scope="module")
def staged(served_adapter, tmp_path_factory) -> Path:
    scratch = tmp_path_factory.mktemp("space")
    source = resolve_model_source(str(served_adapter))
    bundle = bundle_model(source, scratch / "model", origin=str(served_adapter))
    values = hf_spaces.settings(GOOD, project=PROJECT)
    return hf_spaces.stage_space(ROOT, bundle, scratch / "space", project=PROJECT, values=values)


def front_matter(readme: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme, re.DOTALL)
    assert match, "a Space README starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_staged_space_is_a_docker_space_on_port_7860(staged):
    card = front_matter((staged / "README.md").read_text())
    assert card["sdk"] == "docker" and card["app_port"] == 7860
    assert card["suggested_hardware"] == "cpu-basic" and card["title"]


def test_staged_space_holds_the_build_context_and_the_model(staged):
    files = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
    for needed in ("Dockerfile", ".dockerignore", "pyproject.toml", "LICENSE", "README.md", "scripts/serve.sh"):
        assert needed in files
    assert f"src/{PACKAGE}/cli.py" in files and "configs/smoke.yaml" in files
    assert {"build/model/bundle.json", "build/model/adapter/adapter_model.safetensors"} <= files
    assert not any("__pycache__" in name or name.startswith(("outputs/", "data/", ".env")) for name in files)


def test_the_spaces_image_is_the_bundled_one_as_uid_1000_on_7860(staged):
    dockerfile = (staged / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (.+)$", dockerfile, re.MULTILINE)
    assert stages[-1] == "bundled AS space", "Spaces build the last stage"
    last = dockerfile[dockerfile.rindex("FROM bundled AS space") :]
    assert "ENV PORT=7860" in last and "EXPOSE 7860" in last
    assert "ARG UID=1000" in dockerfile and "USER ${UID}" in dockerfile
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint:
        result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=staged, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_deploy_creates_the_space_and_uploads_the_staged_folder(staged):
    api = RecordingHfApi()
    url = hf_spaces.deploy_space(api, staged, hf_spaces.settings(GOOD, project=PROJECT), api_key="k3y")
    assert url == "https://huggingface.co/spaces/ada/shop-assistant"
    assert [name for name, _, _ in api.calls] == ["create_repo", "add_space_secret", "upload_folder"]
    _, args, kwargs = api.calls[0]
    assert args == ("ada/shop-assistant",)
    assert kwargs == {
        "repo_type": "space",
        "space_sdk": "docker",
        "space_hardware": "cpu-basic",
        "private": False,
        "exist_ok": True,
    }
    assert api.calls[1][1][:3] == ("ada/shop-assistant", "LLM_API_KEY", "k3y")
    upload = api.calls[2][2]
    assert upload["repo_id"] == "ada/shop-assistant" and upload["repo_type"] == "space"
    assert upload["delete_patterns"] == ["*"]
    assert front_matter(api.uploaded["README.md"].decode())["sdk"] == "docker"
    assert "build/model/base/model.safetensors" in api.uploaded
    assert not any(TOKEN.encode() in content for content in api.uploaded.values()), "the token is never uploaded"


def test_no_api_key_no_secret_and_teardown_deletes_the_space(staged):
    api = RecordingHfApi()
    hf_spaces.deploy_space(api, staged, hf_spaces.settings({**GOOD, "HF_SPACE_PRIVATE": "true"}, project=PROJECT))
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["private"] is True
    assert hf_spaces.delete_space(api, "ada/shop-assistant") is True
    assert api.calls[-1] == ("delete_repo", ("ada/shop-assistant",), {"repo_type": "space", "missing_ok": True})


def test_deploy_refuses_and_teardown_keeps_a_space_that_deploy_did_not_make(staged):
    """HF_SPACE_ID may name an existing Space of yours: deploy would replace its files, teardown delete it."""
    api = RecordingHfApi(files=[".gitattributes", "README.md", "app.py"])
    values = hf_spaces.settings(GOOD, project=PROJECT)
    with pytest.raises(DeploySettingsError, match="HF_SPACE_ID=ada/shop-assistant: that Space exists"):
        hf_spaces.deploy_space(api, staged, values)
    assert hf_spaces.delete_space(api, "ada/shop-assistant") is False
    assert api.calls == [], "nothing was created, uploaded or deleted"
    assert hf_spaces.delete_space(RecordingHfApi(), "ada/shop-assistant") is None, "no Space: nothing to delete"


def test_a_space_left_empty_by_a_failed_first_upload_is_deployed_to():
    api = RecordingHfApi(files=[".gitattributes"])
    assert hf_spaces.delete_space(api, "ada/shop-assistant") is True
    assert [name for name, _, _ in api.calls] == ["delete_repo"]


def test_staging_without_a_bundle_is_refused(tmp_path):
    expected = rf"is not a model bundle .*the bundle step of `make deploy` \(python -m {PACKAGE}\.clouds\.bundle"
    with pytest.raises(DeploySettingsError, match=expected):
        hf_spaces.stage_space(ROOT, tmp_path, tmp_path / "space", project=PROJECT, values={})


# ---- the scripts -------------------------------------------------------------------------------------------


def test_dry_run_prints_the_whole_deploy_in_order():
    result = script("deploy.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("+ ")] == [
        f"+ {sys.executable} -m {PACKAGE}.clouds.bundle --model models:/{PROJECT}@champion --fallback latest "
        "--out build/model",
        "+ stage build/space: Dockerfile (+ space stage, port 7860), README front matter, build/model",
        "+ HfApi.create_repo('ada/shop-assistant', repo_type='space', space_sdk='docker', exist_ok=True)",
        "+ HfApi.upload_folder(repo_id='ada/shop-assistant', repo_type='space', folder_path='build/space')",
    ]
    assert TOKEN not in result.stdout + result.stderr
    assert not (ROOT / "build" / "space").exists(), "a dry run stages nothing"


def test_dry_run_teardown_deletes_the_space():
    result = script("teardown.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    deleted = "+ HfApi.delete_repo('ada/shop-assistant', repo_type='space', missing_ok=True)"
    assert result.stdout.splitlines() == [
        deleted,
        "# only when `make deploy` made the Space (it holds build/model/bundle.json)",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HF_SPACE_ID": "ada/shop-assistant"}, "HF_TOKEN is not set"),
        ({**GOOD, "HF_TOKEN": "hf_REPLACE_ME"}, "HF_TOKEN=(hidden) is a placeholder"),
        ({**GOOD, "HF_SPACE_ID": "your-hf-username/shop"}, "HF_SPACE_ID='your-hf-username/shop' is a placeholder"),
        ({**GOOD, "HF_SPACE_ID": "just-a-name"}, "HF_SPACE_ID='just-a-name' must be <owner>/<name>"),
        ({**GOOD, "HF_SPACE_HARDWARE": "CPU Basic"}, "HF_SPACE_HARDWARE='CPU Basic' must be a hardware name"),
    ],
)
@pytest.mark.parametrize("name", ["deploy.sh", "teardown.sh"])
def test_missing_or_placeholder_settings_stop_the_script_before_any_upload(name, env, named):
    result = script(name, **env)  # not a dry run: it would upload if it got that far
    assert result.returncode == 2
    assert named in result.stderr
    assert result.stdout == "" and "REPLACE_ME" not in result.stderr


# >>> llama_cpp


# ---- make deploy BACKEND=llama.cpp -------------------------------------------------------------------------
LLAMA_CPP = {"DEPLOY_BACKEND": "llama.cpp", "DEPLOY_GGUF_TYPE": "q8_0"}


def test_llama_cpp_space_builds_llama_cpp_in_and_sets_the_backend(staged, tmp_path):
    """A Space builds its image with no build arguments: its Dockerfile turns llama-cpp-python on itself."""
    values = hf_spaces.settings({**GOOD, **LLAMA_CPP}, project=PROJECT)
    space = hf_spaces.stage_space(ROOT, staged / "build" / "model", tmp_path / "space", project=PROJECT, values=values)
    dockerfile = (space / "Dockerfile").read_text()
    assert "ARG LLAMA_CPP=1" in dockerfile and "ARG LLAMA_CPP=0" not in dockerfile
    last = dockerfile[dockerfile.rindex("FROM bundled AS space") :]
    assert last.endswith("ENV LLM_BACKEND=llama.cpp LLM_GGUF_TYPE=q8_0\n")
    assert "ARG LLAMA_CPP=0" in (staged / "Dockerfile").read_text(), "transformers: the Dockerfile as it is"


def test_llama_cpp_dry_run_bundles_the_export():
    result = script("deploy.sh", DRY_RUN="1", **GOOD, **LLAMA_CPP)
    assert result.returncode == 0, result.stderr
    first = next(line for line in result.stdout.splitlines() if line.startswith("+ "))
    assert first.endswith(f"--model models:/{PROJECT}@champion --fallback latest --out build/model --gguf q8_0")


def test_llama_cpp_deploy_of_a_run_without_its_export_stops_before_any_upload(deploy_without_export, tmp_path):
    result = script("deploy.sh", **GOOD, **LLAMA_CPP, **deploy_without_export)  # not a dry run: it would upload
    assert result.returncode == 2, result.stdout + result.stderr
    run = deploy_without_export["MODEL"]
    assert f"{run}/model-q8_0.gguf: no such file" in result.stderr and "make export-gguf" in result.stderr
    assert result.stdout == "" and not (ROOT / "build" / "space").exists()


# <<< llama_cpp
