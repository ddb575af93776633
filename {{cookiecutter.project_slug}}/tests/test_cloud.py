"""Training elsewhere (a notebook, a cloud job), the part every target shares: the in-job
entrypoint (run here with the platform's folders, stopped after a checkpoint as a spot interruption would,
then restarted), and importing its output into MLflow like a local run. No cloud is called."""

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.clouds import entrypoint
from {{ cookiecutter.package_name }}.clouds.entrypoint import local_settings
from {{ cookiecutter.package_name }}.clouds.importer import RunImportError, import_run
from {{ cookiecutter.package_name }}.config import dump_config, load_config
from {{ cookiecutter.package_name }}.train import sft as train_module

ROOT = Path(__file__).parents[1]
SFT = train_module.SFT  # the real recipe, whose trainer the interruption tests wrap
PACKAGE = "{{ cookiecutter.package_name }}"


# ---- the entrypoint, interrupted and resumed; the import --------------------------------------------------


def _recording(stop_after_save: bool, steps: list[int]):
    """Wrap train.build_trainer: record each trained step; optionally SIGTERM this process (what a spot
    interruption sends) as the step after the first checkpoint begins."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        saved = False

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

        def on_save(self, args, state, control, **kwargs):
            self.saved = True

        def on_step_begin(self, args, state, control, **kwargs):
            if stop_after_save and self.saved:
                os.kill(os.getpid(), signal.SIGTERM)

    def build(*args, **kwargs):
        trainer = SFT.build_trainer(*args, **kwargs)
        trainer.add_callback(Recorder())
        return trainer

    return build


@pytest.fixture(scope="module")
def cloud_job(tmp_path_factory, smoke_config, tiny_model):
    """The entrypoint run as a SageMaker job runs it (its folders /opt/ml/model and /opt/ml/checkpoints), stopped
    by SIGTERM after its first checkpoint, restarted with the same checkpoint folder; then its output imported
    into a scratch MLflow store. Yields what the tests read."""
    root = tmp_path_factory.mktemp("cloud-job")
    # Few, small steps; no validation during training (eval_steps past the end): seconds, not a minute.
    job_settings = ["train.max_steps=4", "train.save_steps=2", "train.eval_steps=100", "train.logging_steps=1"]
    job_settings += ["train.batch_size=4", "eval.max_samples=4", "eval.max_new_tokens=24"]
    job_config = smoke_config(*job_settings, "train.run_name=cloud-smoke")
    (root / "job").mkdir()
    dump_config(job_config, root / "job" / "config.yaml")
    here = smoke_config("tracking.enabled=true", root=root / "here")  # this machine: outputs/, reports/, MLflow on
    (root / "job" / "local.json").write_text(json.dumps(local_settings(here)))
    # The arguments a job's launcher passes (clouds/jobs/job.py's train_command, without `python -m <module>`)
    argv = ["--config", str(root / "job" / "config.yaml"), "--config-name", "smoke", "--evaluate"]
    argv += ["--output", str(root / "model"), "--checkpoints", str(root / "checkpoints")]
    first_steps, second_steps = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # a registry of its own
        patch.setattr(train_module, "SFT", dataclasses.replace(SFT, build_trainer=_recording(True, first_steps)))
        interrupted = entrypoint.main(argv)
        checkpoints_after_stop = sorted(p.name for p in (root / "checkpoints" / "cloud-smoke").glob("checkpoint-*"))
        patch.setattr(train_module, "SFT", dataclasses.replace(SFT, build_trainer=_recording(False, second_steps)))
        finished = entrypoint.main(argv)
        job = {"job_id": "cloud-smoke", "target": "aws", "instance_type": "ml.g5.xlarge", "region": "eu-west-1"}
        job |= {"billed_s": 1800, "usd_per_hour": 1.408, "instance_count": 1, "spot": True}
        # This machine's folders (`here`); `cloud fetch` passes none: the project's outputs/ and reports/.
        folders = {"output_dir": here.train.output_dir, "report_dir": here.eval.report_dir}
        imported = import_run(root / "model", job=job, **folders)
        yield {
            "root": root,
            "here": here,
            "job": job,
            "exit_codes": (interrupted, finished),
            "checkpoints_after_stop": checkpoints_after_stop,
            "steps": (first_steps, second_steps),
            "imported": imported,
            "folders": folders,
        }


@pytest.mark.e2e
def test_a_stopped_job_resumes_from_its_checkpoint(cloud_job):
    assert cloud_job["exit_codes"] == (entrypoint.INTERRUPTED, 0)
    assert cloud_job["checkpoints_after_stop"] == ["checkpoint-2"]
    first, second = cloud_job["steps"]
    assert first == [1, 2]
    assert second == [3, 4]  # the restart continued at step 3, it did not train from step 1 again
    record = json.loads((cloud_job["root"] / "model" / "job.json").read_text())
    assert record["resumed_from"] == "checkpoint-2" and record["run_name"] == "cloud-smoke"


@pytest.mark.e2e
def test_the_entrypoint_writes_exactly_what_fetch_imports(cloud_job):
    output = cloud_job["root"] / "model"
    files = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and "adapter" not in p.parts)
    assert files == [
        "job.json",
        "outputs/cloud-smoke/config.yaml",
        "outputs/cloud-smoke/train_log.json",
        "reports/eval.json",
        "reports/eval.md",
    ]
    adapter = output / "outputs" / "cloud-smoke" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    run_config = (output / "outputs" / "cloud-smoke" / "config.yaml").read_text()
    here = cloud_job["here"]
    assert f"output_dir: {here.train.output_dir}\n" in run_config  # the job's folders replaced by this machine's
    assert "enabled: true" in run_config.split("tracking:")[1]


@pytest.mark.e2e
def test_the_import_is_an_mlflow_run_like_a_local_one(cloud_job):
    from mlflow import MlflowClient

    imported, root = cloud_job["imported"], cloud_job["root"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(imported.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "cloud-smoke"
    assert run.data.tags["config"] == "smoke"  # the user's config name, not the staged file's
    assert run.data.params["train.max_steps"] == "4" and run.data.params["lora.r"] == "16"
    assert run.data.params["data.rows.train"] == "960"
    train_log = json.loads((imported.run_dir / "train_log.json").read_text())
    losses = [entry for entry in train_log["log_history"] if "loss" in entry]
    assert [m.step for m in client.get_metric_history(imported.run_id, "loss")] == [e["step"] for e in losses]
    assert len(losses) == 4
    assert run.data.tags["cloud.job_id"] == "cloud-smoke" and run.data.tags["cloud.instance_type"] == "ml.g5.xlarge"
    assert run.data.tags["cloud.billed_s"] == "1800" and run.data.tags["cloud.region"] == "eu-west-1"
    # >>> cloud_training
    assert run.data.tags["cloud.cost_usd"] == "0.7040"  # 1800 s x 1.408 USD/h (clouds/jobs/job.py's job_cost)
    # <<< cloud_training
    assert sorted(i.dataset.name for i in run.inputs.dataset_inputs) == [
        "shop_extraction-test",
        "shop_extraction-train",
        "shop_extraction-validation",
    ]
    assert "finetuned.eval_loss" in run.data.metrics and "evaluation.test_digest" in run.data.tags
    version = client.get_model_version_by_alias("{{ cookiecutter.project_slug }}", "candidate")
    assert (str(version.version), version.run_id) == (imported.version, imported.run_id)
    assert imported.version == "1"
    tracking = json.loads((imported.run_dir / "tracking.json").read_text())
    assert (tracking["run_id"], tracking["model_version"]) == (imported.run_id, "1")


@pytest.mark.e2e
def test_the_same_job_is_not_imported_twice(cloud_job):
    imported, output = cloud_job["imported"], cloud_job["root"] / "model"
    with pytest.raises(RunImportError, match="already exists"):
        import_run(output, job=cloud_job["job"], **cloud_job["folders"])
    moved = imported.run_dir.with_name("moved-away")
    imported.run_dir.rename(moved)  # even with the folder gone, the MLflow tag refuses it
    try:
        with pytest.raises(RunImportError, match="job cloud-smoke was imported already: MLflow run"):
            import_run(output, job=cloud_job["job"], **cloud_job["folders"])
        assert not imported.run_dir.exists()
    finally:
        moved.rename(imported.run_dir)


@pytest.mark.e2e
def test_promote_and_report_treat_the_import_like_a_local_run(cloud_job):
    from {{ cookiecutter.package_name }}.evaluate.gate import promote
    from {{ cookiecutter.package_name }}.report import write_report

    imported, here, root = cloud_job["imported"], cloud_job["here"], cloud_job["root"]
    assert imported.promoted is True  # the first version of a fresh registry: no champion to beat
    readme, card = root / "README.md", root / "MODEL_CARD.md"
    readme.write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        run_config = load_config(imported.run_dir / "config.yaml")  # as `cloud fetch` reports it
        decision = promote(run_config)
        written = write_report(run_config, readme=readme, model_card=card)
    assert (decision.candidate_version, decision.promoted) == ("1", True)
    assert decision.reason == "version 1 is already champion"
    assert readme in written and card in written
    results = readme.read_text(encoding="utf-8").split("<!-- results:start -->")[1]
    assert f"| MLflow run | `{imported.run_id}` |" in results
    assert "| Loss curves from | the MLflow run's metric history (loss" in results
    # >>> cloud_training
    [cost] = [line for line in results.splitlines() if line.startswith("| Estimated cost |")]
    assert "$0 extra" not in cost  # priced at the job's instance (report.hourly_cost_usd of the imported run)
    # <<< cloud_training
    promotion = json.loads((Path(here.eval.report_dir) / "promotion.json").read_text())
    assert promotion["candidate_version"] == "1"


@pytest.mark.e2e
def test_fetch_reads_a_zip_and_refuses_a_run_already_here(cloud_job, tmp_path, monkeypatch):
    """`cloud fetch run.zip` (the notebook's path): the zip is unpacked and checked like a job's output."""
    import shutil

    archive = shutil.make_archive(str(tmp_path / "run"), "zip", cloud_job["root"] / "model")
    monkeypatch.chdir(cloud_job["root"] / "here")  # the project the job was imported into: its outputs/
    result = CliRunner().invoke(app, ["cloud", "fetch", archive])
    assert result.exit_code == 2
    assert f"{Path('outputs') / 'cloud-smoke'} already exists" in result.output


# ---- hostile archives ------------------------------------------------------------------------------------


def _run_zip(path: Path, config, *, extra: dict[str, bytes] | None = None) -> Path:
    """A run .zip as the notebook packs it (outputs/<run>/ and reports/), `config` as its config.yaml."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("outputs/hostile/adapter/adapter_config.json", "{}")
        archive.writestr("outputs/hostile/config.yaml", dump_config_text(config))
        archive.writestr("outputs/hostile/train_log.json", json.dumps({"log_history": []}))
        archive.writestr("reports/eval.json", json.dumps({"run": {}}))
        archive.writestr("reports/eval.md", "# eval\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def dump_config_text(config) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        dump_config(config, Path(folder) / "config.yaml")
        return (Path(folder) / "config.yaml").read_text(encoding="utf-8")


def test_an_archive_cannot_choose_where_the_run_and_its_reports_go(smoke_config, tmp_path, monkeypatch):
    """The archive's config.yaml points outside the project (/tmp/x, /tmp/y in the report): the run still lands in
    the project's own outputs/ and reports/, and its config.yaml is rewritten to say so."""
    elsewhere = tmp_path / "elsewhere"
    hostile = smoke_config(f"train.output_dir={elsewhere / 'x'}", f"eval.report_dir={elsewhere / 'y'}")
    archive = _run_zip(tmp_path / "run.zip", hostile)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)

    imported = import_run(archive, job={"job_id": "hostile", "target": "notebook"})

    assert imported.run_dir == Path("outputs") / "hostile"
    assert (project / "outputs" / "hostile" / "adapter" / "adapter_config.json").is_file()
    assert (project / "reports" / "eval.json").is_file() and (project / "reports" / "eval.md").is_file()
    assert not elsewhere.exists()
    run_config = load_config(project / "outputs" / "hostile" / "config.yaml")
    assert (run_config.train.output_dir, run_config.eval.report_dir) == ("outputs", "reports")


@pytest.mark.parametrize("cap", ["MAX_UNPACKED_BYTES", "MAX_FILES"])
def test_a_zip_bomb_is_refused_before_anything_is_unpacked(cap, smoke_config, tmp_path, monkeypatch):
    """Past the unpacked-size or file-count cap (lowered here: the real ones are 2 GiB and 10,000 files), `cloud
    fetch` exits 2 and writes nothing: a megabyte of zeros compresses to about a kilobyte."""
    from {{ cookiecutter.package_name }}.clouds import importer

    assert (importer.MAX_UNPACKED_BYTES, importer.MAX_FILES) == (2 * 1024**3, 10_000)
    monkeypatch.setattr(importer, "MAX_UNPACKED_BYTES", 2**20 if cap == "MAX_UNPACKED_BYTES" else 2**40)
    monkeypatch.setattr(importer, "MAX_FILES", 20 if cap == "MAX_FILES" else 10_000)
    extra = {"reports/zeros.bin": bytes(2**20)} if cap == "MAX_UNPACKED_BYTES" else {}
    extra |= {f"reports/extra-{i}.txt": b"x" for i in range(20)} if cap == "MAX_FILES" else {}
    archive = _run_zip(tmp_path / "bomb.zip", smoke_config(), extra=extra)
    assert archive.stat().st_size < 2**16
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)

    result = CliRunner().invoke(app, ["cloud", "fetch", str(archive)])

    assert result.exit_code == 2, result.output
    assert "a run's archive holds at most" in result.output and "Nothing was imported" in result.output
    assert list(project.iterdir()) == [] and list(scratch.iterdir()) == []
