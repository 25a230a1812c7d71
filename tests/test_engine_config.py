"""The DeepSpeed config: typed fields, the shipped JSON files, and refusals with reasons."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import DeepSpeedConfig, TrainingConfig, deepspeed_problems, training_problems
from training.trainer.engine import deepspeed_config
from training.launch.launcher import launch_command

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "infra" / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_shipped_json_is_taken_as_it_says(path):
    shipped = json.loads(path.read_text())
    ds = DeepSpeedConfig(config_file=str(path))
    assert deepspeed_problems(ds, cuda=False) == []
    out = deepspeed_config(ds, TrainingConfig(micro_batch_size=8, steps=100))
    assert out["zero_optimization"]["stage"] == shipped["zero_optimization"]["stage"]
    assert out["bf16"]["enabled"] == shipped["bf16"]["enabled"]
    assert out["train_micro_batch_size_per_gpu"] == 8
    assert out["scheduler"]["params"]["total_num_steps"] == 100
    offload = "offload_optimizer" in shipped["zero_optimization"]
    assert ("offload_optimizer" in out["zero_optimization"]) == offload
    assert ("optimizer" in out) == offload  # DeepSpeed's CPU Adam, built from this entry
    for key, value in shipped["zero_optimization"].items():  # tuning keys survive
        if not key.startswith("offload"):
            assert out["zero_optimization"][key] == value


def test_explicit_fields_win_over_the_file():
    ds = DeepSpeedConfig(config_file=str(ROOT / "infra/deepspeed/zero3_offload.json"), zero_stage=3,
                         offload_params=False, precision="bf16")
    out = deepspeed_config(ds, TrainingConfig())
    assert "offload_param" not in out["zero_optimization"] and out["bf16"]["enabled"]
    assert DeepSpeedConfig(config_file=str(ROOT / "infra/deepspeed/zero1.json")).resolved().zero_stage == 1
    assert DeepSpeedConfig().resolved().zero_stage == 2


def test_fp16_without_cuda_is_refused_with_a_reason():
    (problem,) = deepspeed_problems(DeepSpeedConfig(precision="fp16"), cuda=False)
    assert problem.startswith("deepspeed.precision: fp16 needs a CUDA GPU")
    assert deepspeed_problems(DeepSpeedConfig(precision="fp16"), cuda=True) == []
    assert deepspeed_problems(DeepSpeedConfig(precision="bf16"), cuda=False) == []


def test_impossible_offload_and_multi_node_settings_are_refused(tmp_path):
    assert "only in ZeRO stage 3" in deepspeed_problems(DeepSpeedConfig(offload_params=True), cuda=False)[0]
    assert "stage 1, 2 or 3" in deepspeed_problems(
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True), cuda=False)[0]
    assert "not found" in deepspeed_problems(DeepSpeedConfig(config_file=str(tmp_path / "x.json")))[0]
    problems = training_problems(TrainingConfig(nodes=2, node_rank=2))
    assert any(p.startswith("training.master_port") for p in problems)
    assert any(p.startswith("training.node_rank") for p in problems)


def test_launch_commands_per_node():
    two = TrainingConfig(nodes=2, processes=1, node_rank=1, master_port=29511, master_addr="10.0.0.1")
    cmd = launch_command(two, "spec.json", 29511, hostfile="hosts")
    assert {"--no_ssh", "--node_rank=1", "--num_nodes=2", "--hostfile=hosts", "--master_addr=10.0.0.1"} <= set(cmd)
    torch_cmd = launch_command(two.model_copy(update={"launcher": "torchrun"}), "spec.json", 29511)
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=1"} <= set(torch_cmd)
    assert cmd[-3:] == torch_cmd[-3:] == ["training.trainer.worker", "--spec", "spec.json"]


@pytest.mark.parametrize("num_params", [22_713_217, 4_000_003, 9_999_999_999])
def test_bucket_sizes_scale_with_the_model_and_keep_zero_alignment(num_params):
    cfg = deepspeed_config(DeepSpeedConfig(zero_stage=2), TrainingConfig(), num_params=num_params)
    zero = cfg["zero_optimization"]
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size"):
        # ZeRO-1/2 assert the all-gather bucket is a multiple of their start alignment
        assert zero[key] % 1024 == 0, (key, zero[key])
        assert 1e6 - 1024 <= zero[key] <= 5e8
