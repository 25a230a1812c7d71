"""MLflow: log a run, register the multi-head model, gate and move aliases.

Idempotent by a run key (the Prefect flow run id): a retried register task finds the run and
version it already made instead of registering a duplicate.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from training.config import PromotionConfig, RegistryConfig
from training.export import CARD

RUN_KEY = "mtl.run_key"
CARD_ARTIFACT = "card"  # the exported model card, logged beside the model for cheap lookups
PACKAGE_DIRS = [str(Path(__file__).resolve().parents[1] / p) for p in ("training", "data_prep")]
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


def find_run(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'", max_results=1)
    return runs[0].info.run_id if runs else None


def existing_version(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return versions[0] if versions else None


def register_model(cfg: RegistryConfig, uri: str, artifact_root: str | None, run_key: str, export_dir: str,
                   params: dict[str, Any], metrics: dict[str, dict[str, float]],
                   artifacts: dict[str, str], challenger_alias: str,
                   extra_metrics: dict[str, float] | None = None) -> Registered:
    """Log params, metrics (dev metrics per task, plus e.g. data statistics) and the pyfunc model
    in one MLflow run; register one version."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, cfg.experiment, artifact_root)
    run_id = find_run(client, experiment_id, run_key)
    if run_id and (version := existing_version(client, cfg.model_name, run_id)):
        return _with_alias(client, cfg.model_name, version, run_id, uri, challenger_alias)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id if run_id is None else None,
                          tags={RUN_KEY: run_key}) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({metric_key(t, m): v for t, ms in metrics.items() for m, v in ms.items()})
        if extra_metrics:
            mlflow.log_metrics(extra_metrics)
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
    return Registered(name, str(version.version), run_id, uri, aliases_of(client, name, version.version))


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
    client.set_model_version_tag(model_name, version, "mtl.gate", "passed" if not reasons else "; ".join(reasons))
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
