"""Build the DeepSpeed CPU ops that training loads, once per installation (`make install` runs
this): the shared-memory reduction between local ranks, which every CPU run uses, and the CPU Adam
of ZeRO offload. Without it the first run to need an op compiles it (about 75 s for CPU Adam on 2
cores) while its ranks wait. The ops go where the launcher points TORCH_EXTENSIONS_DIR (this
environment's `torch_extensions` unless set). On a GPU machine (DS_ACCELERATOR not `cpu`) nothing
is built here: DeepSpeed's own build or JIT applies.

    python -m training.launch.build_ops
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        print(f"DS_ACCELERATOR={os.environ['DS_ACCELERATOR']}: no CPU ops to build")
        return 0
    os.environ["DS_ACCELERATOR"] = "cpu"
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    for builder in (ShareMemCommBuilder(), CPUAdamBuilder()):
        started = time.monotonic()
        builder.load(verbose=False)
        print(f"{builder.NAME}: ready in {os.environ['TORCH_EXTENSIONS_DIR']} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
