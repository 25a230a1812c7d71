"""The DeepSpeed config: typed fields, the shipped JSON files, and refusals with reasons."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import (DeepSpeedConfig, EncoderConfig, TrainingConfig, batching_problems, deepspeed_problems,
                             engine_plan, training_problems)
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
    assert DeepSpeedConfig().resolved().zero_stage == "auto"  # chosen per process count: engine_plan


def test_fp16_without_cuda_is_refused_with_a_reason():
    (problem,) = deepspeed_problems(DeepSpeedConfig(precision="fp16"), cuda=False)
    assert problem.startswith("deepspeed.precision: fp16 needs a CUDA GPU")
    assert deepspeed_problems(DeepSpeedConfig(precision="fp16"), cuda=True) == []
    assert deepspeed_problems(DeepSpeedConfig(precision="bf16"), cuda=False) == []


def test_impossible_offload_and_multi_node_settings_are_refused(tmp_path):
    pinned = DeepSpeedConfig(zero_stage=2, offload_params=True)
    assert "only in ZeRO stage 3" in deepspeed_problems(pinned, cuda=False)[0]
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


@pytest.mark.parametrize("fields, world, stage, reason", [
    ({}, 1, 0, "auto: one process"),
    ({}, 4, 2, "auto: 4 processes"),
    ({"offload_params": True, "offload_optimizer": True}, 1, 3, "auto: parameter offload"),
    ({"offload_optimizer": True}, 1, 2, "auto: optimizer offload"),
    ({"zero_stage": 2}, 1, 2, "pinned by deepspeed.zero_stage"),
    ({"config_file": str(ROOT / "infra/deepspeed/zero1.json")}, 1, 1, "pinned by deepspeed.config_file"),
], ids=["one-process", "four-processes", "param-offload", "optimizer-offload", "pinned", "pinned-by-file"])
def test_zero_stage_by_need_and_the_reason(fields, world, stage, reason):
    plan = engine_plan(DeepSpeedConfig(**fields), world)
    assert (plan.zero_stage, plan.mixed_precision) == (stage, "none")
    assert plan.zero_stage_reason.startswith(reason)
    cfg = deepspeed_config(DeepSpeedConfig(**fields), TrainingConfig(), world_size=world)
    assert cfg["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("fields, world, path", [
    ({"precision": "bf16"}, 1, "autocast"),  # stage 0: fp32 parameters are the master copy
    ({"precision": "bf16", "zero_stage": 2}, 1, "autocast"),  # pinned stage, but one process partitions nothing
    ({"precision": "bf16"}, 2, "deepspeed"),  # ZeRO-2 partitions: 16-bit parameters save memory
    ({"precision": "bf16", "zero_stage": 0}, 2, "autocast"),
    ({"precision": "bf16", "offload_optimizer": True}, 1, "deepspeed"),
    ({"precision": "bf16", "mixed_precision": "deepspeed"}, 1, "deepspeed"),
    ({"precision": "fp16", "zero_stage": 0}, 1, "autocast"),
], ids=["bf16-one", "bf16-zero2-one", "bf16-two", "bf16-zero0-two", "bf16-offload", "bf16-pinned", "fp16-zero0"])
def test_mixed_precision_path_and_the_deepspeed_sections_it_writes(fields, world, path):
    ds = DeepSpeedConfig(**fields)
    assert engine_plan(ds, world).mixed_precision == path
    cfg = deepspeed_config(ds, TrainingConfig(), world_size=world)
    low = "bf16" if ds.precision == "bf16" else "fp16"
    assert cfg[low]["enabled"] == (path == "deepspeed")
    assert cfg["torch_autocast"] == {"enabled": path == "autocast",
                                     "dtype": "bfloat16" if low == "bf16" else "float16"}
    # DeepSpeed's default throughput timer would wait for the device twice a step
    assert cfg["timers"]["throughput"]["enabled"] is False


def test_a_file_with_torch_autocast_pins_the_autocast_path(tmp_path):
    path = tmp_path / "autocast.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "torch_autocast": {"enabled": True,
                                                                                     "dtype": "bfloat16"}}))
    plan = engine_plan(DeepSpeedConfig(config_file=str(path)), 4)
    assert (plan.zero_stage, plan.precision, plan.mixed_precision) == (2, "bf16", "autocast")
    assert plan.mixed_precision_reason == "pinned by deepspeed.config_file"
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"bf16": {"enabled": True}, "torch_autocast": {"enabled": True}}))
    (problem,) = deepspeed_problems(DeepSpeedConfig(config_file=str(both)), cuda=False)
    assert problem.startswith("deepspeed.config_file:") and "torch_autocast and a bf16/fp16" in problem


def test_precision_and_batching_settings_that_cannot_run_are_refused():
    (problem,) = deepspeed_problems(DeepSpeedConfig(mixed_precision="autocast"), cuda=False)
    assert problem.startswith("deepspeed.mixed_precision:") and "set precision: bf16 or fp16" in problem
    assert deepspeed_problems(DeepSpeedConfig(precision="bf16", mixed_precision="autocast"), cuda=False) == []
    assert deepspeed_problems(DeepSpeedConfig(offload_params=True), cuda=False) == []  # auto picks stage 3
    encoder = EncoderConfig(max_length=128)
    (problem,) = batching_problems(TrainingConfig(max_tokens=100), encoder)
    assert problem.startswith("training.max_tokens: 100 is below encoder.max_length (128)")
    assert batching_problems(TrainingConfig(max_tokens=128), encoder) == []
    assert batching_problems(TrainingConfig(), encoder) == []


def test_the_worker_spec_keeps_a_files_stage_and_precision():
    """The spec file the launched workers read must not turn defaults into explicit settings, which
    would override the DeepSpeed file's stage and precision."""
    from training.launch.spec import WorkerSpec

    ds = DeepSpeedConfig(config_file=str(ROOT / "infra/deepspeed/zero2_bf16.json"), gradient_clipping=0.5)
    spec = WorkerSpec(encoder=EncoderConfig(), training=TrainingConfig(), deepspeed=ds, tasks=[], features={},
                      checkpoint_dir="c", export_dir="e", metrics_file="m")
    read = WorkerSpec.model_validate_json(spec.model_dump_json()).deepspeed.resolved()
    assert (read.zero_stage, read.precision, read.gradient_clipping) == (2, "bf16", 0.5)
