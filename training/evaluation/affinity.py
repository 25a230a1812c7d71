"""Task affinity: how much a step on task i changes the loss of task j.

`lookahead` is the inter-task affinity of Fifty et al., "Efficiently Identifying Task Groupings
for Multi-Task Networks" (NeurIPS 2021): Z[i][j] = 1 - L_j(theta_s - lr * grad_s L_i) / L_j(theta_s),
averaged over batches; positive means a step on i lowers j's loss (i helps j), negative means it
hurts. `cosine` is the cosine between the tasks' gradients on the shared parameters (as in
Yu et al., NeurIPS 2020), cheaper and symmetric. Both run on a plain model (no DeepSpeed), e.g.
the exported one, so the flow can compute them after training on one process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import functional_call

from training.evaluation.device import inference_device
from training.trainer.batches import collate, load_features
from training.model.multitask import MultiTaskModel

Method = Literal["lookahead", "cosine"]


class AffinityConfig(BaseModel):
    """The task-affinity report computed after training (MLflow metrics + a Prefect table)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["off", "lookahead", "cosine"] = "lookahead"
    rounds: int = Field(4, ge=1, description="batches per task averaged into each cell")
    batch_size: int = Field(16, ge=1)


def _shared(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    """Everything inside the sharing strategy; task-private parts of it (adapters, private
    extractors) only ever receive their own task's gradient, so they cannot blur the matrix."""
    return {n: p for n, p in model.named_parameters() if n.startswith("sharing.") and p.requires_grad}


def _loss(model: MultiTaskModel, params: dict[str, torch.Tensor] | None, task: str,
          batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if params is None:
        return model(task, **batch)[0]
    return functional_call(model, params, args=(task,), kwargs=batch, strict=False)[0]


def affinity_matrix(model: MultiTaskModel, batches: dict[str, list[dict[str, torch.Tensor]]],
                    method: Method = "lookahead", lr: float = 1e-3) -> dict[str, dict[str, float]]:
    """Z[i][j] averaged over the batches (batch k of every task is one sample). Dropout is off so
    the estimate is deterministic."""
    model.eval()
    tasks = list(batches)
    shared = _shared(model)
    names = list(shared)
    total = np.zeros((len(tasks), len(tasks)))
    rounds = min(len(b) for b in batches.values())
    for k in range(rounds):
        grads = {}
        for t in tasks:
            g = torch.autograd.grad(_loss(model, None, t, batches[t][k]), [shared[n] for n in names],
                                    allow_unused=True, materialize_grads=True)
            grads[t] = dict(zip(names, g))
        if method == "cosine":
            flat = {t: torch.cat([g.reshape(-1) for g in grads[t].values()]) for t in tasks}
            total += np.array([[float(torch.nn.functional.cosine_similarity(flat[i], flat[j], dim=0))
                                for j in tasks] for i in tasks])
            continue
        with torch.no_grad():
            before = {t: float(_loss(model, None, t, batches[t][k])) for t in tasks}
            for a, i in enumerate(tasks):
                stepped = {n: shared[n] - lr * grads[i][n] for n in names}
                for b, j in enumerate(tasks):
                    total[a, b] += 1.0 - float(_loss(model, stepped, j, batches[j][k])) / max(before[j], 1e-12)
    mean = total / max(rounds, 1)
    return {i: {j: float(mean[a, b]) for b, j in enumerate(tasks)} for a, i in enumerate(tasks)}


def sample_batches(features: dict[str, str], pad_id: int, rounds: int, batch_size: int,
                   seed: int = 0) -> dict[str, list[dict[str, torch.Tensor]]]:
    """`rounds` random batches per task from tokenized training features."""
    rng = np.random.default_rng(seed)
    out = {}
    for task, path in features.items():
        rows = load_features(path)
        out[task] = [collate([rows[i] for i in rng.choice(len(rows), min(batch_size, len(rows)), replace=False)],
                             pad_id) for _ in range(rounds)]
    return out


def affinity_from_export(export_dir: str | Path, features: dict[str, str], method: Method = "lookahead",
                         rounds: int = 4, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                         device: str | torch.device | None = None) -> dict[str, Any]:
    """The affinity report of an exported model: `{"method", "lr", "tasks", "matrix"}`. On the
    inference policy's device (`device`; None: MTL_DEVICE, else CUDA when present), always in fp32:
    a lookahead cell is a relative loss change of about lr x |gradient|^2, below what bf16 resolves."""
    from training.model.export import load_export

    target = inference_device(device)
    model, tokenizer, _ = load_export(export_dir, target)
    sampled = sample_batches({t: features[t] for t in model.tasks}, tokenizer.pad_token_id, rounds, batch_size, seed)
    batches = {t: [{k: v.to(target) for k, v in b.items()} for b in found] for t, found in sampled.items()}
    matrix = affinity_matrix(model, batches, method, lr)
    return {"method": method, "lr": lr, "tasks": list(matrix), "matrix": matrix}


def affinity_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: one per source task i, a column per target task j."""
    return [{"step_on": i, **{j: round(v, 4) for j, v in row.items()}} for i, row in report["matrix"].items()]


def affinity_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics `affinity.<i>.<j>`."""
    return {f"affinity.{i}.{j}": v for i, row in report["matrix"].items() for j, v in row.items()}


def affinity_markdown(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    lines = [f"| step on \\ loss of | {' | '.join(tasks)} |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{report['matrix'][i][j]:+.4f}" for j in tasks) + " |" for i in tasks]
    return "\n".join(lines)
