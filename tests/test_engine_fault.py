"""Kill one rank mid-training: the Prefect train task fails, Prefect retries it, and training
resumes from the last complete checkpoint to the same losses as an uninterrupted run."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from engine_support import metrics, tiny_tasks, train
from faults_support import Lines
from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig

SETTINGS = {"steps": 24, "checkpoint_every": 8, "log_every": 1, "keep_checkpoints": 3, "seed": 5}


def worker_pids(spec: Path, local_rank: int) -> list[int]:
    """Workers of this test's run only: their command line names its spec file."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
        text = [a.decode(errors="replace") for a in args]
        if "training.trainer.worker" in text and f"--local_rank={local_rank}" in text and str(spec) in text:
            found.append(int(entry.name))
    return found


def kill_rank_after_first_checkpoint(run: Path, killed: list[int], stop: threading.Event) -> None:
    marker = run / "checkpoints" / "step_00000008" / "COMPLETE"
    while not stop.is_set():
        if marker.exists():
            pids = worker_pids(run / "train_spec.json", local_rank=1)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed += pids
            if pids:
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_of_a_rank_is_retried_by_prefect_and_resumes_exactly(tiny_encoder, data_dir, tmp_path,
                                                                   prefect_engine):
    from flows.tasks import train as train_task

    tasks = tiny_tasks(tiny_encoder, data_dir, tmp_path / "tasks")
    reference = tmp_path / "reference"
    train(tiny_encoder, tasks, reference, {"zero_stage": 2}, **SETTINGS)

    run = tmp_path / "faulty"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_rank_after_first_checkpoint, args=(run, killed, stop), daemon=True)
    captured = Lines()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(captured)
    killer.start()
    try:
        export = train_task.with_options(retry_delay_seconds=1)(
            EncoderConfig(name_or_path=str(tiny_encoder), max_length=48, dropout=0.1),
            TrainingConfig(micro_batch_size=4, warmup_steps=2, processes=2, threads_per_process=1, **SETTINGS),
            DeepSpeedConfig(zero_stage=2), tasks[0], tasks[1], str(run))
    finally:
        stop.set()
        logger.removeHandler(captured)
    assert killed, "no rank was killed: the run ended before its first checkpoint was seen"
    launches = [l for l in captured.lines if l.startswith("launching:")]
    assert len(launches) == 2, "the failed attempt should be retried exactly once by Prefect"
    (resumed,) = [int(l.rsplit(" ", 1)[1]) for l in captured.lines if l.startswith("resumed from checkpoint")]
    steps_logged = [json.loads(l)["step"] for l in captured.lines if l.startswith('{"step"')]
    redone = len(steps_logged) - len(set(steps_logged))
    assert resumed in (8, 16) and redone <= SETTINGS["checkpoint_every"]
    assert sorted(set(steps_logged)) == list(range(1, 25))

    expected, got = metrics(reference), metrics(run)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 25))
    assert [r["task"] for r in got] == [r["task"] for r in expected]
    # dropout stays on (0.1): RNG state is restored per rank, so the match is to float precision
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], rel=1e-5, abs=1e-6)
    assert Path(export, "mtl_model.json").is_file()
