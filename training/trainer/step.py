"""One training micro-step, the same for every sharing strategy and loss weighting: a forward per
task in `batches` (one sampled task, or every task for weightings that compare them), the loss
weighting's coefficients, one backward of the weighted sum, and the optimizer step."""
from __future__ import annotations

import torch

from training.trainer.engine import Engine
from training.trainer.weighting.base import Weighting


def train_step(engine: Engine, weighting: Weighting, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Returns each task's unweighted loss (detached, on the device; averaged over processes when
    the weighting compared them). Nothing is read back to the host unless the weighting needs it."""
    # an all-task step's coefficients come in the weighting's task order: run the tasks in it
    tasks = list(weighting.tasks) if weighting.all_tasks_step else list(batches)
    outputs = [engine.forward(task, batches[task]) for task in tasks]
    raw = torch.stack([out.raw_loss.float() for out in outputs])
    grads = None
    if weighting.all_tasks_step:
        # every process must compute the same coefficients: they see the mean losses and gradients
        raw = engine.mean_over_ranks(raw)
        if weighting.needs_grads:
            grads = engine.probe_gradients([out.handle for out in outputs]).cpu()
    coefficients = weighting.coefficients(tasks, raw.cpu() if weighting.all_tasks_step else None, grads)
    engine.backward(sum(float(c) * out.loss for c, out in zip(coefficients, outputs)))
    engine.step()
    return dict(zip(tasks, raw))
