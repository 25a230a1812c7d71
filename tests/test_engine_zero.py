"""ZeRO 0 (bf16 autocast, token-budget batches), 1, 2 and 3 (bf16 on CPU, and ZeRO-3 with optimizer
and parameter offload to the CPU too) each train the tiny demo tasks with 2 real DeepSpeed processes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_support import metrics, tiny_tasks, train
from training.model.export import load_export

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks(tiny_encoder, data_dir, tmp_path_factory):
    return tiny_tasks(tiny_encoder, data_dir, tmp_path_factory.mktemp("tasks"))


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", [
    {"zero_stage": 0, "precision": "bf16", "training": {"max_tokens": 96}},  # autocast, engine clipping
    {"zero_stage": 1},
    {"config_file": str(ROOT / "infra/deepspeed/zero2_bf16.json")},  # stage 2 and bf16 from the file
    {"zero_stage": 3, "gradient_accumulation_steps": 2},
    {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},  # DeepSpeed's CPU Adam
], ids=["zero0-bf16-autocast-max-tokens", "zero1", "zero2-bf16-file", "zero3-accum2", "zero3-offload"])
def test_zero_stage_trains_and_exports(tiny_encoder, tasks, tmp_path, deepspeed):
    log: list[str] = []
    deepspeed = dict(deepspeed)
    training = deepspeed.pop("training", {})
    export = train(tiny_encoder, tasks, tmp_path / "run", deepspeed, log, **training)
    described = json.loads(next(l for l in log if l.startswith("engine "))[len("engine "):])
    assert described["zero_stage"] == deepspeed.get("zero_stage", 2)
    bf16 = deepspeed.get("precision") == "bf16" or "bf16" in deepspeed.get("config_file", "")
    # 2 processes: autocast where ZeRO partitions nothing (stage 0), DeepSpeed's bf16 optimizer otherwise
    assert described["mixed_precision"] == ("none" if not bf16 else "autocast" if described["zero_stage"] == 0
                                            else "deepspeed")
    offload = deepspeed.get("offload_optimizer", False)
    assert (described["offload_optimizer"], described["offload_params"]) == (offload, offload)
    assert described["optimizer"] == ("DeepSpeedCPUAdam" if offload else "AdamW (fused)")
    # ZeRO-3 in fp32 on the devices: the master weights are the parameter partition
    assert (described["zero3_master_bytes_shared"] > 0) == (described["zero_stage"] == 3 and not offload)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert all(math.isfinite(r["loss"]) for r in rows)
    if "max_tokens" in training:  # 2 steps per logged window, 2 processes, each micro-batch within budget
        # (4-row micro-batches of these tasks would pad to far more)
        assert all(r["tokens"] <= 2 * 2 * training["max_tokens"] for r in rows)
    assert rows[-1]["lr"] < rows[1]["lr"]  # warmup then decay
    assert any("training.trainer.worker" in line for line in log)
    model, _, _ = load_export(export)  # strict: every weight of the model is in the export
    weights = load_file(str(Path(export) / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())
    initial = load_file(str(tiny_encoder / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(weights["sharing.encoder." + key], initial[key])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == [
        "step_00000004", "step_00000008"]
