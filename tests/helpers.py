"""Helpers shared by the tests."""
from __future__ import annotations

from pathlib import Path


def tiny_config(encoder: Path, state: Path, data_dir: Path, **training: object) -> dict:
    """A pipeline config over the real corpora, small enough for a test."""
    return {
        "name": "tiny",
        "data_dir": str(data_dir),
        "encoder": {"name_or_path": str(encoder), "max_length": 48},
        "tasks": [
            {"name": "pos", "type": "token_classification", "format": "conllu",
             "train": "ud_en_ewt/en_ewt-ud-train.conllu", "dev": "ud_en_ewt/en_ewt-ud-dev.conllu",
             "max_train_examples": 128, "max_dev_examples": 40},
            {"name": "ner", "type": "token_classification", "format": "conll", "tag_column": 3,
             "train": "ner_conll2003/train.txt", "dev": "ner_conll2003/valid.txt", "label_scheme": "bio",
             "max_train_examples": 128, "max_dev_examples": 40},
            {"name": "sst2", "type": "sequence_classification", "format": "tsv",
             "train": "cls_sst2/train.tsv", "dev": "cls_sst2/dev.tsv",
             "max_train_examples": 128, "max_dev_examples": 40},
        ],
        "training": {"steps": 12, "micro_batch_size": 4, "warmup_steps": 2, "checkpoint_every": 6,
                     "log_every": 3, "processes": 2, **training},
        "deepspeed": {"zero_stage": 2},
        "storage": {"root": str(state)},
        "registry": {"model_name": "tiny-mtl", "experiment": "tiny"},
        "promotion": {"tolerance": 0.0},
    }
