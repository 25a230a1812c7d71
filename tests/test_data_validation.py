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
    train = write("train.conll", "EU B-ORG\nrejects O\nPeter PER\n")
    text = refused(cfg(train, write("dev.conll", GOOD_CONLL), type="token_classification", format="conll",
                       label_scheme="bio"))
    assert f"{train}:3: tags[2]: 'PER' is not a BIO tag" in text


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


def test_empty_upos_is_refused_with_its_line(write):
    word = "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n"
    train = write("train.conllu", "# text = Hi there\n" + word + "2\tthere\tthere\t\tRB\t_\t1\tadvmod\t_\t_\n\n"
                  + word + "2\tyou\tyou\t_\tPRP\t_\t1\tobj\t_\t_\n")
    text = refused(cfg(train, write("dev.conllu", word), type="token_classification", format="conllu"))
    assert f"{train}:3: UPOS: empty" in text
    assert f"{train}:6: UPOS: '_' (unannotated)" in text


def test_empty_tag_in_records_is_refused(write):
    rows = '{"tokens": ["EU", "rejects"], "tags": ["B-ORG", null]}\n{"tokens": ["a"], "tags": [" "]}\n'
    train = write("train.jsonl", rows)
    text = refused(cfg(train, train, type="token_classification", format="jsonl"))
    assert f"{train}:1: tags[1]: empty tag" in text and f"{train}:2: tags[0]: empty tag" in text


def test_declared_labels_refuse_any_other_value(write):
    train = write("train.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\nodd film\tpositive\n")
    text = refused(cfg(train, write("dev.tsv", GOOD_TSV), labels=[0, 1]))
    assert f"{train}:4: label: 'positive' is not one of the declared labels ['0', '1']" in text
    assert ingest_task(cfg(write("ok.tsv", GOOD_TSV), write("dev.tsv", GOOD_TSV), labels=["0", "1"]), None)


def test_declared_labels_check_tags_with_their_line(write):
    train = write("train.conll", "EU B-ORG\nrejects O\nBerlin B-CITY\n")
    text = refused(cfg(train, write("dev.conll", GOOD_CONLL), type="token_classification", format="conll",
                       label_scheme="bio", labels=["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]))
    assert f"{train}:3: tags[2]: 'B-CITY' is not one of the declared labels" in text


def test_declared_labels_are_checked_in_the_config():
    with pytest.raises(ValueError, match="labels: 'a' is declared twice"):
        TaskDataConfig(name="t", type="sequence_classification", format="tsv", train="x", dev="y",
                       labels=["a", "b", "a"])
    with pytest.raises(ValueError, match="labels: an empty label"):
        TaskDataConfig(name="t", type="sequence_classification", format="tsv", train="x", dev="y", labels=["a", " "])
    with pytest.raises(ValueError, match="regression targets are numbers"):
        TaskDataConfig(name="t", type="sequence_regression", format="tsv", train="x", dev="y", labels=["1"])
    with pytest.raises(ValueError, match="labels: 'PER' is not a BIO tag"):
        TaskDataConfig(name="t", type="token_classification", format="conll", train="x", dev="y",
                       label_scheme="bio", labels=["O", "PER"])


def conll_head(data_dir: Path, lines: int, keep_columns: int) -> str:
    """The first lines of the real CoNLL-2003 train file (token POS chunk NER), cut to whole
    sentences, keeping the first `keep_columns` columns."""
    with open(data_dir / "ner_conll2003" / "train.txt", encoding="utf-8") as handle:
        head = "".join(line for _, line in zip(range(lines), handle))
    head = head[: head.rfind("\n\n") + 2]
    return "".join(" ".join(line.split()[:keep_columns]) + "\n" for line in head.splitlines())


def test_default_tag_column_on_a_chunk_column_is_refused(data_dir, write):
    """Without its NER column, the last column of a CoNLL-2003 file is the chunk column, whose
    B-NP/I-VP tags have the BIO shape; taking it as entity tags must be refused."""
    full, cut = write("full.txt", conll_head(data_dir, 3000, 4)), write("cut.txt", conll_head(data_dir, 3000, 3))
    ner = dict(type="token_classification", format="conll", label_scheme="bio")
    loaded = ingest_task(cfg(full, full, **ner), None)  # the real layout with the default tag_column
    assert "B-PER" in loaded.labels and "B-NP" not in loaded.labels
    text = refused(cfg(cut, full, **ner))
    assert f"{cut}:3: tag_column: column 2 (tag_column -1) holds phrase-chunk tags" in text
    assert "no column looks like entity tags: point at a file with them, or set tag_column: 2" in text
    assert "no examples found" not in text
    chunking = ingest_task(cfg(cut, cut, tag_column=2, **ner), None)  # asked for explicitly: a chunking task
    assert "B-NP" in chunking.labels


def test_tag_column_that_is_not_bio_is_refused_once_with_a_better_column(data_dir, write):
    reordered = "".join(" ".join([c[0], c[3], c[1]]) + "\n" if (c := line.split()) else "\n"
                        for line in conll_head(data_dir, 400, 4).splitlines())  # token NER POS
    train = write("train.txt", reordered)
    text = refused(cfg(train, train, type="token_classification", format="conll", label_scheme="bio"))
    assert f"{train}:3: tag_column: column 2 (tag_column -1) holds values that are not BIO tags" in text
    assert "set tag_column: 1" in text
    assert "is not a BIO tag" not in text, "one problem for the column, not one per token"


def test_plain_tag_column_holding_words_is_refused(data_dir, write):
    words = "".join(" ".join([c[1], c[0]]) + "\n" if (c := line.split()) and c[0] != "-DOCSTART-" else line + "\n"
                    for line in conll_head(data_dir, 3000, 4).splitlines())  # POS then the word
    train = write("train.txt", words)
    text = refused(cfg(train, train, type="token_classification", format="conll"))
    assert f"{train}:3: tag_column: column 1 (tag_column -1) holds" in text and "words, not tags" in text
    assert "set token_column: 1 and tag_column: 0" in text
    assert len(ingest_task(cfg(train, train, type="token_classification", format="conll", tag_column=1), None).labels) \
        > 1000, "a tag column named in the config may hold a large tag set"


# ---- mutation survivors of data_prep (tools/mutation_sample.py, tests/mutation_triage.toml) ----

def test_each_reader_issue_names_file_line_field_problem_and_fix_word_for_word():
    """The exact text of what the readers and the checks report: file, line, field, problem and fix
    (mutants that dropped the file, the fix or changed a word of them survived)."""
    from data_prep.errors import IssueCollector
    from data_prep.ingest import validate_examples
    from data_prep.readers import read_conllu, read_jsonl, read_tsv

    parsing = TaskDataConfig(name="dep", type="dependency_parsing", format="conllu", train="t", dev="d")
    issues = IssueCollector()
    read_conllu("1\tA\ta\tX\t_\t_\t0\troot\t_\t_\n1\tB\tb\tX\t_\t_\t1\tdep\t_\t_\n\n"
                "1\tC\tc\tX\t_\t_\t0\t_\t_\t_\n\n", "t.conllu", parsing, issues)
    assert [str(i) for i in issues.issues] == [
        "t.conllu:1: ID (column 1): word ID(s) [1] occur more than once in the sentence "
        "(number the words of a sentence 1, 2, 3, ... (each once))",
        "t.conllu:4: DEPREL (column 8): '_' (unannotated) (every word needs its dependency relation in column 8 "
        "(nsubj, obj, root, ...))"]
    issues = IssueCollector()
    read_jsonl('[1, 2]\n', "t.jsonl", TaskDataConfig(name="s", type="sequence_classification", format="jsonl",
                                                     train="t", dev="d"), issues)
    assert [str(i) for i in issues.issues] == [
        "t.jsonl:1: json: expected an object, found list (write one JSON object per line)"]
    regression = TaskDataConfig(name="r", type="sequence_regression", format="tsv", train="t", dev="d")
    issues = IssueCollector()
    validate_examples(read_tsv("sentence\tlabel\ngood\thigh\n", "t.tsv", regression, issues), regression, issues)
    assert [str(i) for i in issues.issues] == [
        "t.tsv:2: label: 'high' is not a number (sequence_regression targets are real numbers (e.g. 3.8))"]


def test_a_report_past_its_limit_says_how_many_more_there_are():
    from data_prep.errors import DataIssue

    issues = [DataIssue("f", i, "x", "bad") for i in range(1, 5)]
    assert str(DataValidationError(issues, limit=2, dropped=3)).endswith("f:2: x: bad\n  ... and 5 more")


def test_retries_take_the_attempts_given():
    from data_prep.retry import with_retries

    calls = []

    def flaky() -> None:
        calls.append(1)
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        with_retries(flaky, "a read", attempts=2, first_delay_s=0.0, on_retry=lambda message: None)
    assert len(calls) == 2
