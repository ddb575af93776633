"""Cloud training jobs, the part every target shares: the price table, the cost cap and the job's command."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.clouds.jobs.job import (
    PRICES,
    CostCapError,
    EntrypointOptions,
    JobSpec,
    check_cost,
    train_command,
    worst_case_cost,
)

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
    from {{ cookiecutter.package_name }}.clouds import entrypoint  # here: only this extra's test uses them
    from {{ cookiecutter.package_name }}.config import dump_config

    command = train_command("config.yaml", [], EntrypointOptions(nproc=4))
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
