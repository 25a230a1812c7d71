"""Every benchmark script starts as `python bench/NAME.py`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")),
                         ids=lambda p: p.name)  # _name.py: what the scripts share, not a script
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


def test_inference_bench_times_the_flows_evaluate_task_on_the_demo_dev_splits(tmp_path, data_dir):
    """The evaluate arm alone (`--arms evaluate`) at a tiny export of the demo's tasks: the flow's
    `evaluate_export` over the first rows of each demo dev split, on the policy's device (forced to
    the CPU here), each call timed with the export's load, per 1,000 rows. Timings are not judged."""
    out = tmp_path / "evaluate.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--out", str(out), "--arms", "evaluate",
         "--evaluate-exports", "tiny", "--eval-examples", "8", "--eval-repeats", "1", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "MTL_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["arms"] == ["evaluate"] and "encoders" not in result and "served_vs_plain" not in result
    ev = result["evaluate"]
    assert (ev["config"], ev["device"], ev["precision"], ev["max_tokens"]) == ("configs/demo.yaml", "cpu", "fp32", 2048)
    [tiny] = ev["exports"]
    assert tiny["export"] == "tiny" and tiny["tasks"] == ["pos", "ner", "sst2"]
    assert tiny["rows"] == {"pos": 8, "ner": 8, "sst2": 8} and tiny["total_rows"] == 24
    assert (tiny["max_length"], tiny["eval_batch_size"], tiny["repeats"]) == (64, 64, 1)
    # the flow's metrics, one set per task (untrained heads: the values mean nothing)
    assert set(tiny["metrics"]["ner"]) >= {"entity_f1"} and set(tiny["metrics"]["sst2"]) >= {"accuracy"}
    for figure in ("first_call_s", "median_s", "load_export_s"):
        assert tiny[figure]["wall"] > 0 and tiny[figure]["cpu"] > 0, figure
    assert tiny["wall_s_per_1000_rows"] == pytest.approx(1000 * tiny["median_s"]["wall"] / 24, rel=1e-2)
    assert "the flow's evaluate task" in done.stdout.split("=== table ===")[1]


def test_heads_scaling_bench_measures_each_number_of_heads(tmp_path, data_dir):
    """The bench runs end to end here at K = 1, 2 on a tiny encoder: both kinds of training steps for
    each K over the same batches, then per K a real training run in its own process (peak memory,
    checkpoint and export bytes, evaluation's share), its MLflow run logged and counted, and the export
    loaded as a Predictor and as the registered pyfunc. Timings are not judged."""
    out = tmp_path / "heads.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "heads_scaling.py"), "--out", str(out), "--device", "cpu",
         "--heads", "1,2", "--eval-heads", "", "--tasks", "pos,sst2", "--steps", "6", "--block", "2",
         "--all-task-batches", "8", "--all-task-block", "2", "--train-examples", "64", "--dev-examples", "16",
         "--eval-every", "4", "--eval-max-examples", "8", "--load-repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "MTL_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    one, two = result["throughput"]["rows"]
    assert (one["heads"], two["heads"], one["sampled_ratio"], one["all_tasks_ratio"]) == (1, 2, 1.0, 1.0)
    assert two["head_parameters"] == 2 * one["head_parameters"]  # copies of SST-2's head
    assert two["parameters"] - one["parameters"] == one["head_parameters"]  # one encoder
    for row in (one, two):
        assert row["sampled_tokens_per_s"] > 0 and row["all_tasks_tokens_per_s"] > 0
        assert row["sampled_timed_steps"] == 4  # 6 steps in blocks of 2, the first block warms up
    # the same 6 timed task micro-batches: 6 steps of one head, 3 steps of both
    assert (one["all_tasks_timed_steps"], two["all_tasks_timed_steps"]) == (6, 3)
    small, large = result["runs"]["rows"]
    assert (small["tasks"], large["tasks"]) == (["pos"], ["pos", "sst2"])
    for run in (small, large):
        assert run["evaluations"] == 1 and run["steps"] == 4 and 0 < run["eval_share"] < 1
        assert run["peak_rss_bytes"] > run["rss_after_imports_bytes"] > 0
        assert run["checkpoints"] == ["step_00000004"] and run["export_sharing"] == "hard"
        assert run["predictor_load_s"] > 0 and run["pyfunc_load_s"] > 0
        counts = run["mlflow"]
        assert counts["metric_keys"] == sum(counts["metric_keys_by_group"].values())
        assert counts["metric_keys_by_group"]["train.lr"] == 1 and counts["metric_points"] >= counts["metric_keys"]
    assert (small["eval_examples"], large["eval_examples"]) == (8, 16)
    assert large["checkpoint_bytes"] > small["checkpoint_bytes"]
    assert large["export_weights_bytes"] > small["export_weights_bytes"]
    assert large["mlflow"]["params"] > small["mlflow"]["params"]
    assert large["mlflow"]["metric_keys"] > small["mlflow"]["metric_keys"]
    assert isinstance(result["runs"]["memory_growth_per_head_bytes"], int)
    # no K = 32 or 9 here: no verdict on the targets
    assert result["sampled_target_met"] is None and result["eval_share_at_9"] is None
    assert "=== table ===" in done.stdout
