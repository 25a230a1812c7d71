"""A Prefect cancellation of a training run, through the real machinery: the flow served by a
Prefect runner (`retrain_from_file.serve`, the deployments' way), a run of its deployment cancelled
through the API while it trains. The runner stops the flow's process; the launcher's whole
process group must be gone, and no DeepSpeed shared-memory buffer left, within `GONE_WITHIN_S` of
the cancel request. The figure: the measured seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from faults_support import group_of, running, wait_for, wait_gone
from helpers import stop_group, tiny_config
from training.launch.launcher import shm_buffers

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 30.0  # the runner's poll (1 s here) + its stop of the flow process + our 10 s grace


@pytest.mark.slow
def test_cancelled_flow_run_stops_its_training_group(tiny_encoder, data_dir, tmp_path, prefect_engine):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    raw = tiny_config(tiny_encoder, tmp_path / "state", data_dir, steps=100000, checkpoint_every=100000,
                      log_every=1, threads_per_process=1)
    raw["tasks"] = raw["tasks"][2:]
    raw["affinity"] = {"method": "off"}
    raw["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"  # whatever the environment says
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "runner.log", "w")
    runner = subprocess.Popen([sys.executable, "-c", "from flows.retrain import retrain_from_file; "
                               "retrain_from_file.serve(name='faults-cancel')"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            def deployed():
                try:
                    return client.read_deployment_by_name("retrain-from-file/faults-cancel")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

            wait_for(deployed, "the served deployment", limit_s=180, every_s=0.5)
            flow_run = run_deployment("retrain-from-file/faults-cancel", parameters={"config_path": str(config)},
                                      timeout=0)
            spec = wait_for(lambda: next((tmp_path / "state" / "runs").glob("*/train_metrics.jsonl"), None)
                            if (tmp_path / "state" / "runs").is_dir() else None, "training under way",
                            limit_s=400, every_s=0.1).parent / "train_spec.json"
            pgid, port = group_of(spec)
            asked = time.monotonic()
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            took = wait_gone(pgid, port, asked, limit_s=120)
            state = wait_for(lambda: (s := client.read_flow_run(flow_run.id).state) and s.is_final() and s,
                             "a final state", limit_s=120, every_s=0.5)
            # the deployment's flow (retrain_from_file) ends the MLflow run its retrain subflow opened,
            # from the runner's cancellation hooks: wait for them before the runner goes
            mlflow_run = wait_for(lambda: ended_runs(tmp_path / "state" / "mlflow.db"), "the MLflow run ended",
                                  limit_s=60, every_s=0.5)[0]
    finally:
        stop_group(runner)
        log.close()
    print(f"training group and shared memory gone {took:.2f} s after the cancel request; flow run {state.type}")
    assert not running(pgid) and not shm_buffers(port)
    assert took < GONE_WITHIN_S, f"the training group outlived the cancellation by {took:.2f} s"
    assert state.type == StateType.CANCELLED
    assert not (spec.parent / "model").exists()  # nothing exported, so nothing registered
    assert mlflow_run.info.status == "KILLED" and "CANCELL" in mlflow_run.data.tags["mtl.failure"]


def ended_runs(store: Path) -> list:
    from mlflow import MlflowClient

    if not store.is_file():
        return []
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if r.info.status != "RUNNING"]
