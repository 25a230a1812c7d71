"""A resumed launched run (2 real DeepSpeed processes) goes on exactly as the uninterrupted one,
with a weighting that keeps state (`dwa`) and with sampled steps under learned loss weights and
the `temperature` sampler (`engine_support.RESUME_RUNS`). The resumed run starts from a copy of
the uninterrupted run's middle checkpoint (what a retry finds after a crash; test_engine_fault.py
kills a real rank), so both see the same weights, optimizer, data counters, weighting state and
RNG state, and the match is to float precision. test_worker_resume.py runs the same in process."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine_support import (RESUME_FROM, RESUME_RUNS, RESUME_SETTINGS, resume_matches, run_depends_on_resumed_state,
                            tiny_tasks, train)


@pytest.fixture(scope="module")
def tasks(tiny_encoder, data_dir, tmp_path_factory):
    return tiny_tasks(tiny_encoder, data_dir, tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module", params=sorted(RESUME_RUNS))
def runs(request, tiny_encoder, tasks, tmp_path_factory) -> tuple[str, Path, Path, list[str]]:
    """(configuration, uninterrupted run, resumed run, the resumed run's log)."""
    root = tmp_path_factory.mktemp(request.param)
    reference, resumed = root / "uninterrupted", root / "resumed"
    settings = {**RESUME_SETTINGS, **RESUME_RUNS[request.param]}
    train(tiny_encoder, tasks, reference, {"zero_stage": 2}, **settings)
    shutil.copytree(reference / "checkpoints" / RESUME_FROM, resumed / "checkpoints" / RESUME_FROM)
    log: list[str] = []
    train(tiny_encoder, tasks, resumed, {"zero_stage": 2}, log, **settings)
    return request.param, reference, resumed, log


@pytest.mark.slow
def test_resumed_run_logs_and_exports_what_the_uninterrupted_run_did(runs):
    _, reference, resumed, log = runs
    assert f"resumed from checkpoint at step {int(RESUME_FROM.split('_')[1])}" in log
    resume_matches(reference, resumed)


@pytest.mark.slow
def test_the_runs_depend_on_the_state_a_resume_restores(runs):
    name, reference, _, _ = runs
    run_depends_on_resumed_state(name, reference)
