"""The task-affinity estimate on the tiny encoder: its definition, checked against a manual
lookahead step, and its reading on tasks built to help or to fight each other."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel

from training.evaluation.affinity import affinity_markdown, affinity_matrix, affinity_metrics, affinity_table
from training.model.multitask import MultiTaskModel
from training.task_spec import TaskSpec

SPECS = [TaskSpec(name=n, type="sequence_classification", labels=["0", "1"]) for n in ("a", "same", "flip")]


def make(tiny_encoder) -> tuple[MultiTaskModel, dict]:
    torch.manual_seed(0)
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_encoder), SPECS, "hard", 0.0)
    with torch.no_grad():  # `same` has a's head, `flip` a's head with the classes swapped
        model.heads["same"].load_state_dict(model.heads["a"].state_dict())
        model.heads["flip"].load_state_dict(model.heads["a"].state_dict())
        model.heads["flip"].out.weight.copy_(model.heads["a"].out.weight.flip(0))
        model.heads["flip"].out.bias.copy_(model.heads["a"].out.bias.flip(0))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 3000, (8, 6), generator=g)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    labels = torch.randint(0, 2, (8,), generator=g)
    batches = {t: [{**x, "labels": labels}] for t in ("a", "same", "flip")}
    return model, batches


def test_lookahead_matches_a_manual_step(tiny_encoder):
    model, batches = make(tiny_encoder)
    z = affinity_matrix(model, batches, "lookahead", lr=0.5)
    manual = copy.deepcopy(model)
    loss = manual("a", **batches["a"][0])[0]
    loss.backward()
    before = model("same", **batches["same"][0])[0].item()
    with torch.no_grad():
        for name, p in manual.named_parameters():
            if name.startswith("sharing.") and p.grad is not None:
                p -= 0.5 * p.grad
    after = manual("same", **batches["same"][0])[0].item()
    assert z["a"]["same"] == pytest.approx(1 - after / before, rel=1e-4)


def test_identical_tasks_help_and_opposed_tasks_hurt(tiny_encoder):
    model, batches = make(tiny_encoder)
    z = affinity_matrix(model, batches, "lookahead", lr=0.02)  # small: a first-order step, no overshoot
    assert z["a"]["same"] > 0 and z["a"]["a"] == pytest.approx(z["a"]["same"])
    assert z["a"]["flip"] < 0 and z["flip"]["a"] < 0
    cos = affinity_matrix(model, batches, "cosine")
    assert cos["a"]["same"] == pytest.approx(1.0, abs=1e-5) and cos["a"]["flip"] < 0
    assert cos["flip"]["a"] == pytest.approx(cos["a"]["flip"])


def test_report_views(tiny_encoder):
    model, batches = make(tiny_encoder)
    report = {"method": "cosine", "lr": 0.0, "tasks": ["a", "same", "flip"],
              "matrix": affinity_matrix(model, batches, "cosine")}
    assert [r["step_on"] for r in affinity_table(report)] == ["a", "same", "flip"]
    assert len(affinity_metrics(report)) == 9 and "affinity.a.flip" in affinity_metrics(report)
    assert affinity_markdown(report).count("\n") == 4
