"""notebooks/train_on_colab.ipynb, executed headless (nbclient + ipykernel) on the CPU with the smoke config
and a few steps: it must train, evaluate, draw the plots and pack run.zip, and `cloud fetch run.zip`'s
importer must take that zip as it takes a cloud job's output."""

import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "train_on_colab.ipynb"
RUN = "colab-test"
PARAMETERS = f"""
REPO_URL = "https://example.invalid/not-cloned"
CONFIG = "configs/smoke.yaml"
OVERRIDES = ["train.max_steps=2", "train.eval_steps=2", "train.save_steps=2", "train.logging_steps=1",
             "eval.max_samples=4", "eval.batch_size=4", "eval.max_new_tokens=16", "tracking.enabled=false"]
INSTALL = False
RUN_NAME = "{RUN}"
CHECKPOINTS = "checkpoints"
RUN_ZIP = "run.zip"
"""


def test_the_notebook_keeps_its_parameters_in_one_tagged_cell() -> None:
    import nbformat

    assert "cookiecutter" not in NOTEBOOK.read_text(encoding="utf-8")  # rendered at bake time, valid JSON after
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3" and notebook.metadata.accelerator == "GPU"
    (cell,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    names = [line.split(" ")[0].rstrip(":") for line in cell.source.splitlines() if line and line[0].isupper()]
    assert names == ["REPO_URL", "CONFIG", "OVERRIDES", "INSTALL", "RUN_NAME", "CHECKPOINTS", "RUN_ZIP"]
    assert 'CONFIG = "configs/gpu.yaml"' in cell.source and "INSTALL = True" in cell.source


@pytest.mark.e2e
def test_the_notebook_trains_on_cpu_and_packs_a_run_that_fetch_imports(tmp_path, tiny_model, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    from {{ cookiecutter.package_name }}.clouds.importer import import_run
    from {{ cookiecutter.package_name }}.data.shop_example import synthesize

    # A project folder as the notebook finds it after `git clone`: configs, data (60 rows: 6 validation rows keep
    # the in-training evaluation short), the tiny model.
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "smoke.yaml").write_text((ROOT / "configs" / "smoke.yaml").read_text())
    synthesize(project / "data" / "shop_extraction", n=60, seed=0)
    (project / "models").mkdir()
    (project / "models" / "tiny-chat").symlink_to(tiny_model)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))  # the kernel and its commands import this checkout
    monkeypatch.chdir(project)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    cell.source = PARAMETERS
    resources = {"metadata": {"path": str(project)}}  # the kernel's working folder
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()

    outputs = {
        output.get("output_type")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    }
    assert "error" not in outputs and "display_data" in outputs  # the plots were shown
    plots = {path.name for path in (project / "plots").iterdir()}
    assert {"loss_curves.png", "metrics.png", "field_accuracy.png"} <= plots
    with zipfile.ZipFile(project / "run.zip") as archive:
        names = sorted(archive.namelist())
    adapter = sorted(name.removeprefix(f"outputs/{RUN}/adapter/") for name in names if "/adapter/" in name)
    assert "adapter_model.safetensors" in adapter and "adapter_config.json" in adapter
    assert [name for name in names if "/adapter/" not in name] == [
        "job.json",
        f"outputs/{RUN}/config.yaml",
        f"outputs/{RUN}/train_log.json",
        "reports/eval.json",
        "reports/eval.md",
    ]

    # Tracking is off in this run (MLflow's import is tested in tests/test_cloud.py and costs ~20 s here): the
    # importer checks the layout and copies the run into the project's folders.
    imported = import_run(project / "run.zip", job={"job_id": "file:run.zip:test", "target": "notebook"})
    assert imported.run_dir == Path("outputs") / RUN and (project / "outputs" / RUN / "adapter").is_dir()
    assert (project / "reports" / "eval.json").is_file() and imported.version is None
