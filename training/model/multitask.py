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

from data_prep.config import is_parsing, is_regression, is_token_task
from training.model.heads import HEADS, ParserHead
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
        head, spec = self.heads[task], self.tasks[task]
        if labels is None:
            return TaskOutput(None, spec.to_target(head(features, attention_mask)), None, None)
        if isinstance(head, ParserHead):
            # a parser scores relations at the gold heads only, which needs its own vectors, not logits
            logits, raw = head.loss(features, attention_mask, labels)
        else:
            logits = head(features, attention_mask)
            # a regression head learns the standardised target (TaskSpec.loss_targets), so its loss
            # is on the classifiers' scale; what it returns is in the target's units
            raw = task_loss(spec.type, logits, spec.loss_targets(labels))
            logits = spec.to_target(logits)
        loss = self.loss_weighting(task, raw) if self.loss_weighting is not None else raw
        loss = loss + aux if aux is not None else loss
        # The returned loss is a view, so the handle's tensor is not the one a wrapper hooks
        # (DeepSpeed hangs its backward epilogue on the tensors a forward returns). Logits detached:
        # the loss is computed from them, so a hook on them would fire too.
        return TaskOutput(loss.view(()), logits.detach(), raw.detach(), LossHandle(loss))

    @torch.no_grad()
    def predict_logits(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None,
                       word_starts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits for several tasks from one shared pass (as few encoder passes as the strategy allows).
        Given `word_starts` (`[B, T]` bool: the root position and each word's first subword), a
        parser's entry is its decoded tree instead (`ParserHead.decode`: head position and relation
        id per word start); without, its arc scores."""
        features = self.sharing.shared_pass(tasks, input_ids, attention_mask, token_type_ids)
        out = {}
        for t in tasks:
            head = self.heads[t]
            if isinstance(head, ParserHead) and word_starts is not None:
                out[t] = head.decode(features[t], attention_mask, word_starts)
            else:
                out[t] = self.tasks[t].to_target(head(features[t], attention_mask))
        return out


def task_loss(task_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of a head whose loss is a function of its logits (a parser's is its head's, `ParserHead.loss`)."""
    if is_parsing(task_type):
        raise ValueError("dependency_parsing's loss needs the parser head's vectors, not its logits: "
                         "call ParserHead.loss (MultiTaskModel.forward does)")
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


class Matched(NamedTuple):
    """What `load_matching` did beyond copying parameters as they were."""

    fresh_heads: list[str]  # tasks the weights have no head for: their heads keep their initialisation
    grown: dict[str, tuple[int, int]]  # task -> (label rows in the weights, rows in the model): rows appended


HEAD_PREFIX = "heads."


def _head_task(key: str) -> str:
    return key[len(HEAD_PREFIX):].split(".", 1)[0]


def _appended_rows(key: str, source: torch.Size, own: torch.Size) -> bool:
    """A head parameter whose first (output) dimension grew and nothing else changed: the label
    list got new labels appended (retraining keeps the old ids), so the old rows still mean the same."""
    return (key.startswith(HEAD_PREFIX) and len(source) == len(own) and 0 < source[0] < own[0]
            and source[1:] == own[1:])


def load_matching(model: MultiTaskModel, state: dict[str, torch.Tensor]) -> Matched:
    """Start `model` from another model's weights (a stage-1 export, a registered model): every
    parameter the model has must be there with its shape, except that a task the weights have no
    head for keeps its fresh head, and a head whose labels were appended to gets the old label rows
    copied and the new rows as initialised (the caller seeds the initialisation). Extra entries
    (other tasks' heads) are ignored. Anything else fails naming the parameters."""
    own = model.state_dict()
    known_heads = {_head_task(k) for k in state if k.startswith(HEAD_PREFIX)}
    fresh = sorted({_head_task(k) for k in own if k.startswith(HEAD_PREFIX)} - known_heads)
    missing = [k for k in own if k not in state and not k.startswith(TRAINING_ONLY)
               and not (k.startswith(HEAD_PREFIX) and _head_task(k) in fresh)]
    grown_keys = [k for k in own if k in state and _appended_rows(k, state[k].shape, own[k].shape)]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape and k not in grown_keys]
    if missing or wrong:
        raise ValueError(f"cannot start from these weights: {len(missing)} parameter(s) missing {missing[:5]}, "
                         f"{len(wrong)} of another shape (weights vs model) {wrong[:5]}; only a head's appended "
                         "label rows may differ: start from a model of the same encoder and sharing strategy")
    loaded = {k: v for k, v in state.items() if k in own and k not in grown_keys}
    grown: dict[str, tuple[int, int]] = {}
    for key in grown_keys:
        rows = own[key].clone()
        rows[:state[key].shape[0]] = state[key].to(rows.dtype)
        loaded[key] = rows
        grown[_head_task(key)] = (int(state[key].shape[0]), int(own[key].shape[0]))
    model.load_state_dict(loaded, strict=False)
    return Matched(fresh, grown)


def _without_pooler(encoder: nn.Module) -> nn.Module:
    """Heads pool for themselves; an unused pooler would only be dead weight in every checkpoint."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder
