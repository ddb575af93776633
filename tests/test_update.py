"""The template's update path: a project baked with cruft without an extra gets it later from
`cruft update --variables-to-update`, keeping the owner's local changes, and the added extra's tests pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXTRA_FILES, TEMPLATE, expected_files, generated_files, run

# cruft and the tests drive git; its identity and config come from here, not from the machine's ~/.gitconfig.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Template Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
PACKAGE, CLOUD = "shop_assistant_extractor", "aws"  # the default answers
OFF = {extra: "no" for extra in EXTRA_FILES}
NOTE = "\nLocal note: kept through template updates.\n"
# The owner's edits to files of the bake, made and committed before the update: the README also gets lines from
# the update (a three-way merge), smoke.yaml does not. Each maps the baked text to the edited text.
LOCAL_CHANGES: dict[str, Callable[[str], str]] = {
    "README.md": lambda text: text + NOTE,
    "configs/smoke.yaml": lambda text: text.replace("max_seq_length: 256", "max_seq_length: 320", 1),
}
OWN_FILE = "notes/decisions.md"  # a file the owner added: not the template's


def check(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = run(command, cwd=cwd, timeout=300, **GIT_ENV)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def git(cwd: Path, *args: str) -> str:
    return check(["git", *args], cwd).stdout


def cruft(cwd: Path, *args: str) -> str:
    """cruft's output, stdout and stderr together (git's messages on applying the patch come on stderr)."""
    result = check([sys.executable, "-m", "cruft", *args], cwd)
    return result.stdout + result.stderr


def project_files(project: Path) -> set[str]:
    return {path for path in generated_files(project) if Path(path).parts[0] != ".git"}


def extra_files(extra: str) -> set[str]:
    return expected_files(PACKAGE, CLOUD, {extra: "yes"}) - expected_files(PACKAGE, CLOUD)


def update(project: Path, **answers: str) -> str:
    """`cruft update` with new answers; it exits 0 even when its patch failed, so its output is checked too."""
    output = cruft(project, "update", "--skip-apply-ask", "--variables-to-update", json.dumps(answers))
    assert "Failed to apply" not in output and "conflicts" not in output, output
    assert "Good work! Project's cruft has been updated" in output, output
    return output


def assert_cleanly_applied(project: Path) -> None:
    leftovers = [str(path) for pattern in ("*.rej", "*.orig") for path in project.rglob(pattern)]
    assert leftovers == [], f"patch leftovers: {leftovers}"
    assert git(project, "ls-files", "--unmerged") == "", "unmerged paths after the update"


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    """The template's working tree as it is now (uncommitted edits included), committed to a repository of its
    own: cruft reads a template from git."""
    repo = tmp_path_factory.mktemp("template") / "llm-portfolio"
    listed = git(TEMPLATE, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for relative in filter(None, listed):
        source = TEMPLATE / relative
        if source.is_file() or source.is_symlink():  # a file deleted but not yet committed is skipped
            (repo / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / relative, follow_symlinks=False)
    git(repo, "init", "--quiet")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", "template")
    return repo


def create(template_repo: Path, out: Path, **answers: str) -> Path:
    """`cruft create` with the default answers plus these; returns the project folder."""
    cruft(
        out.parent,
        *("create", str(template_repo), "--no-input", "--default-config"),
        *("--output-dir", str(out), "--extra-context", json.dumps(answers)),
    )
    (project,) = out.iterdir()
    return project


@pytest.fixture(scope="module")
def baked(template_repo, tmp_path_factory) -> dict:
    """A project baked without extras, under git with the owner's commits, then given cloud_training."""
    project = create(template_repo, tmp_path_factory.mktemp("baked") / "out", **OFF)
    git(project, "init", "--quiet")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--message", "Baked with cruft")
    for relative, change in LOCAL_CHANGES.items():
        path = project / relative
        text = path.read_text(encoding="utf-8")
        assert change(text) != text, f"the local change to {relative} changes nothing: update LOCAL_CHANGES"
        path.write_text(change(text), encoding="utf-8")
    (project / OWN_FILE).parent.mkdir()
    (project / OWN_FILE).write_text("# Decisions\n", encoding="utf-8")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--message", "Local changes")
    before = project_files(project)

    output = update(project, cloud_training="yes")
    return {"project": project, "before": before, "after": project_files(project), "output": output}


def test_cruft_bake_is_an_ordinary_bake(baked):
    assert baked["before"] == expected_files(PACKAGE, CLOUD) | {".cruft.json", OWN_FILE}


def test_update_adds_exactly_the_extras_files(baked):
    before, after = baked["before"], baked["after"]
    assert before - after == set(), "the update deleted files"
    assert after - before == extra_files("cloud_training")
    assert extra_files("cloud_training") == {
        path.format(pkg=PACKAGE, cloud=CLOUD) for path in EXTRA_FILES["cloud_training"]
    }


def test_update_keeps_local_changes_and_matches_a_fresh_bake(baked, template_repo, tmp_path):
    """Shared files get the extra's blocks merged in: each file equals a fresh bake with the extra chosen,
    with the owner's edits on top."""
    project = baked["project"]
    assert_cleanly_applied(project)
    fresh = create(template_repo, tmp_path / "out", **{**OFF, "cloud_training": "yes"})
    assert project_files(project) == project_files(fresh) | {OWN_FILE}
    differing = []
    for relative in sorted(project_files(fresh) - {".cruft.json"}):
        expected = (fresh / relative).read_bytes()
        if relative in LOCAL_CHANGES:
            expected = LOCAL_CHANGES[relative](expected.decode("utf-8")).encode("utf-8")
        if (project / relative).read_bytes() != expected:
            differing.append(relative)
    assert differing == [], f"differ from a fresh bake with cloud_training (plus the local changes): {differing}"
    assert (project / OWN_FILE).read_text(encoding="utf-8") == "# Decisions\n"


def test_cruft_json_records_the_new_answer(baked, template_repo):
    state = json.loads((baked["project"] / ".cruft.json").read_text(encoding="utf-8"))
    answers = state["context"]["cookiecutter"]
    assert answers["cloud_training"] is True
    assert [answers[extra] for extra in ("preference_tuning", "sweeps", "multi_gpu")] == [False] * 3
    assert state["commit"] == git(template_repo, "rev-parse", "HEAD").strip()


@pytest.mark.bake_suite
def test_added_extras_tests_pass(baked, tmp_path):
    """The added extra's own tests (fakes and moto, seconds) and the CLI listing its commands, in a copy: the
    other tests compare the updated project's files."""
    project = tmp_path / baked["project"].name
    shutil.copytree(baked["project"], project, symlinks=True)
    tests = ["tests/test_cloud_jobs.py", f"tests/test_cloud_{CLOUD}.py"]
    tests.append("tests/test_cli.py::test_help_lists_subcommands")
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=project)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_second_extra_added_after_the_first(baked, tmp_path):
    """A project already updated once takes another extra the same way (sweeps: its tests are slow, so only
    its files and the merge are checked here; the all-extras bake in test_bake.py runs them)."""
    project = tmp_path / baked["project"].name
    shutil.copytree(baked["project"], project, symlinks=True)
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--message", "Add cloud training")
    update(project, sweeps="yes")
    assert_cleanly_applied(project)
    after = project_files(project)
    assert after - baked["after"] == extra_files("sweeps")
    assert baked["after"] - after == set()
    assert (project / "README.md").read_text(encoding="utf-8").endswith(NOTE)
    answers = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["context"]["cookiecutter"]
    assert (answers["cloud_training"], answers["sweeps"]) == (True, True)
