"""The content-addressed cache: a warm rerun skips ingest and tokenize, a changed input redoes
only what depends on it, and a half-written entry is never read."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from data_prep.cache import MARKER, ArtifactCache
from data_prep.config import TaskDataConfig, TokenizeConfig
from data_prep.stage import ingest_cached, read_examples, tokenize_cached

SETTINGS = TokenizeConfig()


def tasks(data: Path) -> list[TaskDataConfig]:
    return [TaskDataConfig(name="pos", type="token_classification", format="conllu",
                           train=str(data / "pos-train.conllu"), dev=str(data / "pos-dev.conllu")),
            TaskDataConfig(name="sst2", type="sequence_classification", format="tsv",
                           train=str(data / "sst2-train.tsv"), dev=str(data / "sst2-dev.tsv"))]


def subset(data_dir: Path, target: Path) -> Path:
    """Real corpora heads: enough work that a cold run is measurable."""
    target.mkdir()
    for name, source, lines in (("pos-train.conllu", "ud_en_ewt/en_ewt-ud-train.conllu", 8000),
                                ("pos-dev.conllu", "ud_en_ewt/en_ewt-ud-train.conllu", 8000),
                                ("sst2-train.tsv", "cls_sst2/train.tsv", 3000), ("sst2-dev.tsv", "cls_sst2/dev.tsv", 200)):
        text = b"".join(line for _, line in zip(range(lines), open(data_dir / source, "rb")))
        (target / name).write_bytes(text[: text.rfind(b"\n\n") + 2] if name.endswith("conllu") else text)
    return target


def run(cfgs: list[TaskDataConfig], cache: ArtifactCache, tokenizer: Path, work: Path) -> dict[str, tuple[bool, bool]]:
    hits = {}
    for cfg in cfgs:
        ingested = ingest_cached(cfg, None, cache, work)
        tokenized = tokenize_cached(cfg, ingested, str(tokenizer), 48, SETTINGS, cache, work)
        assert Path(tokenized["features"]).is_file() and read_examples(ingested["splits"]["dev"])
        assert json.loads((work / cfg.name / "labels.json").read_text()) == ingested["labels"]
        hits[cfg.name] = (ingested["cached"], tokenized["cached"])
    return hits


def test_warm_rerun_hits_and_changes_redo_only_their_task(data_dir, tiny_encoder, tmp_path):
    data = subset(data_dir, tmp_path / "data")
    tokenizer = tmp_path / "tok"
    shutil.copytree(tiny_encoder, tokenizer)
    cache = ArtifactCache(str(tmp_path / "cache"))
    cfgs = tasks(data)
    start = time.perf_counter()
    assert run(cfgs, cache, tokenizer, tmp_path / "w1") == {"pos": (False, False), "sst2": (False, False)}
    cold = time.perf_counter() - start
    start = time.perf_counter()
    assert run(cfgs, cache, tokenizer, tmp_path / "w2") == {"pos": (True, True), "sst2": (True, True)}
    warm = time.perf_counter() - start
    assert warm < cold / 5, f"warm {warm:.3f}s vs cold {cold:.3f}s"

    with open(data / "sst2-train.tsv", "a") as handle:  # new data for one task only
        handle.write("a brand new sentence \t1\n")
    assert run(cfgs, cache, tokenizer, tmp_path / "w3") == {"pos": (True, True), "sst2": (False, False)}

    cfgs[0] = cfgs[0].model_copy(update={"label_alignment": "last"})  # a tokenize-only setting
    assert run(cfgs, cache, tokenizer, tmp_path / "w4")["pos"] == (True, False)

    settings = tokenizer / "tokenizer_config.json"  # a changed tokenizer file: tokenize only
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "model_max_length": 4096}))
    assert run(cfgs, cache, tokenizer, tmp_path / "w5") == {"pos": (True, False), "sst2": (True, False)}


def test_half_written_entry_without_marker_is_ignored(write, tiny_encoder, tmp_path):
    train = write("t.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    cfg = TaskDataConfig(name="c", type="sequence_classification", format="tsv", train=str(train), dev=str(train))
    cache = ArtifactCache(str(tmp_path / "cache"))
    first = ingest_cached(cfg, None, cache, tmp_path / "w")
    entry = Path(first["splits"]["train"]).parent
    (entry / MARKER).unlink()  # as if the writer died before committing
    (entry / "train.jsonl").write_text('{"truncated": ')
    again = ingest_cached(cfg, None, cache, tmp_path / "w")
    assert again["cached"] is False and (entry / MARKER).is_file()
    assert [ex.text for ex in read_examples(again["splits"]["train"])] == ["good", "bad"]
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")], "no staging folder is left"


def test_failed_write_leaves_no_entry(tmp_path):
    cache = ArtifactCache(str(tmp_path / "cache"))
    with pytest.raises(OSError, match="disk full"), cache.writer("ingest", "k") as folder:
        (folder / "a.jsonl").write_text("{}\n")
        raise OSError("disk full")
    assert not cache.has("ingest", "k") and not (tmp_path / "cache" / "ingest" / "k").exists()
    assert list((tmp_path / "cache" / "ingest").iterdir()) == [], "the staging folder is removed too"
