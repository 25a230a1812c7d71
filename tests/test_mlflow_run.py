"""The flow run's MLflow run and what fills it, piece by piece (cheap: no training here; the
end-to-end flow runs in test_e2e.py assert the same pieces on real runs): opening and closing by
run key, a failed flow run's MLflow run, the figures, the confusion counts, the signature, and
the progress fed from the training log."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from training.config import RegistryConfig
from training.release.registry import RUN_KEY, close_run, fail_run, open_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_open_run_is_idempotent_by_run_key_and_a_rerun_reopens_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = RegistryConfig(model_name="m", experiment="e")
    root = (tmp_path / "artifacts").as_uri()
    first = open_run(cfg, uri, root, "cfg-123", "cfg-123", {"mtl.prefect_flow_run_id": "123"}, {"training.steps": 12})
    client = MlflowClient(uri)
    # a lost "create run" answer retried by the client: a second run with the same key
    client.create_run(first.experiment_id, run_name="cfg-123", tags={RUN_KEY: "cfg-123"})
    assert fail_run(cfg, uri, "123", "FAILED: boom at http://bob:pw@mlflow:5000") == first.run_id
    again = open_run(cfg, uri, root, "cfg-123", "cfg-123", {}, {"training.steps": 12})
    runs = client.search_runs([first.experiment_id], f"tags.`{RUN_KEY}` = 'cfg-123'")
    assert (again.run_id, [r.info.run_id for r in runs]) == (first.run_id, [first.run_id])
    run = client.get_run(first.run_id)
    assert (run.info.status, run.info.run_name, run.data.params["training.steps"]) == ("RUNNING", "cfg-123", "12")
    # the earlier attempt's reason stays readable, without the password it quoted
    assert run.data.tags["mtl.failure"] == "FAILED: boom at http://***@mlflow:5000"
    close_run(uri, first.run_id, "FINISHED")
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert fail_run(cfg, uri, "never-opened", "x") is None
    # a finished run is never ended again: a later flow run that failed before opening one of its
    # own (a refused --resume aimed at this run's folder) leaves it FINISHED
    assert fail_run(cfg, uri, "123", "FAILED: resume refused") is None
    assert client.get_run(first.run_id).info.status == "FINISHED"
    # a deployment's flow run ends the run its `retrain` subflow opened
    sub = open_run(cfg, uri, root, "cfg-456", "cfg-456", {"mtl.prefect_flow_run_id": "456",
                                                          "mtl.prefect_root_flow_run_id": "parent-9"})
    assert fail_run(cfg, uri, "parent-9", "CANCELLED: by user", "KILLED") == sub.run_id
    assert client.get_run(sub.run_id).info.status == "KILLED"


def test_a_failed_flow_run_ends_its_mlflow_run_failed_and_registers_nothing(tiny_encoder, tmp_path, prefect_engine):
    """The retrain flow fails after opening its MLflow run (a data file refused at ingest): the
    flow's hook ends the run FAILED with the reason; no model is registered."""
    from flows.config import parse_config
    from flows.retrain import retrain
    from helpers import tiny_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.tsv").write_text("words\tlabel\nfine movie\t1\n")
    config = tiny_config(tiny_encoder, tmp_path / "state", tmp_path / "data")
    config["tasks"] = [{"name": "sst2", "type": "sequence_classification", "format": "tsv",
                        "train": "bad.tsv", "dev": "bad.tsv"}]
    state = retrain(parse_config(config), return_state=True)
    assert state.is_failed()
    uri = f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert "sentence" in run.data.tags["mtl.failure"] and run.data.params["training.steps"] == "12"
    assert run.data.tags["mtl.prefect_flow_run_id"] and run.data.tags[RUN_KEY].startswith("tiny-")
    assert client.search_registered_models() == []


def test_figures_are_png():
    from training.release import plots

    many = [f"L{i}" for i in range(25)]  # too many to print counts in: still drawn
    figures = [
        plots.loss_curves({"pos": [(3, 2.0), (6, 1.5)], "ner": [(6, 1.9)]}),
        plots.challenger_vs_champion({"pos": 0.9, "ner": 0.5}, None, {"pos": "accuracy", "ner": "entity_f1"}),
        plots.challenger_vs_champion({"pos": 0.9, "ner": 0.5}, {"pos": 0.8, "ner": 0.6}, {"pos": "accuracy"}),
        plots.confusion_matrix(["B", "I", "O"], [[3, 1, 0], [0, 2, 0], [1, 0, 9]], "ner"),
        plots.confusion_matrix(many, [[int(i == j) for j in range(25)] for i in range(25)], "big"),
        plots.affinity_heatmap({"pos": {"pos": 0.2, "ner": -0.1}, "ner": {"pos": 0.0, "ner": 0.3}}, "lookahead"),
    ]
    assert [f[:8] for f in figures] == [PNG] * len(figures)
    assert min(len(f) for f in figures) > 5000


def test_run_plots_make_a_confusion_matrix_per_classification_task_and_the_affinity_heatmap():
    from training.release.registry import loss_series, run_plots, training_curves

    confusions = {"ner": {"labels": ["O", "B-PER"], "counts": [[5, 1], [0, 2]]}}
    made = run_plots(confusions, {"affinity.pos.pos": 0.1, "affinity.pos.ner": 0.2, "affinity.ner.pos": -0.1,
                                  "affinity.ner.ner": 0.3})
    assert sorted(made) == ["confusion_ner", "task_affinity"]
    assert run_plots({}, {}) == {}
    assert training_curves({}) == []
    from mlflow.entities import Metric

    curves = [Metric("train.loss.pos", 2.0, 0, 3), Metric("train.lr", 0.1, 0, 3),
              Metric("train.finetune-pos.loss.pos", 1.0, 0, 3)]
    assert loss_series(curves) == {"pos": [(3, 2.0)], "finetune-pos/pos": [(3, 1.0)]}


def test_confusion_counts_follow_the_label_order_and_keep_unknown_predictions():
    from training.evaluation.evaluate import confusion

    gold = [["O", "B-PER"], ["O"]]
    pred = [["O", "O"], [None]]
    found = confusion(gold, pred, ["O", "B-PER"])
    assert found == {"labels": ["O", "B-PER", "(none)"], "counts": [[1, 0, 1], [1, 0, 0], [0, 0, 0]]}
    assert confusion([["1"], ["0"]], [["1"], ["1"]], ["0", "1"])["counts"] == [[0, 1], [0, 1]]


def test_signature_names_what_a_user_sends_and_gets_back():
    from mlflow.types import DataType

    from training.release.signature import input_example, model_signature

    card = {"tasks": [{"name": "pos", "type": "token_classification"},
                      {"name": "sst2", "type": "sequence_classification"},
                      {"name": "sts", "type": "sequence_pair_regression"}]}
    signature = model_signature(card)
    # all optional: MLflow's schema check drops columns it does not know (a served model would lose
    # `tokens` and `id`), and which of text/tokens a row needs is the model's check, by row
    assert signature.inputs.input_names() == ["text", "tokens", "text_pair", "id"]
    assert not any(c.required for c in signature.inputs.inputs)
    outputs = {c.name: c.type for c in signature.outputs.inputs}
    assert str(outputs["pos"]) == "Array(string)" and outputs["sst2"] == DataType.string
    assert outputs["sts"] == DataType.double
    assert list(input_example(card).columns) == ["text", "text_pair"]
    single = {"tasks": [{"name": "sst2", "type": "sequence_classification"}]}
    assert model_signature(single).inputs.input_names() == ["text", "tokens", "id"]
    assert list(input_example(single).columns) == ["text"]


def test_progress_is_fed_from_the_training_log_throttled_and_never_breaks_it():
    from flows.tasks import ProgressFeed
    from training.launch.train import counting, logged_step

    assert logged_step('{"step": 6, "task": "pos", "loss": 1.2, "lr": 0.1}') == 6
    assert logged_step('[rank0]: {"step": 9, "loss": 1.0}') == 9
    assert logged_step('{"step": 6, "eval": {}}') is None  # an evaluation row is no step of training
    assert logged_step("engine {\"zero\": 2}") is None and logged_step('{"step": oops') is None
    shown: list[tuple[float, str]] = []
    feed = ProgressFeed(lambda pct, text: shown.append((pct, text)), pytest.fail, every_s=3600)
    lines: list[str] = []
    log = counting(lines.append, feed, done=10, total=40)  # the second stage of two
    for step in (3, 6, 9):
        log(f'{{"step": {step}, "loss": 1.0}}')
    feed(40, 40)
    assert len(lines) == 3  # every line still reaches the log
    assert shown == [(32.5, "13 of 40 training steps"), (100.0, "40 of 40 training steps")]
    warnings: list[str] = []

    def broken(pct: float, text: str) -> None:
        raise ConnectionError("Prefect API down")

    failing = ProgressFeed(broken, warnings.append, every_s=0)
    failing(1, 2)
    failing(2, 2)
    assert warnings == ["progress artifact not updated: Prefect API down"]


def test_the_config_params_carry_no_secret(tiny_encoder, tmp_path):
    """What open-mlflow-run logs: S3 credentials masked by their types, the password of a
    tracking URI redacted."""
    from flows.config import parse_config
    from flows.retrain import mlflow_params
    from helpers import tiny_config

    config = tiny_config(tiny_encoder, tmp_path, tmp_path)
    config["storage"]["s3"] = {"endpoint_url": "http://127.0.0.1:9000", "access_key_id": "AKIAPLANTED",
                               "secret_access_key": "planted-secret-key"}
    config["registry"]["tracking_uri"] = "http://bob:planted-password@mlflow.internal:5000"
    params = mlflow_params(parse_config(config))
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    assert not [s for s in ("AKIAPLANTED", "planted-secret-key", "planted-password") if s in shown]
    assert params["registry.tracking_uri"] == "http://***@mlflow.internal:5000"
    assert params["storage.s3.secret_access_key"] == "**********" and params["training.steps"] == 12


def test_the_figures_label_bars_to_three_places_size_to_their_labels_and_name_their_axes(monkeypatch):
    """The figures themselves (their PNG bytes are checked above): bar labels, the confusion
    matrix's size for few labels, the affinity heatmap's axis names."""
    from training.release import plots

    monkeypatch.setattr(plots, "_png", lambda fig: fig)  # the figure instead of its PNG
    bars = plots.challenger_vs_champion({"pos": 0.91234}, {"pos": 0.8}, {"pos": "accuracy"})
    assert sorted(t.get_text() for t in bars.axes[0].texts) == ["0.800", "0.912"]
    assert tuple(plots.confusion_matrix(["A", "B", "C"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "t")
                 .get_size_inches()) == (4.5, 3.5)
    heat = plots.affinity_heatmap({"pos": {"pos": 0.0, "ner": 0.1}, "ner": {"pos": -0.2, "ner": 0.0}})
    assert (heat.axes[0].get_xlabel(), heat.axes[0].get_ylabel()) == ("task whose loss moves", "task stepped on")
