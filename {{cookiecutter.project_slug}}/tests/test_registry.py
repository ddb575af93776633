"""Model registry, promotion gate, loading a model by URI, and finding a run's config, read back through
MLflow's own client."""

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from {{ cookiecutter.package_name }}.evaluate.gate import promote
from {{ cookiecutter.package_name }}.registry import (
    CANDIDATE,
    CHAMPION,
    COMMAND,
    ModelSourceError,
    fetch_model,
    is_model_uri,
    log_and_register,
    resolve_model_source,
)
from {{ cookiecutter.package_name }}.runs import CONFIG_FILE, run_config_path
from {{ cookiecutter.package_name }}.tracking import TrackingError, project_experiment_id
from {{ cookiecutter.package_name }}.tracking import client as tracking_client


def tracked(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


@pytest.mark.e2e
def test_registering_a_run_again_finishes_its_version_instead_of_adding_one(smoke_config, served_adapter):
    """kill -9 during registration, then --resume: the run's version is found and finished, not doubled."""
    from {{ cookiecutter.package_name }}.model.load import load_finetuned, load_tokenizer

    config = smoke_config("tracking.enabled=true", "project=registry-idempotent")
    client = tracking_client()
    # A run of the project's experiment, as training makes; registered under a model name of its own.
    experiment = project_experiment_id(smoke_config().project)
    run_id = client.create_run(experiment, tags={"stage": "sft"}).info.run_id
    model = load_finetuned(config.model, adapter_dir=served_adapter, device="cpu")
    tokenizer = load_tokenizer(served_adapter)

    first = log_and_register(config, run_id=run_id, model=model, tokenizer=tokenizer)
    client.delete_registered_model_alias(config.project, CANDIDATE)  # as if killed before the alias and tags
    client.delete_model_version_tag(config.project, first.version, "stage")
    again = log_and_register(config, run_id=run_id, model=model, tokenizer=tokenizer)

    versions = client.search_model_versions(f"name='{config.project}'")
    assert [(v.version, v.run_id) for v in versions] == [(first.version, run_id)]
    assert again.version == first.version
    assert client.get_model_version_by_alias(config.project, CANDIDATE).version == first.version
    assert client.get_model_version(config.project, first.version).tags["stage"] == "sft"


@pytest.mark.e2e
def test_the_logged_model_shows_a_message_of_the_task_s_own_training_data(smoke_run, smoke_config):
    import mlflow
    from mlflow.models import Model

    from {{ cookiecutter.package_name }}.data.dataset import load_splits

    config = smoke_config()
    source = tracking_client().get_model_version(config.project, tracked(smoke_run)["model_version"]).source
    example = Model.load(source).load_input_example(mlflow.artifacts.download_artifacts(source))
    users = {m["content"] for row in load_splits(config.data)["train"] for m in row["messages"] if m["role"] == "user"}
    assert example["messages"][0]["content"] in users


@pytest.mark.e2e
def test_first_version_is_candidate_and_champion(smoke_run, smoke_report, smoke_config):
    config = smoke_config()
    client = tracking_client()
    version = tracked(smoke_run)["model_version"]
    registered = client.get_model_version(config.project, version)
    assert registered.run_id == tracked(smoke_run)["run_id"]
    assert str(client.get_model_version_by_alias(config.project, CANDIDATE).version) == version
    assert str(client.get_model_version_by_alias(config.project, CHAMPION).version) == version
    assert registered.tags["promotion.decision"] == "promoted"
    decision = json.loads((Path(config.eval.report_dir) / "promotion.json").read_text())
    assert decision["promoted"] is True
    assert decision["reason"] == "no champion yet"

    again = promote(config, report_dir=Path(config.eval.report_dir) / "again")  # re-judging the champion
    assert again.promoted and again.reason == f"version {version} is already champion"
    assert again.verdict == "unchanged"  # printed so: nothing was promoted this time
    assert client.get_model_version(config.project, version).tags["promotion.reason"] == "no champion yet"


@pytest.mark.e2e
def test_champion_loads_with_the_trained_weights(smoke_run, smoke_report, smoke_config):
    source = fetch_model(f"models:/{smoke_config().project}@{CHAMPION}")
    assert source.version == tracked(smoke_run)["model_version"]
    assert source.run_id == tracked(smoke_run)["run_id"]
    assert Path(source.base_model) == Path(smoke_config().model.base_model).resolve()
    assert (source.tokenizer_dir / "chat_template.jinja").is_file()
    logged = load_file(source.adapter_dir / "adapter_model.safetensors")
    trained = load_file(smoke_run / "adapter" / "adapter_model.safetensors")
    assert logged.keys() == trained.keys()
    assert all((logged[key] == trained[key]).all() for key in trained)
    by_run = fetch_model(f"runs:/{source.run_id}/model")
    assert by_run.adapter_dir.joinpath("adapter_config.json").is_file()


@pytest.mark.e2e
def test_each_uri_form_names_the_model_version_and_run(smoke_run, smoke_report, smoke_config):
    project, version, run_id = smoke_config().project, tracked(smoke_run)["model_version"], tracked(smoke_run)["run_id"]
    identities = {
        uri: (source.name, source.version, source.run_id)
        for uri in (f"models:/{project}@{CHAMPION}", f"models:/{project}/{version}", f"runs:/{run_id}/model")
        for source in [fetch_model(uri)]
    }
    assert identities == {
        f"models:/{project}@{CHAMPION}": (project, version, run_id),  # the alias resolved to its version
        f"models:/{project}/{version}": (project, version, run_id),
        f"runs:/{run_id}/model": (run_id, None, run_id),  # a run's model has no registered version
    }
    # A version's source is the logged model's own URI (models:/m-<id>): named by its artifact, no version.
    logged_model_uri = tracking_client().get_model_version(project, version).source
    by_id = fetch_model(logged_model_uri)
    assert (by_id.name, by_id.version, by_id.run_id) == ("model", None, run_id)


@pytest.mark.parametrize("uri", ["models:/no-such-model@champion", "models:/no-such-model/3"])
def test_unknown_model_uri_is_a_clear_error(uri):
    with pytest.raises(TrackingError, match="no-such-model"):
        fetch_model(uri)


def test_local_folder_that_is_not_an_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"not a LoRA adapter folder \(missing adapter_config\.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_model_source(str(tmp_path / "missing"))


@pytest.mark.e2e
def test_one_resolver_takes_every_model_source_form(smoke_run, smoke_config, tmp_path):
    run_dir = shutil.copytree(smoke_run, tmp_path / "outputs" / "run")  # the only run there: `latest`
    adapter, version, run_id = run_dir / "adapter", tracked(smoke_run)["model_version"], tracked(smoke_run)["run_id"]
    local = {
        "run folder": resolve_model_source(run_dir),
        "adapter folder": resolve_model_source(str(adapter)),
        "latest": resolve_model_source("latest", output_dir=tmp_path / "outputs"),
        "None": resolve_model_source(None, output_dir=tmp_path / "outputs"),
    }
    for form, source in local.items():
        assert (source.adapter_dir, source.tokenizer_dir, source.uri) == (adapter, adapter, None), form
        assert (source.name, source.version, source.run_id) == ("run", version, run_id), form
        assert source.run_dir == run_dir and source.config_path() == run_dir / CONFIG_FILE, form

    uri = f"models:/{smoke_config().project}/{version}"  # registered by training
    registered = resolve_model_source(uri)
    assert (registered.uri, registered.version, registered.run_id) == (uri, version, run_id)
    assert registered.run_dir is None and registered.base_model == local["latest"].base_model
    logged = load_file(registered.adapter_dir / "adapter_model.safetensors")
    assert logged.keys() == load_file(adapter / "adapter_model.safetensors").keys()
    assert registered.config_path().read_text() == (smoke_run / CONFIG_FILE).read_text()  # the one logged to MLflow

    missing = tmp_path / "outputs" / "gone"
    with pytest.raises(ModelSourceError) as refused:
        resolve_model_source(str(missing), given_as="--adapter")
    assert str(refused.value).startswith(f"--adapter {missing}: no such folder; pass outputs/<run>/adapter, `latest`")
    with pytest.raises(ModelSourceError, match=r"--model models:/no-such-model@champion: model .* not found"):
        resolve_model_source("models:/no-such-model@champion")


def test_model_uris_are_told_from_local_folders(tmp_path):
    uris = ["models:/shop@champion", "models:/shop/3", "runs:/0123abcd/model", "MODELS:/shop@champion"]
    folders = ["outputs/smoke-1/adapter", str(tmp_path), tmp_path / "adapter", "latest", "", "models/shop", "C:/runs"]
    assert [is_model_uri(uri) for uri in uris] == [True] * len(uris)
    assert [is_model_uri(folder) for folder in folders] == [False] * len(folders)


def register_scored_version(
    client: MlflowClient, name: str, *, loss: float | None, digest: str | None = None, rows: int = 32
) -> str:
    """A registered version whose run scored `loss` on test rows of `digest` (None: no record, as before
    digests were recorded): the real registry, with the values chosen by the test."""
    # The project's experiment helper keeps its artifacts beside the test store: MLflow's default would be
    # ./mlruns of the folder the tests run from, the user's project.
    run = client.create_run(project_experiment_id(name))
    if loss is not None:
        client.log_metric(run.info.run_id, "finetuned.eval_loss", loss)
    if digest is not None:
        client.set_tag(run.info.run_id, "evaluation.test_digest", digest)
        client.set_tag(run.info.run_id, "evaluation.test_rows", str(rows))
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(version.version)


def test_gate_keeps_the_champion_against_a_worse_candidate(smoke_config, tmp_path):
    config = smoke_config("project=gate-test", "tracking.promotion_metric=finetuned.eval_loss")
    client = tracking_client()
    first = register_scored_version(client, "gate-test", loss=1.0)
    assert promote(config, version=first, report_dir=tmp_path).promoted

    worse = register_scored_version(client, "gate-test", loss=2.0)
    decision = promote(config, version=worse, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason == "candidate 2 does not beat champion 1 (minimize)"
    assert str(client.get_model_version_by_alias("gate-test", CHAMPION).version) == first
    assert client.get_model_version("gate-test", worse).tags["promotion.decision"] == "rejected"
    assert json.loads((tmp_path / "promotion.json").read_text())["champion_version"] == first

    better = register_scored_version(client, "gate-test", loss=0.5)
    assert promote(config, version=better, report_dir=tmp_path).promoted
    assert str(client.get_model_version_by_alias("gate-test", CHAMPION).version) == better


def test_gate_refuses_to_compare_versions_scored_on_different_test_data(smoke_config, tmp_path):
    name, shop, tickets = "gate-digest", "a" * 64, "b" * 64
    config = smoke_config(f"project={name}", "tracking.promotion_metric=finetuned.eval_loss")
    client = tracking_client()
    champion = register_scored_version(client, name, loss=1.0, digest=shop, rows=32)
    assert promote(config, version=champion, report_dir=tmp_path).promoted

    # A lower loss on other (here: 6) rows says nothing about which model is better.
    other_data = register_scored_version(client, name, loss=0.5, digest=tickets, rows=6)
    decision = promote(config, version=other_data, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason == (
        "not compared, the champion stays: candidate and champion were scored on different test data (candidate: "
        f"6 rows, digest {'b' * 12}; champion version {champion}: 32 rows, digest {'a' * 12}). Evaluate both on the "
        "same data and eval settings (split, max_samples); a model of another task belongs under another "
        "`project` name (its own registered model)"
    )
    assert (decision.candidate_value, decision.champion_value) == (0.5, 1.0)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == champion
    tags = client.get_model_version(name, other_data).tags
    assert (tags["promotion.decision"], tags["promotion.reason"]) == ("rejected", decision.reason)
    recorded = json.loads((tmp_path / "promotion.json").read_text())
    assert (recorded["promoted"], recorded["champion_version"]) == (False, champion)
    assert recorded["reason"] == decision.reason

    unknown = register_scored_version(client, name, loss=0.5, digest=None)  # scored before digests existed
    decision = promote(config, version=unknown, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason == (
        f"not compared, the champion stays: the candidate (version {unknown}) has no record of its test data "
        f"(evaluated before test digests were recorded, or never); evaluate it (`{COMMAND} evaluate --adapter "
        f"models:/{name}/{unknown}`)"
    )
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == champion

    same_data = register_scored_version(client, name, loss=0.5, digest=shop, rows=32)
    assert promote(config, version=same_data, report_dir=tmp_path).promoted
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == same_data


def register_row_scored_version(client: MlflowClient, name: str, *, rows: list[float] | None, tmp_path: Path) -> str:
    """A version whose run logged eval.json with per-row field accuracy `rows` (None: an eval.json without
    per-row scores, as evaluated before they were recorded), on the same test rows as every other."""
    version = register_scored_version(client, name, loss=None, digest="c" * 64, rows=40)
    run_id = client.get_model_version(name, version).run_id
    client.log_metric(run_id, "finetuned.field_accuracy", sum(rows or [0.0]) / len(rows or [0.0]))
    report = {"row_scores": {"finetuned": {"field_accuracy": rows}}} if rows is not None else {}
    folder = tmp_path / f"v{version}"
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps(report))
    client.log_artifact(run_id, str(folder / "eval.json"), artifact_path="evaluation")
    return version


def test_gate_requiring_significance_promotes_only_a_gain_whose_interval_excludes_zero(smoke_config, tmp_path):
    name = "gate-significant"
    metric = ("tracking.promotion_metric=finetuned.field_accuracy", "tracking.promotion_direction=maximize")
    config = smoke_config(f"project={name}", *metric, "tracking.require_significant=true")
    client = tracking_client()
    champion = register_row_scored_version(client, name, rows=[1.0] * 20 + [0.0] * 20, tmp_path=tmp_path)
    assert promote(config, version=champion, report_dir=tmp_path).promoted

    # One row more right out of 40: better on the point estimate, but well within the noise.
    slightly = register_row_scored_version(client, name, rows=[1.0] * 21 + [0.0] * 19, tmp_path=tmp_path)
    decision = promote(config, version=slightly, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason.startswith("candidate 0.525 vs champion 0.5: the difference +0.025 [+0, +0.075]")
    assert decision.reason.endswith("includes 0, so it may be noise (tracking.require_significant); the champion stays")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == champion
    without_option = smoke_config(f"project={name}", *metric)
    assert promote(without_option, version=slightly, report_dir=tmp_path).promoted

    unrecorded = register_row_scored_version(client, name, rows=None, tmp_path=tmp_path)
    client.log_metric(client.get_model_version(name, unrecorded).run_id, "finetuned.field_accuracy", 0.9)
    decision = promote(config, version=unrecorded, report_dir=tmp_path)
    assert not decision.promoted
    assert f"the candidate (version {unrecorded}) has no per-row scores of finetuned.field_accuracy" in decision.reason

    clearly = register_row_scored_version(client, name, rows=[1.0] * 36 + [0.0] * 4, tmp_path=tmp_path)
    decision = promote(config, version=clearly, report_dir=tmp_path)
    assert decision.promoted, decision.reason
    assert decision.reason.startswith("candidate 0.9 beats champion 0.525 (maximize): +0.375 [")


def test_gate_keeps_a_champion_that_has_no_value_for_the_metric(smoke_config, tmp_path):
    name = "gate-no-metric"
    config = smoke_config(f"project={name}", "tracking.promotion_metric=finetuned.eval_loss")
    client = tracking_client()
    champion = register_scored_version(client, name, loss=None, digest="c" * 64)
    client.set_registered_model_alias(name, CHAMPION, champion)  # made champion by hand, never scored on it
    candidate = register_scored_version(client, name, loss=0.5, digest="c" * 64)

    decision = promote(config, version=candidate, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason == (
        f"not compared, the champion stays: champion version {champion} has no value for the metric; evaluate it "
        f"(`{COMMAND} evaluate --adapter models:/{name}/{champion}`), then run the gate again (`{COMMAND} promote`)"
    )
    assert (decision.candidate_value, decision.champion_value) == (0.5, None)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == champion
    assert json.loads((tmp_path / "promotion.json").read_text())["promoted"] is False


def test_run_config_comes_from_the_run_folder_then_mlflow_then_nowhere(tmp_path):
    client = tracking_client()
    experiment = client.create_experiment("run-config", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    logged = tmp_path / "logged" / CONFIG_FILE
    logged.parent.mkdir()
    logged.write_text("project: from-mlflow\n")
    client.log_artifact(run_id, str(logged))
    run_dir = tmp_path / "outputs" / "smoke-1"
    run_dir.mkdir(parents=True)

    downloaded = run_config_path(run_dir=run_dir, run_id=run_id)  # the folder has no config.yaml yet
    assert downloaded.name == CONFIG_FILE and downloaded.read_text() == "project: from-mlflow\n"
    (run_dir / CONFIG_FILE).write_text("project: from-folder\n")
    assert run_config_path(run_dir=run_dir, run_id=run_id) == run_dir / CONFIG_FILE
    assert run_config_path(run_dir=tmp_path / "elsewhere", run_id=None) is None
    assert run_config_path(run_id="0123456789abcdef0123456789abcdef") is None  # no such run
    assert run_config_path() is None


@pytest.mark.e2e
def test_serving_the_champion_uses_its_logged_config(smoke_run, smoke_report, smoke_config):
    from {{ cookiecutter.package_name }}.data.shop_example import SYSTEM_PROMPT
    from {{ cookiecutter.package_name }}.serve.loader import load_for_serving
    from {{ cookiecutter.package_name }}.serve.settings import Settings

    project = smoke_config().project
    loaded = load_for_serving(Settings(model=f"models:/{project}@{CHAMPION}", device="cpu"))
    assert (loaded.name, loaded.version) == (project, tracked(smoke_run)["model_version"])
    assert loaded.system_prompt == SYSTEM_PROMPT  # from the config.yaml logged to the training run
