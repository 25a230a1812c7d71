"""Per-task loss curves: each log line carries every task's mean loss over the steps since the
previous line (tasks not trained in them absent), summed on the device without a read back on the
steps in between; MLflow gets a `train.loss.<task>` point per log line for each task trained in it.
(tests/test_eval_during_training.py checks the same rows from a real 2-process training.)"""
from __future__ import annotations

import json

import pytest
import torch

from training.release.registry import training_curves
from training.trainer.loop import Window


def test_a_window_averages_each_task_over_its_own_steps():
    window = Window()
    for task, loss in [("pos", 1.0), ("ner", 4.0), ("pos", 3.0), ("pos", 2.0)]:
        window.add_losses({task: torch.tensor(loss)})
    assert window.task_losses() == pytest.approx({"pos": 2.0, "ner": 4.0})
    assert window.loss_counts == {"pos": 3, "ner": 1}
    assert Window().task_losses() == {}  # nothing trained: no loss, rather than a division by zero


def test_an_all_task_step_counts_once_per_task():
    window = Window()
    window.add_losses({"pos": torch.tensor(1.0), "sst2": torch.tensor(0.5)})
    window.add_losses({"pos": torch.tensor(3.0), "sst2": torch.tensor(1.5)})
    assert window.task_losses() == pytest.approx({"pos": 2.0, "sst2": 1.0})
    assert window.loss_counts == {"pos": 2, "sst2": 2}


def test_adding_losses_never_reads_them_back():
    """A meta tensor has no values: reading one (float, item, .cpu()) raises. Adding them works
    only if the sums stay tensors where the losses are, as on a GPU, where a read back would make
    the host wait for every step."""
    window = Window()
    for _ in range(3):
        window.add_losses({"pos": torch.empty((), device="meta"), "ner": torch.empty((), device="meta")})
    assert {task: total.device.type for task, total in window.loss_sums.items()} == {"pos": "meta", "ner": "meta"}
    assert window.loss_counts == {"pos": 3, "ner": 3}


def test_the_sums_hold_no_autograd_graph():
    """A loss with a graph, summed as is, would keep every step's activations alive until the log."""
    weight = torch.ones((), requires_grad=True)
    window = Window()
    window.add_losses({"pos": weight * 2})
    assert not window.loss_sums["pos"].requires_grad


def test_every_task_trained_in_a_window_gets_a_point_per_log_line(tmp_path):
    """Rows as the worker writes them with proportional sampling over 3 tasks, 4 steps a line:
    the rarely drawn task (ner) has a point in each window it was drawn in, not only when it
    happened to be the logged step's task."""
    rows = [{"step": 4, "task": "pos", "loss": 1.25, "lr": 0.1, "time": 1.0, "task_weights": {},
             "task_losses": {"pos": 1.0, "ner": 2.0}, "task_steps": {"pos": 3, "ner": 1}},
            {"step": 8, "task": "sst2", "loss": 0.8, "lr": 0.1, "time": 2.0, "task_weights": {},
             "task_losses": {"pos": 0.9, "sst2": 0.7}, "task_steps": {"pos": 2, "sst2": 2}},
            {"step": 12, "task": "pos", "loss": 1.0, "lr": 0.1, "time": 3.0, "task_weights": {},
             "task_losses": {"pos": 0.8, "ner": 1.6, "sst2": 0.6}, "task_steps": {"pos": 2, "ner": 1, "sst2": 1}}]
    path = tmp_path / "train_metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves: dict[str, dict[int, float]] = {}
    for metric in training_curves({"": str(path)}):
        curves.setdefault(metric.key, {})[metric.step] = metric.value
    assert curves["train.loss.pos"] == {4: 1.0, 8: 0.9, 12: 0.8}
    assert curves["train.loss.ner"] == {4: 2.0, 12: 1.6}
    assert curves["train.loss.sst2"] == {8: 0.7, 12: 0.6}


def test_a_log_from_before_task_losses_still_gives_the_logged_task_its_point(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"step": 2, "task": "pos", "loss": 1.5, "lr": 0.1, "time": 1.0, "task_losses": {}})
                    + "\n")
    assert {(m.key, m.value) for m in training_curves({"": str(path)})} == {("train.lr", 0.1),
                                                                           ("train.loss.pos", 1.5)}
