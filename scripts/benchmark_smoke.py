"""Time the default project's smoke pipeline stage by stage: bake, data, train, evaluate.

    .venv/bin/python scripts/benchmark_smoke.py [--keep DIR]

Prints wall seconds and peak resident memory per stage (each stage is its own process, as a user
runs it), and the total against the 90 s target on 2 CPU cores. Installation is excluded: run it
in the template's environment (`make install`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 90


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run one stage; return (wall seconds, peak RSS in MiB) of its process tree's largest process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"stage failed: {' '.join(command)}\n{process.stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="bake into this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="llm-portfolio-bench-"))

    start = time.perf_counter()
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out), overwrite_if_exists=True))
    rows = [("bake", time.perf_counter() - start, 0.0)]

    package = next((project / "src").iterdir()).name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(project / "src")}
    cli = [sys.executable, "-m", package]
    stages = {
        "data": [*cli, "data", "synth", "--out", "data/shop_extraction"],
        "train": [*cli, "train", "--config", "configs/smoke.yaml"],
        "evaluate": [*cli, "evaluate", "--config", "configs/smoke.yaml"],
    }
    for name, command in stages.items():
        rows.append((name, *timed(command, project, env)))

    total = sum(seconds for _, seconds, _ in rows)
    print(f"smoke pipeline of {project.name} on {os.cpu_count()} CPU cores (install excluded)")
    print(f"{'stage':<10}{'seconds':>10}{'peak MiB':>10}")
    for name, seconds, peak in rows:
        print(f"{name:<10}{seconds:>10.1f}{peak:>10.0f}")
    verdict = "within" if total <= TARGET_SECONDS else "OVER"
    print(f"{'total':<10}{total:>10.1f}   {verdict} the {TARGET_SECONDS} s target ({total / TARGET_SECONDS:.2f}x)")


if __name__ == "__main__":
    main()
