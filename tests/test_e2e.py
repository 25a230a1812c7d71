"""The retrain flow end to end: a tiny real encoder, 2 real DeepSpeed processes, a real Prefect
engine, a real MLflow store. Then a second run, gated against the first, that evaluates during
training. Both train an auxiliary task (CoNLL-2003 part-of-speech tags) that is never exported,
evaluated or registered."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.config import parse_config
from helpers import tiny_config


@pytest.fixture(scope="module")
def runs(tiny_encoder, data_dir, tmp_path_factory, prefect_engine):
    from flows.retrain import retrain

    state = tmp_path_factory.mktemp("state")
    first = retrain(parse_config(with_auxiliary(tiny_config(tiny_encoder, state, data_dir))))
    second = retrain(parse_config(with_auxiliary(tiny_config(tiny_encoder, state, data_dir, seed=7, eval_every=6))))
    return first, second


def with_auxiliary(config: dict) -> dict:
    ner = config["tasks"][1]
    helper = {**ner, "name": "ptb", "tag_column": 1, "label_scheme": "plain", "auxiliary": True}
    return {**config, "tasks": config["tasks"] + [helper]}


def test_first_run_registers_champion(runs):
    first, _ = runs
    assert first["version"] == "1" and first["promoted"] is True
    assert first["aliases"] == ["challenger", "champion"]
    client = MlflowClient(first["tracking_uri"])
    # the champion may have moved on to version 2 since (see the gate test); the verdict stays
    assert client.get_model_version("tiny-mtl", "1").tags["mtl.gate"] == "passed"
    logged = client.get_run(first["run_id"]).data.metrics
    for task, metrics in first["metrics"].items():
        for name, value in metrics.items():
            assert 0.0 <= value <= 1.0
            assert logged[f"dev.{task}.{name}"] == pytest.approx(value)
    assert set(first["metrics"]) == {"pos", "ner", "sst2"}
    assert "entity_f1" in first["metrics"]["ner"] and "macro_f1" in first["metrics"]["sst2"]


def test_the_mlflow_run_is_linked_to_its_flow_run_and_has_training_curves(runs):
    from pathlib import Path

    first, _ = runs
    client = MlflowClient(first["tracking_uri"])
    run = client.get_run(first["run_id"])
    assert run.info.run_name == Path(first["run_dir"]).name
    flow_run_id = run.data.tags["mtl.prefect_flow_run_id"]
    assert flow_run_id and Path(first["run_dir"]).name.endswith(flow_run_id)
    assert [m.step for m in client.get_metric_history(first["run_id"], "train.lr")] == [3, 6, 9, 12]
    assert "Gate" in client.get_model_version("tiny-mtl", "1").description


def test_the_mlflow_run_spans_the_flow_run_with_config_figures_signature_and_progress(runs):
    """Issue 13: opened at the flow's start, closed at its end; the resolved config as params,
    loss curves per task, the figures, a signature and input example, the gate in the version's
    description; in Prefect, the training progress."""
    from pathlib import Path

    from training.release.registry import RUN_KEY

    first, second = runs
    client = MlflowClient(first["tracking_uri"])
    run = client.get_run(first["run_id"])
    version = client.get_model_version("tiny-mtl", "1")
    log = (Path(first["run_dir"]) / "train_metrics.jsonl").read_text().splitlines()
    first_step_at = json.loads(log[0])["time"]
    spans = {"status": run.info.status, "opened before the first step": run.info.start_time / 1000 < first_step_at,
             "closed after registering": run.info.end_time >= version.creation_timestamp}
    assert spans == {"status": "FINISHED", "opened before the first step": True, "closed after registering": True}
    params, tags = run.data.params, run.data.tags
    assert (params["training.steps"], params["encoder.max_length"], params["tasks.ner.label_scheme"]) == ("12", "48", "bio")
    assert tags["mlflow.source.name"] == "flows/retrain.py" and tags[RUN_KEY] == Path(first["run_dir"]).name
    losses = {k for k in run.data.metrics if k.startswith("train.loss.")}
    assert losses and losses <= {f"train.loss.{t}" for t in ("pos", "ner", "sst2", "ptb")}
    for key in losses:
        assert {m.step for m in client.get_metric_history(first["run_id"], key)} <= {3, 6, 9, 12}
    for summary in runs:
        shown = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
        assert shown == {f"plots/{n}.png" for n in ("training_loss", "confusion_pos", "confusion_ner", "confusion_sst2",
                                                     "task_affinity", "challenger_vs_champion")}
    png = Path(client.download_artifacts(first["run_id"], "plots/confusion_ner.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    confusion = json.loads((Path(first["run_dir"]) / "eval" / "confusion.json").read_text())
    assert sorted(confusion) == ["ner", "pos", "sst2"]
    assert sum(map(sum, confusion["sst2"]["counts"])) == 40  # every dev sentence once
    model = mlflow.pyfunc.load_model(version.source)
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["text", "tokens", "id"] and not any(c.required for c in schema.inputs)
    assert model.metadata.get_output_schema().input_names() == ["pos", "ner", "sst2"]
    assert model.metadata.saved_input_example_info is not None
    # the logged model lives with the run's experiment, in the state folder (not ./mlruns)
    assert version.source.startswith((Path(first["run_dir"]).parents[1] / "mlartifacts").as_uri())
    assert version.tags[RUN_KEY] == Path(first["run_dir"]).name
    assert "| task | metric | this version |" in version.description
    assert "Registered from run key" in version.description
    assert "| champion v1 |" in client.get_model_version("tiny-mtl", "2").description
    assert progress_of(tags["mtl.prefect_flow_run_id"]) == 100.0


def progress_of(flow_run_id: str) -> float:
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-progress"])),
                                      flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    [artifact] = found
    return float(artifact.data)


def test_training_log_and_checkpoints(runs):
    first, _ = runs
    from pathlib import Path

    run = Path(first["run_dir"])
    steps = [json.loads(l)["step"] for l in (run / "train_metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000012"]
    card = json.loads((run / "model" / "mtl_model.json").read_text())
    assert [t["name"] for t in card["tasks"]] == ["pos", "ner", "sst2"]


def test_second_run_is_version_two_and_gated(runs):
    first, second = runs
    assert second["version"] == "2"
    worse = [t for t, m in second["metrics"].items()
             if m[{"ner": "entity_f1"}.get(t, "accuracy")] < first["metrics"][t][{"ner": "entity_f1"}.get(t, "accuracy")]]
    assert second["promoted"] == (not worse)
    client = MlflowClient(second["tracking_uri"])
    champion = str(client.get_model_version_by_alias("tiny-mtl", "champion").version)
    assert champion == ("1" if worse else "2")
    assert str(client.get_model_version_by_alias("tiny-mtl", "challenger").version) == "2"
    assert len(second["gate"]) == len(worse)


def test_registered_pyfunc_predicts_every_task(runs):
    from training.release.registry import pinned_uris

    first, _ = runs
    # not mlflow.set_tracking_uri: it writes MLFLOW_TRACKING_URI into this process's environment, and
    # every later in-process run of the session would register in this store
    with pinned_uris(first["tracking_uri"]):
        model = mlflow.pyfunc.load_model("models:/tiny-mtl/1")
    texts = ["EU rejects German call to boycott British lamb .", "a gorgeous , witty , seductive movie ."]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["pos", "ner", "sst2"]
    assert [len(tags) for tags in out["pos"]] == [9, 8]
    labels = {"pos": set(json.loads(_labels(first, "pos"))), "ner": set(json.loads(_labels(first, "ner")))}
    assert all(tag in labels["pos"] for tags in out["pos"] for tag in tags)
    assert all(tag in labels["ner"] for tags in out["ner"] for tag in tags)
    assert set(out["sst2"]) <= {"0", "1"}


def _labels(summary: dict, task: str) -> str:
    from pathlib import Path

    return (Path(summary["run_dir"]) / "data" / task / "labels.json").read_text()


def test_second_run_keeps_label_ids_and_logs_data_statistics(runs):
    first, second = runs
    for task in ("pos", "ner", "sst2"):
        assert json.loads(_labels(second, task)) == json.loads(_labels(first, task))
    run = MlflowClient(second["tracking_uri"]).get_run(second["run_id"])
    params = run.data.params
    assert params["data.pos.examples"] == "128" and int(params["data.ner.tokens"]) > 0
    assert sum(json.loads(params["data.sst2.labels"]).values()) == 128
    assert not [k for k in run.data.metrics if k.startswith("data.")]  # statistics are params, not metrics


def test_task_affinity_matrix_is_logged_as_a_table_and_a_heatmap_not_as_metrics(runs):
    first, _ = runs
    client = MlflowClient(first["tracking_uri"])
    assert not [k for k in client.get_run(first["run_id"]).data.metrics if k.startswith("affinity.")]
    with open(client.download_artifacts(first["run_id"], "affinity/task_affinity.json"), encoding="utf-8") as f:
        table = json.load(f)
    cells = dict(zip(zip(*[[row[i] for row in table["data"]] for i in (0, 1)]), [row[2] for row in table["data"]]))
    assert set(cells) == {(i, j) for i in ("pos", "ner", "sst2") for j in ("pos", "ner", "sst2")}
    assert "plots/task_affinity.png" in {a.path for a in client.list_artifacts(first["run_id"], "plots")}


def test_the_auxiliary_task_trains_but_is_not_registered_and_dev_curves_come_from_training(runs):
    first, second = runs
    client = MlflowClient(second["tracking_uri"])
    for summary in runs:
        logged = client.get_run(summary["run_id"]).data.metrics
        assert not [k for k in logged if ".ptb." in k or k.startswith("dev.ptb")]
        assert "ptb" not in summary["metrics"]
    assert client.get_run(first["run_id"]).data.params["data.ptb.examples"] == "128"  # it was trained on
    assert [m.step for m in client.get_metric_history(second["run_id"], "train.dev.ner.entity_f1")] == [6, 12]
    assert not client.get_metric_history(first["run_id"], "train.dev.ner.entity_f1")
    from pathlib import Path

    card = json.loads((Path(second["run_dir"]) / "model" / "mtl_model.json").read_text())
    assert set(card["selection"]["tasks"]) == {"pos", "ner", "sst2"}
