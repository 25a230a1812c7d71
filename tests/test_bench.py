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


def test_inference_bench_compares_one_multi_head_pass_with_one_model_per_task(tmp_path, data_dir):
    """The bench runs end to end here at a tiny size: for every K both paths report the multi-head
    model's time, one single-task model's and K models', the ratios computed from them, and every
    arm predicts the same labels (the same heads on the same inputs). Timings are not judged."""
    out = tmp_path / "inference.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--out", str(out), "--encoders", "tiny",
         "--examples", "12", "--batch-size", "8", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "MTL_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["examples"], result["threads"], result["targets"]) == (12, 1, {"ratio (forward, every K)": "<= 1.3"})
    [tiny] = result["encoders"]
    assert tiny["encoder"] == "tiny" and tiny["same_predictions"] is True
    assert tiny["batches"] == 2 and 0 < tiny["real_tokens"] <= tiny["padded_tokens"]
    assert [row["tasks"] for row in tiny["rows"]] == [2, 3, 4]
    assert tiny["rows"][-1]["task_names"] == ["pos", "sst2", "ner", "trec"]
    for row in tiny["rows"]:
        for path in ("forward", "predict"):
            r = row[path]
            singles = [tiny["seconds"][f"{path}/single/{t}"]["cpu"] for t in row["task_names"]]
            assert r["multi_s"] == pytest.approx(tiny["seconds"][f"{path}/multi{row['tasks']}"]["cpu"], rel=1e-3)
            assert r["k_models_s"] == pytest.approx(sum(singles), rel=1e-3)
            assert r["single_model_s"] == pytest.approx(sum(singles) / len(singles), rel=1e-3)
            assert r["ratio"] == pytest.approx(r["multi_s"] / r["single_model_s"], rel=1e-3)
            assert r["speedup_over_k_models"] == pytest.approx(r["k_models_s"] / r["multi_s"], rel=1e-3)
            walls = [tiny["seconds"][f"{path}/single/{t}"]["wall"] for t in row["task_names"]]
            multi_wall = tiny["seconds"][f"{path}/multi{row['tasks']}"]["wall"]
            assert r["wall_ratio"] == pytest.approx(multi_wall * len(walls) / sum(walls), rel=1e-3)
    assert result["max_ratio"] == max(row["forward"]["ratio"] for row in tiny["rows"])
    assert result["target_met"] == (result["max_ratio"] <= 1.3)
    assert "=== table ===" in done.stdout
