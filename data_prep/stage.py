"""The ingest and tokenize steps, each cached by content in the artifact store.

A step first computes its key from its inputs (file hashes or S3 ETags, settings, tokenizer
files, code version). A hit returns the stored entry without reading or tokenizing anything; a
miss does the work and commits a new entry atomically.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from data_prep.cache import ArtifactCache, code_version, digest, tokenizer_fingerprint
from data_prep.config import S3Config, TaskDataConfig, TokenizeConfig
from data_prep.errors import IssueCollector
from data_prep.examples import Example
from data_prep.ingest import SPLITS, ingest_task, split_files
from data_prep.sources import fingerprint
from data_prep.tokenize import tokenize_with_stats

# settings that only tokenization reads: changing them must not redo ingest
TOKENIZE_ONLY = {"label_alignment"}
# settings that only training (or the flow's checks around it) reads: changing them must redo neither step
TRAINING_ONLY = {"auxiliary", "max_label_shift", "positive_label", "primary_metric"}


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_examples(path: str | Path) -> list[Example]:
    with open(path, encoding="utf-8") as handle:
        return [Example.from_dict(json.loads(line)) for line in handle if line.strip()]


def source_fingerprints(cfg: TaskDataConfig, data_dir: str | None, s3: S3Config | None) -> list[Any] | None:
    """What identifies a task's input data, or None when it cannot be pinned (a missing file,
    which ingest will report; a hub dataset without a revision, which may change under us)."""
    if cfg.source == "hub":
        hub = cfg.hub
        if hub is None or (hub.revision is None and hub.data_files is None):
            return None
        files = hub.data_files
        listed = [files] if isinstance(files, str) else (
            [f for v in files.values() for f in ([v] if isinstance(v, str) else v)] if isinstance(files, dict)
            else list(files or []))
        try:
            return [hub.model_dump(), [(f, fingerprint(f, s3)) for f in sorted(listed)]]
        except (FileNotFoundError, OSError):
            return None
    issues = IssueCollector()
    found = [(split, [(f, fingerprint(f, s3)) for f in split_files(cfg, split, data_dir, s3, issues)])
             for split in SPLITS]
    return None if issues.issues else found


def ingest_key(cfg: TaskDataConfig, data_dir: str | None, s3: S3Config | None,
               previous_labels: list[str] | None) -> str | None:
    sources = source_fingerprints(cfg, data_dir, s3)
    if sources is None:
        return None
    settings = cfg.model_dump(mode="json", exclude=TOKENIZE_ONLY | TRAINING_ONLY)
    return digest("ingest", code_version(), settings, sources, previous_labels)


def ingest_cached(cfg: TaskDataConfig, data_dir: str | None, cache: ArtifactCache, work_dir: str | Path,
                  s3: S3Config | None = None, previous_labels: list[str] | None = None) -> dict[str, Any]:
    """Read, validate and subsample one task, or take it from the cache. Returns the split files
    (local paths), the label list and the counts."""
    key = ingest_key(cfg, data_dir, s3, previous_labels)
    folder = Path(work_dir) / cfg.name
    if key is not None:
        hit = cache.load("ingest", key, lambda: _ingest_entry(cache, key, folder))
        if hit is not None:
            return {"name": cfg.name, **hit, "key": key, "cached": True}
    data = ingest_task(cfg, data_dir, previous_labels, s3=s3)
    meta = {"labels": data.labels, "counts": {split: len(ex) for split, ex in data.splits.items()}}
    if key is None:  # nothing to pin the entry to: keep the result in the run only
        for split, examples in data.splits.items():
            write_jsonl(folder / f"{split}.jsonl", [ex.to_dict() for ex in examples])
        atomic_write_text(folder / "labels.json", json.dumps(data.labels))
        return {"name": cfg.name, **meta, "splits": {s: str(folder / f"{s}.jsonl") for s in data.splits},
                "key": None, "cached": False}
    with cache.writer("ingest", key) as entry:
        for split, examples in data.splits.items():
            write_jsonl(entry / f"{split}.jsonl", [ex.to_dict() for ex in examples])
        atomic_write_text(entry / "meta.json", json.dumps(meta))
    return {"name": cfg.name, **_ingest_entry(cache, key, folder), "key": key, "cached": False}


def _ingest_entry(cache: ArtifactCache, key: str, folder: Path) -> dict[str, Any]:
    """The checked files of an ingest entry; the run folder keeps the label map it trains with."""
    meta = cache.read_json("ingest", key, "meta.json")
    splits = {split: cache.fetch("ingest", key, f"{split}.jsonl", folder) for split in meta["counts"]}
    atomic_write_text(folder / "labels.json", json.dumps(meta["labels"]))
    return {"labels": meta["labels"], "counts": meta["counts"], "splits": splits}


def tokenize_key(cfg: TaskDataConfig, ingested: dict[str, Any], tokenizer_path: str, max_length: int,
                 settings: TokenizeConfig) -> str | None:
    if ingested.get("key") is None:
        return None
    return digest("tokenize", code_version(), ingested["key"], cfg.type, cfg.label_alignment,
                  tokenizer_fingerprint(tokenizer_path), max_length, settings.stride)


def tokenize_cached(cfg: TaskDataConfig, ingested: dict[str, Any], tokenizer_path: str, max_length: int,
                    settings: TokenizeConfig, cache: ArtifactCache, work_dir: str | Path,
                    tokenizer: Any = None) -> dict[str, Any]:
    """Tokenize a task's train split into features (JSON lines) with aligned labels, or take
    them from the cache. The tokenizer is loaded only on a miss (pass one in to share it)."""
    key = tokenize_key(cfg, ingested, tokenizer_path, max_length, settings)
    folder = Path(work_dir) / cfg.name
    if key is not None:
        hit = cache.load("tokenize", key, lambda: _tokenize_entry(cache, key, folder))
        if hit is not None:
            return {"name": cfg.name, **hit, "key": key, "cached": True}
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    examples = read_examples(ingested["splits"]["train"])
    rows, stats = tokenize_with_stats(examples, cfg.type, ingested["labels"], tokenizer, max_length,
                                      cfg.label_alignment, settings.stride, settings.num_proc,
                                      settings.batch_size, desc=f"tokenize {cfg.name}")
    if key is None:
        write_jsonl(folder / "train.features.jsonl", rows)
        return {"name": cfg.name, "features": str(folder / "train.features.jsonl"), "stats": stats.as_dict(),
                "key": None, "cached": False}
    with cache.writer("tokenize", key) as entry:
        write_jsonl(entry / "train.features.jsonl", rows)
        atomic_write_text(entry / "stats.json", json.dumps(stats.as_dict()))
    return {"name": cfg.name, **_tokenize_entry(cache, key, folder), "key": key, "cached": False}


def _tokenize_entry(cache: ArtifactCache, key: str, folder: Path) -> dict[str, Any]:
    return {"features": cache.fetch("tokenize", key, "train.features.jsonl", folder),
            "stats": cache.read_json("tokenize", key, "stats.json")}
