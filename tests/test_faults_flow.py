"""The flow process SIGKILLed mid-training, then `mtl run --resume RUN_DIR`: the watchdog stops
the orphaned training group within seconds, and the rerun resumes from the run's own newest
checkpoint (at most one checkpoint interval redone) and registers the model. Then that run's
newest checkpoint is damaged and the export removed: training resumes from the previous sound
checkpoint and never loads the damaged one. Figures: seconds until the group is gone, steps redone."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from faults_support import Lines, group_of, wait_for, wait_gone
from helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 4
GONE_WITHIN_S = 10.0  # the guard polls every 0.1 s, then SIGTERM, 3 s grace, SIGKILL


def flow_env() -> dict[str, str]:
    """The test's Prefect server (prefect_test_harness) for the launched flow, this checkout first."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def steps_in(run: Path) -> list[int]:
    path = run / "train_metrics.jsonl"
    return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


@pytest.fixture(scope="module")
def killed(tiny_encoder, data_dir, tmp_path_factory, prefect_engine):
    """`mtl run` in its own process, SIGKILLed once its first checkpoint is complete."""
    base = tmp_path_factory.mktemp("killed")
    raw = tiny_config(tiny_encoder, base / "state", data_dir, steps=STEPS, checkpoint_every=EVERY, log_every=1,
                      keep_checkpoints=3, threads_per_process=1)
    raw["affinity"] = {"method": "off"}
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    log = open(base / "flow.log", "w")
    flow = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], env=flow_env(), cwd=base,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        marker = wait_for(lambda: next((base / "state" / "runs").glob(f"*/checkpoints/step_{EVERY:08d}/COMPLETE"),
                                       None) if (base / "state" / "runs").is_dir() else None,
                          "a first complete checkpoint", every_s=0.02)
        run = marker.parents[2]
        pgid, port = group_of(run / "train_spec.json")
        os.kill(flow.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        flow.wait()
    finally:
        if flow.poll() is None:
            flow.kill()
        log.close()
    gone_s = wait_gone(pgid, port, killed_at)
    from training.trainer.checkpoints import local_complete_tags

    return {"config": config, "run": run, "gone_s": gone_s, "pgid": pgid, "port": port,
            "tags": local_complete_tags(run / "checkpoints"), "last_step": max(steps_in(run))}


@pytest.fixture(scope="module")
def resumed(killed):
    from flows.cli import main
    import flows.retrain  # noqa: F401 - its import sets Prefect's logging up anew: attach after it

    captured = Lines()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(captured)
    summary = killed["run"].parent.parent / "resumed-summary.json"
    try:
        code = main(["run", str(killed["config"]), "--resume", str(killed["run"]), "--summary", str(summary)])
    finally:
        logger.removeHandler(captured)
    return {"code": code, "summary": json.loads(summary.read_text()), "lines": captured.lines}


@pytest.mark.slow
def test_sigkilled_flow_leaves_no_training_behind(killed):
    from faults_support import running
    from training.launch.launcher import shm_buffers

    assert not running(killed["pgid"]) and not shm_buffers(killed["port"])
    assert killed["gone_s"] < GONE_WITHIN_S, f"the training group outlived the flow by {killed['gone_s']:.2f} s"
    assert killed["last_step"] < STEPS, "the flow was killed after training ended: nothing to resume"
    print(f"training group gone {killed['gone_s']:.2f} s after the flow's SIGKILL, at step {killed['last_step']}")


@pytest.mark.slow
def test_rerun_with_resume_goes_on_from_its_own_last_checkpoint_and_registers(killed, resumed):
    assert resumed["code"] == 0
    (at,) = [int(l.rsplit(" ", 1)[1]) for l in resumed["lines"] if l.startswith("resumed from checkpoint")]
    assert f"step_{at:08d}" == killed["tags"][-1]
    redone = killed["last_step"] - at
    print(f"resumed at step {at}; {redone} step(s) redone (checkpoint every {EVERY})")
    assert 0 <= redone <= EVERY
    assert steps_in(killed["run"]) == list(range(1, STEPS + 1))  # the log has each step once
    summary = resumed["summary"]
    assert summary["run_dir"] == str(killed["run"]) and summary["version"] == "1" and summary["promoted"]
    assert len([l for l in resumed["lines"] if l.startswith("launching:")]) == 1


@pytest.mark.slow
def test_resume_refuses_a_folder_of_another_config(killed, resumed, tmp_path, capsys):
    from flows.cli import main

    other = yaml.safe_load(killed["config"].read_text())
    other["training"]["steps"] = STEPS + 4
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    assert main(["run", str(path), "--resume", str(killed["run"])]) == 2
    assert "training: differs from the config" in capsys.readouterr().err
    # the refused flow run opened no MLflow run, and the finished one it aimed at stays as it was
    from mlflow import MlflowClient

    summary = resumed["summary"]
    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and "mtl.failure" not in run.data.tags


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_never_loaded_resume_takes_the_previous(killed, resumed):
    """The finished run again, its export removed and its newest checkpoint damaged on disk."""
    import shutil

    from training.launch.spec import WorkerSpec
    from training.launch.train import train_model
    from training.trainer.checkpoints import local_complete_tags

    run = killed["run"]
    tags = local_complete_tags(run / "checkpoints")
    assert tags[-1] == f"step_{STEPS:08d}"
    shutil.rmtree(run / "model")
    optim = sorted((run / "checkpoints" / tags[-1]).glob("*optim_states.pt"))[0]
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optim.write_bytes(bytes(data))
    spec = WorkerSpec.model_validate_json((run / "train_spec.json").read_text())
    lines: list[str] = []
    train_model(spec.encoder, spec.training, spec.deepspeed, spec.tasks, spec.features, run, lines.append, spec.dev)
    damaged = [l for l in lines if "is damaged, not loading it" in l]
    assert len(damaged) == 1 and tags[-1] in damaged[0] and optim.name in damaged[0]
    (at,) = [int(l.rsplit(" ", 1)[1]) for l in lines if l.startswith("resumed from checkpoint")]
    assert f"step_{at:08d}" == tags[-2] and STEPS - at == EVERY
    assert (run / "model" / "mtl_model.json").is_file() and steps_in(run) == list(range(1, STEPS + 1))
