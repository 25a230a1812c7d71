"""Sharing strategies: how the shared encoder's states become each task's features.

Contract of a strategy (a plain `nn.Module`, no DeepSpeed), built as `cls(encoder, tasks, **params)`:
- `encoder`: the (first) shared encoder; its config is exported with the model.
- `forward(task, input_ids, attention_mask, token_type_ids) -> (features [batch, seq, hidden],
  auxiliary loss or None)`; sentence heads read position 0.
- `shared_pass(tasks, ...) -> {task: features}` from as few encoder passes as the strategy allows.
- `probe_parameters()`: a few shared parameters where gradient-based weightings compare tasks.
- `metrics() -> {name: value}`: what the worker logs per step (layer weights, discriminator accuracy).
- `Params` (pydantic) and `config_problems(params, tasks, zero_stage, precision)` for validation.

One registry: `SHARING`. One file per strategy. A strategy builds modules and nothing else: staged
training (multi-task, then per-task fine-tuning) is a schedule of runs, `training.launch.schedule`.
"""
from __future__ import annotations

from torch import nn

from training.model.sharing.adversarial import AdversarialSharing
from training.model.sharing.attention import AttentionSharing
from training.model.sharing.hard import HardSharing
from training.model.sharing.soft import SoftSharing
from training.model.sharing.multi_encoder import MultiEncoderSharing

SHARING: dict[str, type[nn.Module]] = {
    "hard": HardSharing,
    "soft": SoftSharing,
    "attention": AttentionSharing,
    "adversarial": AdversarialSharing,
    "multi_encoder": MultiEncoderSharing,
}
