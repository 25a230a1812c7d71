"""CSV, JSON lines, Parquet and hub readers, column mapping, dev cut by ratio, globs and shards."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.config import TaskDataConfig
from data_prep.errors import DataValidationError
from data_prep.ingest import ingest_task
from data_prep.readers import READERS, get_reader


def task(**kw: object) -> TaskDataConfig:
    base: dict[str, object] = {"name": "t", "type": "sequence_classification"}
    return TaskDataConfig(**{**base, **kw})


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_registry_lists_formats_on_unknown_name():
    assert {"conllu", "conll", "tsv", "csv", "jsonl", "parquet"} <= set(READERS)
    with pytest.raises(KeyError, match=r"unknown format 'xml'; valid formats: \['conll', 'conllu', 'csv'"):
        get_reader("xml")


def test_csv_with_quoted_commas_and_mapped_columns(write):
    text = 'review,stars\n"Good, really good",pos\n"bad",neg\n'
    cfg = task(format="csv", train=str(write("train.csv", text)), dev=str(write("dev.csv", text)),
               text_column="review", label_column="stars")
    data = ingest_task(cfg, None)
    assert [(ex.text, ex.label, ex.line) for ex in data.splits["train"]] == [
        ("Good, really good", "pos", 2), ("bad", "neg", 3)]
    assert data.labels == ["neg", "pos"]


def test_jsonl_token_task_with_column_mapping(write):
    rows = [{"words": ["EU", "rejects"], "ner": ["B-ORG", "O"]}, {"words": ["Peter"], "ner": ["B-PER"]}]
    cfg = task(type="token_classification", format="jsonl", label_scheme="bio", token_column="words",
               tag_column="ner", train=str(write("train.jsonl", jsonl(rows))), dev=str(write("dev.jsonl", jsonl(rows))))
    data = ingest_task(cfg, None)
    assert [ex.tokens for ex in data.splits["train"]] == [["EU", "rejects"], ["Peter"]]
    assert data.labels == ["B-ORG", "B-PER", "O"]


def test_jsonl_token_tag_count_mismatch_and_missing_field_and_bad_json(write):
    rows = jsonl([{"tokens": ["a", "b"], "tags": ["O"]}, {"tokens": ["c"]}]) + "{not json\n"
    train = write("train.jsonl", rows)
    cfg = task(type="token_classification", format="jsonl", train=str(train), dev=str(train))
    with pytest.raises(DataValidationError) as err:
        ingest_task(cfg, None)
    text = str(err.value)
    assert f"{train}:1: tags: 2 tokens but 1 tags (every token needs exactly one tag)" in text
    assert f"{train}:2: tag_column: field(s) tag_column 'tags' missing; the record has ['tokens']" in text
    assert f"{train}:3: json: not valid JSON" in text


def test_parquet_rows_and_missing_column(tmp_path):
    rows = [{"sentence": "good film", "label": 1}, {"sentence": "bad film", "label": 0}]
    train = write_parquet(tmp_path / "train.parquet", rows)
    data = ingest_task(task(format="parquet", train=str(train), dev=str(train)), None)
    assert [(ex.text, ex.label, ex.line) for ex in data.splits["dev"]] == [("good film", "1", 1), ("bad film", "0", 2)]
    bad = write_parquet(tmp_path / "bad.parquet", [{"text": "x", "label": 0}])
    with pytest.raises(DataValidationError, match=rf"{bad}:1: text_column: field\(s\) text_column 'sentence' missing"):
        ingest_task(task(format="parquet", train=str(bad), dev=str(train)), None)


def test_dev_cut_from_train_by_ratio_is_seeded_and_disjoint(write):
    text = "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(100))
    cfg = task(format="tsv", train=str(write("train.tsv", text)), dev_ratio=0.2, split_seed=7)
    first, again = ingest_task(cfg, None), ingest_task(cfg, None)
    dev = [ex.text for ex in first.splits["dev"]]
    assert len(dev) == 20 and len(first.splits["train"]) == 80
    assert dev == [ex.text for ex in again.splits["dev"]], "the same seed cuts the same dev split"
    assert not set(dev) & {ex.text for ex in first.splits["train"]}
    other = ingest_task(cfg.model_copy(update={"split_seed": 8}), None)
    assert [ex.text for ex in other.splits["dev"]] != dev


def test_dev_or_dev_ratio_is_required():
    with pytest.raises(ValueError, match="set dev .* or dev_ratio"):
        task(format="tsv", train="x")
    with pytest.raises(ValueError, match="either dev or dev_ratio, not both"):
        task(format="tsv", train="x", dev="y", dev_ratio=0.1)


def test_globs_folders_and_lists_of_shards(write, tmp_path):
    for i in range(3):
        write(f"shards/train-{i}.jsonl", jsonl([{"sentence": f"s{i}", "label": "a"}]))
    write("shards/.hidden.jsonl", "garbage\n")
    write("shards/_SUCCESS", "")
    dev = str(write("dev.jsonl", jsonl([{"sentence": "d", "label": "a"}])))
    by_glob = ingest_task(task(format="jsonl", train=str(tmp_path / "shards" / "train-*.jsonl"), dev=dev), None)
    by_folder = ingest_task(task(format="jsonl", train=str(tmp_path / "shards"), dev=dev), None)
    by_list = ingest_task(task(format="jsonl", train=["shards/train-0.jsonl", "shards/train-2.jsonl"], dev=dev),
                          str(tmp_path))
    assert [ex.text for ex in by_glob.splits["train"]] == ["s0", "s1", "s2"]
    assert [ex.text for ex in by_folder.splits["train"]] == ["s0", "s1", "s2"]
    assert [ex.text for ex in by_list.splits["train"]] == ["s0", "s2"]
    with pytest.raises(DataValidationError, match=r"nope-\*\.jsonl: tasks.t.train: file not found \(or glob"):
        ingest_task(task(format="jsonl", train=str(tmp_path / "nope-*.jsonl"), dev=dev), None)


def test_format_must_fit_task_type(write):
    path = str(write("a.tsv", "sentence\tlabel\nx\t1\n"))
    with pytest.raises(DataValidationError, match="format 'tsv' does not fit task type 'token_classification'"):
        ingest_task(task(type="token_classification", format="tsv", train=path, dev=path), None)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_hub_dataset_through_load_dataset_with_class_names(tmp_path, hub_cache):
    """The same `load_dataset` call a hub id takes, on a local parquet builder (the hub is
    unreachable here); ClassLabel ids come back as their names."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"review": Value("string"), "stars": ClassLabel(names=["neg", "pos"])})
    for split, rows in (("train", {"review": ["good", "bad", "fine"], "stars": [1, 0, 1]}),
                        ("validation", {"review": ["great"], "stars": [1]})):
        Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    cfg = task(source="hub", train="train", dev="validation", text_column="review", label_column="stars",
               hub={"name": "parquet", "data_files": {"train": str(tmp_path / "train.parquet"),
                                                      "validation": str(tmp_path / "validation.parquet")}})
    data = ingest_task(cfg, None)
    assert [(ex.text, ex.label) for ex in data.splits["train"]] == [("good", "pos"), ("bad", "neg"), ("fine", "pos")]
    assert data.labels == ["neg", "pos"] and data.splits["dev"][0].file == "hub:parquet[validation]"


def test_hub_dataset_that_cannot_be_reached_is_reported(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = task(source="hub", hub={"name": "nobody/no-such-dataset", "config": "x"}, train="train", dev="validation")
    with pytest.raises(DataValidationError, match=r"hub:nobody/no-such-dataset/x\[train\]: tasks.t.train: cannot load"):
        ingest_task(cfg, None)


BOM_FILES = {  # format -> (task type, file text, the first example's line and what it must read)
    "tsv": ("sequence_classification", "sentence\tlabel\ngood film\t1\n", 2, ("good film", "1")),
    "csv": ("sequence_classification", "sentence,label\ngood film,1\n", 2, ("good film", "1")),
    "jsonl": ("sequence_classification", '{"sentence": "good film", "label": 1}\n', 1, ("good film", "1")),
    "label_text": ("sequence_classification", "DESC:manner How did it go ?\n", 1,
                   ("How did it go ?", "DESC:manner")),
    "conll": ("token_classification", "EU B-ORG\nrejects O\n", 1, (["EU", "rejects"], ["B-ORG", "O"])),
    "conllu": ("token_classification", "# text = Hi\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n", 2,
               (["Hi"], ["INTJ"])),
}


@pytest.mark.parametrize("fmt", sorted(BOM_FILES))
def test_a_byte_order_mark_is_read_as_one(fmt, write):
    """Editors on Windows start UTF-8 files with EF BB BF: it must not become part of the first
    column name, JSON line, comment, token or label."""
    task_type, text, line, expected = BOM_FILES[fmt]
    path = str(write(f"bom.{fmt}", b"\xef\xbb\xbf" + text.encode()))
    [ex] = ingest_task(task(type=task_type, format=fmt, train=path, dev=path), None).splits["train"]
    assert ((ex.tokens, ex.tags) if ex.tokens is not None else (ex.text, ex.label)) == expected
    assert ex.line == line


def test_utf16_with_its_byte_order_mark(write):
    path = str(write("u16.tsv", "sentence\tlabel\ngood film\t1\n".encode("utf-16")))
    [ex] = ingest_task(task(format="tsv", encoding="utf-16", train=path, dev=path), None).splits["train"]
    assert (ex.text, ex.label) == ("good film", "1")


def test_unknown_encoding_is_a_config_error():
    with pytest.raises(ValueError, match="unknown encoding 'utf-9'"):
        task(format="tsv", train="x", dev="y", encoding="utf-9")


@pytest.mark.parametrize("delimiter", ["", ";;", '"', "\n"])
def test_delimiter_is_one_character_other_than_a_quote_or_line_end(delimiter):
    """csv refuses such a separator with a TypeError at read time; the config names it first."""
    with pytest.raises(ValueError, match="delimiter"):
        task(format="csv", train="x", dev="y", delimiter=delimiter)
    assert task(format="csv", train="x", dev="y", delimiter=";").delimiter == ";"
