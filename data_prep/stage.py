"""The ingest and tokenize steps as files in a run folder, written atomically."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from data_prep.config import S3Config, TaskDataConfig
from data_prep.examples import Example
from data_prep.ingest import ingest_task
from data_prep.tokenize import tokenize_examples


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


def ingest_to(cfg: TaskDataConfig, data_dir: str | None, out_dir: str | Path, s3: S3Config | None = None,
              previous_labels: list[str] | None = None) -> dict[str, Any]:
    """Read, validate and subsample one task; write its splits and label map under out_dir/<task>."""
    data = ingest_task(cfg, data_dir, previous_labels, s3=s3)
    folder = Path(out_dir) / cfg.name
    paths = {}
    for split, examples in data.splits.items():
        paths[split] = str(folder / f"{split}.jsonl")
        write_jsonl(paths[split], [ex.to_dict() for ex in examples])
    atomic_write_text(folder / "labels.json", json.dumps(data.labels))
    return {"name": cfg.name, "labels": data.labels, "splits": paths,
            "counts": {split: len(ex) for split, ex in data.splits.items()}}


def tokenize_to(cfg: TaskDataConfig, ingested: dict[str, Any], tokenizer: Any, max_length: int,
                out_dir: str | Path) -> dict[str, Any]:
    """Tokenize a task's train split into features (JSON lines) with aligned labels."""
    examples = read_examples(ingested["splits"]["train"])
    features = tokenize_examples(examples, cfg.type, ingested["labels"], tokenizer, max_length)
    path = Path(out_dir) / cfg.name / "train.features.jsonl"
    write_jsonl(path, features)
    tokens = sum(len(f["input_ids"]) for f in features)
    return {"name": cfg.name, "features": str(path), "examples": len(examples), "inputs": len(features),
            "tokens": tokens, "chunked": len(features) - len(examples) if cfg.type == "token_classification" else 0}
