"""The retraining loop's decisions, as Prefect tasks: skip a run whose inputs made the champion
already, warm-start from a registered model, report what changed in the data, score the champion
on the same dev split as the challenger, and end the flow run in a named outcome.

Each task wraps functions of `training/` and `data_prep/`; what a decision rests on goes into a
Prefect markdown artifact, so the flow run's page says why it ended as it did.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from data_prep.stage import atomic_write_text, source_fingerprints
from flows.config import PipelineConfig
from flows.tasks import TASK_DEFAULTS
from training.model.multitask import resolve_encoder_path
from training.redaction import mask_userinfo
from training.release.fingerprint import FINGERPRINT_TAG, PARTS_TAG, Fingerprint, differences, make_fingerprint
from training.release.registry import client_for, holder_at, tracking_uri

OUTCOMES = ("Promoted", "Refused", "Registered", "Skipped")


@task(name="fingerprint", **TASK_DEFAULTS)
def check_fingerprint(config: PipelineConfig, run_dir: str, force: bool = False) -> dict[str, Any]:
    """This run's fingerprint and whether the champion was made from exactly the same inputs:
    `skip` is true only then (and without `force`). The reason, either way, is an artifact. A
    registry that cannot be read does not stop the run: it trains and says why."""
    logger = get_run_logger()
    sources = {t.name: source_fingerprints(t, config.resolved_data_dir(), config.storage.s3) for t in config.tasks}
    mine = make_fingerprint(config.model_dump(mode="json"), resolve_encoder_path(config.encoder.name_or_path),
                            sources)
    atomic_write_text(Path(run_dir) / "fingerprint.json",
                      json.dumps({"value": mine.value, "parts": mine.parts, "unpinned": mine.unpinned}, indent=2))
    try:
        champion = holder_at(tracking_uri(config.registry, config.storage.root), config.registry.model_name,
                             config.promotion.alias)
        skip, reason = skip_decision(mine, champion, f"{config.registry.model_name}@{config.promotion.alias}", force)
    except Exception as exc:  # noqa: BLE001 - an unreachable registry must not stop a nightly
        champion, skip = None, False
        reason = f"the registry could not be read for the skip check ({mask_userinfo(str(exc))[:300]}): training anyway"
    logger.info("fingerprint %s: %s", mine.value, reason)
    create_markdown_artifact(fingerprint_markdown(mine.value, mine.parts, reason), key="fingerprint",
                             description="what made this run, and whether it needs to train")
    return {"value": mine.value, "parts": mine.parts, "skip": skip, "reason": reason,
            "champion_version": None if champion is None else str(champion.version)}


def skip_decision(mine: Fingerprint, champion: Any | None, held: str, force: bool) -> tuple[bool, str]:
    """(skip, the reason for people) for this run's fingerprint against the champion's version."""
    if mine.value is None:
        return False, "no skip possible: " + "; ".join(mine.unpinned)
    if champion is None:
        return False, f"no champion {held} yet: training"
    if FINGERPRINT_TAG not in champion.tags:
        return False, (f"champion {held} (v{champion.version}) has no fingerprint (registered before fingerprints "
                       "were recorded): training, and the gate decides")
    if champion.tags[FINGERPRINT_TAG] != mine.value:
        theirs = json.loads(champion.tags.get(PARTS_TAG) or "{}")
        changed = differences(mine.parts, theirs) if theirs else ["(the champion's parts are not recorded)"]
        return False, f"inputs differ from champion {held} (v{champion.version}): {', '.join(changed)}: training"
    if force:
        return False, f"same inputs as champion {held} (v{champion.version}), but force is set: training anyway"
    return True, (f"same inputs as champion {held} (v{champion.version}): data, settings, code and encoder "
                  f"(fingerprint {mine.value}); nothing to train. Set force to train anyway.")


def fingerprint_markdown(value: str | None, parts: dict[str, str], reason: str) -> str:
    rows = "\n".join(f"| {name} | `{digest}` |" for name, digest in sorted(parts.items()))
    return f"**{reason}**\n\nFingerprint `{value}`\n\n| part | digest |\n|---|---|\n{rows}\n"


@task(name="tag-fingerprint", **TASK_DEFAULTS)
def tag_fingerprint(registered: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """The fingerprint on the registered version (and its run), so a later run can compare."""
    client = client_for(registered["tracking_uri"])
    if fingerprint["value"] is None:
        return
    parts = json.dumps(fingerprint["parts"], sort_keys=True, separators=(",", ":"))
    for key, value in ((FINGERPRINT_TAG, fingerprint["value"]), (PARTS_TAG, parts)):
        client.set_model_version_tag(registered["model_name"], registered["version"], key, value)
        client.set_tag(registered["run_id"], key, value)


def outcome_state(outcome: str, message: str, summary: dict[str, Any]) -> Any:
    """A completed flow run whose state says what happened: Promoted, Refused, Registered
    (promotion off) or Skipped."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
    return Completed(name=outcome, message=message, data={**summary, "outcome": outcome})


def flow_run_name(config_name: str) -> str:
    """`<config name>-<UTC date and time>`: a scheduled run's name says what and when."""
    return f"{config_name}-{datetime.now(timezone.utc):%Y-%m-%d-%H%M}"


def retrain_wait_s() -> float:
    """How long a run waits for another run of the same model to finish (MTL_RETRAIN_WAIT_S)."""
    return float(os.environ.get("MTL_RETRAIN_WAIT_S", 6 * 3600))


@task(name="data-report", **TASK_DEFAULTS)
def data_report(config: PipelineConfig, ingested: dict[str, dict[str, Any]], run_dir: str,
                mlflow_run: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """What changed in the data against the champion's training data: rows, label shift (total
    variation distance), labels new and vanished, lengths; a markdown artifact, `data/` on the
    MLflow run with a dataset input per task and split. A task over its `max_label_shift` fails
    the run here, before any training. `notes`: lines to put at the report's head."""
    from data_prep.profile import DataShiftError, compare, configured_sources, profile_data, report_markdown, \
        shift_problems
    from training.release.datasets import champion_profile, log_data_profile

    types = {t.name: t.type for t in config.tasks}
    profile = profile_data({n: (types[n], r["labels"], r["splits"]) for n, r in ingested.items()})
    atomic_write_text(Path(run_dir) / "data_profile.json", json.dumps(profile, indent=2))
    uri = mlflow_run["tracking_uri"]
    log_data_profile(uri, mlflow_run["run_id"], profile,
                     {t.name: configured_sources(t, config.resolved_data_dir()) for t in config.tasks})
    old = champion_profile(uri, config.registry.model_name, config.promotion.alias)
    report = compare(old, profile)
    text = "\n\n".join([*(f"**{note}**" for note in notes or []), report_markdown(report)])
    create_markdown_artifact(text, key="data-report", description="this run's data against the champion's")
    problems = shift_problems(report, {t.name: t.max_label_shift for t in config.tasks})
    if problems:
        raise DataShiftError(problems)
    train_labels = {name: sorted((task["splits"].get("train") or {}).get("labels") or {})
                    for name, task in profile["tasks"].items()}
    return {"report": report, "train_labels": train_labels}


@task(name="warm-start", **TASK_DEFAULTS)
def warm_start_source(config: PipelineConfig, run_dir: str) -> dict[str, Any] | None:
    """The registered model `training.init_from` names, downloaded into the run folder: its export,
    where it came from (for the model card) and its heads' labels and types. None: a cold start
    (no init_from, or `champion` before there is one: a nightly's first run trains from the base
    encoder and says so)."""
    from training.release.warm_start import fetch_export, resolve_init_from, source_tasks

    init_from, logger = config.training.init_from, get_run_logger()
    if not init_from:
        return None
    uri = tracking_uri(config.registry, config.storage.root)
    if init_from == "champion" and holder_at(uri, config.registry.model_name, config.promotion.alias) is None:
        logger.info("training.init_from: champion: %s@%s does not exist yet; this run starts from the base encoder",
                    config.registry.model_name, config.promotion.alias)
        return None
    source = resolve_init_from(init_from, uri, config.registry.model_name, config.promotion.alias)
    folder = Path(run_dir) / "warm_start" / "".join(c if c.isalnum() or c in "-_." else "_" for c in source.uri)
    export = fetch_export(uri, source.uri, folder)
    labels, types = source_tasks(export)
    logger.info("warm start from %s (%s)", source.uri, export)
    return {"export": str(export), "source": source.card(), "labels": labels, "types": types}


@task(name="check-warm-start", **TASK_DEFAULTS)
def check_warm(config: PipelineConfig, warm: dict[str, Any], train_labels: dict[str, list[str]]) -> None:
    """Refused before training: a source head the config lacks, a task whose type changed, or a
    label of the source that vanished from the train data (unless the task declares it)."""
    from training.release.warm_start import check_warm_start

    check_warm_start(warm["labels"], {t.name: t.type for t in config.tasks},
                     {name: set(labels) for name, labels in train_labels.items()},
                     {t.name: t.labels for t in config.tasks}, source_types=warm["types"])


@task(name="evaluate-champion", **TASK_DEFAULTS)
def evaluate_champion(config: PipelineConfig, specs: list[Any], dev: dict[str, str], run_dir: str) -> dict[str, Any]:
    """The champion, loaded from the registry, scored on this run's dev split by the same code as
    the challenger: the gate then compares two models on the same data. Returns {"version": None}
    when there is no champion; {"version", "metrics": None, "notes"} when it cannot be scored here
    (the gate then falls back to the scores logged on its run, and says so)."""
    from training.evaluation.evaluate import evaluate_export
    from training.release.audit import moved_by_hand
    from training.release.warm_start import fetch_export, source_tasks
    from training.task_spec import exported

    uri, name, alias = tracking_uri(config.registry, config.storage.root), config.registry.model_name, \
        config.promotion.alias
    champion = holder_at(uri, name, alias)
    if champion is None:
        return {"version": None, "metrics": None, "notes": []}
    version, logger = str(champion.version), get_run_logger()
    notes = [note] if (note := moved_by_hand(uri, name, alias)) else []
    try:
        export = fetch_export(uri, f"models:/{name}/{version}", Path(run_dir) / "champion" / f"v{version}")
        labels, _ = source_tasks(export)
    except Exception as exc:  # noqa: BLE001 - an old champion without an export is gated on its logged scores
        notes.append(f"{alias} v{version} could not be loaded to score it on this dev split "
                     f"({mask_userinfo(str(exc))[:300]}); compared with the scores logged when it was registered")
        return {"version": version, "metrics": None, "notes": notes}
    mine = [s for s in exported(specs) if s.name in labels]
    sizes = {s.name: sum(1 for line in open(dev[s.name], encoding="utf-8") if line.strip()) for s in mine}
    found = evaluate_export(str(export), mine, dev, config.training.eval_batch_size,
                            device=config.training.eval_device)
    metrics = {task: e.metrics for task, e in found.items()}
    notes.append(f"both models scored in this flow run, by the same code, on the current dev split "
                 f"({', '.join(f'{t} {n}' for t, n in sizes.items())} examples)")
    notes += label_notes(labels, {s.name: list(s.labels) for s in exported(specs)}, alias, version)
    logger.info("champion v%s on this dev split: %s", version, json.dumps(metrics))
    return {"version": version, "metrics": metrics, "notes": notes}


def label_notes(champion: dict[str, list[str]], challenger: dict[str, list[str]], alias: str,
                version: str) -> list[str]:
    """Where the two models' label sets differ, which labels the comparison was made on."""
    notes = []
    for name, labels in sorted(challenger.items()):
        if name not in champion:
            notes.append(f"{name}: new task, {alias} v{version} has no head for it: no comparison")
        elif new := [label for label in labels if label not in champion[name]]:
            notes.append(f"{name}: compared on every dev example, labels {', '.join(new)} included: they are new "
                         f"since {alias} v{version}, which cannot predict them")
    return notes
