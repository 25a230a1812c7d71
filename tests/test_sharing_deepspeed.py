"""Every sharing strategy and every loss weighting trains the demo tasks with 2 real DeepSpeed
processes (tiny encoder, a few steps), exports, and the export predicts every task."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_prep.config import TaskDataConfig
from engine_support import prepare_tasks
from helpers import tiny_config
from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.launch.stage import train_model
from training.model.sharing import SHARING
from training.trainer.weighting import WEIGHTINGS

STEPS = 6


@pytest.fixture(scope="module")
def demo(tiny_encoder, data_dir, tmp_path_factory) -> dict[str, Any]:
    """The demo tasks (subsampled), ingested and tokenized once for the module."""
    raw = tiny_config(tiny_encoder, tmp_path_factory.mktemp("state"), data_dir)
    cfgs = [TaskDataConfig(**{**task, "max_train_examples": 64, "max_dev_examples": 16}) for task in raw["tasks"]]
    specs, features, dev = prepare_tasks(cfgs, tiny_encoder, data_dir, tmp_path_factory.mktemp("data"), 32)
    return {"specs": specs, "features": features, "dev": dev,
            "encoder": EncoderConfig(name_or_path=str(tiny_encoder), max_length=32)}


def train(demo: dict[str, Any], run_dir: Path, zero_stage: int = 2, **training: Any) -> Path:
    cfg = TrainingConfig(steps=STEPS, micro_batch_size=4, warmup_steps=1, checkpoint_every=STEPS, log_every=2,
                         processes=2, threads_per_process=1, **training)
    export = train_model(demo["encoder"], cfg, DeepSpeedConfig(zero_stage=zero_stage), demo["specs"],
                         demo["features"], run_dir, print)  # shown by pytest on failure
    return Path(export)


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines()]


def predicts_every_task(export: Path) -> dict[str, Any]:
    from training.evaluation.predict import Predictor

    out = Predictor(export).predict(["EU rejects German call to boycott British lamb ."])[0]
    assert set(out) == {"pos", "ner", "sst2"} and len(out["pos"]) == 9
    return json.loads((export / "mtl_model.json").read_text())


SHARING_CASES = {"hard": {}, "soft": {"bottleneck": 8, "l2_pull": 0.01}, "attention": {},
                 "adversarial": {}, "transfer": {"finetune_tasks": ["sst2"], "finetune_steps": 4}}


@pytest.mark.parametrize("sharing", sorted(SHARING))
def test_strategy_trains_with_two_processes(demo, tmp_path, sharing):
    export = train(demo, tmp_path, sharing=sharing, sharing_params=SHARING_CASES[sharing])
    card = predicts_every_task(export)
    assert card["sharing"] == sharing
    if sharing == "transfer":
        assert card["head_stage"] == {"pos": "multitask", "ner": "multitask", "sst2": "finetune"}
        assert [r["step"] for r in rows(tmp_path / "stage2-sst2")] == [2, 4]
        log = rows(tmp_path / "stage1")
    else:
        log = rows(tmp_path)
    assert [r["step"] for r in log] == [2, 4, 6]
    if sharing == "attention":
        weights = [log[-1][f"layer_weight.pos.{i}"] for i in range(3)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-3)
    if sharing == "adversarial":
        assert all(0.0 <= r["discriminator_accuracy"] <= 1.0 for r in log)


WEIGHTING_CASES = {"equal": {}, "static": {"weights": {"sst2": 0.5}}, "uncertainty": {}, "dwa": {"period": 2},
                   "gradnorm": {}, "pcgrad": {}}


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_weighting_trains_with_two_processes(demo, tmp_path, weighting):
    export = train(demo, tmp_path, weighting=weighting, weighting_params=WEIGHTING_CASES[weighting])
    predicts_every_task(export)
    log = rows(tmp_path)
    assert all(set(r["task_weights"]) == {"pos", "ner", "sst2"} for r in log)
    if WEIGHTINGS[weighting].needs_all_tasks:
        assert all(r["task"] == "all" and set(r["task_losses"]) == {"pos", "ner", "sst2"} for r in log)
    if weighting == "static":
        assert log[-1]["task_weights"]["sst2"] == 0.5
    if weighting == "gradnorm":
        assert sum(log[-1]["task_weights"].values()) == pytest.approx(3.0)
        assert log[-1]["task_weights"] != {"pos": 1.0, "ner": 1.0, "sst2": 1.0}
    if weighting == "uncertainty":
        assert log[-1]["task_weights"] != {"pos": 1.0, "ner": 1.0, "sst2": 1.0}


def test_all_task_steps_and_private_features_under_zero3(demo, tmp_path):
    """Partitioned parameters, several forwards before one backward, and a discriminator.
    (Gradient-based weightings are refused with ZeRO-3 at config validation.)"""
    export = train(demo, tmp_path, zero_stage=3, sharing="adversarial", weighting="dwa")
    predicts_every_task(export)
    log = rows(tmp_path)
    assert all(r["task"] == "all" and "discriminator_accuracy" in r for r in log)
