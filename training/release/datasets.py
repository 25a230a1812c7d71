"""What a run trained on, in MLflow: the data profile as a run artifact, one dataset input per
task and split (shown on the run's page: source, digest, rows, context), and the champion's
profile read back for the next run's comparison."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from training.redaction import mask_userinfo
from training.release.registry import client_for, holder_at

PROFILE_FOLDER = "data"
PROFILE_FILE = "data_profile.json"
ROWS_TAG = "mtl.rows"
MAX_SOURCE_CHARS = 65_000  # MLflow stores a dataset's source in a 64 KiB text column
BATCH = 1000  # MLflow's datasets per log_inputs request


class ProfiledDataset(MetaDataset):
    """A dataset known by its source and digest, with the rows and label counts as its profile
    (MLflow shows a dataset's profile beside its source)."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: dict[str, Any]) -> None:
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def dataset_source(text: str) -> DatasetSource:
    """The MLflow source of a split as `data_prep.profile.configured_sources` writes it: a hub
    dataset (`hub:NAME?config=...`), an `s3://` URI or a local path (globs and lists kept as
    written). Credentials in a URI are masked first: the source is shown to everyone."""
    text = mask_userinfo(text)[:MAX_SOURCE_CHARS]
    if text.startswith("hub:"):
        parts = urlsplit(text)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        files = json.loads(query["data_files"]) if "data_files" in query else None
        return HuggingFaceDatasetSource(parts.path, config_name=query.get("config"), data_files=files,
                                        split=query.get("split"), revision=query.get("revision"))
    if "://" in text:
        try:
            return resolve_dataset_source(text)  # s3://, gs://, https:// ... each its own source type
        except MlflowException:
            pass  # a scheme MLflow has no source for: kept as written, as a location
    return local_source(text)


def local_source(text: str) -> DatasetSource:
    with warnings.catch_warnings():
        # MLflow registers its local source twice (schemes "" and "file") and warns it picked one
        warnings.simplefilter("ignore", UserWarning)
        found = resolve_dataset_source("/", candidate_sources=[FileSystemDatasetSource])
    return type(found)(text)


def dataset_inputs(profile: dict[str, Any], sources: dict[str, dict[str, str]]) -> list[DatasetInput]:
    inputs = []
    for task, summary in sorted(profile.get("tasks", {}).items()):
        for split, stats in summary["splits"].items():
            text = sources.get(task, {}).get(split) or f"ingested {task} {split} (source not given)"
            counts = {"num_rows": stats["rows"], "labels": stats.get("labels"), "target": stats.get("target")}
            dataset = ProfiledDataset(dataset_source(text), f"{task}-{split}", stats["digest"],
                                      {k: v for k, v in counts.items() if v is not None})
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[
                InputTag(MLFLOW_DATASET_CONTEXT, split), InputTag(ROWS_TAG, str(stats["rows"]))]))
    return inputs


def log_data_profile(uri: str, run_id: str, profile: dict[str, Any], sources: dict[str, dict[str, str]]) -> None:
    """`data/data_profile.json` in the run, and a dataset input `<task>-<split>` per split
    (context train or dev) with its source (task -> split -> location, see `dataset_source`) and
    the profile's digest. A retry logs nothing twice: MLflow keeps one input per name and digest."""
    client = client_for(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PROFILE_FILE
        path.write_text(json.dumps(profile, indent=1, sort_keys=True), encoding="utf-8")
        client.log_artifact(run_id, str(path), artifact_path=PROFILE_FOLDER)
    inputs = dataset_inputs(profile, sources)
    for start in range(0, len(inputs), BATCH):
        client.log_inputs(run_id, datasets=inputs[start:start + BATCH])


def champion_profile(uri: str, model_name: str, alias: str) -> dict[str, Any] | None:
    """The data profile of the run behind models:/`model_name`@`alias`; None when there is no
    such model (a database store is not created just to look) or its run has no profile (a
    champion trained before profiles were recorded)."""
    version = holder_at(uri, model_name, alias)
    if version is None or not version.run_id:
        return None
    client = client_for(uri)
    artifact = f"{PROFILE_FOLDER}/{PROFILE_FILE}"
    if artifact not in {f.path for f in client.list_artifacts(version.run_id, PROFILE_FOLDER)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(version.run_id, artifact, tmp)).read_text(encoding="utf-8"))
