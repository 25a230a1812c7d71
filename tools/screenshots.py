"""`make screenshots`: what a person sees in production mode, as PNGs from headless Chromium.

Starts the test suite's servers (tests/servers.py), deploys prefect.yaml, runs `on-demand` on the
demo config shrunk to a minute (MiniLM, 8 steps, 1 process) through the worker, then shoots the
Prefect run form, the finished flow run and the MLflow run page into out/screenshots/. Needs
`chromium` (Debian: apt-get install chromium); not part of `make test`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import servers  # noqa: E402

OUT = ROOT / "out" / "screenshots"
PARAMS = {"config_path": "configs/demo.yaml", "steps": 8, "processes": 1, "max_train_examples": 64,
          "max_dev_examples": 32, "overrides": {"training.log_every": 2, "training.checkpoint_every": 8,
                                                "deepspeed.zero_stage": "auto", "registry.model_name": "mtl-shots",
                                                "registry.experiment": "mtl-shots"}}


def shoot(url: str, name: str, height: int = 1400) -> Path:
    """One page after its scripts ran (a single-page app renders after the HTML arrives)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    path = OUT / f"{name}.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--window-size=1600,{height}", "--virtual-time-budget=15000", "--hide-scrollbars",
                    f"--screenshot={path}", url], check=True, capture_output=True, timeout=120)
    print(f"{path}  <- {url}")
    return path


def run_on_demand(stack: servers.Stack, state: Path) -> tuple[str, str]:
    """Deploy, trigger on-demand, wait for it; (deployment id, flow run id)."""
    from prefect.client.orchestration import SyncPrefectClient

    servers.prefect_cli(["work-pool", "create", servers.POOL, "--type", "process"], stack.env)
    stack.worker = servers.start_worker(servers.POOL, {**stack.env, **servers.worker_env()}, stack.base / "logs")
    servers.prefect_cli(["deploy", "--all"], {k: v for k, v in stack.env.items() if k != "MTL_PROJECT_DIR"})
    with SyncPrefectClient(stack.api_url) as api:
        deployment = api.read_deployment_by_name("retrain-from-file/on-demand")
        params = {**PARAMS, "overrides": {**PARAMS["overrides"], "storage.root": str(state)}}
        run = api.create_flow_run_from_deployment(deployment.id, parameters=params)
        deadline = time.monotonic() + 900
        while not (state_now := api.read_flow_run(run.id).state).is_final():
            if time.monotonic() > deadline:
                sys.exit(f"flow run not finished in 15 min; worker log:\n{servers.log_tail(stack.worker.log)}")
            time.sleep(3)
    if not state_now.is_completed():
        sys.exit(f"flow run {state_now.name}: {state_now.message}\n{servers.log_tail(stack.worker.log)}")
    return str(deployment.id), str(run.id)


def main() -> None:
    from mlflow import MlflowClient

    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="mtl-shots-"))
    try:
        with servers.running_stack(base) as stack:
            deployment_id, run_id = run_on_demand(stack, base / "state")
            version = MlflowClient(stack.mlflow.url).get_model_version_by_alias("mtl-shots", "champion")
            experiment = MlflowClient(stack.mlflow.url).get_run(version.run_id).info.experiment_id
            # the v2 UI: v1 draws this form under a dimming overlay in headless Chromium
            shoot(f"{stack.prefect.url}/v2/deployments/deployment/{deployment_id}/run", "prefect-run-form", 2000)
            shoot(f"{stack.prefect.url}/runs/flow-run/{run_id}", "prefect-flow-run")
            shoot(f"{stack.mlflow.url}/#/experiments/{experiment}/runs/{version.run_id}", "mlflow-run")
            shoot(f"{stack.mlflow.url}/#/models/mtl-shots/versions/{version.version}", "mlflow-model-version")
            # the curves (train.loss.<task>, lr, task weights) and the flow run's link to its MLflow run
            shoot(f"{stack.mlflow.url}/#/experiments/{experiment}/runs/{version.run_id}/model-metrics",
                  "mlflow-run-curves", 2400)
            shoot(f"{stack.prefect.url}/artifacts/key/mlflow-run-link", "prefect-mlflow-link")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
