"""Where a run's files go: one place that names every path of a run folder.

    <run>/config.resolved.json      the resolved pipeline config
    <run>/data/<task>/              validated examples, label map, tokenized features
    <run>/model/                    the run's exported model (what evaluation and registration read)
    <stage>/train_spec.json         what the launched workers were handed
    <stage>/train_metrics.jsonl     rank 0's per-step log
    <stage>/checkpoints/step_N/     checkpoints, unless training.checkpoint_uri puts them elsewhere
    <stage>/model/                  the stage's export
    <stage>/joint-model/            when per-task selection gave tasks their own encoder copies: the
                                    stage's newest checkpoint, every task on one shared encoder (task affinity)

A single-stage run is its own stage folder (<stage> = <run>); the stages of a staged schedule live
in <run>/stages/<name>/. Remote checkpoints go to <checkpoint_uri>/<run folder name>[/<stage>]: the
run folder's name carries the flow run's id, so two flow runs never share checkpoints; only
`mtl run --resume RUN_DIR` goes on in an earlier run's folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.trainer.checkpoints import is_remote

SINGLE = ""  # the stage name of a run that is one stage


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.resolved.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def stage_dir(self, stage: str) -> Path:
        return self.root if stage == SINGLE else self.root / "stages" / stage

    def stage_export(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model"

    def joint_export(self, stage: str) -> Path:
        return self.stage_dir(stage) / "joint-model"

    def spec_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "train_spec.json"

    def metrics_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "train_metrics.jsonl"

    def hostfile(self, stage: str) -> Path:
        return self.stage_dir(stage) / "hostfile"

    def checkpoints(self, stage: str, checkpoint_uri: str | None) -> tuple[str, str | None]:
        """(store URI, node-local staging folder or None) of a stage's checkpoints."""
        if checkpoint_uri is None:
            return str(self.stage_dir(stage) / "checkpoints"), None
        uri = "/".join(p for p in (checkpoint_uri.rstrip("/"), self.root.name, stage) if p)
        return (uri, str(self.stage_dir(stage) / "checkpoint-staging")) if is_remote(uri) else (uri, None)

    def metrics_files(self) -> dict[str, Path]:
        """Every stage's training log that exists, by stage name (SINGLE for a one-stage run)."""
        found = {SINGLE: self.metrics_file(SINGLE)} if self.metrics_file(SINGLE).is_file() else {}
        stages = self.root / "stages"
        if stages.is_dir():
            found.update({p.parent.name: p for p in sorted(stages.glob("*/train_metrics.jsonl"))})
        return found
