"""Warm start: training that begins from a registered model's weights instead of the base encoder's
(`training.init_from`), kept apart from resume, which continues a run from its own checkpoints.

- `resolve_init_from` turns `training.init_from` into one pinned source (a registry alias or
  `champion` becomes `models:/NAME/VERSION`), so a retried or resumed run starts from the same
  weights even if the alias moved since.
- `fetch_export` downloads a registered model's export folder (the pyfunc model's `model_dir`
  artifact) once; the flow hands that folder to `train_model(init=...)`. It serves any model
  URI, e.g. the champion loaded for a comparison on the same data.
- `check_warm_start` and `label_row_problems` refuse, before any process starts, a source whose
  heads the new model cannot take over: a head the config lost, a task of another type, a label
  whose row would never be trained again, or label ids that moved.

The source's label lists must be the ones ingest keeps (`previous_labels`): old labels keep their
ids and rows, new labels are appended and get fresh rows (`training.model.multitask.load_matching`).
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_prep.config import is_regression
from training.config import INIT_FROM_FORMS, init_from_kind
from training.errors import WarmStartError
from training.model.export import CARD, read_card
from training.redaction import redact_uri
from training.release.serving import resolve_export
from training.task_spec import TaskSpec

FRESH = "drop training.init_from to start fresh from the base encoder"


@dataclass(frozen=True)
class WarmSource:
    """Where a warm start takes its weights, as the model card records it."""

    uri: str  # pinned: models:/NAME/VERSION for a registry form, runs:/RUN_ID/PATH, or an absolute folder
    model_name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def card(self) -> dict[str, str | None]:
        """The `init_from` entry of the model card (and of `train_model(init_source=...)`)."""
        return asdict(self)


def resolve_init_from(init_from: str, tracking_uri: str, model_name: str, alias: str) -> WarmSource:
    """The one model `training.init_from` names: `champion` is `model_name` at `alias`; a registry
    form is pinned to its version; a folder must hold an export. Raises WarmStartError naming what
    exists when the named model does not."""
    try:
        kind, parts = init_from_kind(init_from)
    except ValueError as exc:
        raise WarmStartError([f"training.init_from: {exc}"]) from None
    if kind == "folder":
        folder = Path(parts["path"]).expanduser().resolve()
        if not (folder / CARD).is_file():
            raise WarmStartError([f"training.init_from: {init_from}: no {CARD} there, so not an exported model; "
                                  f"give a run's model/ folder or a registry form ({INIT_FROM_FORMS}), or {FRESH}"])
        return WarmSource(str(folder))
    if kind == "champion":
        return _champion(tracking_uri, model_name, alias)
    client = _client(tracking_uri, init_from)
    if kind == "run":
        return _run_source(client, init_from, parts["run_id"], tracking_uri)
    if kind == "alias":
        version = _version_by_alias(client, parts["name"], parts["alias"], init_from, tracking_uri)
    else:
        version = _version(client, parts["name"], parts["version"], init_from, tracking_uri)
    return WarmSource(f"models:/{parts['name']}/{version.version}", parts["name"], str(version.version),
                      version.run_id)


def _client(tracking_uri: str, init_from: str) -> Any:
    """A client of this store; a sqlite store that does not exist is reported, not created."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise WarmStartError([f"training.init_from: {init_from}: there is no MLflow store at "
                              f"{redact_uri(tracking_uri)} yet, so no registered model; set registry.tracking_uri "
                              f"(or MLFLOW_TRACKING_URI) to the store that holds it, or {FRESH}"])
    from training.release.registry import client_for

    return client_for(tracking_uri)


def _champion(tracking_uri: str, model_name: str, alias: str) -> WarmSource:
    no_champion = (f"training.init_from: champion: {model_name} has no version at alias {alias!r} in "
                   f"{redact_uri(tracking_uri)} yet, so there is no champion to start from; for the first run "
                   f"remove training.init_from (it trains from the base encoder and its model can become the "
                   f"champion), or name a version: models:/{model_name}/VERSION")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise WarmStartError([no_champion])
    from mlflow.exceptions import MlflowException

    from training.release.registry import client_for

    try:
        version = client_for(tracking_uri).get_model_version_by_alias(model_name, alias)
    except MlflowException:
        raise WarmStartError([no_champion]) from None
    return WarmSource(f"models:/{model_name}/{version.version}", model_name, str(version.version), version.run_id)


def _registered(client: Any, name: str, init_from: str, tracking_uri: str) -> Any:
    """The registered model `name`, or a WarmStartError listing the names the store has."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise WarmStartError([f"training.init_from: {init_from}: no registered model {name!r} in "
                              f"{redact_uri(tracking_uri)}; registered models: {names or 'none'}"]) from None


def _version(client: Any, name: str, version: str, init_from: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    _registered(client, name, init_from, tracking_uri)
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        found = sorted((int(v.version) for v in client.search_model_versions(f"name = '{name}'")))
        raise WarmStartError([f"training.init_from: {init_from}: {name} has no version {version}; its versions "
                              f"are {found or 'none'}"]) from None


def _version_by_alias(client: Any, name: str, alias: str, init_from: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    model = _registered(client, name, init_from, tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        aliases = {a: str(v) for a, v in sorted(dict(model.aliases).items())}
        raise WarmStartError([f"training.init_from: {init_from}: {name} has no alias {alias!r}; its aliases "
                              f"are {aliases or 'none'} (alias: version)"]) from None


def _run_source(client: Any, init_from: str, run_id: str, tracking_uri: str) -> WarmSource:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise WarmStartError([f"training.init_from: {init_from}: no run {run_id} in {redact_uri(tracking_uri)}; "
                              "copy the run id from the run's page or the version's source"]) from None
    return WarmSource(init_from, run_id=run_id)


def fetch_export(tracking_uri: str, model_uri: str, dest: Path) -> Path:
    """The export folder (the one holding mtl_model.json) of `model_uri`, a registered pyfunc model
    (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model) downloaded into `dest`, or an
    export folder, returned as it is. The download lands under a temporary name and is renamed to
    `dest`, so an existing `dest` is complete and is reused as it is: name `dest` after a pinned URI
    (`WarmSource.uri`), since an alias may move. Raises ServingError (a ValueError) naming the URI."""
    dest = Path(dest)
    if dest.is_dir():
        return resolve_export(str(dest), None, str(dest))
    if Path(model_uri).is_dir():
        return resolve_export(model_uri, None, str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        found = resolve_export(model_uri, tracking_uri, str(tmp))
        inside = found.relative_to(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not another fetch of the same model that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / inside


def source_tasks(export: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """An export's heads as its card lists them: (label list per task, type per task)."""
    tasks = read_card(export)["tasks"]
    return {t["name"]: list(t["labels"]) for t in tasks}, {t["name"]: t["type"] for t in tasks}


def check_warm_start(source_tasks: dict[str, list[str]], config_tasks: dict[str, str],
                     train_labels: dict[str, set[str]], declared: dict[str, list[str] | None],
                     source_types: dict[str, str] | None = None) -> None:
    """Refuse (all problems at once) a source whose heads this run cannot take over. `source_tasks`:
    the source's label list per task; `config_tasks`: the config's type per task; `train_labels`:
    the labels occurring in each task's current train split; `declared`: each task's configured
    `labels` (None if not set); `source_types`: the source's type per task, from its card (see
    `source_tasks()`; without it types are not compared). A config task the source lacks gets a
    fresh head; a source head the config lacks, a type change, or a source label that no longer
    occurs in the train data and is not declared (its row would stay as it was, never trained) is
    refused."""
    problems = []
    if lost := sorted(set(source_tasks) - set(config_tasks)):
        problems.append(f"training.init_from: the source model has head(s) for {lost}, which the config's tasks do "
                        f"not have: the retrained model would drop them; add those tasks (with their data) to "
                        f"tasks, or {FRESH}")
    for name, kind in config_tasks.items():
        if name not in source_tasks:
            continue
        was = (source_types or {}).get(name)
        if was is not None and was != kind:
            problems.append(f"tasks.{name}.type: {kind}, but the source model's {name} head is {was}; its weights "
                            f"cannot start this head: rename the task (it gets a fresh head), or {FRESH}")
            continue
        if is_regression(kind):
            continue
        keep = set(declared.get(name) or [])
        seen = train_labels.get(name, set())
        if vanished := [label for label in source_tasks[name] if label not in seen and label not in keep]:
            problems.append(f"tasks.{name}: label(s) {vanished} of the source model's head do not occur in the train "
                            f"data, so their rows would never be trained again; list them in tasks.{name}.labels "
                            f"to keep their rows, or {FRESH}")
    if problems:
        raise WarmStartError(problems)


def label_row_problems(source_labels: dict[str, list[str]], source_types: dict[str, str],
                       tasks: list[TaskSpec]) -> list[str]:
    """Heads whose rows would not mean what they meant: each task both models have must keep its
    type and start with the source's label list in its order (new labels only appended)."""
    problems = []
    for task in tasks:
        if task.name not in source_labels:
            continue
        if source_types.get(task.name, task.type) != task.type:
            problems.append(f"tasks.{task.name}.type: {task.type}, but the warm-start source's head is "
                            f"{source_types[task.name]}; rename the task (a fresh head), or {FRESH}")
            continue
        old = source_labels[task.name]
        if not is_regression(task.type) and task.labels[:len(old)] != old:
            problems.append(f"tasks.{task.name}: its label list {task.labels} does not start with the warm-start "
                            f"source's {old}, so the head's rows would change meaning; ingest the task with the "
                            f"source's label lists as previous_labels (their ids are kept, new labels appended), "
                            f"or {FRESH}")
    return problems
