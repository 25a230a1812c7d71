"""Damaged files through the same validation `mtl validate` runs: for every reader, a small
valid file is truncated, line-shuffled and byte-flipped (seeded, so a failure reproduces), and
each version must either load cleanly or be refused with the data error naming the file, never
raise anything else."""
from __future__ import annotations

import io
import json
import random
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_prep.config import TaskDataConfig
from data_prep.errors import DataValidationError
from data_prep.ingest import validate_tasks

VARIANTS_PER_KIND = 150  # per file and kind of damage: 11 files x 4 kinds x 150 versions, about 6 s
# byte values that mean something to one reader or another: separators, quotes, brackets,
# line ends, a NUL, the start of a multi-byte sequence or of a byte order mark
SPECIAL_BYTES = b'\t\n\r ",:{}[]-#_\x00\x0b\x0c\x1c\x85\xc3\xe2\xef\xff'

CONLLU = """# sent_id = a-1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_

# sent_id = a-2
1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
2\t.\t.\tPUNCT\t.\t_\t1\tpunct\t_\t_
"""
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
\t
BRUSSELS NNP B-NP B-LOC
"""
TSV = 'sentence\tlabel\na "quoted" good film\t1\nbad film\t0\nfine, really\t1\n'
TSV_PAIRS = "sentence1\tsentence2\tlabel\nA man sleeps.\tA person rests.\tentailment\nIt rains.\tIt is dry.\tnot_entailment\n"
CSV = 'review,stars\n"Good, really good",pos\nbad,neg\n"a ""quoted"" word",pos\n'
LABEL_TEXT = "DESC:manner How did serfdom develop ?\nNUM:date When was it ?\n\nHUM:ind Who wrote it ?\n"
RECORDS_TOKENS = [{"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
                  {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]
RECORDS_SENTENCES = [{"sentence": "good film \u2028 really", "label": 1}, {"sentence": "bad film", "label": 0},
                     {"sentence": "fine", "label": 1}]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


TOKEN = {"type": "token_classification"}
SENTENCE = {"type": "sequence_classification"}
CASES: dict[str, tuple[dict[str, object], Callable[[], bytes]]] = {
    "conllu": ({**TOKEN, "format": "conllu"}, lambda: CONLLU.encode()),
    "conll": ({**TOKEN, "format": "conll", "label_scheme": "bio"}, lambda: CONLL.encode()),
    "tsv": ({**SENTENCE, "format": "tsv"}, lambda: TSV.encode()),
    "tsv-pairs": ({"type": "sequence_pair_classification", "format": "tsv", "text_column": "sentence1",
                   "text_pair_column": "sentence2"}, lambda: TSV_PAIRS.encode()),
    "csv": ({**SENTENCE, "format": "csv", "text_column": "review", "label_column": "stars"}, lambda: CSV.encode()),
    "jsonl-tokens": ({**TOKEN, "format": "jsonl", "label_scheme": "bio"}, lambda: jsonl(RECORDS_TOKENS)),
    "jsonl-sentences": ({**SENTENCE, "format": "jsonl", "labels": ["0", "1"]}, lambda: jsonl(RECORDS_SENTENCES)),
    "parquet-tokens": ({**TOKEN, "format": "parquet"}, lambda: parquet(RECORDS_TOKENS)),
    "parquet-sentences": ({**SENTENCE, "format": "parquet"}, lambda: parquet(RECORDS_SENTENCES)),
    "label_text": ({**SENTENCE, "format": "label_text", "label_separator": ":"}, lambda: LABEL_TEXT.encode()),
    "regression-tsv": ({"type": "sequence_regression", "format": "tsv"},
                       lambda: b"sentence\tlabel\nwarm\t3.5\ncold\t-1e2\n"),
}


def truncated(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def shuffled(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    rng.shuffle(lines)
    return b"\n".join(lines)


def flipped(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def special(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] = rng.choice(SPECIAL_BYTES)
    return bytes(out)


DAMAGE = {"truncated": truncated, "shuffled": shuffled, "flipped": flipped, "special": special}


def variants(case: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    for kind, damage in DAMAGE.items():
        for seed in range(VARIANTS_PER_KIND):
            rng = random.Random(f"{case}/{kind}/{seed}")  # a string seed: the same bytes on every run
            yield f"{kind} seed {seed}", damage(data, rng)


def check(cfg: TaskDataConfig, path: Path, data: bytes) -> None:
    """A clean load with sane content, or a refusal whose every problem names the file and a
    line inside it."""
    lines = data.count(b"\n") + 1
    try:
        loaded = validate_tasks([cfg], None)
    except DataValidationError as exc:
        assert exc.issues, "a refusal says why"
        for issue in exc.issues:
            assert issue.file == str(path), f"the problem names the file: {issue}"
            if cfg.format != "parquet" and issue.line is not None:
                assert 1 <= issue.line <= lines, f"line {issue.line} of a {lines}-line file: {issue}"
        return
    task = loaded[cfg.name]
    assert "" not in task.labels
    for example in task.splits["train"] + task.splits["dev"]:
        assert example.file == str(path)
        assert cfg.format == "parquet" or 1 <= example.line <= lines
        assert all(t.strip() for t in example.tags or []) and (example.tags is not None or example.label)


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_files_load_or_are_refused_naming_the_file(case, tmp_path):
    spec, build = CASES[case]
    valid = build()
    path = tmp_path / f"data.{spec['format']}"
    cfg = TaskDataConfig(name="t", train=str(path), dev=str(path), **spec)  # type: ignore[arg-type]
    path.write_bytes(valid)
    check(cfg, path, valid)
    assert validate_tasks([cfg], None)["t"].splits["train"], "the undamaged file loads"
    crashes: list[str] = []
    for name, data in variants(case, valid):
        path.write_bytes(data)
        try:
            check(cfg, path, data)
        except AssertionError as exc:
            crashes.append(f"{case} {name}: {exc}\n{data!r}")
        except Exception:  # noqa: BLE001 - any other exception is the finding this test reports
            crashes.append(f"{case} {name}: {traceback.format_exc(limit=4)}\n{data!r}")
    assert not crashes, f"{len(crashes)} damaged versions crashed validation:\n" + "\n".join(crashes[:5])
