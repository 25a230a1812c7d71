"""Inference from an exported model, or from a live model during training: every task from raw
text, sharing encoder passes.

Token tasks see the text split on whitespace (long sentences are chunked like in training and
stitched back); sentence tasks see the same encoding; pair tasks get a second pass over
(text, text_pair) only when a pair is given. Classification gives label names, regression the
predicted value, dependency parsing `{"head": int, "deprel": str}` per word (head 0: the root).

Batches are cut by a token budget, as in training: rows are sorted by length (longest first, so a
budget too large for the device fails on the first batch, not the last) and packed while rows x
the longest row stay within `max_tokens`; results come back in input order. The device and the
autocast precision are the inference policy's (training/evaluation/device.py).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from data_prep.config import is_pair_task, is_parsing, is_regression, is_token_task
from data_prep.tokenize import ROOT_POSITION, WordChunk, encode_texts, encode_words, word_starts
from training.evaluation.device import autocast, inference_device, inference_dtype
from training.trainer.batches import collate
from training.model.export import load_export
from training.model.multitask import MultiTaskModel

# padded tokens (rows x longest row) per forward pass, by device. A GPU wants large batches; on a
# CPU a large batch only adds padding (MiniLM, 512 UD EWT sentences, one thread: 4.4 CPU s at 512 to
# 2048 tokens, 7.8 s at 8192, 5.5 s with the former 64 rows in file order)
DEFAULT_MAX_TOKENS = {"cuda": 16384, "cpu": 2048}


def default_max_tokens(device: torch.device) -> int:
    return DEFAULT_MAX_TOKENS.get(device.type, DEFAULT_MAX_TOKENS["cpu"])


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Row indices per batch, longest rows first: each batch keeps rows x its longest row within
    `max_tokens` (a row longer than the budget goes alone) and at most `max_rows` rows. Rows of the
    same length stay in input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted longest first: the batch's first row sets its padded width
        full = bool(current) and (lengths[current[0]] * (len(current) + 1) > max_tokens
                                  or (max_rows is not None and len(current) >= max_rows))
        if full:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Predictor:
    def __init__(self, export_dir: str | Path, batch_size: int | None = None, max_tokens: int | None = None,
                 device: str | torch.device | None = None, precision: str | None = None) -> None:
        """`max_tokens`: the token budget per forward pass (None: the device's default, see
        DEFAULT_MAX_TOKENS); `batch_size`: at most this many rows per pass besides (None: the budget
        alone). `device`, `precision`: the policy's choices (None: MTL_DEVICE / MTL_PRECISION, else
        CUDA with bf16 autocast where the GPU has it, else the CPU in fp32)."""
        target = inference_device(device)
        dtype = inference_dtype(target, precision)
        model, tokenizer, self.card = load_export(export_dir, target)
        self._bind(model, tokenizer, int(self.card["max_length"]), batch_size, max_tokens, dtype)

    @classmethod
    def for_model(cls, model: MultiTaskModel, tokenizer: Any, max_length: int, batch_size: int | None = None,
                  max_tokens: int | None = None, precision: str | None = None) -> "Predictor":
        """A predictor over a model in memory (the one being trained), without an export, on the
        device the model is on. The caller puts the model in eval mode for the predictions and back
        afterwards."""
        predictor = cls.__new__(cls)
        predictor.card = {"max_length": max_length}
        device = next(model.parameters()).device
        predictor._bind(model, tokenizer, max_length, batch_size, max_tokens, inference_dtype(device, precision))
        return predictor

    def _bind(self, model: MultiTaskModel, tokenizer: Any, max_length: int, batch_size: int | None,
              max_tokens: int | None, dtype: torch.dtype) -> None:
        self.device = next(model.parameters()).device
        budget = default_max_tokens(self.device) if max_tokens is None else max_tokens
        if budget < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"Predictor: max_tokens ({budget}) and batch_size ({batch_size}) must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.max_tokens = max_length, batch_size, budget
        self.tasks = self.model.tasks
        self.dtype = dtype

    def _batches(self, rows: list[dict[str, Any]]) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(row indices, batch on the device) per forward pass, by the token budget."""
        plan = token_batches([len(r["input_ids"]) for r in rows], self.max_tokens, self.batch_size)
        for indices in plan:
            batch = collate([{**rows[i], "labels": 0} for i in indices], self.tokenizer.pad_token_id)
            batch.pop("labels")
            yield indices, {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _logits(self, tasks: list[str], batch: dict[str, torch.Tensor],
                starts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with torch.no_grad(), autocast(self.device, self.dtype):
            return self.model.predict_logits(tasks, **batch, word_starts=starts)

    def _word_starts(self, chunks: list[WordChunk], width: int) -> torch.Tensor:
        """`[rows, width]` bool: the root position and each word's first subword (a parser's
        candidate heads), for a batch of chunks padded to `width`."""
        starts = torch.zeros(len(chunks), width, dtype=torch.bool)
        for row, chunk in enumerate(chunks):
            starts[row, ROOT_POSITION] = True
            starts[row, list(word_starts(chunk.word_ids).values())] = True
        return starts.to(self.device)

    def _parse_outputs(self, task: str, indices: list[int], chunks: list[WordChunk], decoded: torch.Tensor,
                       out: list[Any]) -> None:
        """Each owned word's `{"head": int, "deprel": str}`: the head as a 1-based word index of the
        whole sentence (0: the root), from the decoded head position in the word's window."""
        labels = self.tasks[task].labels
        for index, row in zip(indices, decoded.tolist()):
            chunk = chunks[index]
            for pos, word in enumerate(chunk.first_subword_word):
                if word >= 0 and row[pos][0] >= 0:
                    head_pos, relation = row[pos]
                    head = 0 if head_pos == ROOT_POSITION else chunk.word_ids[head_pos] + 1
                    out[chunk.sentence][word] = {"head": head, "deprel": labels[relation]}

    def _sentence_outputs(self, task: str, logits: torch.Tensor) -> list[Any]:
        """A label per row for classification, the predicted value for regression."""
        spec = self.tasks[task]
        if is_regression(spec.type):
            return logits[:, 0].float().tolist()
        return [spec.labels[i] for i in logits.argmax(-1).tolist()]

    def predict_words(self, sentences: list[list[str]], tasks: list[str]) -> dict[str, list[list[Any]]]:
        """Word-level predictions for token tasks (a tag per word; for a parser a `{"head": int,
        "deprel": str}` per word, the heads of one window forming a tree) and sentence predictions
        for single-text tasks, from one encoder pass per chunk."""
        chunks = encode_words(self.tokenizer, sentences, self.max_length)
        rows = [{"input_ids": c.input_ids, "token_type_ids": c.token_type_ids} for c in chunks]
        out: dict[str, list[Any]] = {t: [[None] * len(s) if is_token_task(self.tasks[t].type) else None
                                         for s in sentences] for t in tasks}
        first: dict[str, dict[int, int]] = {t: {} for t in tasks}  # sentence -> its earliest chunk seen so far
        parsing = any(is_parsing(self.tasks[t].type) for t in tasks)
        for indices, batch in self._batches(rows):
            starts = self._word_starts([chunks[i] for i in indices], batch["input_ids"].shape[1]) if parsing else None
            logits = self._logits(tasks, batch, starts)
            for t in tasks:
                if is_parsing(self.tasks[t].type):
                    self._parse_outputs(t, indices, chunks, logits[t], out[t])
                    continue
                if not is_token_task(self.tasks[t].type):
                    for index, value in zip(indices, self._sentence_outputs(t, logits[t])):
                        sentence = chunks[index].sentence
                        # the first chunk of a sentence speaks for it, whichever batch it came in
                        if first[t].get(sentence, index + 1) > index:
                            first[t][sentence] = index
                            out[t][sentence] = value
                    continue
                labels = self.tasks[t].labels
                for index, ids in zip(indices, logits[t].argmax(-1).tolist()):
                    chunk = chunks[index]
                    for pos, word in enumerate(chunk.first_subword_word):
                        if word >= 0:
                            out[t][chunk.sentence][word] = labels[ids[pos]]
        return out

    def predict_texts(self, texts: list[str], pairs: list[str] | None, tasks: list[str]) -> dict[str, list[Any]]:
        enc = encode_texts(self.tokenizer, texts, pairs, self.max_length)
        types = enc.get("token_type_ids") or [[0] * len(i) for i in enc["input_ids"]]
        rows = [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], types)]
        out: dict[str, list[Any]] = {t: [None] * len(rows) for t in tasks}
        for indices, batch in self._batches(rows):
            logits = self._logits(tasks, batch)
            for t in tasks:
                for index, value in zip(indices, self._sentence_outputs(t, logits[t])):
                    out[t][index] = value
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
