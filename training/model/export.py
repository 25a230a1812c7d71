"""The exported model folder: safetensors weights, encoder config, tokenizer, label maps and
the model card `mtl_model.json`. Written atomically: a temp folder renamed into place."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from training.evaluation.device import inference_device
from training.model.multitask import MultiTaskModel, build_model_skeleton, inference_state
from training.task_spec import TaskSpec

CARD = "mtl_model.json"
WEIGHTS = "model.safetensors"
ENCODER_DIR = "encoder"


def write_export(out_dir: str | Path, state_dict: dict[str, torch.Tensor], model: MultiTaskModel,
                 tokenizer: Any, card: dict[str, Any]) -> Path:
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in inference_state(state_dict).items()}, str(tmp / WEIGHTS))
    model.encoder_config.save_pretrained(tmp / ENCODER_DIR)
    tokenizer.save_pretrained(tmp / "tokenizer")
    # where the weights started (a warm start's source, see training.release.warm_start); None: the base encoder
    card = {"init_from": None, **card, "tasks": [t.model_dump() for t in model.tasks.values()]}
    (tmp / CARD).write_text(json.dumps(card, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def state_for(model: MultiTaskModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a trained model's state dict that `model` (the export's shape: e.g. without
    auxiliary tasks) consists of; every one must be there, with its shape."""
    own = inference_state(model.state_dict())
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise ValueError(f"the trained weights do not make the exported model: missing {missing[:5]}, "
                         f"wrong shape {wrong[:5]}")
    return {k: state[k] for k in own}


def export_weights(export_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(export_dir) / WEIGHTS))


def read_card(export_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(export_dir) / CARD).read_text())


def card_sharing(card: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The strategy that rebuilds an export's module tree. Exports written while staged training was
    a strategy named `transfer` (params `finetuned`) have the `multi_encoder` shape, key for key."""
    if card["sharing"] == "transfer":
        return "multi_encoder", {"task_encoders": list(card.get("sharing_params", {}).get("finetuned", []))}
    return card["sharing"], dict(card.get("sharing_params", {}))


def load_export(export_dir: str | Path, device: str | torch.device | None = None
                ) -> tuple[MultiTaskModel, Any, dict[str, Any]]:
    """The exported model in eval mode on `device` (the inference policy's choice when None: CUDA
    when present, see training/evaluation/device.py), its tokenizer and its card. The weights stay
    fp32: precision is the caller's autocast."""
    target = inference_device(device)
    root = Path(export_dir)
    card = read_card(root)
    tasks = [TaskSpec(**t) for t in card["tasks"]]
    sharing, params = card_sharing(card)
    model = build_model_skeleton(root / ENCODER_DIR, tasks, sharing, card.get("dropout", 0.1), params)
    missing, unexpected = model.load_state_dict(load_file(str(root / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{root / WEIGHTS} does not match the model card: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.to(target).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    return model, tokenizer, card
