"""Prefect task wrappers: small, typed, retried; refused input is never retried."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from data_prep.cache import ArtifactCache
from data_prep.config import TaskDataConfig, TokenizeConfig
from data_prep.stage import atomic_write_text, ingest_cached, tokenize_cached
from flows.alias_lock import alias_lock
from flows.config import REFUSED, ConfigError, PipelineConfig, StorageConfig, check_config
from training.config import DeepSpeedConfig, EncoderConfig, PromotionConfig, RegistryConfig, TrainingConfig
from training.model.multitask import resolve_encoder_path
from training.evaluation.affinity import AffinityConfig, affinity_from_export, affinity_markdown, affinity_metrics, affinity_table
from training.release.registry import (champion_labels, client_for, close_run, default_artifact_root, fail_run, open_run,
                                      redact_uri, register_model, run_files, run_plots,
                                      tracking_uri)
from training.evaluation.evaluate import evaluate_export
from training.launch.layout import RunLayout
from training.launch.train import affinity_export, train_model
from training.task_spec import TaskSpec


def retry_unless_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Bad config or bad data does not get better on retry; anything else may."""
    try:
        state.result()
    except REFUSED:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth another try
        return True
    return True


TASK_DEFAULTS: dict[str, Any] = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused,
                                     cache_policy=NO_CACHE)


@task(name="prepare-run", **TASK_DEFAULTS)
def prepare_run(config: PipelineConfig, resume_run_dir: str | None = None) -> str:
    """Check the config (and that every file exists), make the run folder, save the resolved config.
    `resume_run_dir`: an earlier run's folder (its flow process died) to go on in: its checkpoints
    are resumed from; refused unless it was made by this same config."""
    check_config(config)
    resolved = redacted(config.model_dump(mode="json"))  # S3 secrets are masked by their type already
    resolved["data_dir"] = config.resolved_data_dir()
    if resume_run_dir is not None:
        run_dir = Path(resume_run_dir).resolve()
        check_resumable(run_dir, resolved)
        get_run_logger().info("resuming in run folder: %s", run_dir)
        return str(run_dir)
    run_dir = Path(config.storage.root).resolve() / "runs" / run_key(config.name, flow_run.get_id())
    atomic_write_text(RunLayout(run_dir).config_file, json.dumps(resolved, indent=2))
    get_run_logger().info("run folder: %s", run_dir)
    return str(run_dir)


def redacted(value: Any) -> Any:
    """A copy with a password in any URI (e.g. `registry.tracking_uri`) replaced: the resolved
    config is written to the run folder and logged to MLflow as an artifact."""
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return redact_uri(value) if isinstance(value, str) and "://" in value else value


def run_key(config_name: str, flow_run_id: str | None) -> str:
    """The run folder's name, and the MLflow run's key: one per flow run, the same on a retry."""
    return f"{config_name}-{flow_run_id or 'local'}"


def quiet_urls(uri: str) -> str:
    """MLflow prints each run's URL to stdout, a password in the tracking URI included: not when
    the URI holds credentials."""
    if redact_uri(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def flow_run_links() -> dict[str, str]:
    found = {"mtl.prefect_flow_run_id": flow_run.get_id() or "", "mtl.prefect_flow_run_url": flow_run.ui_url or "",
             "mtl.prefect_flow_run_name": flow_run.get_name() or "",
             # the deployment's flow run when `retrain` runs as its subflow: its hooks end the run too
             "mtl.prefect_root_flow_run_id": str(flow_run.root_flow_run_id or "")}
    return {k: v for k, v in found.items() if v}


@task(name="open-mlflow-run", **TASK_DEFAULTS)
def open_mlflow_run(registry: RegistryConfig, state_dir: str, run_dir: str, params: dict[str, Any]) -> dict[str, Any]:
    """The flow run's MLflow run, opened before any work (found again on a retry or a rerun), with
    the resolved config as params (secrets masked) and links to the flow run; closed at the end."""
    uri = quiet_urls(tracking_uri(registry, state_dir))
    key = Path(run_dir).name
    links = flow_run_links()
    note = (f"Prefect flow run [{links.get('mtl.prefect_flow_run_name', key)}]({links['mtl.prefect_flow_run_url']})"
            if "mtl.prefect_flow_run_url" in links else f"Prefect flow run {key}")
    tags = {**links, "mlflow.source.name": "flows/retrain.py", "mlflow.source.type": "JOB",
            "mlflow.note.content": note}
    ref = open_run(registry, uri, default_artifact_root(uri, state_dir), key, key, tags, params)
    get_run_logger().info("MLflow run %s in %s%s", ref.run_id, redact_uri(uri), f" ({ref.run_url})" if ref.run_url else "")
    if ref.run_url:
        create_link_artifact(ref.run_url, link_text=f"MLflow run {key}", key="mlflow-run-link",
                             description="this flow run's MLflow run (params, curves, plots, model)")
    return ref.__dict__


@task(name="close-mlflow-run", **TASK_DEFAULTS)
def close_mlflow_run(mlflow_run: dict[str, Any], outcome: str | None = None, reason: str | None = None) -> None:
    """End the run FINISHED; `outcome` (promoted, refused, skipped) and its reason become tags
    `mtl.outcome` and `mtl.outcome_reason`, so the MLflow runs list says what each run came to."""
    if outcome:
        client = client_for(mlflow_run["tracking_uri"])
        client.set_tag(mlflow_run["run_id"], "mtl.outcome", outcome)
        if reason:
            client.set_tag(mlflow_run["run_id"], "mtl.outcome_reason", reason[:4000])
    close_run(mlflow_run["tracking_uri"], mlflow_run["run_id"], "FINISHED")


def fail_mlflow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (failed, crashed, cancelled) of `retrain`: see `end_failed_mlflow_run`. The
    parameters keep Prefect's names: a runner passes them by keyword."""
    config = flow_run.parameters.get("config")
    end_failed_mlflow_run(lambda: config, flow_run, state)


def end_failed_mlflow_run(config_of: Callable[[], Any], flow_run_: Any, state: Any) -> None:
    """The MLflow run that this flow run (or a subflow of it: a deployment's `retrain_from_file`
    runs `retrain` as one) opened and left RUNNING ends FAILED (KILLED when cancelled), with the
    reason in tag `mtl.failure`. Found by the flow-run tags set at open, so a run that failed
    before opening one (a refused `--resume`) touches no other run, finished ones included.
    Never raises: a hook's error would hide the flow's own."""
    try:
        config = config_of()
        config = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
        registry = RegistryConfig.model_validate(config.get("registry") or {})
        uri = tracking_uri(registry, (config.get("storage") or {}).get("root") or ".mtl")
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            return  # failed before a run was opened: nothing to close (and no store to create)
        reason = f"{state.type.value}: {state.message or ''}"
        cancelled = state.is_cancelled() or state.is_cancelling()
        fail_run(registry, uri, str(flow_run_.id), reason, "KILLED" if cancelled else "FAILED")
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        import logging

        logging.getLogger(__name__).warning("could not mark the MLflow run failed: %s", exc)


class ProgressFeed:
    """Training progress as a Prefect progress artifact: steps done over steps planned, updated from
    the training's log stream at most every `every_s` seconds (and always at the end). A failed
    update is logged once and never stops the stream it is fed from."""

    def __init__(self, update: Callable[[float, str], None], warn: Callable[[str], None], every_s: float = 2.0) -> None:
        self.update, self.warn, self.every_s = update, warn, every_s
        self.last, self.failed, self.shown = float("-inf"), False, -1.0

    def __call__(self, done: int, total: int) -> None:
        percent = round(100.0 * min(done, total) / max(1, total), 1)
        now = time.monotonic()
        if percent == self.shown or (percent < 100.0 and now - self.last < self.every_s):
            return
        self.last, self.shown = now, percent
        try:
            self.update(percent, f"{min(done, total)} of {total} training steps")
        except Exception as exc:  # noqa: BLE001 - progress is a view; training goes on
            if not self.failed:
                self.failed = True
                self.warn(f"progress artifact not updated: {exc}")


def check_resumable(run_dir: Path, resolved: dict[str, Any]) -> None:
    """A run goes on only with the config it started with: other settings would mix checkpoints
    of two trainings in one folder."""
    saved_file = RunLayout(run_dir).config_file
    if not saved_file.is_file():
        raise ConfigError("--resume", [f"{run_dir}: not a run folder (no {saved_file.name}); give a folder "
                                       "under <storage.root>/runs/"])
    saved = json.loads(saved_file.read_text())
    if changed := sorted(k for k in set(saved) | set(resolved) if saved.get(k) != resolved.get(k)):
        raise ConfigError("--resume", [f"{k}: differs from the config {run_dir.name} was started with "
                                       f"({saved_file}); resume with that config or start a new run"
                                       for k in changed])


@task(name="champion-labels", **TASK_DEFAULTS)
def champion_label_maps(registry: RegistryConfig, promotion: PromotionConfig, state_dir: str,
                        run_dir: str | None = None) -> dict[str, list[str]]:
    """The champion's label lists: a retrain keeps their ids stable and appends new labels. Kept in
    the run folder: a resumed run goes on with the lists its checkpoints were trained with, even if
    another champion with other labels was promoted since."""
    kept = Path(run_dir) / "champion_labels.json" if run_dir else None
    if kept is not None and kept.is_file():
        get_run_logger().info("label maps of this run's start (%s)", kept)
        return json.loads(kept.read_text())
    found = champion_labels(tracking_uri(registry, state_dir), registry.model_name, promotion.alias) or {}
    get_run_logger().info("label maps from %s", f"{registry.model_name}@{promotion.alias}" if found else "scratch")
    if kept is not None:
        atomic_write_text(kept, json.dumps(found))
    return found


@task(name="ingest", **TASK_DEFAULTS)
def ingest(tasks: list[TaskDataConfig], data_dir: str | None, run_dir: str, storage: StorageConfig,
           previous_labels: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate every task, or take it from the content-addressed cache.
    `previous_labels` maps a task to the champion model's label list: those keep their ids."""
    previous = previous_labels or {}
    cache = ArtifactCache(storage.cache_root(), storage.s3)
    out = {t.name: ingest_cached(t, data_dir, cache, RunLayout(Path(run_dir)).data_dir, storage.s3, previous.get(t.name))
           for t in tasks}
    rows = [{"task": n, "labels": len(r["labels"]), **r["counts"], "cached": r["cached"]} for n, r in out.items()]
    create_table_artifact(table(rows), key="ingest-counts", description="examples per task and split")
    get_run_logger().info("ingest: %s", ", ".join(f"{n} {'cached' if r['cached'] else 'read'}" for n, r in out.items()))
    return out


@task(name="tokenize", **TASK_DEFAULTS)
def tokenize(tasks: list[TaskDataConfig], ingested: dict[str, dict[str, Any]], encoder: EncoderConfig,
             settings: TokenizeConfig, run_dir: str, storage: StorageConfig) -> dict[str, dict[str, Any]]:
    """Tokenize every task's train split, or take it from the cache. Each result's `stats`
    (examples, inputs, tokens, windowed, truncated, label_distribution) is meant for MLflow."""
    cache = ArtifactCache(storage.cache_root(), storage.s3)
    path = resolve_encoder_path(encoder.name_or_path)
    out = {t.name: tokenize_cached(t, ingested[t.name], path, encoder.max_length, settings, cache,
                                   RunLayout(Path(run_dir)).data_dir) for t in tasks}
    rows = [{"task": n, **{k: v for k, v in r["stats"].items() if k != "label_distribution"},
             "labels": json.dumps(r["stats"]["label_distribution"]), "cached": r["cached"]} for n, r in out.items()]
    create_table_artifact(table(rows), key="tokenize-stats", description="tokenized training inputs per task")
    return out


def data_params(tokenized: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Data statistics as MLflow params (facts about the run's inputs, not measurements of the
    model): data.<task>.<stat>, and data.<task>.labels as the label counts in JSON."""
    flat: dict[str, Any] = {}
    for name, result in tokenized.items():
        for stat, value in result["stats"].items():
            key = f"data.{name}.labels" if stat == "label_distribution" else f"data.{name}.{stat}"
            flat[key] = json.dumps(value, sort_keys=True) if stat == "label_distribution" else value
    return flat


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every column any row has (a table artifact shows the first row's keys only)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key, "") for key in columns} for row in rows]


@task(name="train", **TASK_DEFAULTS)
def train(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig, specs: list[TaskSpec],
          features: dict[str, str], run_dir: str, dev: dict[str, str] | None = None, init: str | None = None,
          init_source: dict[str, Any] | None = None) -> str:
    """`dev`: each task's ingested dev split, for evaluation during training (`training.eval_every`).
    `init`: the export a warm start begins from (`init_source`: where it came from, for the card).
    A progress artifact `training-progress` follows the steps done."""
    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, key="training-progress", description="training steps done")
    feed = ProgressFeed(lambda pct, text: update_progress_artifact(artifact, pct, description=text), logger.warning)
    return train_model(encoder, training, deepspeed, specs, features, run_dir, logger.info, dev, progress=feed,
                       init=init, init_source=init_source)


@task(name="evaluate", **TASK_DEFAULTS)
def evaluate(export_dir: str, specs: list[TaskSpec], dev_files: dict[str, str],
             batch_size: int, run_dir: str | None = None, device: str | None = None) -> dict[str, dict[str, float]]:
    """Dev metrics per task; with `run_dir`, the classification tasks' confusion counts go to
    <run>/eval/confusion.json (for the MLflow run's figures). `device`: `training.eval_device`."""
    found = evaluate_export(export_dir, specs, dev_files, batch_size, device=device)
    metrics = {name: e.metrics for name, e in found.items()}
    if run_dir is not None:
        confusions = {name: e.confusion for name, e in found.items() if e.confusion is not None}
        atomic_write_text(confusion_file(run_dir), json.dumps(confusions))
    rows = [{"task": t, **{k: round(v, 4) for k, v in m.items()}} for t, m in metrics.items()]
    create_table_artifact(table(rows), key="dev-metrics", description="dev metrics of the trained model")
    get_run_logger().info("dev metrics: %s", json.dumps(metrics))
    return metrics


def confusion_file(run_dir: str) -> Path:
    return Path(run_dir) / "eval" / "confusion.json"


@task(name="task-affinity", **TASK_DEFAULTS)
def task_affinity(run_dir: str, training: TrainingConfig, specs: list[TaskSpec], features: dict[str, str],
                  settings: AffinityConfig, device: str | None = None) -> dict[str, float]:
    """How a step on each task moves every task's loss, measured where the tasks share one encoder
    (`affinity_export`): a table artifact, and the cells for the MLflow run. `device`:
    `training.eval_device`."""
    if settings.method == "off":
        return {}
    export, source = affinity_export(run_dir, training, specs)
    report = affinity_from_export(export, features, settings.method, settings.rounds, settings.batch_size,
                                  device=device)
    create_table_artifact(table(affinity_table(report)), key="task-affinity",
                          description=f"{settings.method} affinity of {source}: row = task stepped on, column = "
                                      "task whose loss moves; positive = helps")
    get_run_logger().info("task affinity (%s) of %s:\n%s", settings.method, source, affinity_markdown(report))
    return affinity_metrics(report)


@task(name="register", **TASK_DEFAULTS)
def register(registry: RegistryConfig, promotion: PromotionConfig, state_dir: str, run_dir: str,
             export_dir: str, params: dict[str, Any], metrics: dict[str, dict[str, float]],
             affinity: dict[str, float]) -> dict[str, Any]:
    """Fill the flow run's MLflow run (`params`: e.g. data statistics; curves, files and figures)
    and register one version of its model. `affinity` (cells `affinity.<i>.<j>`) is one
    measurement, not a curve: a table artifact `affinity/task_affinity.json` and the heatmap
    `plots/task_affinity.png`, not K x K one-point metrics ahead of the loss curves."""
    uri = quiet_urls(tracking_uri(registry, state_dir))
    artifacts, logs = run_files(run_dir, export_dir)
    confusions = json.loads(confusion_file(run_dir).read_text()) if confusion_file(run_dir).is_file() else {}
    links = flow_run_links()
    key = Path(run_dir).name
    note = f"Registered from run key `{key}`" + (f", Prefect flow run {links['mtl.prefect_flow_run_url']}"
                                                   if "mtl.prefect_flow_run_url" in links else "")
    registered = register_model(registry, uri, default_artifact_root(uri, state_dir), key,
                                export_dir, params, metrics, artifacts, promotion.challenger_alias, None,
                                logs, run_name=key, tags=links, images=run_plots(confusions, affinity),
                                description=note)
    if affinity:
        rows = [key.split(".", 2)[1:] + [value] for key, value in sorted(affinity.items())]
        client_for(uri).log_table(registered.run_id, {"stepped_on": [r[0] for r in rows],
                                                      "loss_of": [r[1] for r in rows],
                                                      "affinity": [r[2] for r in rows]},
                                  artifact_file="affinity/task_affinity.json")
    get_run_logger().info("registered %s version %s (MLflow run %s)", registered.model_name, registered.version,
                          registered.run_id)
    create_markdown_artifact(
        f"**{registered.model_name} v{registered.version}**: model `models:/{registered.model_name}/"
        f"{registered.version}`, MLflow run `{registered.run_id}`"
        + (f" ([open]({registered.run_url}))" if registered.run_url else "") + f", tracking `{redact_uri(uri)}`",
        key="mlflow-run", description="where this flow run's model and metrics are in MLflow")
    if registered.version_url:
        create_link_artifact(registered.version_url, link_text=f"{registered.model_name} v{registered.version}",
                             key="mlflow-model-version", description="the model version this flow run registered")
    return registered.__dict__


@task(name="promote", **TASK_DEFAULTS)
def promote(registered: dict[str, Any], specs: list[TaskSpec], promotion: PromotionConfig,
            champion: dict[str, Any] | None = None, metrics: dict[str, dict[str, float]] | None = None
            ) -> dict[str, Any]:
    """Gate the registered version against the champion and move the alias if it passes.
    `champion`: the champion scored in this flow run on the same dev split (`evaluate-champion`),
    `metrics` the challenger's; the gate compares those numbers. Without it, or when the champion moved while this run trained,
    the scores logged on each version's run at registration are compared, and the report says so.
    The decision table goes to the version's description and to the `promotion` artifact; a
    refusal is also sent as the event `mtl.gate.refused`."""
    from flows.notify import emit_gate_refused
    from training.release.gate import decide, primary_metrics
    from training.release.registry import alias_holder, promote_if_better, promote_with_report

    logger = get_run_logger()
    if not promotion.enabled:
        return {"promoted": False, "reasons": ["promotion disabled in config"], "report": None}
    primary = primary_metrics(specs)
    name, version, uri = registered["model_name"], registered["version"], registered["tracking_uri"]
    with alias_lock(name, promotion.alias):  # a run finishing beside this one waits
        held = alias_holder(client_for(uri), name, promotion.alias)
        held_version = None if held is None else str(held.version)
        if held_version == str(version):
            return {"promoted": True, "reasons": [], "report": None}
        same_champion = champion is not None and champion.get("version") == held_version
        if metrics is not None and same_champion and (held_version is None or champion.get("metrics") is not None):
            report = decide(metrics, champion["metrics"] if held_version else None, primary, promotion.tolerance,
                            held_version, champion["notes"])
            promote_with_report(uri, name, str(version), report, promotion.alias,
                                table_title=f"{name} v{version} against {promotion.alias}")
        else:
            report = None
            if champion is not None and champion.get("version") not in (None, held_version):
                logger.warning("%s moved from v%s to v%s while this run trained: gating on logged scores",
                               promotion.alias, champion["version"], held_version)
            promoted, reasons = promote_if_better(uri, name, str(version), primary, promotion)
    if report is not None:
        promoted, reasons = report.promoted, report.reasons
    text = report.markdown(f"{name} v{version}", promotion.alias) if report is not None else (
        f"**{name} v{version}**: " + ("promoted to " + promotion.alias if promoted else "refused: " + "; ".join(reasons)))
    verdict = "promoted to " + promotion.alias if promoted else "kept as challenger: " + "; ".join(reasons)
    logger.info("version %s %s", version, verdict)
    create_markdown_artifact(text, key="promotion", description="the gate's decision: both models' scores per task")
    if not promoted:
        emit_gate_refused(name, str(version), report.as_dict() if report is not None else {"reasons": reasons}, text)
    return {"promoted": promoted, "reasons": reasons, "report": report.as_dict() if report is not None else None}
