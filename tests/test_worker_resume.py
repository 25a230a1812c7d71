"""The worker's own loop (`training.trainer.worker.train`), run in this process as a DeepSpeed world of
one: resumed from the middle checkpoint of an uninterrupted run, it goes on exactly as that run
did (the configurations of `engine_support.RESUME_RUNS`). The launched, 2-process version is
test_engine_resume.py; this one takes seconds, so the mutation run (tools/mutation.py) uses it."""
from __future__ import annotations

import shutil

import pytest

from engine_support import RESUME_FROM, RESUME_RUNS, RESUME_SETTINGS, resume_matches, run_depends_on_resumed_state, \
    run_in_process, tiny_tasks
from training.config import DeepSpeedConfig, TrainingConfig
from training.trainer.engine import Engine
from training.launch.launcher import single_process_world
from training.model.multitask import build_model


@pytest.fixture(scope="module")
def tasks(tiny_encoder, data_dir, tmp_path_factory):
    return tiny_tasks(tiny_encoder, data_dir, tmp_path_factory.mktemp("tasks"))


def test_worlds_of_one_follow_each_other_in_one_process(tiny_encoder):
    """Each world of one starts engines, however many came before it in this process."""
    models = [build_model(str(tiny_encoder), [], "hard", 0.0) for _ in range(2)]
    for model in models:
        with single_process_world():
            Engine(model, DeepSpeedConfig(zero_stage=0), TrainingConfig(steps=2, processes=1))


@pytest.mark.parametrize("name", sorted(RESUME_RUNS))
def test_worker_resumed_in_process_goes_on_as_the_uninterrupted_run(tiny_encoder, tasks, tmp_path, name, capsys):
    settings = {**RESUME_SETTINGS, **RESUME_RUNS[name]}
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_in_process(tiny_encoder, tasks, reference, **settings)
    shutil.copytree(reference / "checkpoints" / RESUME_FROM, resumed / "checkpoints" / RESUME_FROM)
    capsys.readouterr()
    run_in_process(tiny_encoder, tasks, resumed, **settings)
    assert f"resumed from checkpoint at step {int(RESUME_FROM.split('_')[1])}" in capsys.readouterr().out
    resume_matches(reference, resumed)
    run_depends_on_resumed_state(name, reference)
