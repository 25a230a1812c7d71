"""Helpers shared by the tests."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
from pathlib import Path
from typing import Any


def tiny_config(encoder: Path, state: Path, data_dir: Path, **training: object) -> dict:
    """A pipeline config over the real corpora, small enough for a test."""
    return {
        "name": "tiny",
        "data_dir": str(data_dir),
        "encoder": {"name_or_path": str(encoder), "max_length": 48},
        "tasks": [
            {"name": "pos", "type": "token_classification", "format": "conllu",
             "train": "ud_en_ewt/en_ewt-ud-train.conllu", "dev": "ud_en_ewt/en_ewt-ud-dev.conllu",
             "max_train_examples": 128, "max_dev_examples": 40},
            {"name": "ner", "type": "token_classification", "format": "conll", "tag_column": 3,
             "train": "ner_conll2003/train.txt", "dev": "ner_conll2003/valid.txt", "label_scheme": "bio",
             "max_train_examples": 128, "max_dev_examples": 40},
            {"name": "sst2", "type": "sequence_classification", "format": "tsv",
             "train": "cls_sst2/train.tsv", "dev": "cls_sst2/dev.tsv",
             "max_train_examples": 128, "max_dev_examples": 40},
        ],
        "training": {"steps": 12, "micro_batch_size": 4, "warmup_steps": 2, "checkpoint_every": 6,
                     "log_every": 3, "processes": 2, **training},
        "deepspeed": {"zero_stage": 2},
        "storage": {"root": str(state)},
        "registry": {"model_name": "tiny-mtl", "experiment": "tiny"},
        "promotion": {"tolerance": 0.0},
    }


class OwnRendezvousPorts:
    """Master ports of the DeepSpeed worlds this test process starts, and what they left in shared
    memory. DeepSpeed names its CPU buffers <prefix>_<uid>_<addr>_<port>_<rank>; other test
    processes of the same user (another worktree, another session) start worlds of their own at
    any time, so a buffer is this process's only if its port is one this process used."""

    def __init__(self, shm_dir: Path | None = None) -> None:
        from training.launch.launcher import SHM_DIR

        self.shm_dir = shm_dir or SHM_DIR
        self.ports: list[int] = []
        self.reported: set[str] = set()
        self.initial = self._buffers(None)  # a leftover of an earlier session is not this one's

    def record(self, port: int | str) -> None:
        self.ports.append(int(port))

    def _buffers(self, ports: set[int] | None) -> set[str]:
        from training.launch.launcher import SHM_PREFIX

        if not self.shm_dir.is_dir():
            return set()
        found = set()
        for path in self.shm_dir.glob(f"{SHM_PREFIX}_{os.getuid()}_*"):
            port = path.name.rsplit("_", 2)[-2]
            if ports is None or (port.isdigit() and int(port) in ports):
                found.add(path.name)
        return found

    def leftovers(self) -> list[str]:
        """Buffers of this process's worlds not reported before (each is reported once)."""
        left = self._buffers(set(self.ports)) - self.initial - self.reported
        self.reported |= left
        return sorted(left)


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ends a process started with start_new_session=True and every child of its group: SIGTERM,
    then SIGKILL after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def register_champion(export: Path, folder: Path, model: str, experiment: str) -> Any:
    """An export registered by the pipeline's own code in a sqlite store under `folder`, as version 1
    with alias champion; returns the registration."""
    from training.config import RegistryConfig
    from training.release.registry import register_model, set_champion

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    reg = register_model(RegistryConfig(model_name=model, experiment=experiment), uri,
                         (folder / "artifacts").as_uri(), f"{experiment}-run", str(export), {},
                         {"pos": {"accuracy": 0.5}}, {}, "challenger")
    set_champion(uri, model, reg.version)
    return reg


def quality_bench() -> Any:
    """bench/mtl_quality.py as a module (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("mtl_quality", Path(__file__).parent.parent / "bench" / "mtl_quality.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
