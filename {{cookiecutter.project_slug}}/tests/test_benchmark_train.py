"""scripts/benchmark_train.py: our training path against a bare PyTorch + peft loop on the same batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "benchmark_train.py"
# The script imports the package: give its process the src/ folder pytest puts on its own path.
ENV = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
PHASES = {"data collation", "forward (backbone)", "lm_head + loss", "backward", "optimizer"}


def test_benchmark_times_both_loops_on_the_same_batches(smoke_config, tiny_model, tmp_path):
    config = smoke_config()
    out = tmp_path / "benchmark_train.json"
    overrides = [f"data.path={config.data.path}", f"model.base_model={tiny_model}", "train.batch_size=8"]
    command = [sys.executable, str(SCRIPT), "--config", "configs/smoke.yaml", "--steps", "3", "--warmup", "1"]
    result = subprocess.run(
        [*command, "--out", str(out), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[1],
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    ours, bare = record["ours"], record["bare"]
    assert ours["tokens"] == bare["tokens"] > 3 * 8 * 20  # exactly the same 3 timed batches of 8 rows
    assert 0 <= ours["padding_share"] == bare["padding_share"] < 0.5
    for side in (ours, bare):
        assert side["tokens_per_s"] > 0 and side["seconds_per_step"] > 0 and side["peak_memory_gb"] > 0
        assert set(side["phases_ms"]) == PHASES and side["phases_ms"]["forward (backbone)"] > 0
        assert any("aten::" in line for line in side["top_operators"])
        assert 0 < side["mfu"] < 1 and side["flops_per_token"] == ours["flops_per_token"]  # the same model
    assert record["matmul_peak_gflops"] > 0
    assert f"MFU: ours {ours['mfu']:.1%}, bare {bare['mfu']:.1%}" in result.stdout
    assert record["ratio_ours_over_bare"] == round(ours["tokens_per_s"] / bare["tokens_per_s"], 3)
    assert f"ours / bare tokens/s: {ours['tokens_per_s'] / bare['tokens_per_s']:.2f}" in result.stdout
    assert record["precision"] == "fp32" and record["steps"] == 3  # smoke.yaml's precision


def test_benchmark_refuses_a_bad_step_count():
    command = [sys.executable, str(SCRIPT), "--steps", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2 and "--steps must be at least 1" in result.stderr
