"""MLflow: one run per flow run (opened at its start, closed at its end), the multi-head model
registered from it, the gate's report written on the version, and the alias moves (each recorded
on the registered model for the audit trail, audit.py). The gate's decision itself is gate.py.

Idempotent by a run key (the run folder's name, which carries the Prefect flow run id): a retried
or rerun task finds the run and the version it already made instead of making another. Every call
goes through an MlflowClient bound to the tracking URI it is given; the one fluent call that reads
MLflow's process-wide URIs (logging the model) runs with them pinned and then restored exactly.
"""
from __future__ import annotations

import getpass
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunStatus, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking._model_registry import utils as registry_uri_state
from mlflow.tracking._tracking_service import utils as tracking_uri_state

from training.config import PromotionConfig, RegistryConfig
from training.launch.layout import RunLayout
from training.model.export import CARD
from training.errors import RegistryRefusal  # noqa: F401 - raised here, imported from here by callers
from training.redaction import mask_userinfo, redact_uri
from training.release import plots
from training.release.gate import (GATE_END, GATE_SLACK, GateReport, decide, gate, gate_table,  # noqa: F401
                                   metric_key, nested)
from training.release.signature import input_example, model_signature

AliasMove = Literal["pipeline", "promote", "rollback"]
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


@dataclass
class Registered:
    model_name: str
    version: str
    run_id: str
    tracking_uri: str
    aliases: list[str] = field(default_factory=list)
    run_url: str | None = None  # the run's page when the tracking URI is a server
    version_url: str | None = None  # the version's page, likewise


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{redact_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def client_for(uri: str) -> MlflowClient:
    """A client for this store only: the registry is the same store, whatever MLFLOW_REGISTRY_URI
    or an earlier `mlflow.set_registry_uri` in this process says."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def pinned_uris(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to `uri` for the block, then put back
    as they were, the environment included: `mlflow.set_tracking_uri` also writes
    MLFLOW_TRACKING_URI into os.environ, and `tracking_uri()` reads it, so a later run in the same
    process registered in this run's store (MLflow's own `_use_tracking_uri` unsets a variable the
    user had set). Not for concurrent use from threads: the state is process-wide."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = tracking_uri_state._tracking_uri, registry_uri_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_uri_state._tracking_uri, registry_uri_state._registry_uri = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def runs_with_key(client: MlflowClient, experiment_id: str, run_key: str) -> list[str]:
    """Every run tagged with `run_key`, the oldest first."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'",
                              order_by=["attributes.start_time ASC"], max_results=50)
    return [r.info.run_id for r in runs]


def find_run(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    found = runs_with_key(client, experiment_id, run_key)
    return found[0] if found else None


def run_versions(client: MlflowClient, model_name: str, run_id: str) -> list[ModelVersion]:
    """The versions registered from `run_id`, the first first."""
    found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda v: int(v.version))


def keep_first_version(client: MlflowClient, model_name: str, run_id: str, run_key: str) -> ModelVersion | None:
    """One version per run: MLflow's client retries a request whose answer was lost, and a lost
    "create version" answer made a second version of the same run. The first is kept, the rest
    deleted, and the kept one is tagged with the run key (a version is found by it, not only its run)."""
    versions = run_versions(client, model_name, run_id)
    if not versions:
        return None
    first = versions[0]
    for extra in versions[1:]:
        client.delete_model_version(model_name, extra.version)
    if first.tags.get(RUN_KEY) != run_key:
        client.set_model_version_tag(model_name, first.version, RUN_KEY, run_key)
    return client.get_model_version(model_name, first.version)


@dataclass
class RunRef:
    run_id: str
    experiment_id: str
    tracking_uri: str
    run_url: str | None = None


def open_run(cfg: RegistryConfig, uri: str, artifact_root: str | None, run_key: str, run_name: str | None = None,
             tags: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> RunRef:
    """The MLflow run of `run_key`, created on the first call and found (and set RUNNING again)
    on a retry or a rerun; duplicates a lost "create run" answer made are deleted."""
    client = client_for(uri)
    experiment_id = ensure_experiment(client, cfg.experiment, artifact_root)
    found = runs_with_key(client, experiment_id, run_key)
    if not found:
        created = client.create_run(experiment_id, run_name=run_name, tags={**(tags or {}), RUN_KEY: run_key})
        found = runs_with_key(client, experiment_id, run_key) or [created.info.run_id]
    run_id = found[0]
    for extra in found[1:]:
        client.delete_run(extra)
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    log_batches(client, run_id, tags=tags or {}, params=params or {})
    return RunRef(run_id, experiment_id, uri, run_url(uri, experiment_id, run_id))


def close_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """End the run: FINISHED, or FAILED / KILLED with the reason as a tag."""
    client = client_for(uri)
    if reason:  # an error message may quote a URI with its password
        client.set_tag(run_id, "mtl.failure", mask_userinfo(reason)[:4000])
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


FLOW_RUN_TAGS = ("mtl.prefect_flow_run_id", "mtl.prefect_root_flow_run_id")


def fail_run(cfg: RegistryConfig, uri: str, flow_run_id: str, reason: str, status: str = "FAILED") -> str | None:
    """End FAILED (or KILLED: a cancelled flow) the RUNNING run that the flow run `flow_run_id`
    opened, or one of its subflows did, with the reason; None if there is none. A finished run is
    never touched, even one whose key a failed flow run had aimed at (a refused resume)."""
    client = client_for(uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None or not flow_run_id:
        return None
    for tag in FLOW_RUN_TAGS:
        found = client.search_runs([experiment.experiment_id], max_results=1,
                                   filter_string=f"tags.`{tag}` = '{flow_run_id}' and attributes.status = 'RUNNING'")
        if found:
            close_run(uri, found[0].info.run_id, status, reason)
            return found[0].info.run_id
    return None


def log_batches(client: MlflowClient, run_id: str, metrics: list[Metric] | None = None,
                params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> None:
    """In MLflow's batch limits (1000 metrics, 100 params, 100 tags per request)."""
    items = [Param(k, str(v)) for k, v in (params or {}).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for start in range(0, len(metrics or []), 1000):
        client.log_batch(run_id, metrics=(metrics or [])[start:start + 1000])


def new_points(client: MlflowClient, run_id: str, metrics: list[Metric]) -> list[Metric]:
    """The metric points not logged yet: a retried task logs each (key, step) once."""
    have = set(client.get_run(run_id).data.metrics) & {m.key for m in metrics}
    seen = {(m.key, m.step) for key in have for m in client.get_metric_history(run_id, key)}
    return [m for m in metrics if (m.key, m.step) not in seen]


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
    """Step metrics from the workers' training logs: each task's mean loss since the previous log
    line (`task_losses`; a log from before it had the logged step's task only), the learning rate
    and the task weights, and each evaluation during training's dev metrics
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
                   tags: dict[str, str] | None = None, images: dict[str, bytes] | None = None,
                   description: str | None = None) -> Registered:
    """Log params, metrics (dev metrics per task, plus e.g. affinity), the training curves, the
    files and figures and the pyfunc model (with signature and input example) in the run of
    `run_key` (opened by `open_run` at the flow's start, else here); register one version of it."""
    client = client_for(uri)
    ref = open_run(cfg, uri, artifact_root, run_key, run_name, tags)
    if version := keep_first_version(client, cfg.model_name, ref.run_id, run_key):
        return _with_alias(client, cfg.model_name, version, ref, challenger_alias)
    log_run_contents(client, ref.run_id, params, metrics, artifacts, extra_metrics, training_logs, images)
    info = log_pyfunc(client, uri, ref, export_dir)
    ensure_registered_model(client, cfg.model_name)
    # the logged model's own location, not models:/<id>: a database registry store resolves that
    # through MLflow's process-wide tracking URI, which is not (and must not stay) this store's
    source = client.get_logged_model(info.model_id).artifact_location
    client.create_model_version(cfg.model_name, source=source, run_id=ref.run_id, tags={RUN_KEY: run_key},
                                description=description, model_id=info.model_id)
    version = keep_first_version(client, cfg.model_name, ref.run_id, run_key)
    if version is None:  # the store answered "created" but has no version: nothing to alias
        raise RuntimeError(f"MLflow at {redact_uri(uri)} created no version of {cfg.model_name} for run {ref.run_id}")
    return _with_alias(client, cfg.model_name, version, ref, challenger_alias)


def log_run_contents(client: MlflowClient, run_id: str, params: dict[str, Any], metrics: dict[str, dict[str, float]],
                     artifacts: dict[str, str], extra_metrics: dict[str, float] | None = None,
                     training_logs: dict[str, str] | None = None, images: dict[str, bytes] | None = None) -> None:
    stamp = int(1000 * time.time())
    points = [Metric(metric_key(t, m), float(v), stamp, 0) for t, ms in metrics.items() for m, v in ms.items()]
    points += [Metric(k, float(v), stamp, 0) for k, v in (extra_metrics or {}).items()]
    curves = training_curves(training_logs or {})
    log_batches(client, run_id, metrics=new_points(client, run_id, points + curves), params=params)
    for name, path in artifacts.items():
        client.log_artifact(run_id, path, artifact_path=name)
    figures = {**({"training_loss": plots.loss_curves(losses)} if (losses := loss_series(curves)) else {}),
               **(images or {})}
    log_images(client, run_id, figures)


def log_images(client: MlflowClient, run_id: str, images: dict[str, bytes], folder: str = "plots") -> None:
    """PNG figures as artifacts `plots/<name>.png` (logging one again replaces it)."""
    if not images:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in images.items():
            path = Path(tmp) / f"{name}.png"
            path.write_bytes(png)
            client.log_artifact(run_id, str(path), artifact_path=folder)


def loss_series(curves: list[Metric]) -> dict[str, list[tuple[int, float]]]:
    """Each task's loss points from the training curves (`train[.<stage>].loss.<task>`; a staged
    run's stages as `<stage>/<task>`)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for m in curves:
        head, sep, task = m.key.rpartition(".loss.")
        if sep:
            stage = head[len("train."):] if head.startswith("train.") else ""
            out.setdefault(f"{stage}/{task}" if stage else task, []).append((m.step, m.value))
    return out


def log_pyfunc(client: MlflowClient, uri: str, ref: RunRef, export_dir: str) -> Any:
    """Log the models-from-code pyfunc (signature and input example read off the card) in the run.
    The logged model is made here, in the run's experiment: left to `Model.log` without an active
    run, it lands in the store's default experiment, its files under ./mlruns of the working folder."""
    card = json.loads((Path(export_dir) / CARD).read_text())
    model = client.create_logged_model(ref.experiment_id, name="model", source_run_id=ref.run_id)
    with pinned_uris(uri):
        info = Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=ref.run_id,
                         model_id=model.model_id, python_model=PYFUNC_FILE, artifacts={"model_dir": export_dir},
                         code_paths=PACKAGE_DIRS, pip_requirements=_requirements(),
                         signature=model_signature(card), input_example=input_example(card))
    if client.get_logged_model(model.model_id).status != LoggedModelStatus.READY:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return info


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def run_plots(confusions: dict[str, dict[str, Any]] | None = None,
              affinity: dict[str, float] | None = None) -> dict[str, bytes]:
    """The figures beside the loss curves: a confusion matrix per classification task, and the
    affinity heatmap from its `affinity.<i>.<j>` metrics."""
    out = {f"confusion_{task}": plots.confusion_matrix(c["labels"], c["counts"], f"{task}: dev confusion matrix")
           for task, c in (confusions or {}).items()}
    matrix: dict[str, dict[str, float]] = {}
    for key, value in (affinity or {}).items():
        _, i, j = key.split(".", 2)
        matrix.setdefault(i, {})[j] = value
    if matrix:
        out["task_affinity"] = plots.affinity_heatmap(matrix)
    return out


def champion_labels(uri: str, model_name: str, alias: str) -> dict[str, list[str]] | None:
    """Each task's label list in the model holding `alias`, so a retrain keeps their ids.
    None when there is no such model yet (a database store is not created just to look)."""
    if (version := holder_at(uri, model_name, alias)) is None:
        return None
    card = json.loads(Path(client_for(uri).download_artifacts(version.run_id, f"{CARD_ARTIFACT}/{CARD}")).read_text())
    return {t["name"]: list(t["labels"]) for t in card["tasks"]}


def _with_alias(client: MlflowClient, name: str, version: ModelVersion, ref: RunRef, alias: str) -> Registered:
    move_alias(client, name, str(version.version), alias, "pipeline", remember_previous=False)
    return Registered(name, str(version.version), ref.run_id, ref.tracking_uri,
                      aliases_of(client, name, version.version), ref.run_url,
                      version_url(ref.tracking_uri, name, str(version.version)))


def version_url(uri: str, model_name: str, version: str) -> str | None:
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{redact_uri(uri).rstrip('/')}/#/models/{model_name}/versions/{version}"


def _requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ("torch", "transformers", "tokenizers", "safetensors", "pandas", "mlflow", "seqeval", "scikit-learn",
            "pydantic", "numpy", "fsspec")
    return [f"{p}=={version(p)}" for p in pkgs]


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    return sorted(client.get_model_version(name, str(version)).aliases)


def version_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    return dict(client.get_run(version.run_id).data.metrics)


GATE_TAG = "mtl.gate"
MAX_TAG_VALUE = 5000  # far below MLflow's limit for version tags; a gate text or a reason stays readable


def alias_holder(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at; None when the alias (or the model) does not exist yet. A
    store that does not answer raises."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def holder_at(uri: str, model_name: str, alias: str) -> ModelVersion | None:
    """`alias_holder` in the store at `uri`; None, too, when a database store does not exist yet
    (it is not created just to look)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    return alias_holder(client_for(uri), model_name, alias)


def require_store(uri: str) -> None:
    """A RegistryRefusal when a sqlite store does not exist: a mistyped state folder is not made a new, empty store."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise RegistryRefusal(f"no MLflow store at {uri}: pass --tracking-uri (or the flow's tracking_uri_override), "
                              "set MLFLOW_TRACKING_URI, or --state-dir for the folder holding mlflow.db")


def require_model(client: MlflowClient, model_name: str) -> None:
    """A RegistryRefusal naming the registered models when `model_name` is not one of them."""
    if client.search_registered_models(f"name = '{model_name}'"):
        return
    models = sorted(m.name for m in client.search_registered_models(max_results=100))
    raise RegistryRefusal(f"no registered model named {model_name}; models: {', '.join(models) or 'none yet'}")


def require_version(client: MlflowClient, model_name: str, version: str | int) -> ModelVersion:
    """The version, or a RegistryRefusal naming the versions (or the models) that exist."""
    text = str(version).strip()
    if text.isdigit():
        try:
            return client.get_model_version(model_name, text)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
    require_model(client, model_name)
    existing = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model_name}'"))
    listed = ", ".join(map(str, existing)) or "none yet"
    raise RegistryRefusal(f"{model_name} has no version {text or '(empty)'}; versions: {listed}")


def os_user() -> str:
    """Who runs this process, for the audit trail (a container may have no passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def alias_record_tag(alias: str) -> str:
    """The registered model's tag holding the last recorded move of `alias` (audit.py reads it)."""
    return f"mtl.{alias}_set_by"


def record_alias_move(client: MlflowClient, model_name: str, alias: str, version: str, how: AliasMove,
                      by: str | None = None) -> dict[str, str]:
    """Record on the registered model who last moved `alias`, to which version, how and when, so a
    move made elsewhere (the MLflow UI) shows as a mismatch (`audit.moved_by_hand`)."""
    record = {"version": str(version), "by": by or os_user(), "at": utc_now(), "how": how}
    client.set_registered_model_tag(model_name, alias_record_tag(alias), json.dumps(record))
    return record


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def move_alias(client: MlflowClient, model_name: str, version: str, alias: str, how: AliasMove,
               by: str | None = None, remember_previous: bool = True) -> str | None:
    """The registry's one alias move: point `alias` at `version` and record the move; the holder it
    replaces is tagged on `version` (`mtl.previous_<alias>`) for a rollback, unless
    `remember_previous` is off (a rollback keeps the target's own earlier holder, so a second
    rollback goes further back). Returns the previous holder's version."""
    held = alias_holder(client, model_name, alias)
    previous = None if held is None else str(held.version)
    if remember_previous and previous and previous != str(version):
        client.set_model_version_tag(model_name, str(version), f"mtl.previous_{alias}", previous)
    client.set_registered_model_alias(model_name, alias, str(version))
    record_alias_move(client, model_name, alias, str(version), how, by)
    return previous


def gate_description(report: GateReport, alias: str, table_title: str | None, registered_note: str) -> str:
    """A gated version's description: the decision, the table, the notes, then the registration note."""
    notes = "\n".join(f"- {note}" for note in report.notes)
    parts = (report.decision_line(alias), f"**{table_title}**" if table_title else "", report.table(alias), notes,
             GATE_END + registered_note)
    return "\n\n".join(p for p in parts if p)


def promote_with_report(uri: str, model_name: str, version: str, report: GateReport, alias: str = "champion",
                        table_title: str | None = None, by: str | None = None) -> bool:
    """Write the gate's report on `version` (tag `mtl.gate`: "passed" or the reasons; the
    description; the challenger_vs_champion figure on its run) and move `alias` to it when the
    report promotes. Call it holding the alias lock (flows.alias_lock), with a report decided
    against the champion found under that lock. Returns whether the alias moved."""
    client = client_for(uri)
    candidate = require_version(client, model_name, version)
    client.set_model_version_tag(model_name, candidate.version, GATE_TAG, report.verdict[:MAX_TAG_VALUE])
    registered_note = (candidate.description or "").split(GATE_END, 1)[-1].strip()
    client.update_model_version(model_name, candidate.version,
                                description=gate_description(report, alias, table_title, registered_note))
    nan = float("nan")
    scores = {r.task: nan if r.challenger is None else r.challenger for r in report.rows}
    held = None if report.champion_version is None else {r.task: nan if r.champion is None else r.champion
                                                         for r in report.rows}
    held_name = alias if report.champion_version is None else f"{alias} v{report.champion_version}"
    log_images(client, candidate.run_id, {"challenger_vs_champion": plots.challenger_vs_champion(
        scores, held, {r.task: r.metric for r in report.rows}, held_name, f"v{candidate.version}")})
    if report.promoted:
        move_alias(client, model_name, str(candidate.version), alias, "pipeline", by)
    return report.promoted


def promote_if_better(uri: str, model_name: str, version: str, primary: dict[str, str],
                      promotion: PromotionConfig) -> tuple[bool, list[str]]:
    """The gate on the dev scores logged on each version's MLflow run at registration (the
    champion's measured when it was trained): for callers without a same-run evaluation of the
    champion. Returns (promoted, reasons)."""
    client = client_for(uri)
    candidate = require_version(client, model_name, version)
    champion = alias_holder(client, model_name, promotion.alias)
    if champion is not None and str(champion.version) == str(candidate.version):
        return True, []
    held = None if champion is None else nested(version_metrics(client, champion))
    note = "scores as logged on each version's MLflow run when it was registered"
    report = decide(nested(version_metrics(client, candidate)), held, primary, promotion.tolerance,
                    None if champion is None else str(champion.version), [note])
    promote_with_report(uri, model_name, str(candidate.version), report, promotion.alias)
    return report.promoted, report.reasons


def set_champion(uri: str, model_name: str, version: str, alias: str = "champion") -> str | None:
    """Point `alias` at `version` (no gate); the previous holder is recorded on the new one for
    rollback. Returns the previous holder's version."""
    client = client_for(uri)
    candidate = require_version(client, model_name, version)
    return move_alias(client, model_name, str(candidate.version), alias, "pipeline")
