"""The Makefile's commands as `make -n` prints them: which torch `install` takes, what `evaluate` scores."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CLI = ".venv/bin/{{ cookiecutter.project_slug }}"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def dry_run(target: str, *variables: str) -> list[str]:
    """The commands `make TARGET VARIABLES` would run (nothing runs), blanks between words collapsed."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), target, *variables],
        capture_output=True,
        text=True,
        check=True,
    )
    return [" ".join(line.split()) for line in result.stdout.splitlines()]


def torch_install(*variables: str) -> tuple[str, str]:
    lines = dry_run("install", *variables)
    (message,) = [line for line in lines if line.startswith('echo "torch: ')]
    (install,) = [line for line in lines if line.endswith('"torch>=2.4"')]
    return message, install


@pytest.mark.skipif(
    subprocess.run(["uname", "-s"], capture_output=True, text=True).stdout.strip() != "Linux",
    reason="PyPI's torch is a CUDA build on Linux only",
)
def test_install_takes_the_cpu_build_of_torch_without_an_nvidia_gpu():
    message, install = torch_install("NVIDIA_SMI=no-such-command-here")
    assert install == f'.venv/bin/python -m pip install --index-url {CPU_INDEX} "torch>=2.4"'
    assert f"torch: from {CPU_INDEX} (CPU build: no NVIDIA GPU found); TORCH_INDEX=<url>" in message

    message, install = torch_install("NVIDIA_SMI=true")  # a command that exists: a GPU machine
    assert install == '.venv/bin/python -m pip install "torch>=2.4"'
    assert "torch: PyPI's default build; TORCH_INDEX=<url> or TORCH_INDEX= (PyPI) overrides it" in message


def test_torch_index_overrides_the_choice():
    _, install = torch_install("NVIDIA_SMI=no-such-command-here", "TORCH_INDEX=")
    assert install == '.venv/bin/python -m pip install "torch>=2.4"'
    _, install = torch_install("TORCH_INDEX=https://example.org/simple")
    assert install == '.venv/bin/python -m pip install --index-url https://example.org/simple "torch>=2.4"'


def test_evaluate_scores_the_named_run_and_report_gets_only_overrides():
    assert dry_run("evaluate") == [f"{CLI} evaluate", f"{CLI} report"]
    evaluate, report = dry_run("evaluate", "RUN=models:/x@champion", "ARGS=eval.max_samples=8 --other-data")
    assert evaluate == f"{CLI} evaluate --adapter models:/x@champion eval.max_samples=8 --other-data"
    assert report == f"{CLI} report eval.max_samples=8"
    evaluate, _ = dry_run("evaluate", "MODEL=outputs/smoke-1", "CONFIG=configs/smoke.yaml")
    assert evaluate == f"{CLI} evaluate --config configs/smoke.yaml --adapter outputs/smoke-1"
