"""The portfolio report: PNG plots, the README results section and task paragraph (idempotent, markers only) and
the model card, each describing the run's own task and data."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import dump_config, load_config
from {{ cookiecutter.package_name }}.data.dataset import SPLITS, data_record, epochs_seen
from {{ cookiecutter.package_name }}.data.shop_example import synthesize
from {{ cookiecutter.package_name }}.evaluate.markdown import answer_cell, table
from {{ cookiecutter.package_name }}.report import write_report
from {{ cookiecutter.package_name }}.report.about import NO_DESCRIPTION, task_section
from {{ cookiecutter.package_name }}.report.card import TEMPLATE, model_card_text
from {{ cookiecutter.package_name }}.report.facts import ReportError, RunFacts, gather, project_metadata
from {{ cookiecutter.package_name }}.report.plots import PLOTS
from {{ cookiecutter.package_name }}.report.readme import (
    END,
    START,
    TASK_END,
    TASK_START,
    key_settings,
    replace_results,
    replace_task,
    results_section,
)
from {{ cookiecutter.package_name }}.report.summary import cost_text, settings

CONFIGS = Path(__file__).parents[1] / "configs"
GENERATOR = "{{ cookiecutter.package_name | replace('_', '-') }} data synth"  # as dataset_info.json names it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
README = f"""# Demo

Intro text with a trailing space \nand a [link](docs/x.md).

{TASK_START}
**Task: Shop order extraction.** Reads a short customer message to an online shop.
{TASK_END}

## Results

{START}
_old results_
{END}

## After

Untouched | text.
"""


def _outside_markers(text: str) -> str:
    """The README without what lies between each pair of markers: what `report` must keep byte for byte."""
    for start, end in ((START, END), (TASK_START, TASK_END)):
        if start in text:
            head, rest = text.split(start)
            text = head + start + end + rest.split(end)[1]
    return text


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


def test_an_evaluation_on_other_data_is_not_reported_as_the_model_s_results(tmp_path, monkeypatch):
    (tmp_path / "reports").mkdir()
    results = {"base": {"eval_loss": 2.0}, "finetuned": {"eval_loss": 1.0}, "run": {"other_data": True}}
    (tmp_path / "reports" / "eval.json").write_text(json.dumps(results))
    (tmp_path / "README.md").write_text(README)
    result = _cli(cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 1
    assert "scores the model on other data (`evaluate --other-data`)" in result.output
    assert "nothing was written" in result.output
    assert (tmp_path / "README.md").read_text() == README
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["eval.json"]
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_broken_task_markers_fail_before_anything_is_written(tmp_path, monkeypatch):
    (tmp_path / "reports").mkdir()
    results = {"base": {"eval_loss": 2.0}, "finetuned": {"eval_loss": 1.0}, "run": {}}
    (tmp_path / "reports" / "eval.json").write_text(json.dumps(results))
    broken = README.replace(TASK_END, "")
    (tmp_path / "README.md").write_text(broken)
    result = _cli(cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 1
    expected = "README.md: needs exactly one '<!-- task:start -->' line followed by one '<!-- task:end -->'"
    assert expected in result.output
    assert "(found 1 start and 0 end marker(s))" in result.output and "nothing was written" in result.output
    assert (tmp_path / "README.md").read_text() == broken
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_replace_task_rewrites_only_between_the_task_markers():
    once = replace_task(README, "**Task: Ticket triage.** Reads a support ticket.")
    assert once == replace_task(once, "**Task: Ticket triage.** Reads a support ticket.")
    assert f"{TASK_START}\n**Task: Ticket triage.** Reads a support ticket.\n{TASK_END}" in once
    assert "Shop order extraction" not in once
    assert _outside_markers(once) == _outside_markers(README)
    hand_written = "# Demo\n\nMy own intro about the shop.\n"  # no task markers: the intro is the user's
    assert replace_task(hand_written, "**Task: x.**") == hand_written


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
    docs = report_project / "docs"  # and the journey from MLflow (tests/test_journey.py)
    assert written[: len(plots) + 5] == [
        *plots,
        card_path,
        readme,
        *(docs / n for n in ("experiments.md", "interview.md", "decisions.md")),
    ]
    for plot in plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, plot
        with Image.open(plot) as image:
            assert image.size == (900, 450)
            colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
            assert len(colors) > 50, f"{plot.name} looks blank"

    text = readme.read_text()
    assert _outside_markers(text) == _outside_markers(README)  # everything outside the markers kept
    intro = text.split(TASK_START)[1].split(TASK_END)[0]
    assert intro == (
        f"\n**Task: {config.task.name}.** {' '.join(config.task.description.split())}\n"
        "Scored against the reference answers of held-out rows: valid JSON rate, accuracy of each JSON field "
        "(`intent`, `order_id`, `product`, `quantity`, `sentiment`, `urgency`) and exact match.\n"
        "This is the template's example task, on generated data (`make data`); "
        "`demo-model task init DATA_FILE` starts one of your own.\n"
    )
    section = text.split(START)[1].split(END)[0]
    tuned, base = smoke_report["finetuned"], smoke_report["base"]
    majority, few_shot = smoke_report["baselines"]["majority"], smoke_report["baselines"]["few_shot"]
    header = "| Metric | Majority | TF-IDF + LR | Base zero-shot | Base few-shot | Fine-tuned | Change |"
    assert header in section
    bounds = smoke_report["intervals"]["columns"]["finetuned"]["field_accuracy"]
    shown = f"{tuned['field_accuracy']:.1%} [{bounds['low'] * 100:.1f}, {bounds['high'] * 100:.1f}]"
    assert f"| Field accuracy (mean) | {majority['field_accuracy']:.1%} [" in section
    assert f"| {shown} | {(tuned['field_accuracy'] - base['field_accuracy']) * 100:+.1f} pp [" in section
    losses = " | ".join(f"{values['eval_loss']:.3f}" for values in (base, few_shot, tuned))
    assert f"| Loss per answer token | n/a | n/a | {losses} |" in section
    # "Would a simple classical model do?": one sentence computed from the difference's interval.
    gain = smoke_report["intervals"]["differences"]["finetuned_minus_classical"]["field_accuracy"]
    verdict = "beats" if gain["low"] > 0 else "falls behind" if gain["high"] < 0 else "is not told apart from"
    classical = (
        f"**Fine-tuning {verdict} the classical baseline** (TF-IDF + logistic regression per field, trained on the "
        f"training split; it answers `order_id` with the most common training value): {gain['estimate'] * 100:+.1f} "
        f"pp field accuracy (mean) [{gain['low'] * 100:+.1f}, {gain['high'] * 100:+.1f}]."
    )
    assert classical in section
    assert "[low, high]: 95% paired-bootstrap interval over the 32 scored rows (1000 resamples)" in section
    assert f"minus TF-IDF + LR {gain['estimate'] * 100:+.1f} pp [" in section  # an acronym keeps its capitals
    assert "**Errors of the fine-tuned model** (" in section and "`reports/eval.md` has the confusion" in section
    counts = json.loads((Path(smoke_report["run"]["adapter"]).parent / "train_log.json").read_text())["parameters"]
    assert 0 < counts["trainable"] < counts["total"] and counts["share"] == counts["trainable"] / counts["total"]
    assert f" parameters trained ({counts['share']:.2%}, LoRA) |" in section
    for name in PLOTS.values():
        assert f"(reports/{name})" in section
    assert section.count("| Sample ") == 3
    assert smoke_report["examples"][0]["input"].split()[0] in section
    assert f"`{smoke_report['run']['mlflow_run_id']}`" in section
    assert "LoRA r=16, alpha=32" in section and "the MLflow run's metric history" in section
    assert "| Hardware | CPU: " in section and "| Wall time | training " in section
    log = json.loads((Path(smoke_report["run"]["adapter"]).parent / "train_log.json").read_text())
    tokens = max(entry.get("num_tokens", 0) for entry in log["log_history"])
    assert tokens > 0 and f" ({tokens / log['train_runtime_s']:,.0f} tokens/s), evaluation " in section
    assert "smoke run: a tiny, randomly initialised model" in section
    assert f"fine-tuned with LoRA for **{config.task.name}**" in section
    data_dir = Path(config.data.path)
    digest = hashlib.sha256(b"".join((data_dir / f"{split}.jsonl").read_bytes() for split in SPLITS))
    assert (
        f"| Data | `{data_dir}`, generated by `{GENERATOR}` (seed 0): "
        f"960 train, 120 validation, 120 test rows; sha256 `{digest.hexdigest()}` |"
    ) in section
    assert "; 60 steps = 1.0 epochs of 960 training rows;" in section  # 60 steps x 16 rows / 960 rows
    assert "> **Scored on only 32 examples (`eval.max_samples` scored 32 of the 120 test rows).**" in section
    assert "Each training row was seen" not in section  # one epoch: no overfitting warning

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
    # The run trained on the generated example: the card may (and does) say so, with the example's own texts.
    assert f"**{config.task.name}.** Reads a short customer message to an online shop" in card.text
    assert "Reading a short customer message to a shop and answering with one JSON object" in card.text
    assert "The example dataset is synthetic" in card.text and f"generated by `{GENERATOR}`" in card.text
    assert "| training length | 60 steps = 1.0 epochs of 960 training rows |" in card.text
    assert "- **Scored on only 32 examples" in card.text
    assert header in card.text and f"parameters trained ({counts['share']:.2%}, LoRA); the base weights" in card.text
    assert "[low, high]: 95% paired-bootstrap interval" in card.text
    assert classical in card.text and "and a classical model (TF-IDF + logistic regression per field" in card.text

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
    assert train_log["train_runtime_s"] > 0 and train_log["epochs"] == 1.0  # 60 steps x 16 rows / 960 rows
    assert train_log["data"]["rows"] == {"train": 960, "validation": 120, "test": 120}
    assert train_log["data"]["origin"] == f"generated by `{GENERATOR}` (seed 0)"
    assert train_log["data"]["path"] == smoke_config().data.path and len(train_log["data"]["digest"]) == 64


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


def _facts(
    *overrides: str, train_log: dict | None = None, num_examples: int = 4, results: dict | None = None
) -> RunFacts:
    """A generic-task run evaluated from the registry, without tracking or a run folder: facts by hand,
    no training needed."""
    rates = results or {
        "base": {"eval_loss": 2.0, "exact_match": 0.0},
        "finetuned": {"eval_loss": 1.0, "exact_match": 0.5},
    }
    run = {"adapter": "models:/demo-model@champion", "split": "test", "num_examples": num_examples}
    return RunFacts(
        results={**rates, "run": run},
        run_config=load_config(CONFIGS / "smoke.yaml", ["task.kind=generic", "model.build_tiny=false", *overrides]),
        config_source="the config given to `report`",
        config_name=None,
        history={"loss": [], "eval_loss": []},
        history_source="",
        train_log=train_log or {},
    )


def test_model_card_and_readme_show_the_same_settings():
    facts = _facts("lora.dropout=0.05", "train.learning_rate=2e-4")
    line = key_settings(settings(facts.run_config, facts.train_log))
    assert "LoRA r=16, alpha=32, dropout=0.05, targets all-linear; 60 steps;" in line
    assert "learning rate 0.0002 (cosine, warm-up 0.05)" in line
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    assert "| LoRA r / alpha / dropout | 16 / 32 / 0.05 |\n| target modules | all-linear |" in card
    assert "| learning rate, schedule, warm-up | 0.0002, cosine, 0.05 |" in card
    assert "| training length | 60 steps |" in card  # no train_log.json: the configured steps, no epochs
    assert "| Exact match | 0.0% | 50.0% | +50.0 pp |" in card
    # The generic task's use and scoring; the data was not recorded, so the example's texts stay out.
    assert "on inputs like those of its training data; anything else is outside" in card
    assert "Scored against the reference answers of held-out rows: exact match and ROUGE-L" in card
    assert "answers can still be wrong: check them before acting on them" in card
    assert "origin and digest unknown" in card and "The example dataset is synthetic" not in card
    assert "Reading a short customer message to a shop" not in card
    assert "smoke model" not in card and "MLflow run:" not in card  # a real base model; no MLflow run
    assert 'adapter = "outputs/<run>/adapter"' in card  # a registry URI is no folder a reader has


def test_editing_the_model_card_template_changes_the_card(tmp_path):
    from huggingface_hub import ModelCard

    facts = _facts(num_examples=400)
    shipped = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    edited = tmp_path / "model_card.md"
    # "{" * 2: this file is rendered by cookiecutter, which must leave the template's Jinja tag alone.
    extra_line = "- Reviewed by " + "{" * 2 + " name }}.\n"
    edited.write_text(TEMPLATE.read_text().replace("## Limitations\n\n", "## Limitations\n\n" + extra_line))
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0, template=edited)
    assert "## Limitations\n\n- Reviewed by demo-model.\n- Scored on 400 held-out examples" in card
    assert card.replace("- Reviewed by demo-model.\n", "") == shipped  # nothing else moved
    assert ModelCard(card).data.license == "mit"  # the YAML header is still there


# A user's own task, as `task init` writes it and `train` records it: 60 rows of tickets, 48 for training.
TICKETS = [
    "project=ticket-triage",
    "task.name=Ticket triage",
    "task.description=Reads a support ticket and answers with its category and priority as one JSON object.",
    "task.kind=extraction",
    "task.fields=[category, priority]",
    "data.path=data/tickets.jsonl",
    "train.batch_size=8",
]
TICKET_RESULTS = {
    "base": {"json_valid_rate": 0.5, "field_accuracy": 0.25, "field_accuracy_category": 0.5,
             "field_accuracy_priority": 0.0, "exact_match": 0.0, "eval_loss": 2.0},
    "finetuned": {"json_valid_rate": 1.0, "field_accuracy": 0.75, "field_accuracy_category": 1.0,
                  "field_accuracy_priority": 0.5, "exact_match": 0.5, "eval_loss": 1.0},
}  # fmt: skip
TICKET_DIGEST = "ab" * 32


def _ticket_log(*, epochs: float | None = 10.0, origin: str = "your data") -> dict:
    rows = {"train": 48, "validation": 6, "test": 6}
    log = {"data": {"path": "data/tickets.jsonl", "origin": origin, "digest": TICKET_DIGEST, "rows": rows}}
    log["log_history"] = [{"step": step, "loss": 1.0 / step} for step in (10, 20, 30, 40, 50, 60)]
    return {**log, "epochs": epochs} if epochs is not None else log


def _ticket_facts(*overrides: str, train_log: dict | None = None, num_examples: int = 6) -> RunFacts:
    return _facts(*TICKETS, *overrides, train_log=train_log or _ticket_log(), num_examples=num_examples,
                  results=TICKET_RESULTS)  # fmt: skip


EXAMPLE_TEXTS = ("shop", "customer message", "data synth", "example task", "synthetic")


def test_a_user_task_is_described_by_its_own_config_never_by_the_shop_example(tmp_path):
    facts = _ticket_facts()
    intro = task_section(facts, command="ticket-triage")
    assert intro == (
        "**Task: Ticket triage.** Reads a support ticket and answers with its category and priority as one JSON "
        "object.\nScored against the reference answers of held-out rows: valid JSON rate, accuracy of each JSON "
        "field (`category`, `priority`) and exact match."
    )
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    for text in (intro, section, card):
        assert not [phrase for phrase in EXAMPLE_TEXTS if phrase in text.lower()], text
    assert "fine-tuned with LoRA for **Ticket triage**" in section
    data = "`data/tickets.jsonl`, the project's own data: 48 train, 6 validation, 6 test rows"
    data += f"; sha256 `{TICKET_DIGEST}`"
    assert f"| Data | {data} |" in section
    assert f"## Training data\n\n{data} (task `extraction`).\n" in card
    assert "**Ticket triage.** Reads a support ticket" in card
    assert "Ticket triage, on inputs like those of its training data" in card  # intended use: the task's
    assert "answers can still be invalid JSON or wrong fields" in card
    assert "| Field accuracy (mean) | 25.0% | 75.0% | +50.0 pp |" in card


def test_many_epochs_and_a_small_test_split_are_warned_about(tmp_path):
    facts = _ticket_facts()  # 60 steps x 8 rows / 48 training rows = 10 epochs; 6 test examples
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    epochs = (
        "**Each training row was seen 10.0 times** (60 steps x batch 8 x accumulation 1 / 48 training rows): "
        "watch the validation loss for overfitting"
    )
    small = (
        "**Scored on only 6 examples.** One answer more or less right moves a rate by 16.7%, so treat differences "
        "below 41% as noise"
    )
    assert f"> {epochs}" in section and f"> {small}" in section
    assert f"- {epochs}" in card and f"- {small}" in card  # limitations
    assert "; 60 steps = 10.0 epochs of 48 training rows;" in section
    assert "| training length | 60 steps = 10.0 epochs of 48 training rows |" in card


def test_the_epochs_warning_quotes_a_rising_validation_loss():
    facts = _ticket_facts()
    facts.history = {"loss": [(20, 1.0), (40, 0.5), (60, 0.2)], "eval_loss": [(20, 1.2), (40, 0.9), (60, 1.4)]}
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    assert "(here it ended at 1.400, above its lowest 0.900 at step 40)" in card


@pytest.mark.parametrize(("scored", "warned"), [(6, True), (99, True), (100, False), (120, False)])
def test_the_small_test_warning_appears_under_100_examples_only(scored, warned):
    card = model_card_text(_ticket_facts(num_examples=scored), project=PROJECT, hourly_cost=0.0)
    assert (f"**Scored on only {scored} examples" in card) is warned


def test_one_epoch_on_the_example_data_is_not_warned_about_and_says_it_is_the_example(tmp_path):
    rows = {"train": 960, "validation": 120, "test": 120}
    log = {**_ticket_log(epochs=1.0, origin="generated by `demo-model data synth` (seed 0)"), "data": {
        "path": "data/shop_extraction", "origin": "generated by `demo-model data synth` (seed 0)",
        "digest": TICKET_DIGEST, "rows": rows}}  # fmt: skip
    facts = _facts("task.kind=extraction", train_log=log, num_examples=120, results=TICKET_RESULTS)
    intro = task_section(facts, command="demo-model")
    assert intro.endswith(
        "\nThis is the template's example task, on generated data (`make data`); "
        "`demo-model task init DATA_FILE` starts one of your own."
    )
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    assert "generated by `demo-model data synth` (seed 0): 960 train, 120 validation, 120 test rows" in card
    assert "The example dataset is synthetic" in card and "Reading a short customer message to a shop" in card
    assert "| training length | 60 steps = 1.0 epochs of 960 training rows |" in card
    assert "Each training row was seen" not in card and "Scored on only" not in card


def test_epochs_are_steps_times_batch_over_training_rows():
    assert epochs_seen(steps=60, batch_size=16, accumulation=1, train_rows=960) == 1.0
    assert epochs_seen(steps=60, batch_size=8, accumulation=1, train_rows=48) == 10.0
    assert epochs_seen(steps=60, batch_size=8, accumulation=4, train_rows=48, devices=2) == 80.0
    assert epochs_seen(steps=7, batch_size=1, accumulation=1, train_rows=3) == 2.33
    assert epochs_seen(steps=60, batch_size=8, accumulation=1, train_rows=0) is None


def test_a_task_without_a_description_says_how_to_add_one(tmp_path):
    facts = _ticket_facts('task.description=""')
    intro = task_section(facts, command="ticket-triage")
    assert intro.startswith(f"**Task: Ticket triage.** {NO_DESCRIPTION}\n")
    assert "`task.description`" in NO_DESCRIPTION and "make report" in NO_DESCRIPTION
    assert f"**Ticket triage.** {NO_DESCRIPTION}" in model_card_text(facts, project=PROJECT, hourly_cost=0.0)


def test_the_data_record_names_generated_data_only_while_it_is_unchanged(tmp_path):
    from {{ cookiecutter.package_name }}.config import DataConfig

    folder = tmp_path / "example"
    synthesize(folder, n=50, seed=3)
    rows = {"train": 40, "validation": 5, "test": 5}
    record = data_record(DataConfig(path=str(folder)), rows=rows)
    files = b"".join((folder / f"{split}.jsonl").read_bytes() for split in SPLITS)
    assert record == {
        "path": str(folder),
        "origin": f"generated by `{GENERATOR}` (seed 3)",
        "digest": hashlib.sha256(files).hexdigest(),
        "rows": rows,
    }
    single = data_record(DataConfig(path=str(folder / "train.jsonl")), rows=rows)
    assert single["origin"] == record["origin"]
    assert single["digest"] == hashlib.sha256((folder / "train.jsonl").read_bytes()).hexdigest()
    with (folder / "train.jsonl").open("a") as train:  # the user added a row of their own
        train.write(json.dumps({"prompt": "Printer on fire", "completion": '{"category": "hardware"}'}) + "\n")
    changed = data_record(DataConfig(path=str(folder)), rows=rows)
    assert changed["origin"] == "your data" and changed["digest"] != record["digest"]
    own = tmp_path / "tickets.jsonl"
    own.write_text(json.dumps({"prompt": "Refund please", "completion": '{"category": "billing"}'}) + "\n")
    assert data_record(DataConfig(path=str(own)), rows={"train": 1})["origin"] == "your data"


def test_report_rewrites_readme_and_card_for_a_user_task_from_the_run_folder(tmp_path, monkeypatch):
    """`make report` on a user's run: the run's own config.yaml and train_log.json, found from eval.json."""
    monkeypatch.chdir(tmp_path)
    config = load_config(CONFIGS / "smoke.yaml", [*TICKETS, "model.build_tiny=false", "tracking.enabled=false"])
    run_dir = tmp_path / "outputs" / "tickets-1"
    (run_dir / "adapter").mkdir(parents=True)
    dump_config(config, run_dir / "config.yaml")
    (run_dir / "train_log.json").write_text(json.dumps({**_ticket_log(), "config_name": "tickets"}))
    (tmp_path / "reports").mkdir()
    run = {"adapter": "outputs/tickets-1/adapter", "split": "test", "num_examples": 6}
    (tmp_path / "reports" / "eval.json").write_text(json.dumps({**TICKET_RESULTS, "run": run}))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ticket-triage"\n')
    shipped = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (tmp_path / "README.md").write_text(shipped)
    # The command line config is the shipped smoke one: the report follows the run's own config.
    smoke = load_config(CONFIGS / "smoke.yaml", ["tracking.enabled=false"])
    write_report(smoke, readme=tmp_path / "README.md", model_card=tmp_path / "MODEL_CARD.md")
    readme, card = (tmp_path / "README.md").read_text(), (tmp_path / "MODEL_CARD.md").read_text()
    assert _outside_markers(readme) == _outside_markers(shipped)
    intro = readme.split(TASK_START)[1].split(TASK_END)[0]
    assert intro.startswith("\n**Task: Ticket triage.** Reads a support ticket")
    for text in (intro, readme.split(START)[1].split(END)[0], card):
        assert not [phrase for phrase in EXAMPLE_TEXTS if phrase in text.lower()], text
    assert "10.0 epochs" in card and TICKET_DIGEST in card and TICKET_DIGEST in readme


def test_serving_figures_and_a_wide_interval_appear_when_recorded(tmp_path):
    """reports/benchmark_serve.json (scripts/benchmark_serve.py --out) adds p50/p95 latency, throughput and
    the hardware; a fine-tuned interval wider than 10 points on 100+ rows is warned about."""
    wide = {"finetuned": {"rouge_l": {"estimate": 0.5, "low": 0.38, "high": 0.62}}}
    results = {
        "base": {"eval_loss": 2.0, "rouge_l": 0.2},
        "finetuned": {"eval_loss": 1.0, "rouge_l": 0.5},
        "intervals": {"rows": 120, "resamples": 1000, "columns": wide, "differences": {}},
    }
    facts = _facts(f"eval.report_dir={tmp_path}", num_examples=120, results=results)
    figures = {"mode": "api", "clients": 8, "requests": 32, "p50_ms": 812.4, "p95_ms": 1490.0}
    figures |= {"requests_per_s": 6.25, "tokens_per_s": 240.4}
    serving = {"results": [figures], "hardware": "CPU: Test (2 cores)"}
    (tmp_path / "benchmark_serve.json").write_text(json.dumps(serving))
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    assert "(`scripts/benchmark_serve.py`, 32 requests per run; hardware: CPU: Test (2 cores)):" in section
    assert "| api | 8 | 812 | 1490 | 6.25 | 240 |" in section
    assert "> **The 95% interval of the fine-tuned rouge-l f1 is 24 points wide** (over 10)" in section
    assert "| ROUGE-L F1 | 20.0% | 50.0% [38.0, 62.0] | +30.0 pp |" in section
    assert "Trained parameters | not recorded" in section


def test_report_without_config_prices_and_describes_the_evaluated_run(tmp_path, monkeypatch):
    """`make evaluate` scores with the run's own config; `report` (no --config) must describe the same run: a run
    trained with a cloud price set is priced at it, not at configs/smoke.yaml's $0."""
    monkeypatch.chdir(tmp_path)
    overrides = [*TICKETS, "model.build_tiny=false", "tracking.enabled=false", "report.hourly_cost_usd=2.0"]
    run_dir = tmp_path / "outputs" / "tickets-1"
    (run_dir / "adapter").mkdir(parents=True)
    dump_config(load_config(CONFIGS / "smoke.yaml", overrides), run_dir / "config.yaml")
    log = {**_ticket_log(), "config_name": "tickets", "train_runtime_s": 1800}
    (run_dir / "train_log.json").write_text(json.dumps(log))
    (tmp_path / "reports").mkdir()
    run = {"adapter": "outputs/tickets-1/adapter", "split": "test", "num_examples": 6}
    (tmp_path / "reports" / "eval.json").write_text(json.dumps({**TICKET_RESULTS, "run": run}))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ticket-triage"\n')
    (tmp_path / "README.md").write_text((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8"))
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    results = (tmp_path / "README.md").read_text().split(START)[1].split(END)[0]
    assert "$1.00 (0.50 h x $2/h" in results and "$0 extra" not in results


def test_garbled_samples_reach_readme_card_and_eval_md_without_control_bytes(tmp_path):
    garbled = "5\x14c' in\x00nta\x1b[0m\x7f\x85 \ufffd"
    results = {
        "base": {"eval_loss": 2.0, "exact_match": 0.0},
        "finetuned": {"eval_loss": 1.0, "exact_match": 0.5},
        "baselines": {"majority": {"exact_match": 0.0}},
        "examples": [{"input": "rewrite\x00 this", "expected": "Hello.", "base": garbled, "finetuned": "Hi\x0c."}],
    }
    facts = _facts(results=results)
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    card = model_card_text(facts, project=PROJECT, hourly_cost=0.0)
    for text in (section, card, "\n".join(table(("answer",), [(garbled,)]))):
        assert not [char for char in text if (ord(char) < 32 and char not in "\n\t") or 127 <= ord(char) < 160]
    assert "| base | 5\\x14c' in\\x00nta\\x1b[0m\\x7f \ufffd |" in section  # NEL is a blank: one line
    # A free-text task's majority baseline is the most common answer: it has no fields.
    assert "a majority guess (the most common training answer, no model)" in card
    assert "each field's most common" not in card


def test_the_tiny_model_loaded_by_path_is_still_called_a_smoke_run(tmp_path):
    from {{ cookiecutter.package_name }}.model.load import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny", corpus_texts=["Could you please send the report?"] * 20)
    facts = _facts(f"model.base_model={tiny}")  # model.build_tiny=false: the folder exists already
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    assert "These figures come from the smoke run" in section
    assert "the answers become JSON" not in section  # a free-text task: no JSON claimed
    assert "- **This is the smoke model**" in model_card_text(facts, project=PROJECT, hourly_cost=0.0)


def test_plots_of_an_earlier_task_are_removed_when_this_run_has_no_data_for_them(tmp_path):
    from {{ cookiecutter.package_name }}.report.plots import PLOTS, write_plots

    for name in PLOTS.values():  # an extraction run's plots: loss, metrics, fields, confusion
        (tmp_path / name).write_bytes(b"an earlier run's plot")
    plots = write_plots(_facts(), out=tmp_path)  # a free-text task, no loss history: metrics only
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.png"] == [path.name for path in plots.values()]
