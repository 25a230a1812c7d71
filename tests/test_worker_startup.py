"""A training process's start-up skips what DeepSpeed imports for features never used here
(training.trainer.deepspeed_fixes.skip_unused_imports): MLflow, and Muon's modules (their import
compiles with torch.compile). The ZeRO stage tests train through the stand-ins; this checks they are
what is loaded and that a real optimizer is never taken for Muon."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from training.trainer.deepspeed_fixes import skip_unused_imports
skip_unused_imports()
import deepspeed  # its autotuner imports MLflow when it can
from deepspeed.runtime.zero.utils import is_zero_supported_optimizer  # imports Muon's module
from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
import torch
opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
print(json.dumps({"mlflow": "mlflow" in sys.modules and sys.modules["mlflow"] is not None,
                  "muon_stand_in": getattr(MuonWithAuxAdam, "__module__", "") == "training.trainer.deepspeed_fixes",
                  "adamw_is_muon": isinstance(opt, MuonWithAuxAdam)}))
"""


def test_a_worker_process_loads_neither_mlflow_nor_muon():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"mlflow": False, "muon_stand_in": True,
                                                               "adamw_is_muon": False}
