"""Every validation rule gets a malformed file; the message must name the file, line and field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_prep.config import TaskDataConfig
from data_prep.errors import DataValidationError
from data_prep.ingest import ingest_task, validate_tasks

GOOD_CONLL = "EU B-ORG\nrejects O\n\nPeter B-PER\nBlack I-PER\n"
GOOD_TSV = "sentence\tlabel\ngood film\t1\nbad film\t0\n"


def cfg(path_train: Path, path_dev: Path, **kw: object) -> TaskDataConfig:
    base: dict[str, object] = {"name": "t", "type": "sequence_classification", "format": "tsv",
                               "train": str(path_train), "dev": str(path_dev)}
    return TaskDataConfig(**{**base, **kw})


def refused(config: TaskDataConfig) -> str:
    with pytest.raises(DataValidationError) as err:
        ingest_task(config, None)
    return str(err.value)


def test_empty_text_names_file_line_field(write):
    train = write("train.tsv", "sentence\tlabel\ngood film\t1\n\t0\n")
    text = refused(cfg(train, write("dev.tsv", GOOD_TSV)))
    assert f"{train}:3: text: empty text" in text


def test_missing_column_names_the_header(write):
    train = write("train.tsv", "text\tlabel\ngood\t1\n")
    text = refused(cfg(train, write("dev.tsv", GOOD_TSV)))
    assert f"{train}:1: text_column: column 'sentence' does not exist" in text
    assert "set text_column to one of ['text', 'label']" in text


def test_wrong_column_count_tsv_and_conllu(write):
    train = write("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    assert f"{train}:3: columns: expected 2 columns, found 3" in refused(cfg(train, write("dev.tsv", GOOD_TSV)))
    conllu = write("a.conllu", "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\n")
    text = refused(cfg(conllu, conllu, type="token_classification", format="conllu"))
    assert f"{conllu}:1: columns: expected 10 tab-separated columns, found 9" in text


def test_conll_line_without_tag_column(write):
    train = write("train.conll", "EU\tB-ORG\nrejects\n")
    text = refused(cfg(train, write("dev.conll", GOOD_CONLL), type="token_classification", format="conll"))
    assert f"{train}:2: tag_column: line has 1 columns" in text


def test_dev_label_not_seen_in_train(write):
    dev = write("dev.tsv", "sentence\tlabel\nfine\t1\nmeh\t2\n")
    text = refused(cfg(write("train.tsv", GOOD_TSV), dev))
    assert f"{dev}:3: label: '2' does not occur in the train split" in text


def test_dev_tag_not_seen_in_train_names_the_tag_line(write):
    dev = write("dev.conll", "EU B-ORG\nsays O\n\nPeter B-PER\nBlack I-PER\nwent B-VERB\n")
    text = refused(cfg(write("train.conll", GOOD_CONLL), dev, type="token_classification", format="conll"))
    assert f"{dev}:2: tags[1]: 'O'" not in text
    assert f"{dev}:6: tags[2]: 'B-VERB' does not occur in the train split" in text


def test_malformed_bio_reported_by_default_and_repaired_when_asked(write):
    train = write("train.conll", "EU B-ORG\nrejects O\nGerman I-MISC\n\nPeter B-PER\nBlack I-LOC\n")
    dev = write("dev.conll", "EU B-ORG\nrejects O\n")
    base = dict(type="token_classification", format="conll", label_scheme="bio")
    text = refused(cfg(train, dev, **base))
    assert f"{train}:3: tags[2]: 'I-MISC' follows 'O'" in text
    assert f"{train}:6: tags[1]: 'I-LOC' follows 'B-PER'" in text
    assert "bio_repair: true" in text
    data = ingest_task(cfg(train, dev, bio_repair=True, **base), None)
    assert [ex.tags for ex in data.splits["train"]] == [["B-ORG", "O", "B-MISC"], ["B-PER", "B-LOC"]]


def test_not_a_bio_tag(write):
    train = write("train.conll", "EU ORG\n")
    text = refused(cfg(train, write("dev.conll", GOOD_CONLL), type="token_classification", format="conll",
                       label_scheme="bio"))
    assert f"{train}:1: tags[0]: 'ORG' is not a BIO tag" in text


def test_undecodable_bytes_strict_by_default_lenient_when_asked(write):
    train = write("train.tsv", "sentence\tlabel\ngood\t1\n".encode() + b"caf\xe9 ok\t0\n")
    dev = write("dev.tsv", GOOD_TSV)
    text = refused(cfg(train, dev))
    assert f"{train}:3: encoding: byte b'\\xe9' is not valid utf-8" in text
    assert "encoding_errors: replace" in text
    data = ingest_task(cfg(train, dev, encoding_errors="replace"), None)
    assert data.splits["train"][1].text == "caf\ufffd ok"


def test_empty_split(write):
    dev = write("dev.tsv", "")
    text = refused(cfg(write("train.tsv", GOOD_TSV), dev))
    assert f"{dev}: tasks.t.dev: the split is empty" in text


def test_header_only_split_is_empty_too(write):
    dev = write("dev.tsv", "sentence\tlabel\n")
    text = refused(cfg(write("train.tsv", GOOD_TSV), dev))
    assert f"{dev}: tasks.t.dev: no examples found" in text


def test_duplicate_task_names_and_problems_of_all_tasks_together(write):
    good = cfg(write("train.tsv", GOOD_TSV), write("dev.tsv", GOOD_TSV))
    bad_train = write("bad.tsv", "sentence\tlabel\n\t1\n")
    other = cfg(bad_train, write("dev2.tsv", GOOD_TSV), name="other")
    with pytest.raises(DataValidationError) as err:
        validate_tasks([good, good, other], None)
    text = str(err.value)
    assert "tasks: name: task name 't' is used 2 times (give every task a unique name)" in text
    assert f"{bad_train}:2: text: empty text" in text


def test_problem_limit_still_counts_everything(write):
    train = write("train.tsv", "sentence\tlabel\n" + "\t1\n" * 30)
    with pytest.raises(DataValidationError) as err:
        ingest_task(cfg(train, write("dev.tsv", GOOD_TSV)), None, issue_limit=10)
    assert str(err.value).startswith("30 data problem(s)")
    assert len(err.value.issues) == 10 and err.value.dropped == 20


def test_mtl_validate_reports_every_task_without_training(write, tmp_path, capsys):
    from flows.cli import main

    bad_tsv = write("bad.tsv", "sentence\tlabel\n\t1\n")
    bad_conll = write("bad.conll", "EU I-ORG\n")
    raw = {"name": "v", "storage": {"root": str(tmp_path / "state")}, "tasks": [
        {"name": "cls", "type": "sequence_classification", "format": "tsv", "train": str(bad_tsv),
         "dev": str(write("dev.tsv", GOOD_TSV))},
        {"name": "ner", "type": "token_classification", "format": "conll", "label_scheme": "bio",
         "train": str(bad_conll), "dev": str(write("dev.conll", GOOD_CONLL))}]}
    config = write("pipeline.yaml", yaml.safe_dump(raw))
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad_tsv}:2: text: empty text" in err
    assert f"{bad_conll}:1: tags[0]: 'I-ORG' follows 'O'" in err
    assert not (tmp_path / "state").exists(), "validate must not start a run"


def test_refused_data_is_not_retried_by_prefect():
    from prefect.states import Failed

    from data_prep.errors import DataIssue
    from flows.tasks import retry_unless_refused

    bad = Failed(data=DataValidationError([DataIssue("f.tsv", 3, "text", "empty text")]))
    flaky = Failed(data=OSError("connection reset"))
    assert retry_unless_refused(None, None, bad) is False
    assert retry_unless_refused(None, None, flaky) is True


def test_label_text_cannot_hold_a_pair_task(write):
    text = refused(cfg(write("train.label", "A b\n"), write("dev.label", "A b\n"), format="label_text",
                       type="sequence_pair_classification"))
    assert "tasks.t: format: label_text lines hold one text, not a pair" in text
