"""The retrain flow: ingest -> tokenize -> train -> evaluate -> register -> promote.

Run it with `mtl run CONFIG`, or directly: `python flows/retrain.py configs/demo.yaml`.

No `from __future__ import annotations` here: Prefect validates a flow's parameters against its
annotations, and a runner (`serve`) ships the flows to each run's process by value, with only the
names their code uses. A postponed annotation (the string "PipelineConfig") cannot be resolved
there, and every served run of `retrain_from_file` failed before it started.
"""
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger
from pydantic import Field
from prefect.runtime import deployment, flow_run

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.alias_lock import retrain_lock  # noqa: E402
from flows.config import PipelineConfig, load_config, run_overrides  # noqa: E402
from flows.loop import check_fingerprint, check_warm, data_report, evaluate_champion, flow_run_name, warm_start_source, outcome_state, retrain_wait_s, tag_fingerprint  # noqa: E402
from flows.tasks import (champion_label_maps, close_mlflow_run, data_params, end_failed_mlflow_run,  # noqa: E402
                         evaluate, fail_mlflow_run, ingest, open_mlflow_run, prepare_run, promote, redacted,
                         register, task_affinity, tokenize, train)
from training.config import SamplerName, SharingName, WeightingName  # noqa: E402
from training.release.registry import redact_uri  # noqa: E402
from training.task_spec import spec_for  # noqa: E402


# a flow run past this ends Failed (TimedOut); the training inside has its own `training.timeout_s`
FLOW_TIMEOUT_S = float(os.environ.get("MTL_FLOW_TIMEOUT_S", 12 * 3600))


def mlflow_params(config: PipelineConfig) -> dict[str, Any]:
    """Flattened config for MLflow params (secrets are masked by their pydantic types)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{v['name'] if isinstance(v, dict) and 'name' in v else i}", v)
        else:
            flat[prefix] = value

    walk("", redacted(config.model_dump(mode="json")))  # a tracking or endpoint URI may carry user:password
    return flat


def run_name() -> str:
    """The flow run's name from its config: `<config name>-<UTC date and time>`."""
    config = flow_run.parameters.get("config")
    name = config.get("name") if isinstance(config, dict) else getattr(config, "name", None)
    return flow_run_name(str(name or "mtl"))


# a flow run that fails, crashes or is cancelled ends its MLflow run FAILED (KILLED) with the reason;
# registration is the second to last task, so a run that fails before it has registered nothing
@flow(name="retrain", description="Train the multi-task model on every task and promote it if no task got worse.",
      flow_run_name=run_name, timeout_seconds=FLOW_TIMEOUT_S,
      on_failure=[fail_mlflow_run], on_crashed=[fail_mlflow_run], on_cancellation=[fail_mlflow_run])
def retrain(config: PipelineConfig, previous_labels: dict[str, list[str]] | None = None,
            resume_run_dir: str | None = None, force: bool = False) -> Any:
    """`previous_labels`: task name -> the label list of the model being replaced (the champion's
    card), so existing labels keep their ids and new ones are appended. None: the champion's.
    `resume_run_dir`: the folder of a run whose flow process died: training goes on from its
    newest sound checkpoint instead of starting in a new folder (`mtl run --resume`), in the same
    MLflow run (its key is the folder's name). `force`: train even when the champion was made from
    the same data, settings, code and encoder (otherwise the run ends Skipped).

    The flow run ends in a named state: Promoted, Refused (the gate kept the champion), Skipped,
    or Failed."""
    return run_pipeline(config, previous_labels, resume_run_dir, force)


def run_pipeline(config: PipelineConfig, previous_labels: dict[str, list[str]] | None = None,
                 resume_run_dir: str | None = None, force: bool = False) -> Any:
    """The retrain flow's body, also run by `retrain_from_file` in its own flow run (no subflow: a
    deployment's run shows every task, log and artifact on its own page). A deployment's run holds
    its model's retrain lock throughout: one run per registered model at a time, whichever
    deployment started it. A run outside deployments (`mtl run`, a test's flow) takes no lock: `mtl
    run` without PREFECT_API_URL has a temporary server of its own, where a lock would guard
    nothing, and a server without background services never frees the lease of a killed holder."""
    if deployment.id is None:
        return pipeline_steps(config, previous_labels, resume_run_dir, force)
    with retrain_lock(config.registry.model_name, retrain_wait_s()):
        return pipeline_steps(config, previous_labels, resume_run_dir, force)


def pipeline_steps(config: PipelineConfig, previous_labels: dict[str, list[str]] | None,
                   resume_run_dir: str | None, force: bool) -> Any:
    run_dir = prepare_run(config, resume_run_dir)
    mlflow_run = open_mlflow_run(config.registry, config.storage.root, run_dir, mlflow_params(config))
    fingerprint = check_fingerprint(config, run_dir, force)  # before any data is read: a skip costs seconds
    if fingerprint["skip"]:
        close_mlflow_run(mlflow_run, outcome="skipped", reason=fingerprint["reason"])
        return outcome_state("Skipped", fingerprint["reason"], {
            "model_name": config.registry.model_name, "version": None, "promoted": False,
            "champion_version": fingerprint["champion_version"], "fingerprint": fingerprint["value"],
            "run_id": mlflow_run["run_id"], "run_dir": run_dir, "reason": fingerprint["reason"]})
    warm = warm_start_source(config, run_dir)
    if previous_labels is None:  # a warm start keeps its source's label ids, else the champion's
        previous_labels = warm["labels"] if warm else champion_label_maps(config.registry, config.promotion,
                                                                           config.storage.root, run_dir)
    ingested = ingest(config.tasks, config.resolved_data_dir(), run_dir, config.storage, previous_labels)
    data = data_report(config, ingested, run_dir, mlflow_run)
    if warm:
        check_warm(config, warm, data["train_labels"])
    tokenized = tokenize(config.tasks, ingested, config.encoder, config.tokenize, run_dir, config.storage)
    # the train split also gives a regression head its target scale (training/task_spec.py)
    specs = [spec_for(t, ingested[t.name]["labels"], ingested[t.name]["splits"]["train"]) for t in config.tasks]
    features = {n: r["features"] for n, r in tokenized.items()}
    dev = {n: r["splits"]["dev"] for n, r in ingested.items()}
    # `init_from: champion` before there is one: a cold start (warm is None), said by warm-start's log
    training = config.training if warm else config.training.model_copy(update={"init_from": None})
    export_dir = train(config.encoder, training, config.deepspeed, specs, features, run_dir, dev,
                       warm["export"] if warm else None, warm["source"] if warm else None)
    device = config.training.eval_device
    metrics = evaluate(export_dir, specs, dev, config.training.eval_batch_size, run_dir, device)
    affinity = task_affinity(run_dir, training, specs, features, config.affinity, device)
    registered = register(config.registry, config.promotion, config.storage.root, run_dir, export_dir,
                          data_params(tokenized), metrics, affinity)
    tag_fingerprint(registered, fingerprint)
    champion = evaluate_champion(config, specs, dev, run_dir)
    decision = promote(registered, specs, config.promotion, champion, metrics)
    # with promotion off nothing was gated: the version is registered, not refused
    outcome = "Promoted" if decision["promoted"] else "Refused" if config.promotion.enabled else "Registered"
    close_mlflow_run(mlflow_run, outcome=outcome.lower())
    aliases = registered["aliases"] + ([config.promotion.alias] if decision["promoted"] else [])
    # the summary is printed and written to a file: a password in the tracking URI stays out of it
    summary = {"model_name": registered["model_name"], "version": registered["version"],
               "aliases": sorted(set(aliases)), "tracking_uri": redact_uri(registered["tracking_uri"]),
               "run_id": registered["run_id"], "promoted": decision["promoted"], "gate": decision["reasons"],
               "metrics": metrics, "run_dir": run_dir, "fingerprint": fingerprint["value"],
               "data": {n: {"stats": r["stats"], "cached": r["cached"] and ingested[n]["cached"]}
                        for n, r in tokenized.items()}}
    message = {"Promoted": f"v{registered['version']} promoted to {config.promotion.alias}",
               "Refused": f"v{registered['version']} refused: " + "; ".join(decision["reasons"]),
               "Registered": f"v{registered['version']} registered; promotion is off in the config"}[outcome]
    return outcome_state(outcome, message, summary)


# The on-demand form: a field left as it is keeps the config file's value. Prefect draws `X | None`
# as a toggle set to None with the real input hidden behind it, so each field has a value that
# means "the file's": a dropdown's first choice `file`, a number's 0.
FILE = "file"
SharingField = Literal[(FILE, *get_args(SharingName))]  # type: ignore[valid-type]
WeightingField = Literal[(FILE, *get_args(WeightingName))]  # type: ignore[valid-type]
SamplerField = Literal[(FILE, *get_args(SamplerName))]  # type: ignore[valid-type]
Count = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(ge=0)]


def set_or_none(value: Any) -> Any:
    """A form field's value, or None when it is the one meaning the file's (0, `file`, empty)."""
    return None if value in (None, 0, FILE, "") else value


def file_config(config_path: str = "configs/demo.yaml", steps: int | None = None,
                learning_rate: float | None = None, processes: int | None = None, sharing: str | None = None,
                weighting: str | None = None, sampler: str | None = None, max_train_examples: int | None = None,
                max_dev_examples: int | None = None, overrides: dict[str, Any] | None = None,
                **_: Any) -> PipelineConfig:
    """The config `retrain_from_file` runs: the file with the fields given set on top (0, `file`
    or None: the file's value)."""
    fields = {"training.steps": steps, "training.learning_rate": learning_rate, "training.processes": processes,
              "training.sharing": sharing, "training.weighting": weighting, "training.sampler": sampler,
              "tasks.*.max_train_examples": max_train_examples, "tasks.*.max_dev_examples": max_dev_examples}
    return load_config(config_path, run_overrides({k: set_or_none(v) for k, v in fields.items()}, overrides or None))


def fail_file_mlflow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """A deployment's run cancelled or crashed ends with its own hooks, not its subflow's: the
    MLflow run that `retrain` opened under it ends KILLED or FAILED too."""
    end_failed_mlflow_run(lambda: file_config(**flow_run.parameters), flow_run, state)


def file_run_name() -> str:
    """`<config name>-<UTC date and time>`, the name read from the file (its stem if unreadable)."""
    path = Path(str(flow_run.parameters.get("config_path") or "mtl"))
    try:
        import yaml

        name = (yaml.safe_load(path.read_text()) or {}).get("name") or path.stem
    except (OSError, ValueError, AttributeError):
        name = path.stem
    return flow_run_name(str(name))


@flow(name="retrain-from-file", description="Load a pipeline YAML, set the fields given here on top, and run "
                                            "retrain (the nightly and on-demand deployments).",
      flow_run_name=file_run_name, timeout_seconds=FLOW_TIMEOUT_S,
      on_failure=[fail_file_mlflow_run], on_crashed=[fail_file_mlflow_run], on_cancellation=[fail_file_mlflow_run])
def retrain_from_file(config_path: str = "configs/demo.yaml", steps: Count = 0, learning_rate: Rate = 0.0,
                      processes: Count = 0, sharing: SharingField = FILE, weighting: WeightingField = FILE,
                      sampler: SamplerField = FILE, max_train_examples: Count = 0, max_dev_examples: Count = 0,
                      overrides: dict[str, Any] | None = None, resume_run_dir: str = "", force: bool = False) -> Any:
    """Each field left as it is (0, `file`, empty) keeps the file's value; the config is checked as
    a whole before any work.

    Args:
        config_path: pipeline YAML, relative to the project folder (the deployment's working directory)
        steps: training.steps, optimizer steps (0: the file's)
        learning_rate: training.learning_rate, peak learning rate (0: the file's)
        processes: training.processes, training processes per node (0: the file's)
        sharing: training.sharing, the sharing strategy (file: the file's)
        weighting: training.weighting, the loss weighting (file: the file's)
        sampler: training.sampler, the task sampler (file: the file's)
        max_train_examples: max_train_examples of every task: subsample train to this many (0: the file's)
        max_dev_examples: max_dev_examples of every task: subsample dev to this many (0: the file's)
        overrides: any other field by its dotted key, e.g. {"training.eval_every": 50, "storage.root": "/data/mtl",
            "tasks.pos.max_train_examples": 2000, "tasks[0].dev": "ud/dev.conllu"}; a wrong key or value fails
            the run before any work, naming the key
        resume_run_dir: the folder of an earlier run of these same settings whose flow run died
            (.mtl/runs/NAME-ID): training goes on from its newest sound checkpoint
        force: train even when the champion was made from the same data, settings, code and encoder
    """
    config = file_config(config_path, steps, learning_rate, processes, sharing, weighting, sampler,
                         max_train_examples, max_dev_examples, overrides)
    get_run_logger().info("config %s: %s", config_path, form_values(config))
    return run_pipeline(config, resume_run_dir=resume_run_dir or None, force=force)


def form_values(config: PipelineConfig) -> str:
    """The form's fields as the run resolved them (the file's value where a field was left as it is)."""
    t = config.training
    return (f"steps={t.steps} learning_rate={t.learning_rate} processes={t.processes} sharing={t.sharing} "
            f"weighting={t.weighting} sampler={t.sampler} "
            f"max_train_examples={[x.max_train_examples for x in config.tasks]} "
            f"max_dev_examples={[x.max_dev_examples for x in config.tasks]}")


if __name__ == "__main__":
    print(retrain(load_config(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")))
