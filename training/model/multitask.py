"""The multi-task model: a shared encoder (through a sharing strategy) and one head per task.
Knows nothing of DeepSpeed."""
from __future__ import annotations

import importlib
import os
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig

from data_prep.config import is_regression, is_token_task
from training.model.heads import HEADS
from training.lookup import lookup
from training.model.sharing import SHARING
from training.task_spec import TaskSpec

IGNORE = -100


def resolve_encoder_path(name_or_path: str) -> str:
    """`python:module.ATTR` names a folder shipped inside an installed package."""
    if name_or_path.startswith("python:"):
        module, _, attr = name_or_path[len("python:"):].rpartition(".")
        return str(getattr(importlib.import_module(module), attr))
    return name_or_path


class TaskOutput(NamedTuple):
    """What a forward returns, with or without labels (the loss fields are None without)."""

    loss: torch.Tensor | None  # task loss (after a learned loss weighting) plus the strategy's auxiliary loss
    logits: torch.Tensor  # detached when there are labels: training differentiates the loss, never these
    raw_loss: torch.Tensor | None  # the unweighted task loss, detached: what weightings and logs compare
    handle: "LossHandle | None"  # the loss before any wrapper hooked it, for extra gradients


class LossHandle:
    """The loss tensor as it was before being returned. Wrappers may hook the tensors a forward
    returns (DeepSpeed starts its backward bookkeeping from such hooks); differentiating this
    upstream tensor instead lets a caller take extra gradients (a weighting's per-task probe
    gradients) without those hooks. A plain object, so no wrapper looks inside it."""

    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


# Parameters that exist only for training (learned loss weights): left out of the export.
TRAINING_ONLY = ("loss_weighting.",)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], sharing: str = "hard",
                 dropout: float = 0.1, sharing_params: dict[str, Any] | None = None,
                 loss_weighting: nn.Module | None = None) -> None:
        super().__init__()
        self.tasks = {t.name: t for t in tasks}
        hidden = encoder.config.hidden_size
        self.sharing = lookup(SHARING, sharing, "sharing strategy")(encoder, tasks, **(sharing_params or {}))
        self.heads = nn.ModuleDict({t.name: HEADS[t.type](hidden, t.num_labels, dropout) for t in tasks})
        # a weighting's learned parameters (e.g. uncertainty's log-variances) live here, so the
        # optimizer and ZeRO see them; None for weightings without parameters
        self.loss_weighting = loss_weighting

    @property
    def encoder_config(self) -> PretrainedConfig:
        return self.sharing.encoder.config

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        features, aux = self.sharing(task, input_ids, attention_mask, token_type_ids)
        logits = self.heads[task](features, attention_mask)
        if labels is None:
            return TaskOutput(None, logits, None, None)
        raw = task_loss(self.tasks[task].type, logits, labels)
        loss = self.loss_weighting(task, raw) if self.loss_weighting is not None else raw
        loss = loss + aux if aux is not None else loss
        # The returned loss is a view, so the handle's tensor is not the one a wrapper hooks
        # (DeepSpeed hangs its backward epilogue on the tensors a forward returns). Logits detached:
        # the loss is computed from them, so a hook on them would fire too.
        return TaskOutput(loss.view(()), logits.detach(), raw.detach(), LossHandle(loss))

    @torch.no_grad()
    def predict_logits(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits for several tasks from one shared pass (as few encoder passes as the strategy allows)."""
        features = self.sharing.shared_pass(tasks, input_ids, attention_mask, token_type_ids)
        return {t: self.heads[t](features[t], attention_mask) for t in tasks}


def task_loss(task_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if is_regression(task_type):
        return F.mse_loss(logits[:, 0].float(), labels.float())
    if is_token_task(task_type):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
    return F.cross_entropy(logits.float(), labels)


def build_model(encoder_path: str, tasks: list[TaskSpec], sharing: str, dropout: float,
                sharing_params: dict[str, Any] | None = None,
                loss_weighting: nn.Module | None = None,
                attn_implementation: Literal["auto", "sdpa", "eager"] = "auto") -> MultiTaskModel:
    """A model whose encoder starts from pretrained weights and whose heads are fresh.
    `attn_implementation` "auto" leaves the choice to the encoder's class (SDPA where it has it)."""
    chosen = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    encoder = AutoModel.from_pretrained(resolve_encoder_path(encoder_path), **chosen)
    return MultiTaskModel(_without_pooler(encoder), tasks, sharing, dropout, sharing_params, loss_weighting)


def build_model_skeleton(encoder_config_dir: str | os.PathLike, tasks: list[TaskSpec], sharing: str,
                         dropout: float, sharing_params: dict[str, Any] | None = None) -> MultiTaskModel:
    """A model with the architecture only (weights come from an exported state dict)."""
    config = AutoConfig.from_pretrained(str(encoder_config_dir))
    encoder = AutoModel.from_config(config)
    return MultiTaskModel(_without_pooler(encoder), tasks, sharing, dropout, sharing_params)


def inference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without training-only parameters."""
    return {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY)}


def load_matching(model: MultiTaskModel, state: dict[str, torch.Tensor]) -> None:
    """Start `model` from another model's weights (e.g. a stage-1 export): every parameter the
    model has must be there with the same shape; extra entries (other tasks' heads) are ignored."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(TRAINING_ONLY)]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"cannot start from these weights: missing {missing[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _without_pooler(encoder: nn.Module) -> nn.Module:
    """Heads pool for themselves; an unused pooler would only be dead weight in every checkpoint."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder
