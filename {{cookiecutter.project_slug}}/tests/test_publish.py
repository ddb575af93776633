"""Publishing: the exact plan of a dry run, refusals that leave everything as it was, gh and the Hub faked."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import dump_config, load_config
from {{ cookiecutter.package_name }}.model.load import TINY_MARKER
from {{ cookiecutter.package_name }}.publish import PublishError, PublishRequest, World, publish

CONFIG_FILE = Path(__file__).parents[1] / "configs" / "smoke.yaml"
OWN = ["data.path=data/tickets"]  # the project's own data, not the shop example
EXPERIMENTS = (
    "# Experiments\n\n## 1. a\n<!-- run: a1 -->\n\n## 2. b\n<!-- run: b2 -->\n"  # two runs, as `report` writes
)
STILL = "Still the template (each with its fix):"
SMOKE_FINDING = (
    "  - the results in README.md and MODEL_CARD.md come from the smoke model ({where}base model "
    "models/tiny-chat: tiny, randomly initialised, built offline). They show that the pipeline works, not that the "
    "model is useful, and readers will take them for your results. For real results run "
    "`make train evaluate CONFIG=configs/default.yaml` (or your own config) before publishing."
)
PLAN = [
    "  $ gh auth status    (check: logged in)",
    "  $ gh repo view octo/demo-proj    (check: must not exist yet)",
    "  $ git init -b main",
    "  $ git add -A",
    "  $ git commit -m 'First commit: demo-proj'",
    "  $ gh repo create octo/demo-proj --public --source . --remote origin --push --description 'A demo project.'",
]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder outside any repository, with its own git identity (never the machine's)."""
    root = tmp_path / "demo-proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo-proj"\ndescription = "A demo project."\n'
        '[project.urls]\nRepository = "https://github.com/octo/demo-proj"\n'
    )
    (root / "README.md").write_text("# demo\n")
    (root / "docs").mkdir()
    (root / "docs" / "experiments.md").write_text(EXPERIMENTS)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Test\n\temail = test@example.com\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.chdir(root)
    return root


class FakeGh:
    """Runs git for real and answers gh: logged in, the repository does not exist yet, creation succeeds."""

    def __init__(self, root: Path):
        self.root, self.commands = root, []

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.commands.append(command)
        if command[0] == "gh":
            missing = command[1:3] == ["repo", "view"]
            return subprocess.CompletedProcess(command, 1 if missing else 0, "", "not found" if missing else "")
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, check=False)


def on_path(name: str) -> str | None:
    return f"/usr/bin/{name}" if name == "gh" else shutil.which(name)


def without_gh(name: str) -> str | None:
    return None if name == "gh" else shutil.which(name)


def test_dry_run_prints_the_exact_plan_and_changes_nothing(project):
    result = CliRunner().invoke(app, ["publish", "--dry-run", "--config", str(CONFIG_FILE), *OWN])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Dry run: nothing is done. The real run would:", *PLAN]
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "docs", "pyproject.toml"]


def test_dry_run_of_a_committed_repository_with_its_origin_only_pushes(project):
    for command in (
        ["git", "init", "-b", "trunk"],
        ["git", "add", "-A"],
        ["git", "commit", "-m", "mine"],
        ["git", "remote", "add", "origin", "git@github.com:octo/demo-proj.git"],
    ):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    (project / "README.md").write_text("# changed\n")
    lines = []
    publish(
        load_config(CONFIG_FILE, OWN),
        root=project,
        request=PublishRequest(dry_run=True, private=True),
        world=World(echo=lines.append),
    )
    assert lines == [
        "Dry run: nothing is done. The real run would:",
        "  $ gh auth status    (check: logged in)",
        "  $ git push -u origin trunk",
        "note: uncommitted changes are not published; commit them first (git status lists them)",
    ]


def test_without_a_terminal_and_without_yes_it_refuses_and_does_nothing(project):
    result = CliRunner().invoke(app, ["publish", "--config", str(CONFIG_FILE), *OWN])  # CliRunner's stdin is no TTY
    assert result.exit_code == 1
    assert "stdin is not a terminal" in result.output and "pass --yes" in result.output
    assert not (project / ".git").exists()


def test_missing_gh_is_a_clear_message(project):
    runner = FakeGh(project)
    with pytest.raises(PublishError, match=r"`gh` is not installed: get it from https://cli.github.com"):
        publish(
            load_config(CONFIG_FILE, OWN),
            root=project,
            request=PublishRequest(yes=True),
            world=World(run=runner, which=without_gh),
        )
    assert not (project / ".git").exists()
    assert not any(command[0] == "gh" for command in runner.commands)


def test_confirmed_run_inits_commits_once_and_creates_the_repository(project):
    runner, lines = FakeGh(project), []
    publish(
        load_config(CONFIG_FILE, OWN),
        root=project,
        request=PublishRequest(private=True, interactive=True),
        world=World(confirm=lambda question: True, run=runner, which=on_path, echo=lines.append),
    )
    log = subprocess.run(["git", "log", "--format=%s"], cwd=project, capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == ["First commit: demo-proj"]
    tracked = subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert tracked.split() == ["README.md", "docs/experiments.md", "pyproject.toml"]
    gh = [command for command in runner.commands if command[0] == "gh"]
    assert gh == [
        ["gh", "auth", "status"],
        ["gh", "repo", "view", "octo/demo-proj"],
        [
            *("gh", "repo", "create", "octo/demo-proj", "--private", "--source", ".", "--remote", "origin"),
            *("--push", "--description", "A demo project."),
        ],
    ]
    assert lines[-1] == "published: https://github.com/octo/demo-proj"


def test_declining_the_question_does_nothing(project):
    runner = FakeGh(project)
    with pytest.raises(PublishError, match="not confirmed; nothing was done"):
        publish(
            load_config(CONFIG_FILE, OWN),
            root=project,
            request=PublishRequest(interactive=True),
            world=World(confirm=lambda q: False, run=runner, which=on_path),
        )
    assert not (project / ".git").exists()


def test_an_origin_pointing_elsewhere_is_refused(project):
    subprocess.run(["git", "init", "-b", "main"], cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "remote", "add", "origin", "https://github.com/someone/else.git"], cwd=project, check=True)
    elsewhere = r"remote 'origin' is https://github.com/someone/else.git, not github.com/octo/demo-proj"
    with pytest.raises(PublishError, match=elsewhere):
        publish(load_config(CONFIG_FILE, OWN), root=project, request=PublishRequest(dry_run=True))


def test_the_placeholder_user_is_refused_even_anyway(project):
    text = (project / "pyproject.toml").read_text().replace("octo", "your-github-username")
    (project / "pyproject.toml").write_text(text)
    with pytest.raises(PublishError, match="placeholder user 'your-github-username'"):
        publish(load_config(CONFIG_FILE, OWN), root=project, request=PublishRequest(dry_run=True, anyway=True))


def test_what_still_looks_like_the_template_is_listed_with_its_fix_and_nothing_is_done(project):
    """The template's default answers to its questions, the shop example without a task description, a decision
    without its reason and one run: each named with its fix; exit 2 before git or gh is asked anything."""
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo-proj"\ndescription = "Fine-tunes a small LLM with LoRA to turn customer messages '
        'into structured JSON, and measures the gain over the base model."\n'
        'authors = [{ name = "Your Name", email = "you@example.com" }]\n'
        '[project.urls]\nRepository = "https://github.com/your-github-username/demo-proj"\n'
    )
    (project / "docs" / "experiments.md").write_text(EXPERIMENTS.split("\n## 2.")[0])
    (project / "docs" / "decisions.md").write_text("# Decisions\n\n## a\n- Why: mine.\n\n## b\n- Why:\n")
    result = CliRunner().invoke(app, ["publish", "--dry-run", "--config", str(CONFIG_FILE), "task.description=''"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        STILL,
        "  - pyproject.toml: the author's name is the placeholder 'Your Name': put yours there and in LICENSE",
        "  - pyproject.toml: the author's email is the placeholder 'you@example.com': put yours there",
        "  - pyproject.toml [project.urls] and README.md's CI badge name 'your-github-username': put yours",
        "  - pyproject.toml and README.md: the template's description: say what your project does",
        "  - the shop example task and data (data/shop_extraction): `task init` starts your own task",
        "  - task.description is empty: add one sentence (what goes in, what comes out) to your config",
        "  - docs/decisions.md: 1 entries with an empty `Why:`: write your reasons",
        "  - docs/experiments.md lists 1 run(s): train and evaluate a change, then `make report`",
        "error: 8 part(s) of the project still look like the unmodified template (listed above); fix them, or pass "
        "--anyway to publish as it is; nothing was done",
    ]
    assert not (project / ".git").exists()


def _evaluated_adapter(root: Path, base_model: str) -> Path:
    adapter = root / "outputs" / "run-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base_model}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter.parent / "config.yaml").write_text("project: demo-proj\n")
    (root / "reports").mkdir()
    run = {"adapter": "outputs/run-1/adapter", "mlflow_run_id": None}
    (root / "reports" / "eval.json").write_text(json.dumps({"base": {}, "finetuned": {}, "run": run}))
    (root / "MODEL_CARD.md").write_text("---\nlibrary_name: peft\n---\n# card\n")
    return adapter


class FakeHfApi:
    def __init__(self, token: str):
        self.token, self.calls = token, []

    def whoami(self) -> dict:
        self.calls.append(("whoami", {}))
        return {"name": "hf-user"}

    def __getattr__(self, method):
        return lambda **kwargs: self.calls.append((method, kwargs))


def test_hf_push_creates_the_model_repository_and_uploads_adapter_and_card(project, monkeypatch):
    adapter = _evaluated_adapter(project, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    clients = []

    def make_client(token: str) -> FakeHfApi:
        clients.append(FakeHfApi(token))
        return clients[-1]

    config = load_config(CONFIG_FILE, OWN)
    world = World(run=FakeGh(project), which=on_path, hf_api=make_client, echo=print)
    publish(config, root=project, request=PublishRequest(yes=True, hf=True), world=world)
    (client,) = clients
    assert client.token == "hf_test"
    assert client.calls == [
        ("whoami", {}),
        ("create_repo", {"repo_id": "hf-user/demo-proj", "repo_type": "model", "private": False, "exist_ok": True}),
        (
            "upload_folder",
            {"repo_id": "hf-user/demo-proj", "folder_path": str(adapter), "commit_message": "Upload LoRA adapter"},
        ),
        (
            "upload_file",
            {
                "repo_id": "hf-user/demo-proj",
                "path_or_fileobj": str(project / "MODEL_CARD.md"),
                "path_in_repo": "README.md",
                "commit_message": "Upload model card",
            },
        ),
    ]


def test_hf_dry_run_lists_the_api_calls(project, monkeypatch):
    _evaluated_adapter(project, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    lines = []
    publish(
        load_config(CONFIG_FILE, OWN),
        root=project,
        request=PublishRequest(dry_run=True, hf=True, hf_repo="me/model"),
        world=World(echo=lines.append),
    )
    assert lines[len(PLAN) + 1 :] == [
        "  HfApi.create_repo(repo_id='me/model', repo_type='model', private=False, exist_ok=True)",
        f"  HfApi.upload_folder(repo_id='me/model', folder_path='{project / 'outputs/run-1/adapter'}', "
        "commit_message='Upload LoRA adapter')",
        f"  HfApi.upload_file(repo_id='me/model', path_or_fileobj='{project / 'MODEL_CARD.md'}', "
        "path_in_repo='README.md', commit_message='Upload model card')",
    ]


def test_hf_refuses_an_adapter_of_a_local_base_model_and_a_missing_token(project, monkeypatch):
    _evaluated_adapter(project, base_model=str(project))  # a local folder: the smoke model's case
    with pytest.raises(PublishError, match="adapts the local model"):
        publish(load_config(CONFIG_FILE, OWN), root=project, request=PublishRequest(dry_run=True, hf=True))
    (project / "outputs" / "run-1" / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "org/model"})
    )
    with pytest.raises(PublishError, match="--hf needs HF_TOKEN"):
        publish(load_config(CONFIG_FILE, OWN), root=project, request=PublishRequest(dry_run=True, hf=True))


def test_hf_with_a_corrupt_adapter_config_names_the_file_and_does_nothing(project, monkeypatch):
    adapter = _evaluated_adapter(project, base_model="org/model")
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/model",\n  "r": }')
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    before = sorted(path.relative_to(project) for path in project.rglob("*"))
    result = CliRunner().invoke(app, ["publish", "--dry-run", "--hf", "--config", str(CONFIG_FILE), *OWN])
    assert result.exit_code == 1, result.output  # the CLI's status for every expected error (cli._known_errors)
    assert f"error: {adapter / 'adapter_config.json'}:2: not valid JSON" in result.output
    assert sorted(path.relative_to(project) for path in project.rglob("*")) == before


def _evaluated_smoke_run(root: Path, *, base_model: str = "models/tiny-chat", run_config: list[str] | None = None):
    """reports/eval.json of a run whose folder holds config.yaml (`run_config`: smoke.yaml with these overrides;
    None: no config.yaml, as when the run folder is not on this machine)."""
    run_dir = root / "outputs" / "smoke-1"
    (run_dir / "adapter").mkdir(parents=True)
    if run_config is not None:
        dump_config(load_config(CONFIG_FILE, run_config), run_dir / "config.yaml")
    (root / "reports").mkdir()
    run = {"adapter": "outputs/smoke-1/adapter", "base_model": base_model, "mlflow_run_id": None}
    (root / "reports" / "eval.json").write_text(json.dumps({"base": {}, "finetuned": {}, "run": run}))


def test_a_dry_run_lists_the_smoke_model_s_results_and_stops(project):
    _evaluated_smoke_run(project, run_config=OWN)
    result = CliRunner().invoke(app, ["publish", "--dry-run", "--config", str(CONFIG_FILE), *OWN])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        STILL,
        SMOKE_FINDING.format(where="run outputs/smoke-1, "),
        "error: 1 part(s) of the project still look like the unmodified template (listed above); fix them, or "
        "pass --anyway to publish as it is; nothing was done",
    ]


def test_a_real_publish_anyway_lists_them_before_its_plan_and_publishes(project):
    _evaluated_smoke_run(project, run_config=OWN)
    runner, lines = FakeGh(project), []
    publish(
        load_config(CONFIG_FILE, OWN),
        root=project,
        request=PublishRequest(yes=True, anyway=True),
        world=World(run=runner, which=on_path, echo=lines.append),
    )
    assert lines[:3] == [STILL, SMOKE_FINDING.format(where="run outputs/smoke-1, "), "Publishing will:"]
    assert lines[-1] == "published: https://github.com/octo/demo-proj"


@pytest.mark.parametrize(
    ("run_config", "where"),
    [(None, ""), (["model.build_tiny=false", *OWN], "run outputs/smoke-1, ")],
    ids=["gone", "off"],
)
def test_the_tiny_base_model_is_recognised_by_its_folder(project, run_config, where):
    """The run's config is not here, or it trained the tiny model with build_tiny off: the evaluated base model is
    the given config's tiny model folder, however its path is written."""
    _evaluated_smoke_run(project, base_model="./models/../models/tiny-chat", run_config=run_config)
    lines, request = [], PublishRequest(dry_run=True, anyway=True)
    publish(load_config(CONFIG_FILE, OWN), root=project, request=request, world=World(echo=lines.append))
    shown = "base model ./models/../models/tiny-chat"
    assert lines[:2] == [STILL, SMOKE_FINDING.format(where=where).replace("base model models/tiny-chat", shown)]


def test_a_tiny_model_loaded_by_path_from_elsewhere_is_recognised_by_its_marker(project):
    """A copy of the tiny model in a folder no config builds: its config.json's marker gives it away."""
    copy = project / "models" / "my-copy"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text(json.dumps({TINY_MARKER: True}))
    run_config = ["model.build_tiny=false", "model.base_model=models/my-copy", *OWN]
    _evaluated_smoke_run(project, base_model="models/my-copy", run_config=run_config)
    lines, request = [], PublishRequest(dry_run=True, anyway=True)
    publish(load_config(CONFIG_FILE, OWN), root=project, request=request, world=World(echo=lines.append))
    finding = SMOKE_FINDING.format(where="run outputs/smoke-1, ").replace("models/tiny-chat", "models/my-copy")
    assert lines[:2] == [STILL, finding]


def test_results_of_a_real_base_model_get_no_warning(project):
    real = "HuggingFaceTB/SmolLM2-135M-Instruct"
    run_config = ["model.build_tiny=false", f"model.base_model={real}", *OWN]
    _evaluated_smoke_run(project, base_model=real, run_config=run_config)
    lines = []
    publish(
        load_config(CONFIG_FILE, OWN),
        root=project,
        request=PublishRequest(dry_run=True),
        world=World(echo=lines.append),
    )
    assert lines == ["Dry run: nothing is done. The real run would:", *PLAN]
