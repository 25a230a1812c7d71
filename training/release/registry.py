"""MLflow: log a run, register the multi-head model, gate and move aliases.

Idempotent by a run key (the Prefect flow run id): a retried register task finds the run and
version it already made instead of registering a duplicate.
"""
from __future__ import annotations

import json
import os
import time
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion

from training.config import PromotionConfig, RegistryConfig
from training.launch.layout import RunLayout
from training.model.export import CARD

RUN_KEY = "mtl.run_key"
CARD_ARTIFACT = "card"  # the exported model card, logged beside the model for cheap lookups
PACKAGE_DIRS = [str(Path(__file__).resolve().parents[2] / p) for p in ("training", "data_prep")]
PYFUNC_FILE = str(Path(__file__).with_name("pyfunc_model.py"))


def tracking_uri(cfg: RegistryConfig, state_dir: str) -> str:
    """Config wins, then MLFLOW_TRACKING_URI, then a sqlite store in the state directory."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    return f"sqlite:///{Path(state_dir).resolve() / 'mlflow.db'}"


def default_artifact_root(uri: str, state_dir: str) -> str | None:
    """A database store keeps artifacts in the state directory; a tracking server decides for itself."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(state_dir).resolve() / "mlartifacts").as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def metric_key(task: str, metric: str) -> str:
    return f"dev.{task}.{metric}"


@dataclass
class Registered:
    model_name: str
    version: str
    run_id: str
    tracking_uri: str
    aliases: list[str] = field(default_factory=list)
    run_url: str | None = None  # the run's page when the tracking URI is a server


def redact_uri(uri: str) -> str:
    """A tracking URI fit for a log or an artifact: credentials in it are replaced."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = "***@" + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{redact_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def find_run(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'", max_results=1)
    return runs[0].info.run_id if runs else None


def existing_version(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return versions[0] if versions else None


def run_files(run_dir: str | Path, export_dir: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """What a run folder gives the MLflow run: (artifacts by artifact folder, training logs by
    stage). Every stage's training log is found through the run layout, staged schedules included."""
    layout = RunLayout(Path(run_dir))
    logs = {stage: str(path) for stage, path in layout.metrics_files().items()}
    files = {"config": layout.config_file, CARD_ARTIFACT: Path(export_dir) / CARD}
    artifacts = {name: str(path) for name, path in files.items() if path.exists()}
    artifacts.update({"training/" + stage if stage else "training": path for stage, path in logs.items()})
    return artifacts, logs


def training_curves(logs: dict[str, str]) -> list[Metric]:
    """Step metrics from the workers' training logs: the loss of the task(s) trained at each logged
    step, the learning rate and the task weights, and each evaluation during training's dev metrics
    (`<prefix>.dev.<task>.<metric>`); a staged run's stages apart (`train.<stage>.`)."""
    out: list[Metric] = []
    for stage, path in logs.items():
        prefix = f"train.{stage}" if stage else "train"
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            step, stamp = int(row["step"]), int(1000 * row.get("time", time.time()))
            values = eval_values(prefix, row["eval"]) if "eval" in row else step_values(prefix, row)
            out += [Metric(key, float(v), stamp, step) for key, v in values.items() if v is not None]
    return out


def step_values(prefix: str, row: dict[str, Any]) -> dict[str, float | None]:
    values = {f"{prefix}.lr": row.get("lr")}
    losses = row.get("task_losses") or ({row["task"]: row["loss"]} if row.get("task") != "all" else {})
    values.update({f"{prefix}.loss.{task}": loss for task, loss in losses.items()})
    values.update({f"{prefix}.weight.{task}": w for task, w in (row.get("task_weights") or {}).items()})
    return values


def eval_values(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float | None]:
    return {f"{prefix}.{metric_key(task, metric)}": value for task, named in metrics.items()
            for metric, value in named.items()}


def register_model(cfg: RegistryConfig, uri: str, artifact_root: str | None, run_key: str, export_dir: str,
                   params: dict[str, Any], metrics: dict[str, dict[str, float]],
                   artifacts: dict[str, str], challenger_alias: str,
                   extra_metrics: dict[str, float] | None = None,
                   training_logs: dict[str, str] | None = None, run_name: str | None = None,
                   tags: dict[str, str] | None = None) -> Registered:
    """Log params, metrics (dev metrics per task, plus e.g. data statistics), the training curves
    and the pyfunc model in one MLflow run; register one version."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, cfg.experiment, artifact_root)
    run_id = find_run(client, experiment_id, run_key)
    if run_id and (version := existing_version(client, cfg.model_name, run_id)):
        return _with_alias(client, cfg.model_name, version, run_id, uri, challenger_alias)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id if run_id is None else None,
                          run_name=run_name if run_id is None else None, tags={**(tags or {}), RUN_KEY: run_key}) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({metric_key(t, m): v for t, ms in metrics.items() for m, v in ms.items()})
        if extra_metrics:
            mlflow.log_metrics(extra_metrics)
        curves = training_curves(training_logs or {})
        for start in range(0, len(curves), 1000):  # MLflow's limit per batch
            client.log_batch(run.info.run_id, metrics=curves[start:start + 1000])
        for name, path in artifacts.items():
            mlflow.log_artifact(path, artifact_path=name)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=PYFUNC_FILE, artifacts={"model_dir": export_dir},
            code_paths=PACKAGE_DIRS, pip_requirements=_requirements(),
            registered_model_name=cfg.model_name)
        run_id = run.info.run_id
    version = client.get_model_version(cfg.model_name, str(info.registered_model_version))
    return _with_alias(client, cfg.model_name, version, run_id, uri, challenger_alias)


def champion_labels(uri: str, model_name: str, alias: str) -> dict[str, list[str]] | None:
    """Each task's label list in the model holding `alias`, so a retrain keeps their ids.
    None when there is no such model yet (a database store is not created just to look)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    client = MlflowClient(uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    card = json.loads(Path(client.download_artifacts(version.run_id, f"{CARD_ARTIFACT}/{CARD}")).read_text())
    return {t["name"]: list(t["labels"]) for t in card["tasks"]}


def _with_alias(client: MlflowClient, name: str, version: ModelVersion, run_id: str, uri: str,
                alias: str) -> Registered:
    client.set_registered_model_alias(name, alias, version.version)
    experiment_id = client.get_run(run_id).info.experiment_id
    return Registered(name, str(version.version), run_id, uri, aliases_of(client, name, version.version),
                      run_url(uri, experiment_id, run_id))


def _requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ("torch", "transformers", "tokenizers", "safetensors", "pandas", "mlflow", "seqeval", "scikit-learn",
            "pydantic", "numpy", "fsspec")
    return [f"{p}=={version(p)}" for p in pkgs]


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    return sorted(client.get_model_version(name, str(version)).aliases)


def version_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    return dict(client.get_run(version.run_id).data.metrics)


# Metrics and tolerances are decimals held as binary floats: 0.8 - 0.1 is 0.7000000000000001, so
# without this slack a challenger exactly at champion - tolerance would be refused by rounding.
GATE_SLACK = 1e-9


def gate(challenger: dict[str, float], champion: dict[str, float], primary: dict[str, str],
         tolerance: float) -> list[str]:
    """Reasons the challenger may not replace the champion (empty: it may)."""
    reasons = []
    for task, metric in sorted(primary.items()):
        key = metric_key(task, metric)
        if key in champion and challenger.get(key, float("-inf")) < champion[key] - tolerance - GATE_SLACK:
            reasons.append(f"{task} {metric} {challenger.get(key, float('nan')):.4f} < champion "
                           f"{champion[key]:.4f} - {tolerance}")
    for key in champion:
        task = key.split(".")[1] if key.startswith("dev.") else None
        if task and task not in primary:
            reasons.append(f"task {task} of the champion is missing from the challenger")
            break
    return reasons


def promote_if_better(uri: str, model_name: str, version: str, primary: dict[str, str],
                      promotion: PromotionConfig) -> tuple[bool, list[str]]:
    client = MlflowClient(uri)
    candidate = client.get_model_version(model_name, version)
    try:
        champion = client.get_model_version_by_alias(model_name, promotion.alias)
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(version):
        return True, []
    reasons = [] if champion is None else gate(version_metrics(client, candidate), version_metrics(client, champion),
                                               primary, promotion.tolerance)
    verdict = "passed" if not reasons else "; ".join(reasons)
    client.set_model_version_tag(model_name, version, "mtl.gate", verdict)
    against = "no champion yet" if champion is None else f"against {promotion.alias} v{champion.version}"
    client.update_model_version(model_name, version, description=(
        f"Gate {against}, tolerance {promotion.tolerance}: "
        + ("passed, promoted to " + promotion.alias if not reasons else "refused: " + verdict)))
    if reasons:
        return False, reasons
    set_champion(uri, model_name, version, promotion.alias)
    return True, []


def set_champion(uri: str, model_name: str, version: str, alias: str = "champion") -> str | None:
    """Point `alias` at `version`; the previous holder is recorded on the new one for rollback."""
    client = MlflowClient(uri)
    client.get_model_version(model_name, version)  # fails clearly for a version that does not exist
    try:
        previous = str(client.get_model_version_by_alias(model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        previous = None
    if previous and previous != str(version):
        client.set_model_version_tag(model_name, version, f"mtl.previous_{alias}", previous)
    client.set_registered_model_alias(model_name, alias, version)
    return previous
