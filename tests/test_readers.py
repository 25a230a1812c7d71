"""Readers on small files with the quirks the real corpora have, and on the real corpora."""
from __future__ import annotations

from data_prep.config import TaskDataConfig
from data_prep.errors import IssueCollector
from data_prep.ingest import ingest_task
import pytest

from data_prep.errors import DataValidationError
from data_prep.readers import read_conll, read_conllu, read_label_text, read_tsv

CONLLU = """# sent_id = answers-1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_

1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def token_cfg(fmt: str, **kw) -> TaskDataConfig:
    return TaskDataConfig(**{"name": "t", "type": "token_classification", "format": fmt, "train": "x",
                             "dev": "y", **kw})


def test_conllu_skips_ranges_and_empty_nodes():
    issues = IssueCollector()
    examples = read_conllu(CONLLU, "f.conllu", token_cfg("conllu"), issues)
    assert not issues.issues
    assert [ex.tokens for ex in examples] == [["I", "do", "n't", "know"], ["Yes"]]
    assert examples[0].tags == ["PRON", "AUX", "PART", "VERB"]
    assert (examples[0].line, examples[1].line) == (3, 10)


def test_conll_docstart_and_tab_only_separators():
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\t\nPeter NNP B-NP B-PER\n"
    examples = read_conll(text, "f.txt", token_cfg("conll", tag_column=3), IssueCollector())
    assert [ex.tokens for ex in examples] == [["EU", "rejects"], ["Peter"]]
    assert [ex.tags for ex in examples] == [["B-ORG", "O"], ["B-PER"]]
    assert examples[0].line == 3


def test_tsv_header_names_and_pairs():
    cfg = TaskDataConfig(name="rte", type="sequence_pair_classification", format="tsv", train="x", dev="y",
                         text_column="sentence1", text_pair_column="sentence2")
    text = "sentence1\tsentence2\tlabel\tidx\nA man sleeps.\tA person rests.\t0\t0\n"
    [ex] = read_tsv(text, "f.tsv", cfg, IssueCollector())
    assert (ex.text, ex.text_pair, ex.label, ex.line) == ("A man sleeps.", "A person rests.", "0", 2)


def test_real_corpora_counts(data_dir):
    """Counts from the corpora's SOURCE.md files."""
    pos = ingest_task(token_cfg("conllu", train="ud_en_ewt/en_ewt-ud-train.conllu",
                                dev="ud_en_ewt/en_ewt-ud-dev.conllu"), str(data_dir))
    assert len(pos.splits["train"]) == 12544 and len(pos.labels) == 17
    assert sum(len(ex.tokens) for ex in pos.splits["train"]) == 204577
    ner = ingest_task(token_cfg("conll", tag_column=3, label_scheme="bio", train="ner_conll2003/train.txt",
                                dev="ner_conll2003/valid.txt"), str(data_dir))
    assert (len(ner.splits["train"]), len(ner.splits["dev"])) == (14041, 3250)
    wnut = ingest_task(token_cfg("conll", label_scheme="bio", train="ner_wnut17/train.conll",
                                 dev="ner_wnut17/dev.conll"), str(data_dir))
    assert (len(wnut.splits["train"]), len(wnut.labels)) == (3394, 13)


def test_label_text_lines_and_coarse_labels():
    cfg = TaskDataConfig(name="trec", type="sequence_classification", format="label_text", train="x", dev="y",
                         label_separator=":")
    issues = IssueCollector()
    examples = read_label_text("DESC:manner How did serfdom develop ?\n\nNUM:date When was it ?\nHUM:ind\n",
                               "q.label", cfg, issues)
    assert [(ex.label, ex.text, ex.line) for ex in examples] == [
        ("DESC", "How did serfdom develop ?", 1), ("NUM", "When was it ?", 3)]
    [issue] = issues.issues
    assert (issue.file, issue.line, issue.field) == ("q.label", 4, "text")


def test_real_trec_needs_lenient_decoding_and_gives_six_coarse_classes(data_dir):
    """TREC's train file has one byte that is not UTF-8 (line 66): refused by default, naming it."""
    base = {"name": "trec", "type": "sequence_classification", "format": "label_text",
            "train": "cls_trec/train_5500.label", "dev": "cls_trec/dev.label", "label_separator": ":"}
    with pytest.raises(DataValidationError) as err:
        ingest_task(TaskDataConfig(**base), str(data_dir))
    assert "cls_trec/train_5500.label:66: encoding" in str(err.value)
    trec = ingest_task(TaskDataConfig(**base, encoding_errors="replace"), str(data_dir))
    assert (len(trec.splits["train"]), len(trec.splits["dev"])) == (4952, 500)
    assert sorted(trec.labels) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    fine = ingest_task(TaskDataConfig(**{**base, "label_separator": None}, encoding_errors="replace"), str(data_dir))
    assert len(fine.labels) > 40 and all(":" in label for label in fine.labels)
