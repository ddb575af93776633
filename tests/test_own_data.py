"""A newcomer's own-data path, scripted (issue 26): bake outside any clone, `task init` a JSON task and a
plain-text task from files of one's own, train and evaluate each offline with the configs `task init` wrote,
and check what would be published: each task's first run is its champion, and README.md, MODEL_CARD.md and
reports/ describe that task only, in plain text, with no local paths and no figure its runs did not make."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import run

# One process runs every command (the CLI's imports cost seconds each): a user's commands, in order.
# ["snapshot", DIR] copies README.md, MODEL_CARD.md and reports/ to DIR: what a task published, before the next.
DRIVER = """
import json, shutil, sys
from typer.testing import CliRunner
from {package}.cli import app

outputs = []
for args in json.loads(sys.argv[1]):
    if args[0] == "snapshot":
        shutil.copytree("reports", args[1] + "/reports")
        for name in ("README.md", "MODEL_CARD.md"):
            shutil.copy(name, args[1])
        continue
    result = CliRunner().invoke(app, args)
    outputs.append({{"args": args, "code": result.exit_code, "output": result.output}})
    if result.exit_code:
        break
print(json.dumps(outputs))
"""
TITLES = ("Data Engineer", "Nurse", "Chef", "Welder", "Teacher")
CITIES = ("Berlin", "Lyon", "Oslo", "Porto")
# The template's own measurements and the example task's texts: none may reach a README about another task.
TEMPLATE_FIGURES = ("1.2x", "7.5 s", "0.975", "0.978", "0.925", "571 s", "231 tokens/s")
EXAMPLE_TEXTS = ("shop", "B11688", "customer message", "order id")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def job_rows(n: int = 40) -> list[dict]:
    """Job postings -> JSON: the user's extraction task, as `prompt` / `completion` rows."""
    rows = []
    for i in range(n):
        title, city, salary = TITLES[i % 5], CITIES[i % 4], 30 + i
        answer = {"title": title, "city": city, "salary_k": salary}
        rows.append({"prompt": f"Hiring: {title} in {city}, {salary}k a year.", "completion": json.dumps(answer)})
    return rows


def email_rows(n: int = 40) -> list[dict]:
    """Blunt requests -> polite ones: the user's plain-text task."""
    return [
        {"prompt": f"Rewrite politely: send me report {i} now", "completion": f"Could you send me report {i}, please?"}
        for i in range(n)
    ]


def commands(data_file: str, name: str, slug: str) -> list[list[str]]:
    # The smoke config task init wrote, as `make train evaluate CONFIG=...` runs it; 4 steps keep it to seconds.
    return [
        ["task", "init", data_file, "--name", name],
        ["train", "--config", f"configs/{slug}-smoke.yaml", "train.max_steps=4"],
        ["evaluate"],  # as `make evaluate`: the newest run, with its own config
        ["report"],
    ]


def run_commands(project: Path, package: str, steps: list[list[str]]) -> list[dict]:
    result = run(
        [sys.executable, "-c", DRIVER.format(package=package), json.dumps(steps)],
        cwd=project,
        PYTHONPATH=str(project / "src"),
        MLFLOW_TRACKING_URI="",  # the project's own mlflow.db, as for a user
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.splitlines()[-1])
    for step in outputs:
        assert step["code"] == 0, f"{step['args']}: {step['output'][-3000:]}"
    assert len(outputs) == len([step for step in steps if step[0] != "snapshot"])
    return outputs


def outside_example_sections(readme: str) -> str:
    """The README less the sections headed as the example task's (Quickstart, Reproduce)."""
    sections = re.split(r"\n(?=## )", readme)
    return "\n".join(section for section in sections if "(the example task)" not in section.split("\n", 1)[0])


def check_published(folder: Path, *, project: Path, task: str, other: str | None) -> tuple[str, str]:
    """README.md and MODEL_CARD.md in `folder` name `task` (never `other`), hold plain text only, no local path, no
    example texts outside the example's sections and none of the template's measurements."""
    readme = (folder / "README.md").read_text(encoding="utf-8")
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    eval_md = (folder / "reports" / "eval.md").read_text(encoding="utf-8")
    assert f"**Task: {task}.**" in readme and task in card
    for name, text in (("README.md", readme), ("MODEL_CARD.md", card), ("reports/eval.md", eval_md)):
        assert not CONTROL.search(text), f"{name}: control characters {CONTROL.findall(text)[:5]}"
        assert str(project.parent) not in text, f"{name} holds a local path"
        assert other is None or other not in text, f"{name} still names {other}"
        found = [figure for figure in TEMPLATE_FIGURES if figure in text]
        assert not found, f"{name} quotes the template's figures {found}"
    for name, text in (("README.md", outside_example_sections(readme)), ("MODEL_CARD.md", card)):
        found = [phrase for phrase in EXAMPLE_TEXTS if phrase.lower() in text.lower()]
        assert not found, f"{name} describes the example task: {found}"
    for line in readme.splitlines():  # a time the template measured is marked as its own
        if re.search(r"\b45 s\b|~9 min", line):
            assert "reference" in line, line
    return readme, card


@pytest.mark.xdist_group("worker-b")
def test_own_json_and_text_tasks_from_bake_to_published_readme(bake, tmp_path):
    # pytest-cookies bakes under pytest's temporary folder: outside the template's clone, as a user should.
    project = bake(project_name="Job Posting Parser", description="Reads job postings; rewrites my emails.")
    (project / "data").mkdir()
    for name, rows in (("jobs.jsonl", job_rows()), ("emails.jsonl", email_rows())):
        (project / "data" / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    first = tmp_path / "first"
    first.mkdir()

    steps = [*commands("data/jobs.jsonl", "Job postings", "job-postings"), ["snapshot", str(first)]]
    steps += commands("data/emails.jsonl", "Polite emails", "polite-emails")
    outputs = run_commands(project, "job_posting_parser", steps)
    for task in (0, 4):
        init, evaluate = outputs[task]["output"], outputs[task + 2]["output"]
        assert "registered model: " in init and "offline first: make data train evaluate CONFIG=configs/" in init
        # Its own registered model: the first run is its champion, on the default path; printed once, plainly.
        assert evaluate.count("promotion gate: version 1 promoted (no champion yet)") == 1, evaluate
        assert "INFO:" not in evaluate

    readme, _ = check_published(first, project=project, task="Job postings", other=None)
    assert "`job-postings-smoke` version 1, promoted to `@champion`: no champion yet" in readme
    assert {"field_accuracy.png", "metrics.png"} <= {path.name for path in (first / "reports").glob("*.png")}

    readme, card = check_published(project, project=project, task="Polite emails", other="Job postings")
    assert "`polite-emails-smoke` version 1, promoted to `@champion`: no champion yet" in readme
    # The plain-text task: no JSON claims, its majority baseline is an answer, the JSON task's plots are gone.
    assert "JSON" not in readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    assert "a majority guess (the most common training answer, no model)" in card
    assert "These figures come from the smoke run" in readme  # the tiny model, named by its own config
    plots = sorted(path.name for path in (project / "reports").glob("*.png"))
    assert "field_accuracy.png" not in plots and "confusion.png" not in plots, plots
