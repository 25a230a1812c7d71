"""The retraining loop in one process (real Prefect engine, real DeepSpeed, real MLflow store):
run 1 registers and promotes v1; run 2 on unchanged inputs ends Skipped with no new version in a
fraction of run 1's time; run 3 on changed data (new rows, a new label) warm-starts from the
champion, reports the shift and gates both models on the new dev split, in the same flow run."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from flows.config import parse_config
from helpers import tiny_config

pytestmark = pytest.mark.slow
MODEL = "loop-mtl"
FILES = {"pos": ("ud_en_ewt/en_ewt-ud-train.conllu", "ud_en_ewt/en_ewt-ud-dev.conllu"),
         "sst2": ("cls_sst2/train.tsv", "cls_sst2/dev.tsv")}


def loop_config(encoder: Path, state: Path, data: Path, **training: Any) -> dict[str, Any]:
    raw = tiny_config(encoder, state, data, steps=4, processes=1, checkpoint_every=4, log_every=2, **training)
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in FILES]
    raw["affinity"] = {"method": "off"}
    raw["registry"] = {"model_name": MODEL}
    raw["training"]["init_from"] = "champion"
    return raw


def artifact(flow_run_id: Any, key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert found, f"no artifact {key!r} in flow run {flow_run_id}"
    return str(found[-1].data)


def timed(config: dict[str, Any], **kwargs: Any) -> tuple[Any, float]:
    from flows.retrain import retrain

    start = time.monotonic()
    state = retrain(parse_config(config), return_state=True, **kwargs)
    return state, time.monotonic() - start


@pytest.fixture(scope="module")
def loop(tiny_encoder, data_dir, tmp_path_factory, prefect_engine) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("loop")
    data = base / "data"  # the corpora the runs read: run 3 changes this copy
    for train, dev in FILES.values():
        for name in (train, dev):
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir / name, data / name)
    raw = loop_config(tiny_encoder, base / "state", data)
    first, first_s = timed(raw)
    second, second_s = timed(raw)
    # new rows and a new label: sst2's train and dev both gain sentences labelled "2"
    for split, count in (("train", 0), ("dev", 1)):
        with open(data / FILES["sst2"][count], "a", encoding="utf-8") as handle:
            handle.writelines(f"a neutral sentence number {i} .\t2\n" for i in range(30))
    third, third_s = timed(raw)
    return {"raw": raw, "runs": [first, second, third], "seconds": [first_s, second_s, third_s],
            "uri": f"sqlite:///{base / 'state' / 'mlflow.db'}"}


def test_first_run_is_promoted_and_carries_its_fingerprint(loop):
    first = loop["runs"][0]
    assert first.name == "Promoted", first.message
    summary = first.result()
    assert summary["version"] == "1" and summary["outcome"] == "Promoted"
    version = MlflowClient(loop["uri"]).get_model_version(MODEL, "1")
    assert version.tags["mtl.fingerprint"] == summary["fingerprint"]
    assert set(json.loads(version.tags["mtl.fingerprint.parts"])) == {"config", "code", "encoder", "data.pos",
                                                                      "data.sst2"}


def test_an_unchanged_run_is_skipped_quickly_with_no_new_version(loop):
    second, (first_s, second_s, _) = loop["runs"][1], loop["seconds"]
    assert second.name == "Skipped" and "same inputs as champion loop-mtl@champion (v1)" in second.message
    assert second.result()["version"] is None
    client = MlflowClient(loop["uri"])
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert set(versions) == {"1", "2"}  # v2 from run 3, none from run 2
    assert versions["2"].tags["mtl.run_key"] != second.result()["run_dir"].rsplit("/", 1)[-1]
    assert client.get_run(second.result()["run_id"]).data.tags["mtl.outcome"] == "skipped"
    assert "nothing to train" in artifact(second.state_details.flow_run_id, "fingerprint")
    print(f"run 1 {first_s:.1f} s, skipped run 2 {second_s:.1f} s")
    assert second_s < first_s / 10, (first_s, second_s)


def test_changed_data_is_reported_against_the_champions(loop):
    third = loop["runs"][2]
    assert third.name in ("Promoted", "Refused"), third.message
    report = artifact(third.state_details.flow_run_id, "data-report")
    assert "sst2" in report and "`2`" in report or "2" in report
