"""Cloud training jobs, the part every target shares: staging, the price table, the cost cap and the job's command."""

import json
import tarfile
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.clouds.jobs.job import (
    PRICES,
    CostCapError,
    EntrypointOptions,
    JobSpec,
    check_cost,
    job_cost,
    train_command,
    worst_case_cost,
)
from {{ cookiecutter.package_name }}.clouds.jobs.staging import StagingError, stage_inputs
from {{ cookiecutter.package_name }}.config import dump_config, load_config

ROOT = Path(__file__).parents[1]
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


def test_a_fetched_job_costs_its_billed_seconds_at_its_price_per_instance():
    assert job_cost({"billed_s": 1800, "usd_per_hour": 1.408}) == 0.704
    assert job_cost({"billed_s": 1800, "usd_per_hour": 1.408, "instance_count": 2}) == 1.408
    assert job_cost({"billed_s": 1800}) is None and job_cost({"usd_per_hour": 1.408}) is None  # unknown: no price


def test_a_fetched_job_is_priced_in_its_imported_config_and_its_tags(tmp_path, smoke_config):
    """What `cloud fetch JOB` imports is priced at the job's instance: report.hourly_cost_usd of the imported
    config (the report's cost line), and the cost as an MLflow tag."""
    from {{ cookiecutter.package_name }}.clouds.importer import _job_tags, import_run

    run = tmp_path / "job" / "outputs" / "gpu-1"
    (run / "adapter").mkdir(parents=True)
    dump_config(smoke_config(), run / "config.yaml")  # tracking off: nothing is logged
    (run / "train_log.json").write_text("{}")
    (tmp_path / "job" / "reports").mkdir()
    (tmp_path / "job" / "reports" / "eval.json").write_text("{}")
    job = {"job_id": "gpu-1", "billed_s": 1800, "usd_per_hour": 1.408}
    imported = import_run(tmp_path / "job", job=job, output_dir=tmp_path / "outputs", report_dir=tmp_path / "reports")
    assert load_config(imported.run_dir / "config.yaml").report.hourly_cost_usd == 1.408
    assert _job_tags(job)["cloud.cost_usd"] == "0.7040"


def test_cost_above_the_cap_is_refused_naming_the_settings():
    with pytest.raises(CostCapError, match=r"above CLOUD_MAX_COST_USD=1\..*CLOUD_MAX_RUNTIME_H.*Nothing was created"):
        check_cost(spec(max_cost_usd=1.0), echo=lambda _: None)


def test_an_instance_without_a_price_is_refused():
    with pytest.raises(CostCapError, match=r"CLOUD_INSTANCE_TYPE=ml\.p9\.huge: no price known for it on aws"):
        check_cost(spec(instance_type="ml.p9.huge"), echo=lambda _: None)


def test_train_command_runs_the_entrypoint():
    options = EntrypointOptions(output="/opt/ml/model", checkpoints="/opt/ml/checkpoints")
    assert train_command("config.yaml", ["lora.r=8"], options) == [
        "python",
        "-m",
        f"{PACKAGE}.clouds.entrypoint",
        "--config",
        "config.yaml",
        "--output",
        "/opt/ml/model",
        "--checkpoints",
        "/opt/ml/checkpoints",
        "--evaluate",
        "lora.r=8",
    ]


# >>> multi_gpu
def test_several_gpus_train_through_the_multi_gpu_launcher(tmp_path, smoke_config, monkeypatch):
    """--nproc 4 (train_command's one setting) runs training through distributed.launch_command."""
    from {{ cookiecutter.package_name }}.clouds import entrypoint  # here: only this extra's test uses it

    command = train_command("config.yaml", [], EntrypointOptions(output="out", checkpoints="ckpt", nproc=4))
    assert command[command.index("--nproc") + 1] == "4"
    launched = []
    # _train imports subprocess where it launches (its multi_gpu block): the module's own `run` is patched
    monkeypatch.setattr("subprocess.run", lambda cmd, check: launched.append(cmd) or _Done(0))
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


# <<< multi_gpu


# ---- staging -------------------------------------------------------------------------------------------------


def test_staging_writes_the_same_files_and_bytes_every_time(tmp_path, smoke_config):
    config = smoke_config("train.run_name=gpu-1")
    first = stage_inputs(config, Path("configs/smoke.yaml"), ["lora.r=8"], tmp_path / "a", project_root=ROOT)
    second = stage_inputs(config, Path("configs/smoke.yaml"), ["lora.r=8"], tmp_path / "b", project_root=ROOT)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest == json.loads((second / "manifest.json").read_text())  # same sizes and sha256, same order
    paths = [entry["path"] for entry in manifest]
    assert paths == sorted(paths)
    # >>> multi_gpu
    assert "configs/accelerate/ddp.yaml" in paths  # the multi-GPU launcher's configs
    # <<< multi_gpu
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
    assert "project/pyproject.toml" in names and f"project/src/{PACKAGE}/clouds/entrypoint.py" in names
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
