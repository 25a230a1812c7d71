"""Warm start (`training.init_from`): a model built the way the worker builds it and started from a
tiny trained export predicts what that export predicts; appended labels keep the old head rows;
the checks refuse what a warm start cannot take over; the registry forms resolve against a real
MLflow store (sqlite) and the registered export is fetched once. One launched run (slow) carries
the source through train_model and the worker to the model card."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_serving import PAIR, TASKS, TEXT, TOKENS, _train_a_few_steps
from training.config import TrainingConfig
from training.model.export import CARD, export_weights, read_card, write_export
from helpers import register_champion
from training.model.multitask import Matched, build_model, load_matching
from training.release.warm_start import (WarmSource, WarmStartError, check_warm_start, fetch_export,
                                         resolve_init_from, source_tasks)
from training.task_spec import TaskSpec

MODEL = "warm-mtl"
SOURCE_LABELS = {t.name: list(t.labels) for t in TASKS}


@pytest.fixture(scope="module")
def source(tiny_encoder, tmp_path_factory) -> Path:
    """A tiny trained export: the model a warm start takes over."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), TASKS, "hard", 0.1)
    _train_a_few_steps(model, tokenizer)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    card = {"sharing": "hard", "dropout": 0.1, "max_length": 32}
    return write_export(tmp_path_factory.mktemp("warm") / "model", state, model, tokenizer, card)


def _warm_model(encoder: Path, source: Path, specs: list[TaskSpec], seed: int) -> tuple[torch.nn.Module, Matched]:
    """What the worker does: the model from the base encoder with fresh heads under the run's seed,
    then the source's weights loaded over it."""
    torch.manual_seed(seed)
    model = build_model(str(encoder), specs, "hard", 0.1)
    matched = load_matching(model, export_weights(source))
    return model.eval(), matched


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer([" ".join(TOKENS), TEXT, PAIR[0]], padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_a_warm_started_model_predicts_what_its_source_predicts(source, tiny_encoder):
    from training.evaluation.predict import Predictor

    specs = [TaskSpec(**t) for t in read_card(source)["tasks"]]
    new_task = TaskSpec(name="ner", type="token_classification", labels=["O", "B-X", "I-X"])
    model, matched = _warm_model(tiny_encoder, source, specs + [new_task], seed=123)
    assert matched == Matched(fresh_heads=["ner"], grown={})
    theirs = Predictor(source)
    mine = Predictor.for_model(model, theirs.tokenizer, 32)
    names = [t.name for t in specs]
    batch = _batch(theirs.tokenizer)
    want, got = theirs.model.predict_logits(names, **batch), model.predict_logits(names, **batch)
    for name in names:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    texts, pairs = [" ".join(TOKENS), TEXT, PAIR[0]], [None, None, PAIR[1]]
    assert mine.predict(texts, pairs, names) == theirs.predict(texts, pairs, names)


def test_appended_labels_keep_the_old_rows_and_start_the_new_one_fresh(source, tiny_encoder):
    grown = [t.model_copy(update={"labels": t.labels + ["X"]}) if t.name == "pos" else t for t in TASKS]
    torch.manual_seed(7)
    fresh = build_model(str(tiny_encoder), grown, "hard", 0.1).heads["pos"].out
    model, matched = _warm_model(tiny_encoder, source, grown, seed=7)
    assert matched == Matched(fresh_heads=[], grown={"pos": (5, 6)})
    weights, out = export_weights(source), model.heads["pos"].out
    assert out.weight.shape == (6, 32) and out.bias.shape == (6,)
    assert torch.equal(out.weight[:5], weights["heads.pos.out.weight"])
    assert torch.equal(out.bias[:5], weights["heads.pos.out.bias"])
    # the new row is the fresh head's initialisation under the run's seed, not a copy of anything
    assert torch.equal(out.weight[5], fresh.weight[5]) and torch.equal(out.bias[5], fresh.bias[5])
    assert not any(torch.equal(out.weight[5], row) for row in weights["heads.pos.out.weight"])
    from transformers import AutoTokenizer

    batch = _batch(AutoTokenizer.from_pretrained(tiny_encoder))
    source_model = _warm_model(tiny_encoder, source, TASKS, seed=0)[0]
    old = source_model.predict_logits(["pos"], **batch)["pos"]
    torch.testing.assert_close(model.predict_logits(["pos"], **batch)["pos"][..., :5], old, rtol=0, atol=1e-6)


def test_any_other_shape_change_fails_naming_the_parameter(source, tiny_encoder):
    fewer = [t.model_copy(update={"labels": t.labels[:4]}) if t.name == "pos" else t for t in TASKS]
    with pytest.raises(ValueError, match=r"heads\.pos\.out\.weight \(5, 32\) vs \(4, 32\)"):
        _warm_model(tiny_encoder, source, fewer, seed=0)


def test_check_warm_start_refuses_every_problem_at_once():
    with pytest.raises(WarmStartError) as refused:
        check_warm_start({"pos": ["DET", "NOUN", "SYM"], "sst2": ["0", "1"], "old": ["a", "b"]},
                         {"pos": "token_classification", "sst2": "sequence_pair_classification",
                          "new": "sequence_regression"},
                         {"pos": {"DET", "NOUN"}, "sst2": {"0", "1"}, "new": set()},
                         {"pos": None, "sst2": None, "new": None},
                         source_types={"pos": "token_classification", "sst2": "sequence_classification",
                                       "old": "token_classification"})
    lost, vanished, kind = refused.value.problems  # the lost heads, then the config's tasks in order
    assert "['old']" in lost and "training.init_from" in lost
    assert kind.startswith("tasks.sst2.type: sequence_pair_classification") and "sequence_classification" in kind
    assert vanished.startswith("tasks.pos: label(s) ['SYM']") and "list them in tasks.pos.labels" in vanished
    assert "drop training.init_from" in vanished


def test_check_warm_start_allows_declared_vanished_labels_new_tasks_and_regression():
    check_warm_start({"pos": ["DET", "SYM"], "sts": []},
                     {"pos": "token_classification", "sts": "sequence_pair_regression", "ner": "token_classification"},
                     {"pos": {"DET"}, "sts": set(), "ner": {"O"}}, {"pos": ["DET", "SYM"], "sts": None, "ner": None},
                     source_types={"pos": "token_classification", "sts": "sequence_pair_regression"})


def test_train_model_refuses_heads_whose_label_ids_moved_or_an_unfetched_registry_model(source):
    from training.launch.train import warm_start

    moved = [t.model_copy(update={"labels": list(reversed(t.labels))}) if t.name == "pos" else t for t in TASKS]
    with pytest.raises(WarmStartError, match=r"tasks\.pos: its label list .* does not start with"):
        warm_start(TrainingConfig(), moved, source, None)
    with pytest.raises(WarmStartError, match=r"training\.init_from: champion names a registered model"):
        warm_start(TrainingConfig(init_from="champion"), TASKS, None, None)
    assert warm_start(TrainingConfig(init_from=str(source)), TASKS, None, None) == (
        str(source), {"uri": str(source), "model_name": None, "version": None, "run_id": None})
    assert warm_start(TrainingConfig(), TASKS, None, None) == (None, None)


@pytest.mark.parametrize("value", ["champion", "models:/mtl-demo/3", "models:/mtl-demo@champion",
                                   "runs:/0123abcd/model", "runs/model", "/srv/models/mtl"])
def test_config_accepts_the_init_from_forms(value):
    assert TrainingConfig(init_from=value).init_from == value


@pytest.mark.parametrize("value", ["models:/mtl-demo", "models:/mtl-demo/latest", "runs:/0123abcd",
                                   "s3://bucket/model", ""])
def test_config_refuses_other_init_from_values_naming_the_forms(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        TrainingConfig(init_from=value)
    [error] = refused.value.errors()
    assert error["loc"] == ("init_from",)
    assert "models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model, or a local export folder" in error["msg"]


def test_a_local_init_from_must_be_an_export_folder(source, tmp_path):
    from training.validation import warm_start_problems

    assert warm_start_problems(TrainingConfig(init_from=str(source))) == []
    [missing] = warm_start_problems(TrainingConfig(init_from=str(tmp_path / "nope")))
    assert missing.startswith(f"training.init_from: {tmp_path / 'nope'}: no such folder")
    [empty] = warm_start_problems(TrainingConfig(init_from=str(tmp_path)))
    assert f"no {CARD} there" in empty
    assert warm_start_problems(TrainingConfig(init_from="champion")) == []


@pytest.fixture(scope="module")
def store(source, tmp_path_factory):
    """The source registered by the pipeline's own code as version 1 with alias champion."""
    return register_champion(source, tmp_path_factory.mktemp("warm-store"), MODEL, "warm")


def test_init_from_resolves_to_a_pinned_version_or_names_what_exists(store, source, tmp_path):
    uri = store.tracking_uri
    pinned = WarmSource(f"models:/{MODEL}/1", MODEL, "1", store.run_id)
    for given in ("champion", f"models:/{MODEL}@champion", f"models:/{MODEL}/1"):
        assert resolve_init_from(given, uri, MODEL, "champion") == pinned
    assert resolve_init_from(f"runs:/{store.run_id}/model", uri, MODEL, "champion") == WarmSource(
        f"runs:/{store.run_id}/model", run_id=store.run_id)
    assert resolve_init_from(str(source), uri, MODEL, "champion") == WarmSource(str(source.resolve()))
    refusals = {f"models:/{MODEL}/7": f"{MODEL} has no version 7; its versions are [1]",
                f"models:/{MODEL}@gold": f"{MODEL} has no alias 'gold'; its aliases are {{'challenger': '1', 'champion': '1'}}",
                "models:/other/1": f"no registered model 'other' in {uri}; registered models: ['{MODEL}']",
                "runs:/feedbeef/model": "no run feedbeef"}
    for given, message in refusals.items():
        with pytest.raises(WarmStartError, match=message.replace("[", r"\[").replace("]", r"\]")
                           .replace("{", r"\{").replace("}", r"\}")):
            resolve_init_from(given, uri, MODEL, "champion")
    with pytest.raises(WarmStartError, match="no champion to start from; for the first run remove training.init_from"):
        resolve_init_from("champion", uri, MODEL, "gold")
    nowhere = tmp_path / "none.db"
    with pytest.raises(WarmStartError, match="no champion to start from"):
        resolve_init_from("champion", f"sqlite:///{nowhere}", MODEL, "champion")
    assert not nowhere.exists(), "looking must not create a store"


def test_fetch_export_downloads_the_registered_export_once(store, source, tmp_path):
    dest = tmp_path / "fetched" / "v1"
    export = fetch_export(store.tracking_uri, f"models:/{MODEL}/1", dest)
    assert (export / CARD).is_file() and export.is_relative_to(dest)
    assert source_tasks(export) == (SOURCE_LABELS, {t.name: t.type for t in TASKS})
    theirs = export_weights(source)
    assert all(torch.equal(value, theirs[key]) for key, value in export_weights(export).items())
    # complete already: reused without asking the store (a store that does not exist would fail)
    assert fetch_export("sqlite:////nonexistent/mlflow.db", f"models:/{MODEL}/1", dest) == export
    by_run = fetch_export(store.tracking_uri, f"runs:/{store.run_id}/model", tmp_path / "by-run")
    assert read_card(by_run) == read_card(source)
    assert fetch_export(store.tracking_uri, str(source), tmp_path / "unused") == source
    assert not (tmp_path / "unused").exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


@pytest.mark.slow
def test_a_launched_warm_start_keeps_the_source_weights_and_records_it_on_the_card(source, tiny_encoder,
                                                                                  data_dir, tmp_path):
    """pos from the real UD data, ingested with the source's labels kept (new UPOS tags appended),
    one step at a learning rate too small to move anything: the export is the source's pos head and
    encoder, the new rows are there, and the card names the source."""
    from data_prep.cache import ArtifactCache
    from data_prep.config import TaskDataConfig, TokenizeConfig
    from data_prep.stage import ingest_cached, tokenize_cached
    from training.config import DeepSpeedConfig, EncoderConfig
    from training.launch.train import train_model
    from training.task_spec import spec_for

    cfg = TaskDataConfig(name="pos", type="token_classification", format="conllu",
                         train="ud_en_ewt/en_ewt-ud-train.conllu", dev="ud_en_ewt/en_ewt-ud-dev.conllu",
                         max_train_examples=16, max_dev_examples=4)
    cache = ArtifactCache(str(tmp_path / "cache"))
    ingested = ingest_cached(cfg, str(data_dir), cache, tmp_path / "data", previous_labels=SOURCE_LABELS["pos"])
    features = tokenize_cached(cfg, ingested, str(tiny_encoder), 32, TokenizeConfig(), cache, tmp_path / "data")
    spec = spec_for(cfg, ingested["labels"])
    assert spec.labels[:5] == SOURCE_LABELS["pos"] and len(spec.labels) > 5
    training = TrainingConfig(steps=1, micro_batch_size=4, warmup_steps=1, checkpoint_every=1, log_every=1,
                              processes=1, threads_per_process=1, launcher="torchrun", learning_rate=1e-12,
                              init_from="champion")
    provenance = {"uri": f"models:/{MODEL}/1", "model_name": MODEL, "version": "1", "run_id": "r1"}
    lines: list[str] = []
    export = Path(train_model(EncoderConfig(name_or_path=str(tiny_encoder), max_length=32), training,
                              DeepSpeedConfig(), [spec], {"pos": features["features"]}, tmp_path / "run",
                              lines.append, init=str(source), init_source=provenance))
    assert read_card(export)["init_from"] == provenance
    assert any(f"label rows kept and new ones appended for {{'pos': (5, {len(spec.labels)})}}" in line
               for line in lines), "\n".join(lines[-20:])
    mine, theirs = export_weights(export), export_weights(source)
    assert mine["heads.pos.out.weight"].shape[0] == len(spec.labels)
    torch.testing.assert_close(mine["heads.pos.out.weight"][:5], theirs["heads.pos.out.weight"], rtol=0, atol=1e-6)
    for key in (k for k in theirs if k.startswith("sharing.encoder.")):
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
