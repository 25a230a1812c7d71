"""`training.warmup_steps: 0` (no warm-up) is a valid config; DeepSpeed's warm-up scheduler
refuses 0 steps, so the engine must not hand it over as it is (the worker would fail after
launch, with DeepSpeed's message rather than a config error)."""
from __future__ import annotations

from training.config import DeepSpeedConfig, TrainingConfig, training_problems
from training.trainer.engine import Engine, deepspeed_config
from training.launch.launcher import single_process_world
from training.model.multitask import build_model
from training.task_spec import TaskSpec


def test_no_warm_up_is_valid_and_starts_an_engine(tiny_encoder):
    train = TrainingConfig(steps=4, warmup_steps=0, processes=1)
    assert training_problems(train) == []
    assert deepspeed_config(DeepSpeedConfig(), train)["scheduler"]["params"]["warmup_num_steps"] >= 1
    spec = TaskSpec(name="cls", type="sequence_classification", labels=["a", "b"])
    with single_process_world():
        engine = Engine(build_model(str(tiny_encoder), [spec], "hard", 0.0), DeepSpeedConfig(zero_stage=0), train)
    assert engine.describe()["zero_stage"] == 0
