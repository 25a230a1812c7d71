"""The promotion gate and alias moves against a real MLflow database store."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.config import PromotionConfig, RegistryConfig
from training.model.export import write_export
from training.model.multitask import build_model
from training.release.gate import gate, metric_key
from training.release.registry import promote_if_better, register_model, set_champion
from training.task_spec import TaskSpec

PRIMARY = {"pos": "accuracy", "ner": "entity_f1"}


def test_gate_allows_within_tolerance_and_names_the_worse_task():
    champion = {metric_key("pos", "accuracy"): 0.90, metric_key("ner", "entity_f1"): 0.60}
    assert gate({metric_key("pos", "accuracy"): 0.895, metric_key("ner", "entity_f1"): 0.70},
                champion, PRIMARY, 0.01) == []
    reasons = gate({metric_key("pos", "accuracy"): 0.95, metric_key("ner", "entity_f1"): 0.58},
                   champion, PRIMARY, 0.01)
    assert len(reasons) == 1 and reasons[0].startswith("ner entity_f1 0.5800 < champion 0.6000")


def test_gate_refuses_a_challenger_that_drops_a_task():
    champion = {metric_key("pos", "accuracy"): 0.9, metric_key("sst2", "accuracy"): 0.8}
    assert gate({metric_key("pos", "accuracy"): 0.95}, champion, {"pos": "accuracy"}, 0.0) == [
        "task sst2 of the champion is missing from the challenger"]


@pytest.fixture()
def export(tiny_encoder, tmp_path) -> str:
    from transformers import AutoTokenizer

    tasks = [TaskSpec(name="pos", type="token_classification", labels=["NOUN", "VERB"])]
    model = build_model(str(tiny_encoder), tasks, "hard", 0.1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    card = {"sharing": "hard", "dropout": 0.1, "max_length": 32}
    return str(write_export(tmp_path / "model", state, model, AutoTokenizer.from_pretrained(tiny_encoder), card))


def test_register_is_idempotent_and_promotion_follows_the_gate(export, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = RegistryConfig(model_name="m", experiment="e")
    root = (tmp_path / "artifacts").as_uri()
    promo = PromotionConfig(tolerance=0.0)
    first = register_model(cfg, uri, root, "run-a", export, {"p": 1}, {"pos": {"accuracy": 0.8}}, {}, "challenger")
    again = register_model(cfg, uri, root, "run-a", export, {"p": 1}, {"pos": {"accuracy": 0.8}}, {}, "challenger")
    assert (first.version, again.version, again.run_id) == ("1", "1", first.run_id)
    assert promote_if_better(uri, "m", "1", {"pos": "accuracy"}, promo) == (True, [])
    worse = register_model(cfg, uri, root, "run-b", export, {}, {"pos": {"accuracy": 0.7}}, {}, "challenger")
    promoted, reasons = promote_if_better(uri, "m", worse.version, {"pos": "accuracy"}, promo)
    client = MlflowClient(uri)
    assert (promoted, str(client.get_model_version_by_alias("m", "champion").version)) == (False, "1")
    assert "pos accuracy 0.7000 < champion 0.8000" in client.get_model_version("m", "2").tags["mtl.gate"]
    # a person overrides the gate, then rolls back
    assert set_champion(uri, "m", "2") == "1"
    assert set_champion(uri, "m", "1") == "2"
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert Path(tmp_path / "artifacts").is_dir()


def test_champion_label_maps_come_from_the_registered_card(export, tmp_path):
    from training.model.export import CARD
    from training.release.registry import CARD_ARTIFACT, champion_labels

    missing = tmp_path / "none.db"
    assert champion_labels(f"sqlite:///{missing}", "m", "champion") is None
    assert not missing.exists(), "looking must not create a store"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = RegistryConfig(model_name="m", experiment="e")
    reg = register_model(cfg, uri, (tmp_path / "a").as_uri(), "run-a", export, {}, {"pos": {"accuracy": 0.5}},
                         {CARD_ARTIFACT: str(Path(export) / CARD)}, "challenger")
    assert champion_labels(uri, "m", "champion") is None
    set_champion(uri, "m", reg.version)
    assert champion_labels(uri, "m", "champion") == {"pos": ["NOUN", "VERB"]}


def test_tracking_uri_credentials_never_reach_a_link():
    from training.release.registry import redact_uri, run_url

    assert redact_uri("http://bob:s3cret@mlflow.internal:5000") == "http://***@mlflow.internal:5000"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert run_url("https://u:p@mlflow.example/", "3", "abc") == "https://***@mlflow.example/#/experiments/3/runs/abc"
    assert run_url("sqlite:////tmp/mlflow.db", "3", "abc") is None


def test_every_uri_inside_a_text_loses_its_credentials():
    from training.redaction import mask_userinfo

    text = "cannot reach http://bob:s3cret@mlflow:5000 nor s3://key@bucket/x; sqlite:////tmp/m.db is fine"
    assert mask_userinfo("http://bob:p@ss@mlflow:5000/x and me@example.com") == \
        "http://***@mlflow:5000/x and me@example.com"
    assert mask_userinfo(text) == "cannot reach http://***@mlflow:5000 nor s3://***@bucket/x; sqlite:////tmp/m.db is fine"


def test_table_artifacts_show_every_column():
    from flows.tasks import table

    rows = table([{"task": "pos", "accuracy": 0.9}, {"task": "ner", "accuracy": 0.8, "entity_f1": 0.7}])
    assert [list(r) for r in rows] == [["task", "accuracy", "entity_f1"]] * 2
    assert rows[0]["entity_f1"] == ""


def test_training_curves_take_evaluations_during_training_as_dev_step_metrics(tmp_path):
    import json

    from training.release.registry import training_curves

    rows = [{"step": 2, "task": "pos", "loss": 1.5, "lr": 0.1, "time": 1.0, "task_weights": {"pos": 1.0}},
            {"step": 2, "time": 1.5, "eval": {"pos": {"accuracy": 0.5}, "ner": {"accuracy": 0.7, "entity_f1": 0.2}},
             "best": {"pos": 2, "ner": 2}},
            {"step": 4, "time": 2.0, "eval": {"pos": {"accuracy": 0.6}, "ner": {"accuracy": 0.8, "entity_f1": 0.1}},
             "best": {"pos": 4, "ner": 2}}]
    for name in ("single.jsonl", "stage.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves({"": str(tmp_path / "single.jsonl"), "finetune-pos": str(tmp_path / "stage.jsonl")})
    got = {(m.key, m.step): m.value for m in curves}
    assert got[("train.dev.pos.accuracy", 4)] == 0.6 and got[("train.dev.ner.entity_f1", 2)] == 0.2
    assert got[("train.finetune-pos.dev.ner.accuracy", 4)] == 0.8
    assert got[("train.loss.pos", 2)] == 1.5 and got[("train.finetune-pos.lr", 2)] == 0.1
    assert len(curves) == 2 * (3 + 3 + 3)  # per log: lr, loss, weight; then 3 dev metrics per evaluation


def test_registering_leaves_mlflow_process_state_as_it_was_so_the_next_run_uses_its_own_store(
        export, tmp_path, monkeypatch):
    """Issue 12: `mlflow.set_tracking_uri` wrote MLFLOW_TRACKING_URI into os.environ, and
    `tracking_uri()` prefers that variable to the state folder's store: the next run in the same
    process registered in the previous run's store."""
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_state

    from training.release.registry import default_artifact_root, run_versions, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_state, "_tracking_uri", None)
    cfg = RegistryConfig(model_name="m", experiment="e")
    uri_a = tracking_uri(cfg, str(tmp_path / "a"))
    root_a = default_artifact_root(uri_a, str(tmp_path / "a"))
    first = register_model(cfg, uri_a, root_a, "run-a", export, {}, {"pos": {"accuracy": 0.5}}, {}, "challenger")
    leaked = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    assert (leaked, tracking_state._tracking_uri) == ({"MLFLOW_TRACKING_URI": None, "MLFLOW_REGISTRY_URI": None}, None)
    uri_b = tracking_uri(cfg, str(tmp_path / "b"))
    assert uri_b == f"sqlite:///{(tmp_path / 'b' / 'mlflow.db').resolve()}"
    root_b = default_artifact_root(uri_b, str(tmp_path / "b"))
    second = register_model(cfg, uri_b, root_b, "run-b", export, {}, {"pos": {"accuracy": 0.6}}, {}, "challenger")
    in_a = MlflowClient(uri_a).search_model_versions("name = 'm'")
    in_b = MlflowClient(uri_b).search_model_versions("name = 'm'")
    assert ([v.run_id for v in in_a], [v.run_id for v in in_b]) == ([first.run_id], [second.run_id])
    # a variable the user set is kept as it was, not unset
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri_a)
    again = register_model(cfg, uri_b, None, "run-b", export, {}, {"pos": {"accuracy": 0.6}}, {}, "challenger")
    assert (again.version, os.environ["MLFLOW_TRACKING_URI"]) == ("1", uri_a)
    assert len(run_versions(MlflowClient(uri_b), "m", second.run_id)) == 1


def test_a_client_for_a_store_registers_in_that_store_whatever_the_process_says(tmp_path, monkeypatch):
    from training.release.registry import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'other.db'}")
    client = client_for(uri)
    assert client._registry_uri == uri and client.tracking_uri == uri


def test_a_duplicated_version_of_one_run_is_deleted_and_the_kept_one_carries_the_run_key(tmp_path):
    """A lost "create version" answer retried by the client leaves two versions of one run: the
    first stays, tagged with the run key (later lookups find a version by it), the second goes."""
    from training.release.registry import RUN_KEY, keep_first_version

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("dup", artifact_location=(tmp_path / "a").as_uri()))
    client.create_registered_model("dup-model")
    made = [client.create_model_version("dup-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
            for _ in range(2)]
    kept = keep_first_version(client, "dup-model", run.info.run_id, "run-key-7")
    assert kept is not None and kept.version == made[0].version
    assert kept.tags.get(RUN_KEY) == "run-key-7"
    assert [v.version for v in client.search_model_versions("name='dup-model'")] == [made[0].version]
