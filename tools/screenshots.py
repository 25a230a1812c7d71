"""`make screenshots`: what a person sees in production mode, as PNGs from headless Chromium.

Starts the test suite's servers (tests/servers.py), deploys prefect.yaml, runs `on-demand` on the
demo config shrunk to a minute (MiniLM, 8 steps, 1 process) through the worker, then shoots the
Prefect run form, the finished flow run and the MLflow run page into out/screenshots/.

Then the retraining loop as a team meets it: `on-demand` twice on two of the demo's tasks, copied
into a temporary folder (`training.init_from: champion`); between the runs SST-2's train and dev
copies gain rows with a label the champion never saw, so the second run trains, warm-starts from
v1 and is gated against it on the new dev split. Its `promotion` and `data-report` artifacts and
the MLflow page of version 2 are shot too, and small copies of those three go to docs/images/
for the README. Needs `chromium` (Debian: apt-get install chromium); not part of `make test`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import servers  # noqa: E402

OUT = ROOT / "out" / "screenshots"
DOCS = ROOT / "docs" / "images"
ON_DEMAND = "retrain-from-file/on-demand"
RUN_TIMEOUT_S = 900
PARAMS = {"config_path": "configs/demo.yaml", "steps": 8, "processes": 1, "max_train_examples": 64,
          "max_dev_examples": 32, "overrides": {"training.log_every": 2, "training.checkpoint_every": 8,
                                                "deepspeed.zero_stage": "auto", "registry.model_name": "mtl-shots",
                                                "registry.experiment": "mtl-shots"}}
LOOP_MODEL = "mtl-loop-shots"
# the slices of the demo's corpora the loop trains on: SST-2's small, so every row (the new ones
# too) is used; POS's train slice large enough to hold every tag its dev slice has (then subsampled)
LOOP_SLICES = {"pos": (("ud_en_ewt/en_ewt-ud-train.conllu", 2000), ("ud_en_ewt/en_ewt-ud-dev.conllu", 60)),
               "sst2": (("cls_sst2/train.tsv", 240), ("cls_sst2/dev.tsv", 60))}
LOOP_POS_TRAIN = 256
NEW_ROWS = 30  # per split: SST-2 sentences labelled 2, a class the champion has no output for
NEUTRAL = ["the film opens on a tuesday", "it runs for about two hours", "the story is set in a small town",
           "the cast includes several newcomers", "it was shot on location in spain"]
DOC_BYTES = 250_000  # a README image is downloaded with the page: keep each small


def shoot(url: str, name: str, height: int = 1400, width: int = 1600, budget_ms: int = 15000) -> Path:
    """One page after its scripts ran (a single-page app renders after the HTML arrives)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    path = OUT / f"{name}.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars",
                    f"--screenshot={path}", url], check=True, capture_output=True, timeout=180)
    print(f"{path}  <- {url}")
    return path


def deploy(stack: servers.Stack) -> str:
    """The work pool, a worker on it and prefect.yaml's deployments; the on-demand deployment's id."""
    from prefect.client.orchestration import SyncPrefectClient

    servers.prefect_cli(["work-pool", "create", servers.POOL, "--type", "process"], stack.env)
    stack.worker = servers.start_worker(servers.POOL, {**stack.env, **servers.worker_env()}, stack.base / "logs")
    servers.prefect_cli(["deploy", "--all"], {k: v for k, v in stack.env.items() if k != "MTL_PROJECT_DIR"})
    with SyncPrefectClient(stack.api_url) as api:
        return str(api.read_deployment_by_name(ON_DEMAND).id)


def run_on_demand(stack: servers.Stack, parameters: dict[str, Any]) -> Any:
    """Trigger on-demand with `parameters` and wait until the run is final; the finished flow run.
    Promoted, Refused and Skipped are Completed states: anything else stops the tool with the
    worker's log."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(stack.api_url) as api:
        deployment = api.read_deployment_by_name(ON_DEMAND)
        run = api.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (run := api.read_flow_run(run.id)).state.is_final():
            if time.monotonic() > deadline:
                sys.exit(f"flow run {run.name} not finished in {RUN_TIMEOUT_S} s; worker log:\n"
                         f"{servers.log_tail(stack.worker.log)}")
            time.sleep(3)
    if not run.state.is_completed():
        sys.exit(f"flow run {run.name} {run.state.name}: {run.state.message}\n{servers.log_tail(stack.worker.log)}")
    print(f"flow run {run.name}: {run.state.name} after {run.total_run_time.total_seconds():.0f} s")
    return run


def copy_slices(data: Path) -> dict[str, tuple[Path, Path]]:
    """The first sentences of each loop task's train and dev files under `data`; task -> (train, dev)."""
    from data_prep.sources import default_data_dir

    found = default_data_dir()
    if found is None:
        sys.exit("the demo corpora are needed: set MTL_DATA_DIR or put them at ../shared/data")
    copies: dict[str, tuple[Path, Path]] = {}
    for task, splits in LOOP_SLICES.items():
        paths = []
        for name, count in splits:
            text = (Path(found) / name).read_text(encoding="utf-8")
            if name.endswith(".conllu"):  # sentences end at a blank line
                kept = "\n\n".join(text.split("\n\n")[:count]).rstrip("\n") + "\n\n"
            else:  # a header line, then one example a line
                kept = "".join(text.splitlines(keepends=True)[: count + 1])
            target = data / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(kept, encoding="utf-8")
            paths.append(target)
        copies[task] = (paths[0], paths[1])
    return copies


def loop_parameters(copies: dict[str, tuple[Path, Path]], state: Path) -> dict[str, Any]:
    """The on-demand form for the loop: the demo config with two tasks read from the copies (whole
    `tasks` section replaced through `overrides`), a short single-process run, warm-started from
    the champion once there is one, in a model of its own."""
    import yaml

    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    tasks = [{**t, "train": str(copies[t["name"]][0]), "dev": str(copies[t["name"]][1])}
             for t in demo["tasks"] if t["name"] in copies]
    for task in tasks:
        if task["name"] == "pos":
            task["max_train_examples"] = LOOP_POS_TRAIN
    return {"config_path": "configs/demo.yaml", "steps": 12, "processes": 1,
            "overrides": {"tasks": tasks, "training.init_from": "champion", "training.log_every": 2,
                          "training.checkpoint_every": 12, "training.warmup_steps": 2,
                          "deepspeed.zero_stage": "auto", "storage.root": str(state),
                          "registry.model_name": LOOP_MODEL, "registry.experiment": LOOP_MODEL}}


def add_new_label(copies: dict[str, tuple[Path, Path]]) -> None:
    """SST-2's train and dev copies gain NEW_ROWS sentences each with the label 2."""
    for split in copies["sst2"]:
        with open(split, "a", encoding="utf-8") as handle:
            handle.writelines(f"{NEUTRAL[i % len(NEUTRAL)]} , part {i} .\t2\n" for i in range(NEW_ROWS))


def artifact_id(stack: servers.Stack, flow_run_id: Any, key: str) -> str:
    """The id of the artifact `key` that this flow run made (its page, not the key's latest)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with SyncPrefectClient(stack.api_url) as api:
        found = api.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    if not found:
        sys.exit(f"flow run {flow_run_id} made no artifact {key!r}; worker log:\n{servers.log_tail(stack.worker.log)}")
    return str(found[-1].id)


def shoot_loop(stack: servers.Stack, base: Path) -> dict[str, Path]:
    """Run 1 makes v1; run 2, on changed data, is gated against it. The gate and the data report
    as the Prefect UI shows them (its v1 and v2 UIs), and version 2 on MLflow; name -> PNG."""
    from mlflow import MlflowClient

    copies = copy_slices(base / "loop-data")
    parameters = loop_parameters(copies, base / "loop-state")
    run_on_demand(stack, parameters)
    add_new_label(copies)
    second = run_on_demand(stack, parameters)
    version = MlflowClient(stack.mlflow.url).get_model_version(LOOP_MODEL, "2")  # refused or promoted, it exists
    print(f"{LOOP_MODEL} v2: {version.description!r}")
    gate, report = artifact_id(stack, second.id, "promotion"), artifact_id(stack, second.id, "data-report")
    size = {"width": 1400, "height": 1600, "budget_ms": 25000}
    return {
        "gate-prefect-artifact": shoot(f"{stack.prefect.url}/artifacts/artifact/{gate}", "gate-prefect-artifact",
                                       **size),
        "gate-prefect-artifact-v2": shoot(f"{stack.prefect.url}/v2/artifacts/artifact/{gate}",
                                          "gate-prefect-artifact-v2", **size),
        "gate-mlflow-version": shoot(f"{stack.mlflow.url}/#/models/{LOOP_MODEL}/versions/2", "gate-mlflow-version",
                                     **size),
        "data-report": shoot(f"{stack.prefect.url}/artifacts/artifact/{report}", "data-report", **size),
        "data-report-v2": shoot(f"{stack.prefect.url}/v2/artifacts/artifact/{report}", "data-report-v2", **size),
    }


# README image -> (the shot in out/screenshots/, the box kept: left, top, right, bottom). Both
# Prefect UIs are shot; the README shows the default (v1), whose tables have borders. The boxes
# fit the 1400x1600 window: the page down to its side panel's end; MLflow's without its assistant.
README_IMAGES = {"gate-prefect-artifact": ("gate-prefect-artifact", (0, 0, 1400, 1040)),
                 "gate-mlflow-version": ("gate-mlflow-version", (0, 0, 1040, 1160)),
                 "data-report": ("data-report", (0, 0, 1400, 1040))}


def small_png(source: Path, target: Path, box: tuple[int, int, int, int], limit: int = DOC_BYTES) -> Path:
    """`box` of `source` in 256 colours (screens of text lose nothing visible), made smaller in
    steps until under `limit` bytes."""
    from PIL import Image

    image = Image.open(source).convert("RGB").crop(box)
    scale = 1.0
    while True:
        sized = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)),
                                                        Image.Resampling.LANCZOS)
        sized.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        if target.stat().st_size <= limit or scale < 0.5:
            break
        scale *= 0.85
    print(f"{target}  {sized.width}x{sized.height}, {target.stat().st_size // 1000} KB  <- {source.name}")
    return target


def publish() -> None:
    """docs/images/ from the latest out/screenshots/."""
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, (shot, box) in README_IMAGES.items():
        small_png(OUT / f"{shot}.png", DOCS / f"{name}.png", box)


def main() -> None:
    from mlflow import MlflowClient

    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="mtl-shots-"))
    try:
        with servers.running_stack(base) as stack:
            deployment_id = deploy(stack)
            run = run_on_demand(stack, {**PARAMS, "overrides": {**PARAMS["overrides"],
                                                                "storage.root": str(base / "state")}})
            run_id = str(run.id)
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
            shoot_loop(stack, base)
        publish()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
