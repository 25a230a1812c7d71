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
from training.launch.train import train_model
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
    # torchrun: the deepspeed runner's extra interpreters add seconds a launch (engine_support.train)
    cfg = TrainingConfig(steps=STEPS, micro_batch_size=4, warmup_steps=1, checkpoint_every=STEPS, log_every=2,
                         processes=2, threads_per_process=1, launcher="torchrun", **training)
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
                 "adversarial": {}, "multi_encoder": {"task_encoders": ["sst2"]}}
WEIGHTING_CASES = {"equal": {}, "static": {"weights": {"sst2": 0.5}}, "uncertainty": {}, "dwa": {"period": 2},
                   "gradnorm": {}, "pcgrad": {}}
# Every strategy and every weighting in one launched run or more, paired so that each run checks one
# of each (a launch costs most of a test's time): the gradient-based weightings with strategies that
# hold private parameters, the sampled-step ones with the others. ZeRO-3 with adversarial and dwa is
# test_all_task_steps_and_private_features_under_zero3.
PAIRS = [("hard", "equal"), ("soft", "static"), ("attention", "uncertainty"), ("adversarial", "gradnorm"),
         ("multi_encoder", "pcgrad"), ("hard", "dwa")]


def test_the_pairs_cover_every_strategy_and_every_weighting():
    assert {s for s, _ in PAIRS} == set(SHARING) == set(SHARING_CASES)
    assert {w for _, w in PAIRS} == set(WEIGHTINGS) == set(WEIGHTING_CASES)


@pytest.mark.parametrize(("sharing", "weighting"), PAIRS, ids=[f"{s}-{w}" for s, w in PAIRS])
def test_strategy_and_weighting_train_with_two_processes(demo, tmp_path, sharing, weighting):
    export = train(demo, tmp_path, sharing=sharing, sharing_params=SHARING_CASES[sharing], weighting=weighting,
                   weighting_params=WEIGHTING_CASES[weighting])
    card = predicts_every_task(export)
    assert card["sharing"] == sharing
    log = rows(tmp_path)
    assert [r["step"] for r in log] == [2, 4, 6]
    if sharing == "attention":
        weights = [log[-1][f"layer_weight.pos.{i}"] for i in range(3)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-3)
    if sharing == "adversarial":
        assert all(0.0 <= r["discriminator_accuracy"] <= 1.0 for r in log)
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


def test_mtdnn_schedule_fine_tunes_from_the_multitask_stage(demo, tmp_path):
    """The staged schedule: a multi-task stage, then sst2 fine-tuned from its export; one assembled
    export whose card says where each head comes from."""
    export = train(demo, tmp_path, schedule="mtdnn", schedule_params={"finetune_tasks": ["sst2"], "finetune_steps": 4})
    card = predicts_every_task(export)
    assert card["sharing"] == "multi_encoder" and card["sharing_params"] == {"task_encoders": ["sst2"]}
    assert card["head_stage"] == {"pos": "multitask", "ner": "multitask", "sst2": "finetune-sst2"}
    stages = {s["name"]: s for s in card["schedule"]["stages"]}
    tuned = stages["finetune-sst2"]
    assert tuned["init_from"] == "multitask" and tuned["init_task"] == "sst2" and tuned["steps"] == 4
    assert [r["step"] for r in rows(tmp_path / "stages" / "multitask")] == [2, 4, 6]
    assert [r["step"] for r in rows(tmp_path / "stages" / "finetune-sst2")] == [2, 4]
    assert not (tmp_path / "train_metrics.jsonl").exists()
    # every stage's training log reaches the MLflow run, as curves and as files
    from mlflow import MlflowClient

    from training.config import RegistryConfig
    from training.release.registry import register_model, run_files

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts, logs = run_files(tmp_path, export)
    registered = register_model(RegistryConfig(experiment="staged", model_name="staged"), uri,
                                (tmp_path / "artifacts").as_uri(), "staged-run", str(export), {}, {}, artifacts,
                                "challenger", None, logs)
    client = MlflowClient(uri)
    history = lambda key: [m.step for m in client.get_metric_history(registered.run_id, key)]  # noqa: E731
    assert history("train.finetune-sst2.loss.sst2") == [2, 4]
    assert history("train.multitask.lr") == [2, 4, 6]
    # every task trained in a log window has its point at that log step (more than one task per row)
    points = {t: history(f"train.multitask.loss.{t}") for t in ("pos", "ner", "sst2")}
    assert all(set(p) <= {2, 4, 6} for p in points.values()) and sum(map(len, points.values())) > 3, points
    files = {f.path for f in client.list_artifacts(registered.run_id, "training")}
    assert files == {"training/multitask", "training/finetune-sst2"}


def test_all_task_steps_and_private_features_under_zero3(demo, tmp_path):
    """Partitioned parameters, several forwards before one backward, and a discriminator.
    (Gradient-based weightings are refused with ZeRO-3 at config validation.)"""
    export = train(demo, tmp_path, zero_stage=3, sharing="adversarial", weighting="dwa")
    predicts_every_task(export)
    log = rows(tmp_path)
    assert all(r["task"] == "all" and "discriminator_accuracy" in r for r in log)
