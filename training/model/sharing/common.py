"""Pieces every sharing strategy uses: the encoder call, the probe parameters, gradient reversal,
and validated strategy parameters."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn


class NoParams(BaseModel):
    """A strategy without parameters refuses any it is given (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


def param_problems(params_model: type[BaseModel], params: dict[str, Any], key: str) -> list[str]:
    """Each problem of a strategy's params, named by its config key."""
    try:
        params_model.model_validate(params)
    except ValidationError as exc:
        return [f"{key}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return []


def encode(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           token_type_ids: torch.Tensor | None, all_layers: bool = False) -> Any:
    """Final states `[batch, seq, hidden]`, or (all_layers) the embedding output and every layer's."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  output_hidden_states=all_layers)
    return out.hidden_states if all_layers else out.last_hidden_state


def last_layer_norm(module: nn.Module) -> list[nn.Parameter]:
    """The final LayerNorm of an encoder: the last shared layer every task's loss reaches, where
    gradient-based weightings compare task gradients (GradNorm's "last shared layer"). Its few
    parameters stay whole under ZeRO-3 (below DeepSpeed's persistence threshold)."""
    norms = [m for m in module.modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise ValueError("the encoder has no LayerNorm to probe task gradients at")
    return [p for p in norms[-1].parameters() if p.requires_grad]


class SharedEncoderModule(nn.Module):
    """Defaults of the strategy contract for a strategy whose shared encoder is `self.encoder`:
    gradient-based weightings probe its last LayerNorm, and there is nothing extra to log."""

    encoder: nn.Module

    def probe_parameters(self) -> list[nn.Parameter]:
        return last_layer_norm(self.encoder)

    def metrics(self) -> dict[str, float]:
        return {}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class GradReverse(torch.autograd.Function):
    """Identity forward, gradient times -scale backward (Ganin & Lempitsky, ICML 2015): the
    discriminator learns to tell tasks apart while the encoder learns to make that impossible."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None
