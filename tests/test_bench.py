"""Every benchmark script starts as `python bench/NAME.py`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_script_starts(script):
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--out" in done.stdout


def test_throughput_bench_measures_every_precision_on_a_tiny_encoder(tmp_path, data_dir):
    """The bench runs end to end here (CPU): plain loops and pipeline configurations in fp32 and
    bf16, ZeRO-2 pinned at one process, each with its ratio to the plain loop of its precision and
    the engine's own account of what it ran."""
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--out", str(out), "--device", "cpu",
         "--encoder-config", "tiny", "--tasks", "pos,rte", "--max-tokens", "512", "--micro-batch", "2",
         "--steps", "4", "--block", "1",
         "--examples", "64", "--tiny-steps", "0", "--memory-steps", "0", "--schedule", "sequential",
         "--configs", "plain_fp32,plain_bf16,pipeline_fp32,pipeline_bf16,pipeline_zero2_bf16,pipeline_fp16"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "MTL_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["configurations"]}
    for name in ("plain_fp32", "plain_bf16", "pipeline_fp32", "pipeline_bf16", "pipeline_zero2_bf16"):
        assert rows[name]["tokens_per_s"] > 0, rows[name]
    assert rows["pipeline_bf16"]["ratio_to"] == "plain_bf16"
    assert rows["pipeline_bf16"]["ratio"] == pytest.approx(
        rows["pipeline_bf16"]["tokens_per_s"] / rows["plain_bf16"]["tokens_per_s"], abs=2e-3)
    assert rows["pipeline_fp32"]["ratio_to"] == "plain_fp32"
    assert (rows["pipeline_bf16"]["runs"]["zero_stage"], rows["pipeline_bf16"]["runs"]["mixed_precision"]) == (
        0, "autocast")
    assert (rows["pipeline_zero2_bf16"]["runs"]["zero_stage"],
            rows["pipeline_zero2_bf16"]["runs"]["zero_stage_reason"]) == (2, "pinned by deepspeed.zero_stage")
    assert "fp16 needs a CUDA GPU" in rows["pipeline_fp16"]["runs"]["error"]  # refused here, reported, not fatal
    # a token budget, not 2 rows (of at most 64 tokens) per micro-batch
    assert result["max_tokens"] == 512 and 200 < result["real_tokens_per_step"] <= 512
    assert "=== table ===" in done.stdout
