"""The content-addressed cache: a warm rerun skips ingest and tokenize, a changed input redoes
only what depends on it, and a half-written entry is never read."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from data_prep.cache import MARKER, ArtifactCache, CorruptEntry
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


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, size unchanged: only the checksum can tell
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {  # what happens to a stored file -> (step, file)
    "flipped split": ("ingest", "train.jsonl", flip_byte),
    "truncated split": ("ingest", "train.jsonl", truncate),
    "flipped meta": ("ingest", "meta.json", flip_byte),
    "flipped features": ("tokenize", "train.features.jsonl", flip_byte),
    "truncated features": ("tokenize", "train.features.jsonl", truncate),
    "truncated stats": ("tokenize", "stats.json", truncate),
    "flipped marker": ("tokenize", MARKER, flip_byte),
    "deleted features": ("tokenize", "train.features.jsonl", Path.unlink),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_detected_logged_and_recomputed(damage, write, tiny_encoder, tmp_path, caplog):
    step, name, spoil = DAMAGE[damage]
    train = write("t.tsv", "sentence\tlabel\n" + "".join(f"sentence number {i}\t{i % 2}\n" for i in range(40)))
    cfg = TaskDataConfig(name="c", type="sequence_classification", format="tsv", train=str(train), dev=str(train))
    cache = ArtifactCache(str(tmp_path / "cache"))

    def both(work: str) -> tuple[dict, dict]:
        ingested = ingest_cached(cfg, None, cache, tmp_path / work)
        return ingested, tokenize_cached(cfg, ingested, str(tiny_encoder), 32, SETTINGS, cache, tmp_path / work)

    ingested, tokenized = both("w1")
    entry = Path(ingested["splits"]["train"] if step == "ingest" else tokenized["features"]).parent
    sound = {p.name: p.read_bytes() for p in entry.iterdir()}
    spoil(entry / name)
    with caplog.at_level(logging.WARNING, logger="data_prep.cache"):
        again, retokenized = both("w2")
    # a recomputed ingest entry has the same key, so the tokenize entry after it still serves
    assert (again["cached"], retokenized["cached"]) == ((False, True) if step == "ingest" else (True, False))
    assert f"cache entry {cache.location(step, entry.name)} is damaged, recomputing it" in caplog.text
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == sound, "the entry is whole again"
    assert Path(retokenized["features"]).read_bytes() == Path(tokenized["features"]).read_bytes()
    assert retokenized["stats"] == tokenized["stats"] and again["labels"] == ingested["labels"]
    assert both("w3")[1]["cached"], "the recomputed entry is a hit"


def test_fetch_and_read_json_refuse_a_damaged_file(tmp_path):
    cache = ArtifactCache(str(tmp_path / "cache"))
    with cache.writer("ingest", "k") as folder:
        (folder / "a.jsonl").write_text('{"x": 1}\n')
        (folder / "meta.json").write_text('{"counts": {}}')
    assert cache.read_json("ingest", "k", "meta.json") == {"counts": {}}
    flip_byte(tmp_path / "cache" / "ingest" / "k" / "meta.json")
    with pytest.raises(CorruptEntry, match=r"meta.json: 14 bytes with SHA-256 .*, written as 14 bytes"):
        cache.read_json("ingest", "k", "meta.json")
    truncate(tmp_path / "cache" / "ingest" / "k" / "a.jsonl")
    with pytest.raises(CorruptEntry, match="a.jsonl: 4 bytes"):
        cache.fetch("ingest", "k", "a.jsonl", tmp_path / "w")
    assert cache.load("ingest", "k", lambda: cache.read_json("ingest", "k", "meta.json")) is None
    assert not cache.has("ingest", "k") and not (tmp_path / "cache" / "ingest" / "k").exists()
    assert list((tmp_path / "cache" / "ingest").iterdir()) == [], "the staging folder is removed too"
