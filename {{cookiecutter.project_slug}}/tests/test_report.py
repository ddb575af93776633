"""The portfolio report: PNG plots, the README results section (idempotent, markers only) and the model card."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.report import (
    END,
    PLOTS,
    START,
    ReportError,
    RunFacts,
    gather,
    project_metadata,
    replace_results,
    write_report,
)
from {{ cookiecutter.package_name }}.report.card import TEMPLATE, model_card_text
from {{ cookiecutter.package_name }}.report.markdown import answer_cell, table
from {{ cookiecutter.package_name }}.report.readme import key_settings
from {{ cookiecutter.package_name }}.report.summary import cost_text, settings

CONFIGS = Path(__file__).parents[1] / "configs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
README = f"""# Demo

Intro text with a trailing space \nand a [link](docs/x.md).

## Results

{START}
_old results_
{END}

## After

Untouched | text.
"""


def test_replace_results_rewrites_only_between_the_markers_and_is_idempotent():
    once = replace_results(README, "| a | b |\n|---|---|\n| 1 | 2 |")
    assert once == replace_results(once, "| a | b |\n|---|---|\n| 1 | 2 |")
    head, tail = README.split(START)[0], README.split(END)[1]
    assert once.startswith(head + START + "\n| a | b |") and once.endswith(END + tail)
    assert "_old results_" not in once


@pytest.mark.parametrize(
    "text",
    ["# No markers\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"],
    ids=["missing", "reversed", "twice"],
)
def test_bad_markers_name_the_readme_and_the_fix(text):
    with pytest.raises(ReportError, match=r"my/README\.md: needs exactly one '<!-- results:start -->' line"):
        replace_results(text, "x", readme="my/README.md")


def test_project_metadata_reads_name_and_licence(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nlicense = "MIT"\n[project.urls]\nRepository = "https://github.com/u/demo"\n'
    )
    assert project_metadata(tmp_path) == {
        "name": "demo",
        "description": "",
        "license": "MIT",
        "repository": "https://github.com/u/demo",
    }


def _cli(*args: str, cwd: Path, monkeypatch) -> object:
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, ["report", "--config", str(CONFIGS / "smoke.yaml"), *args])


def test_no_evaluation_yet_says_to_run_make_evaluate(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text(README)
    result = _cli(cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 1
    assert "reports/eval.json not found: run `make evaluate`" in result.output
    assert (tmp_path / "README.md").read_text() == README
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_readme_without_markers_fails_before_anything_is_written(tmp_path, monkeypatch):
    (tmp_path / "reports").mkdir()
    results = {"base": {"eval_loss": 2.0}, "finetuned": {"eval_loss": 1.0}, "run": {}}
    (tmp_path / "reports" / "eval.json").write_text(json.dumps(results))
    (tmp_path / "README.md").write_text("# Demo\n\nNo results section.\n")
    result = _cli(cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 1
    assert "README.md: needs exactly one '<!-- results:start -->'" in result.output
    assert "nothing was written" in result.output
    assert (tmp_path / "README.md").read_text() == "# Demo\n\nNo results section.\n"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["eval.json"]
    assert not (tmp_path / "MODEL_CARD.md").exists()


@pytest.fixture
def report_project(tmp_path, monkeypatch, smoke_report, smoke_config) -> Path:
    """A project folder holding the smoke run's eval.json and promotion.json, a README with markers and a
    pyproject without a licence (Proprietary); the current folder, as for `make report`."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "eval.json").write_text(json.dumps(smoke_report))
    promotion = Path(smoke_config().eval.report_dir) / "promotion.json"
    if promotion.is_file():
        (reports / "promotion.json").write_bytes(promotion.read_bytes())
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo-model"\ndescription = "A demo."\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.e2e
def test_report_on_the_smoke_run_writes_pngs_readme_and_model_card(report_project, smoke_config, smoke_report):
    from huggingface_hub import ModelCard

    config = smoke_config("tracking.enabled=true", f"eval.report_dir={report_project / 'reports'}")
    readme, card_path = report_project / "README.md", report_project / "MODEL_CARD.md"
    written = write_report(config, readme=readme, model_card=card_path)
    plots = [report_project / "reports" / name for name in PLOTS.values()]
    assert written == [*plots, card_path, readme]
    for plot in plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, plot
        with Image.open(plot) as image:
            assert image.size == (900, 450)
            colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
            assert len(colors) > 50, f"{plot.name} looks blank"

    text = readme.read_text()
    head, tail = README.split(START)[0], README.split(END)[1]
    assert text.startswith(head) and text.endswith(tail)  # everything outside the markers kept
    section = text.split(START)[1].split(END)[0]
    tuned, base = smoke_report["finetuned"], smoke_report["base"]
    assert f"| Valid JSON | {base['json_valid_rate']:.1%} | {tuned['json_valid_rate']:.1%} |" in section
    assert f"| Loss per answer token | {base['eval_loss']:.3f} | {tuned['eval_loss']:.3f} |" in section
    for name in PLOTS.values():
        assert f"(reports/{name})" in section
    assert section.count("| Sample ") == 3
    assert smoke_report["examples"][0]["input"].split()[0] in section
    assert f"`{smoke_report['run']['mlflow_run_id']}`" in section
    assert "LoRA r=16, alpha=32" in section and "the MLflow run's metric history" in section
    assert "| Hardware | CPU: " in section and "| Wall time | training " in section
    assert "smoke run: a tiny, randomly initialised model" in section

    card = ModelCard.load(card_path)
    assert card.data.library_name == "peft"
    assert card.data.base_model == config.model.base_model
    assert card.data.license == "other" and card.data.license_name == "proprietary"  # no licence: Proprietary
    assert card.data.pipeline_tag == "text-generation" and card.data.datasets == ["shop_extraction"]
    values = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert values == {
        name: round(tuned[name], 4) for name in ("json_valid_rate", "field_accuracy", "exact_match", "eval_loss")
    }
    metadata = yaml.safe_load(card_path.read_text().split("---\n")[1])
    assert {"base_model", "library_name", "license", "datasets", "tags", "pipeline_tag", "model-index"} <= set(metadata)
    for heading in ("Intended use", "Limitations", "Training data", "Training procedure", "Evaluation"):
        assert f"\n## {heading}\n" in card.text

    before = {path: path.read_bytes() for path in [*plots, card_path, readme]}
    write_report(config, readme=readme, model_card=card_path)
    assert {path: path.read_bytes() for path in before} == before, "a second run must write the same bytes"


@pytest.mark.e2e
def test_loss_curves_fall_back_to_train_log_json_without_mlflow(smoke_config, smoke_report, smoke_run):
    reports = Path(smoke_config().eval.report_dir)
    tracked = gather(smoke_config("tracking.enabled=true"), results=smoke_report, report_dir=reports)
    local = gather(smoke_config(), results=smoke_report, report_dir=reports)
    assert local.history_source.endswith("train_log.json")
    assert "MLflow" in tracked.history_source
    for key in ("loss", "eval_loss"):
        assert [step for step, _ in local.history[key]] == [step for step, _ in tracked.history[key]]
        assert [value for _, value in local.history[key]] == pytest.approx([v for _, v in tracked.history[key]])
    config = smoke_config()
    assert [step for step, _ in local.history["eval_loss"]] == list(
        range(config.train.eval_steps, config.train.max_steps + 1, config.train.eval_steps)
    )
    train_log = json.loads((smoke_run / "train_log.json").read_text())
    assert train_log["train_runtime_s"] > 0 and train_log["rows"]["train"] == 960


def test_the_hourly_cost_help_quotes_a_dated_price_that_gpu_yaml_charges():
    """`config keys` (the settings' help) gives the price example with its date and where its source is cited;
    configs/gpu.yaml sets that price, cites the source, and the report prices an hour with it."""
    result = CliRunner().invoke(app, ["config", "keys"])
    assert result.exit_code == 0
    default, help_text = result.output.split("report.hourly_cost_usd = ")[1].split("\n")[:2]
    assert default == "0.0"
    assert "1.006" in help_text and "June 2026" in help_text and "configs/gpu.yaml" in help_text
    hourly = load_config(CONFIGS / "gpu.yaml").report.hourly_cost_usd
    assert hourly == 1.006 and "factualminds.com" in (CONFIGS / "gpu.yaml").read_text(encoding="utf-8")
    assert cost_text(3600, hourly=hourly).startswith("$1.01 (1.00 h x $1.006/h, `report.hourly_cost_usd`")


def test_markdown_tables_escape_cells_so_an_answer_cannot_break_them():
    lines = table(("metric", ""), [("a|b", "line 1\nline 2"), ("steps", 60)], align="lr")
    assert lines == ["| metric | |", "|---|---:|", "| a\\|b | line 1<br>line 2 |", "| steps | 60 |"]
    assert answer_cell(" \n") == "*(empty)*"
    assert answer_cell("kept\nwhole") == "kept\nwhole"  # eval.md: the table writes the break as <br>
    assert answer_cell("word " * 100, limit=20) == "word word word word…"  # README: one line, cut


PROJECT = {"name": "demo-model", "description": "", "license": "MIT", "repository": ""}


def _facts(*overrides: str) -> RunFacts:
    """A generic-task run evaluated from the registry, without tracking or a run folder: facts by hand,
    no training needed."""
    rates = {"base": {"eval_loss": 2.0, "exact_match": 0.0}, "finetuned": {"eval_loss": 1.0, "exact_match": 0.5}}
    run = {"adapter": "models:/demo-model@champion", "split": "test", "num_examples": 4}
    return RunFacts(
        results={**rates, "run": run},
        run_config=load_config(CONFIGS / "smoke.yaml", ["data.task=generic", "model.build_tiny=false", *overrides]),
        config_source="the config given to `report`",
        config_name=None,
        history={"loss": [], "eval_loss": []},
        history_source="",
    )


def test_model_card_and_readme_show_the_same_settings():
    facts = _facts("lora.dropout=0.05", "train.learning_rate=2e-4")
    line = key_settings(settings(facts.run_config, facts.train_log))
    assert "LoRA r=16, alpha=32, dropout=0.05, targets all-linear; 60 steps;" in line
    assert "learning rate 0.0002 (cosine, warm-up 0.05)" in line
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    assert "| LoRA r / alpha / dropout | 16 / 32 / 0.05 |\n| target modules | all-linear |" in card
    assert "| learning rate, schedule, warm-up | 0.0002, cosine, 0.05 |" in card
    assert "| Exact match | 0.0% | 50.0% | +50.0 pp |" in card
    assert "Answering prompts in the style of its training data." in card  # the generic task's use
    assert "A LoRA adapter fine-tuned with TRL's SFTTrainer." in card  # the text without a description
    assert "smoke model" not in card and "MLflow run:" not in card  # a real base model; no MLflow run
    assert 'adapter = "outputs/<run>/adapter"' in card  # a registry URI is no folder a reader has


def test_editing_the_model_card_template_changes_the_card(tmp_path):
    from huggingface_hub import ModelCard

    facts = _facts()
    shipped = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    edited = tmp_path / "model_card.md"
    # "{" * 2: this file is rendered by cookiecutter, which must leave the template's Jinja tag alone.
    extra_line = "- Reviewed by " + "{" * 2 + " name }}.\n"
    edited.write_text(TEMPLATE.read_text().replace("## Limitations\n\n", "## Limitations\n\n" + extra_line))
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0, template=edited)
    assert "## Limitations\n\n- Reviewed by demo-model.\n- Scored on 4 held-out examples" in card
    assert card.replace("- Reviewed by demo-model.\n", "") == shipped  # nothing else moved
    assert ModelCard(card).data.license == "mit"  # the YAML header is still there
