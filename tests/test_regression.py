"""Regression tasks (a real-valued target per sentence or sentence pair): validation, features,
metrics, a head that learns, and a 2-process DeepSpeed run that exports and predicts values."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from data_prep.config import TaskDataConfig, TokenizeConfig
from data_prep.errors import DataValidationError
from data_prep.ingest import ingest_task
from engine_support import prepare_tasks
from training.evaluation.metrics import METRICS, metrics_for
from training.task_spec import TaskSpec


def regression_cfg(train: Path, dev: Path, **kw: object) -> TaskDataConfig:
    return TaskDataConfig(**{"name": "score", "type": "sequence_regression", "format": "tsv",
                             "train": str(train), "dev": str(dev), **kw})


def test_targets_must_be_numbers_and_dev_values_need_not_occur_in_train(tmp_path):
    train = tmp_path / "train.tsv"
    dev = tmp_path / "dev.tsv"
    train.write_text("sentence\tlabel\ngood film\t4.5\nbad film\tterrible\nok film\tnan\n")
    dev.write_text("sentence\tlabel\nfine\t3.25\n")
    with pytest.raises(DataValidationError) as err:
        ingest_task(regression_cfg(train, dev), None)
    text = str(err.value)
    assert f"{train}:3: label: 'terrible' is not a number" in text
    assert f"{train}:4: label: 'nan' is not a number" in text
    train.write_text("sentence\tlabel\ngood film\t4.5\nbad film\t0.5\n")
    data = ingest_task(regression_cfg(train, dev), None)
    assert data.labels == [] and [ex.label for ex in data.splits["dev"]] == ["3.25"]


def test_mtl_validate_shows_the_target_range_of_a_regression_task(tmp_path, capsys):
    import yaml

    from flows.cli import main

    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("sentence\tlabel\ngood film\t4.5\nbad film\t-0.5\nok film\t2\n")
    dev.write_text("sentence\tlabel\nfine\t3.25\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "v", "storage": {"root": str(tmp_path / "state")}, "tasks": [
        regression_cfg(train, dev).model_dump(mode="json", exclude_defaults=True)]}))
    assert main(["validate", str(config)]) == 0
    assert "score: sequence_regression, target -0.5 to 4.5, train 3, dev 1" in capsys.readouterr().out


def test_features_carry_the_value_and_the_head_has_one_output(tmp_path, tiny_encoder):
    from transformers import AutoTokenizer

    from data_prep.tokenize import tokenize_with_stats
    from training.model.multitask import build_model

    train = tmp_path / "train.tsv"
    train.write_text("sentence1\tsentence2\tlabel\nA man sleeps.\tA person rests.\t4.2\nA cat.\tA car.\t0\n")
    cfg = regression_cfg(train, train, type="sequence_pair_regression", text_column="sentence1",
                         text_pair_column="sentence2")
    data = ingest_task(cfg, None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    rows, stats = tokenize_with_stats(data.splits["train"], cfg.type, data.labels, tokenizer, 32,
                                      stride=TokenizeConfig().stride)
    assert [r["labels"] for r in rows] == [4.2, 0.0] and stats.as_dict()["label_distribution"] == {}
    assert all(tokenizer.sep_token_id in r["input_ids"][:-1] for r in rows)  # both texts encoded
    spec = TaskSpec(name="score", type=cfg.type, labels=data.labels)
    assert spec.num_labels == 1 and spec.primary_metric == "pearson"
    model = build_model(str(tiny_encoder), [spec], "hard", 0.0)
    assert model.heads["score"].out.out_features == 1


def test_regression_metrics():
    gold = [[1.0], [2.0], [3.0], [4.0]]
    assert METRICS["pearson"](gold, [[2.0], [4.0], [6.0], [8.0]]) == pytest.approx(1.0)
    assert METRICS["spearman"](gold, [[1.0], [5.0], [6.0], [9.0]]) == pytest.approx(1.0)  # monotone, not linear
    assert METRICS["pearson"](gold, [[4.0], [3.0], [2.0], [1.0]]) == pytest.approx(-1.0)
    assert METRICS["pearson"](gold, [[1.0]] * 4) == 0.0  # constant predictions: no correlation, not NaN
    assert METRICS["neg_mse"](gold, [[1.0], [2.0], [3.0], [6.0]]) == pytest.approx(-1.0)
    assert metrics_for("sequence_pair_regression", "plain") == ["pearson", "spearman", "neg_mse"]


def test_the_regression_loss_fits_a_learnable_target(tiny_encoder):
    """Sentences with 'good' score 3, others -1: the MSE head and encoder learn to tell them apart."""
    import torch
    from transformers import AutoTokenizer

    from training.trainer.batches import collate
    from training.model.multitask import build_model

    torch.manual_seed(0)
    spec = TaskSpec(name="score", type="sequence_regression", labels=[])
    model = build_model(str(tiny_encoder), [spec], "hard", 0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    texts = ["a good day", "a bad day", "good food here", "cold food here", "so good", "so so"] * 2
    rows = [{**{k: v for k, v in tokenizer(t).items() if k != "attention_mask"}, "labels": 3.0 if "good" in t else -1.0}
            for t in texts]
    batch = collate(rows, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model("score", **batch).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    logits = model("score", batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    assert loss.item() < 0.05 * first
    assert logits.shape == (len(texts), 1)
    assert [round(v) for v in logits[:, 0].tolist()] == [3 if "good" in t else -1 for t in texts]


@pytest.mark.slow
def test_pair_regression_trains_beside_tagging_with_two_processes(tiny_encoder, data_dir, tmp_path):
    """An entailment score (1.0 entailed, 0.0 not) from the real RTE pairs beside POS, 2 DeepSpeed
    processes; the export predicts values and the evaluation scores them by correlation."""
    from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
    from training.evaluation.evaluate import evaluate_model
    from training.launch.train import train_model
    from training.evaluation.predict import Predictor

    def write(split: str, limit: int) -> Path:
        with open(data_dir / "pair_rte" / f"{split}.tsv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
        out = tmp_path / f"rte-score-{split}.tsv"
        out.write_text("sentence1\tsentence2\tscore\n" + "".join(
            f"{r['sentence1']}\t{r['sentence2']}\t{1.0 - float(r['label'])}\n" for r in rows))
        return out

    cfgs = [TaskDataConfig(name="pos", type="token_classification", format="conllu",
                           train="ud_en_ewt/en_ewt-ud-train.conllu", dev="ud_en_ewt/en_ewt-ud-dev.conllu",
                           max_train_examples=64, max_dev_examples=16),
            TaskDataConfig(name="entail", type="sequence_pair_regression", format="tsv", train=str(write("train", 64)),
                           dev=str(write("dev", 24)), text_column="sentence1", text_pair_column="sentence2",
                           label_column="score")]
    specs, features, dev = prepare_tasks(cfgs, tiny_encoder, data_dir, tmp_path)
    training = TrainingConfig(steps=6, micro_batch_size=4, warmup_steps=1, checkpoint_every=6, log_every=2,
                              processes=2, threads_per_process=1, weighting="uncertainty")
    export = train_model(EncoderConfig(name_or_path=str(tiny_encoder), max_length=48), training,
                         DeepSpeedConfig(zero_stage=2), specs, features, tmp_path / "run", print)
    metrics = evaluate_model(export, specs, dev, 8)
    assert set(metrics["entail"]) == {"pearson", "spearman", "neg_mse"}
    assert all(math.isfinite(v) for v in metrics["entail"].values()) and -1.0 <= metrics["entail"]["pearson"] <= 1.0
    assert metrics["entail"]["neg_mse"] < 0
    [out] = Predictor(export).predict(["A man sleeps ."], ["A person rests ."])
    assert isinstance(out["entail"], float) and len(out["pos"]) == 4
