"""`soft`: task-specific parameters beside the shared ones in every encoder layer.

Per-task bottleneck adapters (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP",
ICML 2019) after the attention-output and the feed-forward-output projections of every layer,
each initialised to the identity so training starts from the pretrained encoder. Optionally an
L2 pull of each task's adapters toward the mean over tasks (soft parameter sharing as in Duong
et al., ACL 2015) and the shared weights frozen (Houlsby's setting; LayerNorms stay trainable).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.model.sharing.common import SharedEncoderModule, encode, param_problems
from training.task_spec import TaskSpec


class SoftParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bottleneck: int = Field(64, gt=0, description="adapter width")
    l2_pull: float = Field(0.0, ge=0.0, description="weight of the pull toward the mean adapter")
    freeze_shared: bool = Field(False, description="train only adapters, LayerNorms and heads")


class Adapter(nn.Module):
    """down-project, GELU, up-project, residual. The up projection starts at zero: identity."""

    def __init__(self, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class AdaptedProjection(nn.Module):
    """A shared projection followed by the active task's adapter. The active task is read from
    the owning strategy at call time, because HF layers cannot pass a task name down."""

    def __init__(self, shared: nn.Linear, tasks: list[str], bottleneck: int, owner: "SoftSharing") -> None:
        super().__init__()
        self.shared = shared
        self.adapters = nn.ModuleDict({t: Adapter(shared.out_features, bottleneck) for t in tasks})
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (a cycle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[self._owner[0].active](self.shared(x))


class SoftSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = SoftParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = SoftParams(**params)
        names = [t.name for t in tasks]
        self.active = names[0]
        if self.params.freeze_shared:
            for name, p in encoder.named_parameters():
                p.requires_grad = "LayerNorm" in name
        self.encoder = encoder
        self.adapted: list[AdaptedProjection] = []
        # every `*.output.dense` of a BERT-style layer: attention output and feed-forward output
        for name, module in list(encoder.named_modules()):
            if name.endswith("output.dense") and isinstance(module, nn.Linear):
                parent = encoder.get_submodule(name.rsplit(".", 1)[0])
                wrapped = AdaptedProjection(module, names, self.params.bottleneck, self)
                parent.dense = wrapped
                self.adapted.append(wrapped)
        if not self.adapted:
            raise ValueError("soft sharing found no `*.output.dense` projections to put adapters after")

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.active = task
        hidden = encode(self.encoder, input_ids, attention_mask, token_type_ids)
        aux = self._pull(task) if self.params.l2_pull > 0 and self.training else None
        return hidden, aux

    def _pull(self, task: str) -> torch.Tensor:
        """Squared distance of this task's adapters to the mean adapter, over all layers."""
        terms = []
        for proj in self.adapted:
            for own, *every in zip(*(a.parameters() for a in [proj.adapters[task], *proj.adapters.values()])):
                terms.append((own - torch.stack(every).mean(0)).pow(2).sum())
        return self.params.l2_pull * torch.stack(terms).sum()

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Adapters sit inside every layer, so each task needs its own encoder pass."""
        return {t: self.forward(t, input_ids, attention_mask, token_type_ids)[0] for t in tasks}

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        problems = param_problems(SoftParams, params, "training.sharing_params")
        if not problems and SoftParams(**params).l2_pull > 0 and zero_stage == 3:
            problems.append("training.sharing_params.l2_pull: the pull reads every task's adapters in each "
                            "step, but ZeRO-3 only gathers the adapters a forward pass uses; set l2_pull: 0 "
                            "or deepspeed.zero_stage below 3")
        return problems
