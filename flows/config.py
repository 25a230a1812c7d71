"""The root pipeline config: one typed model composed of each component's sub-config.

It is the `retrain` flow's parameter, so the Prefect UI renders it as a form. Loading collects
every problem and reports them together, each naming its key and the fix.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
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
from training.redaction import USERINFO, mask_userinfo
from training.errors import RegistryRefusal, WarmStartError
from training.task_spec import primary_metric_problems
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
                          "(default: the cache folder under root)")
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


# a field whose value must never be repeated back (an error message reaches logs and Prefect states)
# (one key part: `token_column` is no secret, `session_token` is)
SECRET_FIELD = re.compile(r"^(.*(secret|password|credential).*|.*_token|token|access_key(_id)?)$", re.I)


def _shown(err: dict[str, Any]) -> str:
    """` (got <value>)` for an error, unless the value is a section, missing, or may be a secret
    (a credential-like field name anywhere in its key, a misspelt one included; userinfo in a URI)."""
    value = err.get("input")
    if err["type"] == "missing" or isinstance(value, dict):
        return ""
    if any(SECRET_FIELD.match(str(part)) for part in err["loc"]):
        return " (value not shown: it may be a secret)"
    return f" (got {mask_userinfo(repr(value))})"


def parse_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_key(err['loc'])}: {err['msg']}{_shown(err)}" for err in exc.errors()]
        raise ConfigError(source, problems) from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The YAML at `path`, with `overrides` (dotted keys, see `apply_overrides`) set on top."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of keys"])
    if not overrides:
        return parse_config(raw, str(path))
    source = f"{path} with overrides {', '.join(overrides)}"
    return parse_config(apply_overrides(raw, overrides, source), source)


def parse_set(item: str) -> tuple[str, Any]:
    """A command line's `--set KEY=VALUE`: a dotted key (see `apply_overrides`) and a YAML value,
    e.g. `training.steps=200`, `tasks.*.max_train_examples=2000` or
    `training.schedule_params={finetune_steps: 500, finetune_learning_rates: {rte: 3.0e-5}}`."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{mask_userinfo(item)!r} is not KEY=VALUE (e.g. training.steps=200)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"{key.strip()}: the value is not YAML ({getattr(exc, 'problem', None) or exc}); "
                         "quote it for the shell, e.g. training.schedule_params='{finetune_steps: 500}'") from None
    return key.strip(), _exponent_floats(value)


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _exponent_floats(value: Any) -> Any:
    """`3e-5` as the number YAML 1.2 reads (PyYAML's YAML 1.1 keeps it a string without a dot)."""
    if isinstance(value, str) and _EXPONENT.match(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _exponent_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exponent_floats(v) for v in value]
    return value


def run_overrides(fields: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deployment's typed fields (None: not set) and its free dotted-key `overrides`, which win."""
    return {**{key: value for key, value in fields.items() if value is not None}, **(overrides or {})}


_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*|\.\*|\[\d+\])*$")


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str = "overrides") -> dict[str, Any]:
    """A copy of `raw` with each dotted key set to its value: `training.steps`, `storage.root`,
    `tasks.pos.max_train_examples` (a task by its name), `tasks[0].dev` or `tasks.*.max_dev_examples`
    (every task). A key that does not lead anywhere is refused here, naming it; what the value must
    be, `parse_config` then says (an unknown field reads `training.stepz: Extra inputs are not
    permitted`)."""
    out, problems = copy.deepcopy(raw), []
    # a section replaced whole (`tasks`) first, then the fields inside it (`tasks.*.max_dev_examples`)
    for key, value in sorted(overrides.items(), key=lambda item: item[0].count(".") + item[0].count("[")):
        if any(SECRET_FIELD.match(part) for part in re.split(r"[.\[\]]", key)) or USERINFO.search(str(value)):
            # a deployment's parameters are stored and shown as given: credentials never go there
            problems.append(f"{key}: credentials are not taken as a run parameter (Prefect stores and shows "
                            "parameters as given); give them to the worker's environment: AWS_ACCESS_KEY_ID / "
                            "AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
            continue
        if not _KEY.match(key):
            problems.append(f"{key}: not a config key; write sections and fields with dots, e.g. training.steps, "
                            "tasks.pos.max_train_examples or tasks[0].dev")
            continue
        parts = [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", key)]
        if "*" in parts:  # every entry of that list: one key per entry, each checked like any other
            problems += _set_each(out, parts, value, key)
            continue
        if (problem := _set_path(out, parts, value, key)) is not None:
            problems.append(problem)
    if problems:
        raise ConfigError(source, problems)
    return out


def _set_path(node: Any, parts: list[str | int], value: Any, key: str) -> str | None:
    """Set node[parts...] = value, creating sections on the way; a problem naming `key`, or None."""
    for depth, part in enumerate(parts):
        here = key if depth == len(parts) - 1 else _key(tuple(parts[: depth + 1]))
        if isinstance(node, list):
            index = _list_index(node, part)
            if index is None:
                names = [t.get("name") for t in node if isinstance(t, dict)]
                return (f"{here}: no such entry; {'the tasks are ' + ', '.join(map(str, names)) if names else 'empty'}"
                        f" (by name, e.g. tasks.{names[0] if names else 'pos'}.dev, or by position, tasks[0].dev)")
            part = index
        elif not isinstance(node, dict) or isinstance(part, int):
            return f"{here}: {_key(tuple(parts[:depth])) or 'the config'} is not a section one can set keys in"
        if depth == len(parts) - 1:
            node[part] = value
            return None
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    return None


def _set_each(raw: dict[str, Any], parts: list[str | int], value: Any, key: str) -> list[str]:
    star = parts.index("*")
    node: Any = raw
    for part in parts[:star]:
        node = node.get(part) if isinstance(node, dict) and not isinstance(part, int) else None
    if not isinstance(node, list):
        return [f"{key}: {_key(tuple(parts[:star]))} is not a list (* stands for each of its entries)"]
    problems = []
    for index in range(len(node)):
        problem = _set_path(raw, [*parts[:star], index, *parts[star + 1:]], value, key)
        problems += [problem] if problem else []
    return problems


def _list_index(items: list[Any], part: str | int) -> int | None:
    if isinstance(part, int):
        return part if part < len(items) else None
    return next((i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == part), None)


def semantic_problems(cfg: PipelineConfig) -> list[str]:
    """Checks across fields: the training sections (training.validation), duplicate tasks, files that must exist."""
    names = [t.name for t in cfg.tasks]
    problems = config_problems(cfg.training, cfg.deepspeed, names, [t.name for t in cfg.tasks if t.auxiliary],
                               cfg.encoder)
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tasks: task name {dup!r} is used more than once; names must be unique")
    problems += primary_metric_problems(cfg.tasks)
    issues = IssueCollector()
    for index, task in enumerate(cfg.tasks):
        check_task_config(task, cfg.resolved_data_dir(), issues, cfg.storage.s3)
    problems += [str(i) for i in issues.issues]
    return problems


def check_config(cfg: PipelineConfig, source: str = "config") -> None:
    if problems := semantic_problems(cfg):
        raise ConfigError(source, problems)


REFUSED = (ConfigError, DataValidationError, WarmStartError, RegistryRefusal)
