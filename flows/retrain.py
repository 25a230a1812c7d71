"""The retrain flow: ingest -> tokenize -> train -> evaluate -> register -> promote.

Run it with `mtl run CONFIG`, or directly: `python flows/retrain.py configs/demo.yaml`.

No `from __future__ import annotations` here: Prefect validates a flow's parameters against its
annotations, and a runner (`serve`) ships the flows to each run's process by value, with only the
names their code uses. A postponed annotation (the string "PipelineConfig") cannot be resolved
there, and every served run of `retrain_from_file` failed before it started.
"""
import sys
from pathlib import Path
from typing import Any

from prefect import flow

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.config import PipelineConfig, load_config  # noqa: E402
from flows.tasks import (champion_label_maps, evaluate, ingest, prepare_run, promote,  # noqa: E402
                         data_params, register, task_affinity, tokenize, train)
from training.release.registry import redact_uri  # noqa: E402
from training.task_spec import spec_for  # noqa: E402


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

    walk("", config.model_dump(mode="json"))
    return flat


@flow(name="retrain", description="Train the multi-task model on every task and promote it if no task got worse.")
def retrain(config: PipelineConfig, previous_labels: dict[str, list[str]] | None = None,
            resume_run_dir: str | None = None) -> dict[str, Any]:
    """`previous_labels`: task name -> the label list of the model being replaced (the champion's
    card), so existing labels keep their ids and new ones are appended. None: the champion's.
    `resume_run_dir`: the folder of a run whose flow process died: training goes on from its
    newest sound checkpoint instead of starting in a new folder (`mtl run --resume`)."""
    run_dir = prepare_run(config, resume_run_dir)
    if previous_labels is None:
        previous_labels = champion_label_maps(config.registry, config.promotion, config.storage.root)
    ingested = ingest(config.tasks, config.resolved_data_dir(), run_dir, config.storage, previous_labels)
    tokenized = tokenize(config.tasks, ingested, config.encoder, config.tokenize, run_dir, config.storage)
    specs = [spec_for(t, ingested[t.name]["labels"]) for t in config.tasks]
    features = {n: r["features"] for n, r in tokenized.items()}
    dev = {n: r["splits"]["dev"] for n, r in ingested.items()}
    export_dir = train(config.encoder, config.training, config.deepspeed, specs, features, run_dir, dev)
    metrics = evaluate(export_dir, specs, dev, config.training.eval_batch_size)
    registered = register(config.registry, config.promotion, config.storage.root, run_dir, export_dir,
                          {**mlflow_params(config), **data_params(tokenized)}, metrics,
                          task_affinity(export_dir, features, config.affinity))
    decision = promote(registered, specs, config.promotion)
    aliases = registered["aliases"] + ([config.promotion.alias] if decision["promoted"] else [])
    # the summary is printed and written to a file: a password in the tracking URI stays out of it
    return {"model_name": registered["model_name"], "version": registered["version"],
            "aliases": sorted(set(aliases)), "tracking_uri": redact_uri(registered["tracking_uri"]),
            "run_id": registered["run_id"], "promoted": decision["promoted"], "gate": decision["reasons"],
            "metrics": metrics, "run_dir": run_dir,
            "data": {n: {"stats": r["stats"], "cached": r["cached"] and ingested[n]["cached"]}
                     for n, r in tokenized.items()}}


@flow(name="retrain-from-file", description="Load a pipeline YAML and run retrain (for scheduled deployments).")
def retrain_from_file(config_path: str = "configs/demo.yaml") -> dict[str, Any]:
    return retrain(load_config(config_path))


if __name__ == "__main__":
    print(retrain(load_config(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")))
