"""Inference from an exported model, or from a live model during training: every task from raw
text, sharing encoder passes.

Token tasks see the text split on whitespace (long sentences are chunked like in training and
stitched back); sentence tasks see the same encoding; pair tasks get a second pass over
(text, text_pair) only when a pair is given. Classification gives label names, regression the
predicted value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_prep.config import is_pair_task, is_regression, is_token_task
from data_prep.tokenize import encode_texts, encode_words
from training.trainer.batches import collate
from training.model.export import load_export
from training.model.multitask import MultiTaskModel


class Predictor:
    def __init__(self, export_dir: str | Path, batch_size: int = 64) -> None:
        model, tokenizer, self.card = load_export(export_dir)
        self._bind(model, tokenizer, int(self.card["max_length"]), batch_size)

    @classmethod
    def for_model(cls, model: MultiTaskModel, tokenizer: Any, max_length: int, batch_size: int = 64) -> "Predictor":
        """A predictor over a model in memory (the one being trained), without an export. The
        caller puts the model in eval mode for the predictions and back afterwards."""
        predictor = cls.__new__(cls)
        predictor.card = {"max_length": max_length}
        predictor._bind(model, tokenizer, max_length, batch_size)
        return predictor

    def _bind(self, model: MultiTaskModel, tokenizer: Any, max_length: int, batch_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.tasks = self.model.tasks
        # a live model may sit on an accelerator; an exported one is loaded on the CPU
        self.device = next(model.parameters()).device

    def _batches(self, rows: list[dict[str, Any]]):
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            batch = collate([{**r, "labels": 0} for r in chunk], self.tokenizer.pad_token_id)
            batch.pop("labels")
            yield start, {k: v.to(self.device) for k, v in batch.items()}

    def _sentence_outputs(self, task: str, logits: torch.Tensor) -> list[Any]:
        """A label per row for classification, the predicted value for regression."""
        spec = self.tasks[task]
        if is_regression(spec.type):
            return logits[:, 0].float().tolist()
        return [spec.labels[i] for i in logits.argmax(-1).tolist()]

    def predict_words(self, sentences: list[list[str]], tasks: list[str]) -> dict[str, list[list[str]]]:
        """Word-level predictions for token tasks and sentence predictions for single-text tasks,
        from one encoder pass per chunk."""
        chunks = encode_words(self.tokenizer, sentences, self.max_length)
        rows = [{"input_ids": c.input_ids, "token_type_ids": c.token_type_ids} for c in chunks]
        out: dict[str, list[Any]] = {t: [[None] * len(s) if is_token_task(self.tasks[t].type) else None
                                         for s in sentences] for t in tasks}
        for start, batch in self._batches(rows):
            logits = self.model.predict_logits(tasks, **batch)
            for t in tasks:
                if not is_token_task(self.tasks[t].type):
                    for offset, value in enumerate(self._sentence_outputs(t, logits[t])):
                        chunk = chunks[start + offset]
                        if out[t][chunk.sentence] is None:  # the first chunk of a sentence speaks for it
                            out[t][chunk.sentence] = value
                    continue
                labels = self.tasks[t].labels
                for offset, ids in enumerate(logits[t].argmax(-1).tolist()):
                    chunk = chunks[start + offset]
                    for pos, word in enumerate(chunk.first_subword_word):
                        if word >= 0:
                            out[t][chunk.sentence][word] = labels[ids[pos]]
        return out

    def predict_texts(self, texts: list[str], pairs: list[str] | None, tasks: list[str]) -> dict[str, list[Any]]:
        enc = encode_texts(self.tokenizer, texts, pairs, self.max_length)
        types = enc.get("token_type_ids") or [[0] * len(i) for i in enc["input_ids"]]
        rows = [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], types)]
        out: dict[str, list[Any]] = {t: [] for t in tasks}
        for _, batch in self._batches(rows):
            logits = self.model.predict_logits(tasks, **batch)
            for t in tasks:
                out[t].extend(self._sentence_outputs(t, logits[t]))
        return out

    @torch.no_grad()
    def predict(self, texts: list[str], text_pairs: list[str | None] | None = None, tasks: list[str] | None = None,
                words: list[list[str]] | None = None) -> list[dict[str, Any]]:
        """Every task (or those in `tasks`) for every text, in one call: token and sentence tasks
        share one encoder pass over the words (each text split on whitespace, or `words` as given),
        pair tasks a second pass over (text, text_pair). Token tasks give a tag per word. Without
        `text_pairs` pair tasks are left out; a row whose pair is None gets None for them."""
        chosen = list(self.tasks) if tasks is None else tasks
        if unknown := [t for t in chosen if t not in self.tasks]:
            raise ValueError(f"unknown task(s) {unknown}; this model has {list(self.tasks)}")
        single = [t for t in chosen if not is_pair_task(self.tasks[t].type)]
        paired = [t for t in chosen if is_pair_task(self.tasks[t].type)] if text_pairs is not None else []
        words = words if words is not None else [text.split() for text in texts]
        results: dict[str, list[Any]] = self.predict_words(words, single) if single else {}
        if paired:
            results.update(self._predict_pairs(texts, text_pairs or [], paired))
        return [{t: results[t][i] for t in chosen if t in results} for i in range(len(texts))]

    def _predict_pairs(self, texts: list[str], pairs: list[str | None], tasks: list[str]) -> dict[str, list[Any]]:
        """Pair tasks over the rows that have a pair; None for the others."""
        rows = [i for i, pair in enumerate(pairs) if pair is not None]
        found = self.predict_texts([texts[i] for i in rows], [pairs[i] for i in rows], tasks) if rows else {}
        out: dict[str, list[Any]] = {t: [None] * len(texts) for t in tasks}
        for t, values in found.items():
            for i, value in zip(rows, values):
                out[t][i] = value
        return out
