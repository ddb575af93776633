"""Cloud training, the part every target shares: the cost cap, the job's command, staging, the in-job
entrypoint (run here with the platform's folders, stopped after a checkpoint as a spot interruption would,
then restarted), and importing its output into MLflow like a local run. No cloud is called."""

import json
import os
import signal
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }} import train as train_module
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.cloud import cli as cloud_cli
from {{ cookiecutter.package_name }}.cloud import entrypoint
from {{ cookiecutter.package_name }}.cloud.importer import RunImportError, import_run, job_cost
from {{ cookiecutter.package_name }}.cloud.job import (
    PRICES,
    CostCapError,
    JobSpec,
    check_cost,
    train_command,
    worst_case_cost,
)
from {{ cookiecutter.package_name }}.cloud.staging import StagingError, local_settings, stage_inputs
from {{ cookiecutter.package_name }}.config import dump_config, load_config

ROOT = Path(__file__).parents[1]
BUILD_TRAINER = train_module.build_trainer  # the real one, wrapped by the interruption tests
PACKAGE = "{{ cookiecutter.package_name }}"


def spec(**changes) -> JobSpec:
    values = {
        "project": "{{ cookiecutter.project_slug }}",
        "run_name": "gpu-20260101-120000",
        "config_name": "gpu",
        "target": "aws",
        "instance_type": "ml.g5.xlarge",
        "gpu_count": 1,
        "instance_count": 1,
        "spot": True,
        "max_runtime_s": 3600,
        "max_cost_usd": 5.0,
        "staging": Path("/nonexistent"),
        "region": "eu-west-1",
    }
    return JobSpec(**(values | changes))


# ---- cost cap, prices, command -----------------------------------------------------------------------------


def test_every_price_names_its_source_and_date():
    for target, prices in PRICES.items():
        for instance, price in prices.items():
            assert price.source.startswith("https://"), (target, instance)
            assert len(price.checked) == 10 and price.checked[4] == "-", (target, instance)
            assert price.usd_per_hour > 0, (target, instance)


def test_a_price_not_read_from_its_source_says_so():
    price = PRICES["hf-jobs"]["t4-small"]  # read on the Hub's jobs-pricing page
    assert price.describe() == "0.400 USD/h on-demand (https://huggingface.co/docs/hub/jobs-pricing, 2026-11-30)"
    unread = PRICES["aws"]["ml.g5.xlarge"]
    assert unread.describe().endswith(", 2026-11-30, not re-read from the source: check it there)")


def test_worst_case_is_price_times_instances_times_hours():
    hourly = PRICES["aws"]["ml.g5.xlarge"].usd_per_hour
    assert worst_case_cost(spec(max_runtime_s=7200, instance_count=2)) == pytest.approx(hourly * 2 * 2)


def test_cost_check_prints_price_source_and_worst_case():
    lines: list[str] = []
    worst = check_cost(spec(max_runtime_s=1800), echo=lines.append)
    price = PRICES["aws"]["ml.g5.xlarge"]
    assert worst == pytest.approx(price.usd_per_hour / 2)
    assert lines[0] == "instance: ml.g5.xlarge (aws, eu-west-1), spot"
    assert lines[1] == f"price: {price.describe()}"
    assert lines[2] == f"worst case: {worst:.2f} USD (0.5 h cap), cost cap: 5.00 USD"


def test_cost_above_the_cap_is_refused_naming_the_settings():
    with pytest.raises(CostCapError, match=r"above CLOUD_MAX_COST_USD=1\..*CLOUD_MAX_RUNTIME_H.*Nothing was created"):
        check_cost(spec(max_cost_usd=1.0), echo=lambda _: None)


def test_an_instance_without_a_price_is_refused():
    with pytest.raises(CostCapError, match=r"CLOUD_INSTANCE_TYPE=ml\.p9\.huge: no price known for it on aws"):
        check_cost(spec(instance_type="ml.p9.huge"), echo=lambda _: None)


def test_train_command_runs_the_entrypoint():
    assert train_command("config.yaml", ["lora.r=8"], output="/opt/ml/model", checkpoints="/opt/ml/checkpoints") == [
        "python",
        "-m",
        f"{PACKAGE}.cloud.entrypoint",
        "--config",
        "config.yaml",
        "--output",
        "/opt/ml/model",
        "--checkpoints",
        "/opt/ml/checkpoints",
        "--evaluate",
        "lora.r=8",
    ]


def test_several_gpus_train_through_the_multi_gpu_launcher(tmp_path, smoke_config, monkeypatch):
    """--nproc 4 (train_command's one setting) runs training through distributed.launch_command."""
    command = train_command("config.yaml", [], nproc=4)
    assert command[command.index("--nproc") + 1] == "4"
    launched = []
    monkeypatch.setattr(entrypoint.subprocess, "run", lambda cmd, check: launched.append(cmd) or _Done(0))
    config_file = tmp_path / "gpu.yaml"
    dump_config(smoke_config(), config_file)
    entrypoint._train(smoke_config(), config_file=config_file, config_name="gpu", nproc=4, resume=True)
    [launch] = launched
    assert launch[:2] == ["accelerate", "launch"]
    assert launch[launch.index("--num_processes") + 1] == "4"
    assert launch[launch.index("-m") + 1 :][:2] == [PACKAGE, "train"]
    assert launch[-3] == "--config" and launch[-2].endswith("/gpu.yaml") and launch[-1] == "--resume"


class _Done:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


# ---- staging -------------------------------------------------------------------------------------------------


def test_staging_writes_the_same_files_and_bytes_every_time(tmp_path, smoke_config):
    config = smoke_config("train.run_name=gpu-1")
    first = stage_inputs(config, Path("configs/smoke.yaml"), ["lora.r=8"], tmp_path / "a", project_root=ROOT)
    second = stage_inputs(config, Path("configs/smoke.yaml"), ["lora.r=8"], tmp_path / "b", project_root=ROOT)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest == json.loads((second / "manifest.json").read_text())  # same sizes and sha256, same order
    paths = [entry["path"] for entry in manifest]
    assert paths == sorted(paths) and "configs/accelerate/ddp.yaml" in paths  # the multi-GPU launcher's configs
    assert [path for path in paths if not path.startswith("configs/accelerate/")] == [
        "config.yaml",
        "data/shop_extraction/dataset_info.json",
        "data/shop_extraction/test.jsonl",
        "data/shop_extraction/train.jsonl",
        "data/shop_extraction/validation.jsonl",
        "local.json",
        "project.tar.gz",
        "run.sh",
    ]
    with tarfile.open(first / "project.tar.gz") as archive:
        names = archive.getnames()
    assert "project/pyproject.toml" in names and f"project/src/{PACKAGE}/cloud/entrypoint.py" in names
    assert not [name for name in names if "__pycache__" in name]
    staged = (first / "config.yaml").read_text()
    assert "path: data/shop_extraction\n" in staged and "run_name: gpu-1\n" in staged
    assert "base_model: models/tiny-chat\n" in staged  # build_tiny: built inside the job
    assert json.loads((first / "local.json").read_text())["data.path"] == config.data.path


def test_staging_refuses_missing_data_and_leaves_nothing(tmp_path, smoke_config):
    out = tmp_path / "staging"
    with pytest.raises(StagingError, match=r"data\.path=.*nope: no such local file or folder"):
        stage_inputs(smoke_config(f"data.path={tmp_path / 'nope'}"), Path("c.yaml"), [], out, project_root=ROOT)
    assert not out.exists()


def test_staging_refuses_a_local_base_model_the_job_cannot_read(tmp_path, smoke_config, tiny_model):
    out = tmp_path / "staging"
    with pytest.raises(StagingError, match=r"model\.base_model=.* is a local folder"):
        stage_inputs(smoke_config("model.build_tiny=false"), Path("c.yaml"), [], out, project_root=ROOT)
    assert not out.exists()


def test_without_a_cloud_target_train_points_at_the_notebook(monkeypatch):
    monkeypatch.setattr(cloud_cli, "target_module", lambda: None)
    result = CliRunner().invoke(app, ["cloud", "train", "--config", "configs/gpu.yaml"])
    assert result.exit_code == 2
    assert "no cloud target" in result.output and "notebooks/train_on_colab.ipynb" in result.output


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
        trainer = BUILD_TRAINER(*args, **kwargs)
        trainer.add_callback(Recorder())
        return trainer

    return build


@pytest.fixture(scope="module")
def cloud_job(tmp_path_factory, smoke_config, tiny_model):
    """The entrypoint run as a SageMaker job runs it (its folders as SM_MODEL_DIR / SM_CHECKPOINT_DIR), stopped
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
    argv = train_command(str(root / "job" / "config.yaml"), [], config_name="smoke")[3:]  # no `python -m <module>`
    environment = {"SM_MODEL_DIR": str(root / "model"), "SM_CHECKPOINT_DIR": str(root / "checkpoints")}
    first_steps, second_steps = [], []
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # a registry of its own
        patch.setattr(train_module, "build_trainer", _recording(True, first_steps))
        interrupted = entrypoint.main(argv)
        checkpoints_after_stop = sorted(p.name for p in (root / "checkpoints" / "cloud-smoke").glob("checkpoint-*"))
        patch.setattr(train_module, "build_trainer", _recording(False, second_steps))
        finished = entrypoint.main(argv)
        job = {"job_id": "cloud-smoke", "target": "aws", "instance_type": "ml.g5.xlarge", "region": "eu-west-1"}
        job |= {"billed_s": 1800, "usd_per_hour": 1.408, "instance_count": 1, "spot": True}
        imported = import_run(root / "model", job=job)
        yield {
            "root": root,
            "here": here,
            "job": job,
            "exit_codes": (interrupted, finished),
            "checkpoints_after_stop": checkpoints_after_stop,
            "steps": (first_steps, second_steps),
            "imported": imported,
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
    assert run.data.tags["cloud.cost_usd"] == "0.7040" == f"{job_cost(cloud_job['job']):.4f}"
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
        import_run(output, job=cloud_job["job"])
    moved = imported.run_dir.with_name("moved-away")
    imported.run_dir.rename(moved)  # even with the folder gone, the MLflow tag refuses it
    try:
        with pytest.raises(RunImportError, match="job cloud-smoke was imported already: MLflow run"):
            import_run(output, job=cloud_job["job"])
        assert not imported.run_dir.exists()
    finally:
        moved.rename(imported.run_dir)


@pytest.mark.e2e
def test_promote_and_report_treat_the_import_like_a_local_run(cloud_job):
    from {{ cookiecutter.package_name }}.registry import promote
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
    [cost] = [line for line in results.splitlines() if line.startswith("| Estimated cost |")]
    assert "$0 extra" not in cost  # priced at the job's instance (report.hourly_cost_usd of the imported run)
    promotion = json.loads((Path(here.eval.report_dir) / "promotion.json").read_text())
    assert promotion["candidate_version"] == "1"


@pytest.mark.e2e
def test_fetch_reads_a_zip_and_refuses_a_run_already_here(cloud_job, tmp_path, monkeypatch):
    """`cloud fetch run.zip` (the notebook's path): the zip is unpacked and checked like a job's output."""
    import shutil

    archive = shutil.make_archive(str(tmp_path / "run"), "zip", cloud_job["root"] / "model")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["cloud", "fetch", archive])
    assert result.exit_code == 2
    assert f"{cloud_job['imported'].run_dir} already exists" in result.output
