"""Data profiles: what a run's ingested data looks like, how it moved since the champion's, the
label-shift refusal, and the profile and dataset inputs in a real MLflow database store."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_prep.profile import (NO_CHAMPION, DataShiftError, compare, configured_sources, profile_data, profile_task,
                               report_markdown, shift_problems)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sentences(folder: Path, name: str, labels: list[str]) -> str:
    return write_rows(folder / name, [{"file": "s.tsv", "line": i + 1, "text": "word " * (i % 3 + 1), "label": label}
                                      for i, label in enumerate(labels)])


def test_profile_of_each_task_type(tmp_path):
    token = write_rows(tmp_path / "pos.jsonl", [
        {"file": "p.conllu", "line": 1, "tokens": ["I", "run"], "tags": ["PRON", "VERB"]},
        {"file": "p.conllu", "line": 4, "tokens": ["dogs", "run", "fast"], "tags": ["NOUN", "VERB", "ADV"]}])
    pair = write_rows(tmp_path / "rte.jsonl", [
        {"file": "r.tsv", "line": 2, "text": "a b c", "text_pair": "d e", "label": "entailment"},
        {"file": "r.tsv", "line": 3, "text": "a", "text_pair": "b", "label": "not_entailment"},
        {"file": "r.tsv", "line": 4, "text": "a b", "text_pair": "c d e f", "label": "entailment"}])
    regression = write_rows(tmp_path / "sts.jsonl", [{"file": "s.tsv", "line": i, "text": "x", "text_pair": "y z",
                                                      "label": str(v)} for i, v in enumerate([1, 2, 3, 4])])
    sentence = sentences(tmp_path, "sst.jsonl", ["1", "0", "1"])
    empty = write_rows(tmp_path / "empty.jsonl", [])

    pos = profile_task("token_classification", ["NOUN", "VERB", "PRON", "ADV"], {"train": token, "dev": empty})
    assert pos["splits"]["train"]["labels"] == {"ADV": 1, "NOUN": 1, "PRON": 1, "VERB": 2}
    assert pos["splits"]["train"]["label_unit"] == "tokens"
    assert pos["splits"]["train"]["length"] == {"mean": 2.5, "p50": 2, "p95": 3, "max": 3}
    assert pos["splits"]["dev"]["rows"] == 0 and pos["splits"]["dev"]["length"]["max"] is None
    assert pos["splits"]["train"]["digest"] == hashlib.sha256(Path(token).read_bytes()).hexdigest()[:16]

    rte = profile_task("sequence_pair_classification", ["entailment", "not_entailment"],
                       {"train": pair})["splits"]["train"]
    assert (rte["rows"], rte["labels"]) == (3, {"entailment": 2, "not_entailment": 1})
    assert rte["length"] == {"mean": pytest.approx(13 / 3, abs=1e-3), "p50": 5, "p95": 6, "max": 6}  # both sides

    sts = profile_task("sequence_pair_regression", [], {"train": regression})["splits"]["train"]
    assert sts["labels"] is None and sts["label_unit"] is None
    assert sts["target"] == {"mean": 2.5, "std": pytest.approx(1.118034), "min": 1.0, "max": 4.0}

    both = profile_data({"sst": ("sequence_classification", ["0", "1"], {"train": sentence}),
                         "pos": ("token_classification", ["NOUN"], {"train": token})})
    assert list(both["tasks"]) == ["pos", "sst"]
    assert both["tasks"]["sst"]["splits"]["train"]["labels"] == {"0": 1, "1": 2}
    assert json.loads(json.dumps(both)) == both


@pytest.fixture()
def profiles(tmp_path) -> tuple[dict, dict]:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old = profile_data({
        "sent": ("sequence_classification", ["pos", "neg", "mixed"],
                 {"train": sentences(old_dir, "t.jsonl", ["pos"] * 6 + ["neg"] * 2 + ["mixed"] * 2),
                  "dev": sentences(old_dir, "d.jsonl", ["pos", "neg"])}),
        "gone": ("sequence_classification", ["a"], {"train": sentences(old_dir, "g.jsonl", ["a"])})})
    new = profile_data({
        "sent": ("sequence_classification", ["pos", "neg", "mixed", "neutral"],
                 {"train": sentences(new_dir, "t.jsonl", ["pos"] * 5 + ["neg"] * 3 + ["neutral"] * 2 + ["pos"] * 2),
                  "dev": sentences(old_dir, "d.jsonl", ["pos", "neg"])}),
        "fresh": ("sequence_classification", ["b"], {"train": sentences(new_dir, "f.jsonl", ["b"])})})
    return old, new


def test_compare_rows_new_and_vanished_labels_and_shift(profiles):
    old, new = profiles
    report = compare(old, new)
    sent = report["tasks"]["sent"]
    assert sent["rows"]["train"] == {"old": 10, "new": 12, "delta": 2}
    assert (sent["labels_new"], sent["labels_vanished"]) == (["neutral"], ["mixed"])
    # old p: pos 6/10, neg 2/10, mixed 2/10; new q: pos 7/12, neg 3/12, neutral 2/12
    by_hand = 0.5 * (abs(0.6 - 7 / 12) + abs(0.2 - 3 / 12) + abs(0.2 - 0) + abs(0 - 2 / 12))
    assert sent["shift"]["train"] == pytest.approx(by_hand)
    assert sent["shift"]["dev"] == 0.0 and sent["same_data"] == {"train": False, "dev": True}
    assert sent["moves"]["train"][0]["label"] == "mixed"
    assert (report["added"], report["removed"]) == (["fresh"], ["gone"])
    assert report["tasks"]["fresh"]["rows"]["train"] == {"old": None, "new": 1, "delta": None}

    text = report_markdown(report)
    assert "| sent | 10 | 12 | +2 |" in text and "neutral" in text and "Tasks removed: `gone`" in text
    assert f"| sent | {by_hand:.3f}".rstrip("0") in text


def test_no_champion_profile_is_said_and_still_shows_this_runs_rows(profiles):
    _, new = profiles
    report = compare(None, new)
    assert report["note"] == NO_CHAMPION and report["tasks"]["sent"]["rows"]["train"]["new"] == 12
    assert report["tasks"]["sent"]["shift"]["train"] is None
    assert NO_CHAMPION in report_markdown(report)
    assert shift_problems(report, {"sent": 0.0}) == []  # nothing to compare: nothing refused


def test_a_shift_past_the_threshold_refuses_with_the_task_the_moves_and_the_fix(profiles):
    from data_prep.errors import DataValidationError

    old, new = profiles
    report = compare(old, new)
    shift = report["tasks"]["sent"]["shift"]["train"]
    assert shift_problems(report, {"sent": None, "fresh": 0.0}) == []
    assert shift_problems(report, {"sent": round(shift, 12)}) == []  # at the threshold is not past it
    [line] = shift_problems(report, {"sent": 0.1})
    assert line.startswith("tasks.sent: train labels: label distribution shifted by 0.217")
    for part in ("max_label_shift 0.1", "mixed 20.0% → 0.0%", "new labels: neutral", "vanished labels: mixed",
                 "check the data", "raise tasks.sent.max_label_shift"):
        assert part in line
    error = DataShiftError([line])
    assert isinstance(error, DataValidationError) and [str(i) for i in error.issues] == [line]
    assert str(error).startswith("label distribution shift past max_label_shift in 1 task(s):") and line in str(error)


def test_max_label_shift_is_checked_and_leaves_the_cache_keys_alone(tmp_path):
    from pydantic import ValidationError

    from data_prep.config import TaskDataConfig
    from data_prep.stage import ingest_key

    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nbad\t0\n")
    base = dict(name="sst", type="sequence_classification", format="tsv", train="train.tsv", dev="dev.tsv")
    plain = TaskDataConfig(**base)
    key = ingest_key(plain, str(tmp_path), None, None)
    assert key is not None
    assert ingest_key(TaskDataConfig(**base, max_label_shift=0.2), str(tmp_path), None, None) == key
    assert ingest_key(TaskDataConfig(**base, sample_seed=7), str(tmp_path), None, None) != key  # the key does look
    with pytest.raises(ValidationError, match="max_label_shift"):
        TaskDataConfig(**base, max_label_shift=1.5)
    assert configured_sources(plain, str(tmp_path)) == {"train": str(tmp_path / "train.tsv"),
                                                       "dev": str(tmp_path / "dev.tsv")}
    cut = TaskDataConfig(**{**base, "dev": None, "dev_ratio": 0.1, "train": "s3://bucket/train.tsv"})
    assert configured_sources(cut, None)["dev"] == "s3://bucket/train.tsv#dev_ratio=0.1&split_seed=13"


def test_profile_and_dataset_inputs_in_mlflow_and_the_champions_profile_read_back(profiles, tmp_path):
    from mlflow import MlflowClient

    from data_prep.config import TaskDataConfig
    from training.release.datasets import champion_profile, log_data_profile

    missing = tmp_path / "none.db"
    assert champion_profile(f"sqlite:///{missing}", "m", "champion") is None
    assert not missing.exists(), "looking must not create a store"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    old_run, new_run = (client.create_run(experiment).info.run_id for _ in range(2))
    assert champion_profile(uri, "m", "champion") is None  # no such model yet

    client.create_registered_model("m")
    for run in (old_run, new_run):
        client.create_model_version("m", source=client.get_run(run).info.artifact_uri, run_id=run)
    client.set_registered_model_alias("m", "champion", "1")
    assert champion_profile(uri, "m", "champion") is None  # an old champion: no profile recorded

    old, new = profiles
    sources = {"sent": {"train": "s3://key:secret@bucket/sent/train.tsv", "dev": "/data/sent/dev.tsv"},
               "fresh": configured_sources(TaskDataConfig(name="fresh", type="sequence_classification", source="hub",
                                                          hub={"name": "org/fresh", "config": "all", "revision": "abc"},
                                                          train="train", dev="validation"), None)}
    for _ in range(2):  # a retried task logs nothing twice
        log_data_profile(uri, new_run, new, sources)
    inputs = {d.dataset.name: d for d in client.get_run(new_run).inputs.dataset_inputs}
    assert sorted(inputs) == ["fresh-train", "sent-dev", "sent-train"]
    train = inputs["sent-train"]
    assert train.dataset.digest == new["tasks"]["sent"]["splits"]["train"]["digest"]
    assert {t.key: t.value for t in train.tags} == {"mlflow.data.context": "train", "mtl.rows": "12"}
    assert train.dataset.source_type == "s3" and "secret" not in train.dataset.source
    assert json.loads(train.dataset.profile)["num_rows"] == 12
    assert inputs["sent-dev"].dataset.source_type == "local"
    hub = json.loads(inputs["fresh-train"].dataset.source)
    assert (inputs["fresh-train"].dataset.source_type, hub["path"], hub["config_name"], hub["revision"],
            hub["split"]) == ("hugging_face", "org/fresh", "all", "abc", "train")

    log_data_profile(uri, old_run, old, {})
    assert champion_profile(uri, "m", "champion") == old
    client.set_registered_model_alias("m", "champion", "2")
    assert champion_profile(uri, "m", "champion") == new
