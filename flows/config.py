"""The root pipeline config: one typed model composed of each component's sub-config.

It is the `retrain` flow's parameter, so the Prefect UI renders it as a form. Loading collects
every problem and reports them together, each naming its key and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_prep.config import S3Config, TaskDataConfig, TokenizeConfig
from data_prep.errors import DataValidationError, IssueCollector
from data_prep.ingest import check_task_config
from data_prep.sources import default_data_dir
from training.config import DeepSpeedConfig, EncoderConfig, PromotionConfig, RegistryConfig, TrainingConfig
from training.evaluation.affinity import AffinityConfig
from training.validation import config_problems


class ConfigError(ValueError):
    """A config that cannot run; every problem listed, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} config problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(".mtl", description="state directory: runs, checkpoints, exports, MLflow store")
    cache: str | None = Field(
        None, description="content-addressed cache of ingested and tokenized data: a folder or s3://bucket/prefix "
                          "(default: <root>/cache)")
    s3: S3Config = Field(S3Config(), description="endpoint, region and credentials for s3:// data and cache; "
                                                 "unset values fall back to the AWS_* environment variables")

    def cache_root(self) -> str:
        """Absolute, so every task (and a retry on another machine's checkout) finds the same entries."""
        cache = self.cache or str(Path(self.root) / "cache")
        return cache if "://" in cache else str(Path(cache).resolve())


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("mtl", description="pipeline name, used in run folders")
    data_dir: str | None = Field(None, description="base for relative data paths; MTL_DATA_DIR wins")
    encoder: EncoderConfig = EncoderConfig()
    tasks: list[TaskDataConfig] = Field(min_length=1)
    tokenize: TokenizeConfig = TokenizeConfig()
    training: TrainingConfig = TrainingConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    storage: StorageConfig = StorageConfig()
    affinity: AffinityConfig = AffinityConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()

    def resolved_data_dir(self) -> str | None:
        return default_data_dir(self.data_dir)


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
            problems.append(f"{_key(err['loc'])}: {err['msg']}{got}")
        raise ConfigError(source, problems) from None


def load_config(path: str | Path) -> PipelineConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of keys"])
    return parse_config(raw, str(path))


def semantic_problems(cfg: PipelineConfig) -> list[str]:
    """Checks across fields: the training sections (training.validation), duplicate tasks, files that must exist."""
    names = [t.name for t in cfg.tasks]
    problems = config_problems(cfg.training, cfg.deepspeed, names, [t.name for t in cfg.tasks if t.auxiliary],
                               cfg.encoder)
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tasks: task name {dup!r} is used more than once; names must be unique")
    issues = IssueCollector()
    for index, task in enumerate(cfg.tasks):
        check_task_config(task, cfg.resolved_data_dir(), issues, cfg.storage.s3)
    problems += [str(i) for i in issues.issues]
    return problems


def check_config(cfg: PipelineConfig, source: str = "config") -> None:
    if problems := semantic_problems(cfg):
        raise ConfigError(source, problems)


REFUSED = (ConfigError, DataValidationError)
