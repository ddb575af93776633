"""Publish the project: a GitHub repository (GitHub CLI `gh`), optionally the adapter on the Hugging Face Hub.

    <project> publish --dry-run              # print every command and API call; change nothing
    <project> publish                        # shows the plan, asks, then creates and pushes
    <project> publish --yes --private --hf   # no question; also the adapter + MODEL_CARD.md to the Hub
    <project> publish --anyway               # publish although parts still look like the unmodified template

First it lists what still looks like the unmodified template (placeholder author, e-mail or GitHub user, the
default description, the shop example, the smoke model's results, a task without a description, decisions
without a `Why:`, fewer than two runs in docs/experiments.md), each with its fix, and stops (exit 2, nothing
done) unless --anyway is given; --dry-run shows the list too.
Never destructive: `git init` and a first commit only where there is no repository or no commit yet;
no force push; it refuses a remote `origin` that points elsewhere, a GitHub repository of that name that
already exists, and a project folder nested inside another repository. Commits you have not made are
not made for you: uncommitted changes are reported, not published.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, DataConfig, load_config
from .errors import BadInput, ProjectError
from .model.load import is_tiny_model, read_adapter_config

PLACEHOLDER_USER = "your-github-username"  # the template's default answers to its questions, as baked
PLACEHOLDER_NAME, PLACEHOLDER_EMAIL = "Your Name", "you@example.com"
DEFAULT_DESCRIPTION = (
    "Fine-tunes a small LLM with LoRA to turn customer messages into structured JSON, and measures the gain "
    "over the base model."
)
Runner = Callable[[list[str]], subprocess.CompletedProcess]


class PublishError(ProjectError, RuntimeError):
    """Publishing cannot go on; the message says why and what to do. Steps already done are named."""


class StillTheTemplate(BadInput):
    """Parts of the project still look like the unmodified template (listed with their fixes); nothing was done."""


@dataclass
class Step:
    """One thing publishing does: shown as `display`, done by `action` (None: shown only)."""

    display: str
    action: list[str] | Callable[[], Any] | None = None  # a command to run, or an API call


@dataclass
class GitState:
    """What the project folder's git repository looks like (read-only inspection)."""

    is_repo: bool
    toplevel: Path | None
    has_commit: bool
    branch: str
    origin: str | None
    dirty: bool
    identity: bool  # user.name and user.email are set (a commit needs them)


@dataclass(frozen=True)
class PublishRequest:
    """What the user asked for: the `publish` command's options."""

    repo: str | None = None  # None: [project.urls] Repository in pyproject.toml
    private: bool = False
    hf: bool = False
    hf_repo: str | None = None  # None: <your Hub user>/<project>
    yes: bool = False
    dry_run: bool = False
    anyway: bool = False  # publish although template_findings found something
    interactive: bool = False  # stdin is a terminal: someone is there to confirm


@dataclass(frozen=True)
class World:
    """The outside world publishing talks to, replaced in tests. `run` None: commands run in the project folder
    (which only `publish` knows); `hf_api` None: huggingface_hub's HfApi (token -> HfApi-like client)."""

    confirm: Callable[[str], bool] = lambda question: False
    echo: Callable[[str], None] = print
    run: Runner | None = None
    which: Callable[[str], str | None] = shutil.which
    hf_api: Callable[[str], Any] | None = None


def publish(config: Config, *, root: Path, request: PublishRequest, world: World = World()) -> None:
    """Plan, show, confirm, then do. Every check that needs no network runs before anything is done."""
    echo, which, private = world.echo, world.which, request.private
    run = world.run or _runner(root)
    project = _project(root)
    findings = template_findings(config, root=root, project=project)
    if findings:
        echo("Still the template (each with its fix):")
        for finding in findings:
            echo(f"  - {finding}")
        if not request.anyway:
            raise StillTheTemplate(
                f"{len(findings)} part(s) of the project still look like the unmodified template (listed above); "
                "fix them, or pass --anyway to publish as it is; nothing was done"
            )
    repo = request.repo or _repo_from_url(project["repository"])
    _check_repo_name(repo)
    if which("git") is None:
        raise PublishError("git is not installed (https://git-scm.com); nothing was done")
    state = inspect_git(root, run=run)
    _check_git(state, root=root, repo=repo)
    hf_plan = _hf_inputs(config, root=root) if request.hf else None
    token = _hf_token() if request.hf else ""

    if request.dry_run:
        steps = [
            Step("$ gh auth status    (check: logged in)"),
            *([] if _origin_matches(state, repo) else [Step(f"$ gh repo view {repo}    (check: must not exist yet)")]),
            *git_steps(state, repo=repo, private=private, description=project["description"], name=project["name"]),
        ]
        if hf_plan:
            steps += hf_steps(None, repo_id=request.hf_repo, slug=project["slug"], private=private, **hf_plan)
        _show(echo, "Dry run: nothing is done. The real run would:", steps, state)
        return

    if not request.yes and not request.interactive:
        raise PublishError(
            "stdin is not a terminal, so there is no one to confirm: pass --yes to publish without the question, "
            "or --dry-run to see the plan; nothing was done"
        )
    _check_gh(run=run, which=which, repo=repo, creating=not _origin_matches(state, repo))
    steps = git_steps(state, repo=repo, private=private, description=project["description"], name=project["name"])
    if hf_plan:
        api = (world.hf_api or _hf_client)(token)
        steps += hf_steps(api, repo_id=request.hf_repo, slug=project["slug"], private=private, **hf_plan)
    _show(echo, "Publishing will:", steps, state)
    if not request.yes and not world.confirm("Go ahead?"):
        raise PublishError("not confirmed; nothing was done")
    _execute(steps, run=run, echo=echo)
    echo(f"published: https://github.com/{repo}")


# ---- inspection and checks ------------------------------------------------------------------------------


def _hf_token() -> str:
    """HF_TOKEN, checked before anything is done: --hf cannot upload without it."""
    token = os.environ.get("HF_TOKEN", "")
    if not token:
        raise PublishError(
            "--hf needs HF_TOKEN: a write token from https://huggingface.co/settings/tokens "
            "(export HF_TOKEN=hf_...); nothing was done"
        )
    return token


def _runner(root: Path) -> Runner:
    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)

    return run


def _project(root: Path) -> dict[str, str]:
    from .report.facts import project_metadata

    if not (root / "pyproject.toml").is_file():
        raise PublishError(f"{root}: no pyproject.toml here; run `publish` in the project's root folder")
    project = project_metadata(root)
    return project | {"slug": project["name"]}


def template_findings(config: Config, *, root: Path, project: dict[str, str]) -> list[str]:
    """What a reader would take for the unmodified template, each as `what: fix`. Local files only."""
    import tomllib

    from .report.journey import EMPTY_WHY, RUN_MARK

    meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    author = (meta.get("authors") or [{}])[0]
    found = [
        f"pyproject.toml: the author's {key} is the placeholder '{value}': put yours there{also}"
        for key, value, also in (("name", PLACEHOLDER_NAME, " and in LICENSE"), ("email", PLACEHOLDER_EMAIL, ""))
        if author.get(key) == value
    ]
    if f"github.com/{PLACEHOLDER_USER}/" in project["repository"]:
        found.append(f"pyproject.toml [project.urls] and README.md's CI badge name '{PLACEHOLDER_USER}': put yours")
    if project["description"] == DEFAULT_DESCRIPTION:
        found.append("pyproject.toml and README.md: the template's description: say what your project does")
    evaluated = _evaluated_run(config, root=root)
    judged = (evaluated and evaluated[2]) or config  # the config of the run the README shows
    if Path(judged.data.path).name == Path(DataConfig().path).name:
        found.append(f"the shop example task and data ({judged.data.path}): `task init` starts your own task")
    if not judged.task.description.strip():
        found.append("task.description is empty: add one sentence (what goes in, what comes out) to your config")
    smoke = smoke_results_warning(config, root=root)
    if smoke:
        found.append(smoke.removeprefix("warning: "))
    decisions, experiments = root / "docs" / "decisions.md", root / "docs" / "experiments.md"
    empty = len(EMPTY_WHY.findall(decisions.read_text(encoding="utf-8"))) if decisions.is_file() else 0
    if empty:
        found.append(f"docs/decisions.md: {empty} entries with an empty `Why:`: write your reasons")
    runs = experiments.read_text(encoding="utf-8").count(RUN_MARK.split("{")[0]) if experiments.is_file() else 0
    if runs < 2:
        found.append(f"docs/experiments.md lists {runs} run(s): train and evaluate a change, then `make report`")
    return found


def _evaluated_run(config: Config, *, root: Path) -> tuple[dict[str, Any], Path | None, Config | None] | None:
    """reports/eval.json's run, its run folder and resolved config when they are here; None before `evaluate`."""
    from .report.facts import ReportError, find_run_dir, read_results
    from .runs import run_config_path

    try:
        run = read_results(root / config.eval.report_dir)["run"]
    except ReportError:
        return None
    run_dir = find_run_dir(run, output_dir=root / config.train.output_dir)
    run_config = _loadable(run_config_path(run_dir=root / run_dir)) if run_dir else None
    return run, run_dir, run_config


def smoke_results_warning(config: Config, *, root: Path) -> str | None:
    """A warning when the results README.md and MODEL_CARD.md show come from the smoke model (tiny, random,
    built offline): published as they are, a reader would take them for the project's results. Recognised by
    the run's `model.build_tiny`, by its base model being the tiny model's folder of either config, or by the
    marker in the tiny model's config.json (a copy loaded by path). Local files only: a dry run asks no server."""
    evaluated = _evaluated_run(config, root=root)
    if evaluated is None:
        return None  # no evaluation yet: the README shows no results to warn about
    run, run_dir, run_config = evaluated
    tiny_folders = {_folder(root, cfg.model.base_model) for cfg in (config, run_config) if cfg and cfg.model.build_tiny}
    base = run.get("base_model") or (run_config.model.base_model if run_config else None)
    marked = base is not None and is_tiny_model(
        config.model.model_copy(update={"base_model": str(_folder(root, base)), "build_tiny": False})
    )
    built_tiny = run_config is not None and run_config.model.build_tiny
    if not (built_tiny or marked or (base is not None and _folder(root, base) in tiny_folders)):
        return None
    where = f"run {run_dir}, " if run_dir else ""
    return (
        f"warning: the results in README.md and MODEL_CARD.md come from the smoke model ({where}base model {base}: "
        "tiny, randomly initialised, built offline). They show that the pipeline works, not that the model is "
        "useful, and readers will take them for your results. For real results run "
        "`make train evaluate CONFIG=configs/default.yaml` (or your own config) before publishing."
    )


def _loadable(path: Path | None) -> Config | None:
    try:
        return load_config(path) if path else None
    except ConfigError:  # a run config from another version of the project: judge by the base model alone
        return None


def _folder(root: Path, model: str) -> Path:
    """A base model as an absolute folder, so `models/tiny-chat` and `./models/tiny-chat` compare equal."""
    return (root / model).resolve()


def _repo_from_url(url: str) -> str:
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url.strip())
    if not match:
        raise PublishError(
            f"pyproject.toml: [project.urls] Repository = {url!r} is not https://github.com/<user>/<name>; "
            "fix it or pass --repo <user>/<name>"
        )
    return f"{match.group(1)}/{match.group(2)}"


def _check_repo_name(repo: str) -> None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise PublishError(f"--repo {repo!r}: write it as <user or organisation>/<name>")
    if repo.split("/")[0] == PLACEHOLDER_USER:
        raise PublishError(
            f"pyproject.toml: [project.urls] Repository still names the placeholder user '{PLACEHOLDER_USER}'. "
            "Put your GitHub user name there and in README.md's CI badge, or pass --repo <user>/<name>; "
            "nothing was done"
        )


def inspect_git(root: Path, *, run: Runner) -> GitState:
    """Read-only: is `root` a repository (its own, not a parent's), with commits, which branch and origin."""
    toplevel = run(["git", "rev-parse", "--show-toplevel"])
    if toplevel.returncode != 0:
        return GitState(False, None, False, "main", None, False, _has_identity(run))
    head = run(["git", "rev-parse", "--verify", "--quiet", "HEAD"])
    branch = run(["git", "symbolic-ref", "--short", "HEAD"]).stdout.strip() or "main"
    origin = run(["git", "remote", "get-url", "origin"])
    status = run(["git", "status", "--porcelain"])
    return GitState(
        is_repo=True,
        toplevel=Path(toplevel.stdout.strip()),
        has_commit=head.returncode == 0,
        branch=branch,
        origin=origin.stdout.strip() if origin.returncode == 0 else None,
        dirty=bool(status.stdout.strip()),
        identity=_has_identity(run),
    )


def _has_identity(run: Runner) -> bool:
    return all(run(["git", "config", key]).stdout.strip() for key in ("user.name", "user.email"))


def _check_git(state: GitState, *, root: Path, repo: str) -> None:
    if state.is_repo and state.toplevel and state.toplevel.resolve() != root.resolve():
        raise PublishError(
            f"{root} lies inside another git repository ({state.toplevel}); publishing would push that one. "
            "Move the project out of it, or publish that repository yourself; nothing was done"
        )
    if state.origin and not _origin_matches(state, repo):
        raise PublishError(
            f"remote 'origin' is {state.origin}, not github.com/{repo}; nothing was done. Push there yourself "
            f"(git push -u origin {state.branch}), or pass --repo <user>/<name> matching it"
        )
    if not state.has_commit and not state.identity:
        raise PublishError(
            "the first commit needs your name and e-mail: git config --global user.name 'Your Name' && "
            "git config --global user.email you@example.com; nothing was done"
        )


def _origin_matches(state: GitState, repo: str) -> bool:
    return bool(state.origin) and _normalise(state.origin) == f"github.com/{repo}".lower()


def _normalise(url: str) -> str:
    """https://github.com/u/r.git, git@github.com:u/r.git, ssh://git@github.com/u/r -> github.com/u/r."""
    url = re.sub(r"^(?:https?://|ssh://)?(?:[^@/]+@)?", "", url.strip()).replace("github.com:", "github.com/")
    return url.removesuffix("/").removesuffix(".git").lower()


def _check_gh(*, run: Runner, which: Callable[[str], str | None], repo: str, creating: bool) -> None:
    if which("gh") is None:
        raise PublishError(
            "the GitHub CLI `gh` is not installed: get it from https://cli.github.com, run `gh auth login`, then "
            "`make publish` again (or create the repository on github.com and `git push` to it); nothing was done"
        )
    if run(["gh", "auth", "status"]).returncode != 0:
        raise PublishError("gh is not logged in: run `gh auth login`, then `make publish` again; nothing was done")
    if creating and run(["gh", "repo", "view", repo]).returncode == 0:
        raise PublishError(
            f"github.com/{repo} already exists; nothing was done. To push to it: "
            f"git remote add origin https://github.com/{repo}.git && git push -u origin main"
        )


# ---- the plan -------------------------------------------------------------------------------------------


def git_steps(state: GitState, *, repo: str, private: bool, description: str, name: str) -> list[Step]:
    """git init and a first commit only when missing; create + push, or push to the matching origin."""
    commands: list[list[str]] = []
    if not state.is_repo:
        commands.append(["git", "init", "-b", "main"])
    if not state.has_commit:
        commands += [["git", "add", "-A"], ["git", "commit", "-m", f"First commit: {name}"]]
    if _origin_matches(state, repo):
        commands.append(["git", "push", "-u", "origin", state.branch])
    else:
        visibility = "--private" if private else "--public"
        create = ["gh", "repo", "create", repo, visibility, "--source", ".", "--remote", "origin", "--push"]
        commands.append(create + (["--description", description] if description else []))
    return [Step(f"$ {shlex.join(command)}", action=command) for command in commands]


def _hf_inputs(config: Config, *, root: Path) -> dict[str, Path]:
    """The evaluated adapter and the model card, checked before anything is done."""
    from .report.facts import ReportError, find_run_dir, read_results

    try:
        results = read_results(root / config.eval.report_dir)
    except ReportError as err:
        raise PublishError(f"--hf: {err}") from None
    run_dir = find_run_dir(results["run"], output_dir=root / config.train.output_dir)
    adapter = root / run_dir / "adapter" if run_dir else None  # a relative run folder is relative to root
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        raise PublishError(
            f"--hf: the evaluated adapter ({results['run'].get('adapter')}) is not under {config.train.output_dir}/; "
            "train and evaluate on this machine first (make train evaluate)"
        )
    base = read_adapter_config(adapter).get("base_model_name_or_path")  # a corrupt file: ModelError naming it
    if not isinstance(base, str):
        raise PublishError(f"--hf: {adapter / 'adapter_config.json'} names no base_model_name_or_path; train again")
    if Path(base).exists() or (root / base).exists():
        shown = adapter.relative_to(root) if adapter.is_relative_to(root) else adapter
        raise PublishError(
            f"--hf: {shown} adapts the local model {base}, which the Hub does not have, so no one could load "
            "it from there. Publish an adapter of a hub model: make train evaluate CONFIG=configs/default.yaml"
        )
    card = root / "MODEL_CARD.md"
    if not card.is_file():
        raise PublishError("--hf: MODEL_CARD.md not found: run `make report` (make evaluate runs it) first")
    return {"adapter": adapter, "card": card}


def hf_steps(api: Any, *, repo_id: str | None, slug: str, private: bool, adapter: Path, card: Path) -> list[Step]:
    """Create the model repository (kept if it exists), upload the adapter, the card as its README.md."""
    if repo_id is None:
        user = api.whoami()["name"] if api is not None else "<your Hugging Face user>"
        repo_id = f"{user}/{slug}"
        whoami = [Step("HfApi.whoami()    (your user name, for the repository id)")] if api is None else []
    else:
        whoami = []
    calls: list[tuple[str, dict[str, Any]]] = [
        ("create_repo", {"repo_id": repo_id, "repo_type": "model", "private": private, "exist_ok": True}),
        ("upload_folder", {"repo_id": repo_id, "folder_path": str(adapter), "commit_message": "Upload LoRA adapter"}),
        (
            "upload_file",
            {
                "repo_id": repo_id,
                "path_or_fileobj": str(card),
                "path_in_repo": "README.md",
                "commit_message": "Upload model card",
            },
        ),
    ]
    steps = [
        Step(
            f"HfApi.{method}({', '.join(f'{key}={value!r}' for key, value in kwargs.items())})",
            action=(lambda method=method, kwargs=kwargs: getattr(api, method)(**kwargs)) if api is not None else None,
        )
        for method, kwargs in calls
    ]
    return whoami + steps


def _hf_client(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _show(echo: Callable[[str], None], header: str, steps: list[Step], state: GitState) -> None:
    echo(header)
    for step in steps:
        echo(f"  {step.display}")
    if state.has_commit and state.dirty:
        echo("note: uncommitted changes are not published; commit them first (git status lists them)")


def _execute(steps: list[Step], *, run: Runner, echo: Callable[[str], None]) -> None:
    done: list[str] = []
    for step in steps:
        echo(step.display)
        if isinstance(step.action, list):
            result = run(step.action)
            output = (result.stdout + result.stderr).strip()
            if output:
                echo(output)
            if result.returncode != 0:
                raise PublishError(
                    f"`{shlex.join(step.action)}` failed (exit {result.returncode}). "
                    + (f"Done before it: {'; '.join(done)}." if done else "Nothing was done before it.")
                )
        elif step.action is not None:
            try:
                step.action()
            except Exception as err:  # the Hub client's errors: network, token rights, name taken
                raise PublishError(
                    f"{step.display} failed: {err}. Done before it: {'; '.join(done) or 'nothing'}."
                ) from None
        done.append(step.display.removeprefix("$ "))
