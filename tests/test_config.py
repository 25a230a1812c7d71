"""The typed config: shipped configs parse, problems are collected and name their keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.config import ConfigError, PipelineConfig, check_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_and_checks(path, data_dir):
    config = load_config(path)
    check_config(config, str(path))


def test_all_problems_reported_together():
    raw = {"tasks": [{"name": "a", "type": "tagging", "format": "conll", "train": "x", "dev": "y"}],
           "training": {"steps": 0, "launcher": "mpirun"}, "deepspeed": {"zero_stage": 5}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "bad.yaml")
    text = str(err.value)
    for key in ("tasks[0].type", "training.steps", "training.launcher", "deepspeed.zero_stage"):
        assert key in text
    assert text.startswith("bad.yaml: 4 config problem(s)")


def test_unknown_registry_names_and_duplicates(data_dir):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["training"]["sampler"] = "magic"
    raw["tasks"].append(dict(raw["tasks"][0]))
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(raw))
    text = str(err.value)
    assert "training.sampler: unknown sampler 'magic'; valid: ['annealed', 'proportional', 'round_robin', 'temperature', 'uniform']" in text
    assert "task name 'pos' is used more than once" in text


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match=r"encoder.hidden: Extra inputs are not permitted"):
        parse_config({"encoder": {"hidden": 3}, "tasks": [
            {"name": "a", "type": "token_classification", "format": "conll", "train": "x", "dev": "y"}]})


def test_flow_parameter_schema_is_the_typed_config():
    from prefect.utilities.callables import parameter_schema

    from flows.retrain import retrain

    schema = parameter_schema(retrain.fn).model_dump()
    assert schema["required"] == ["config"]
    assert "PipelineConfig" in schema["definitions"]
    assert "TaskDataConfig" in schema["definitions"]
    assert PipelineConfig.model_json_schema()["required"] == ["tasks"]


def test_strategy_limits_apply_to_a_zero_stage_set_in_a_deepspeed_file(data_dir):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["training"]["weighting"] = "pcgrad"
    raw["deepspeed"] = {"config_file": str(ROOT / "infra" / "deepspeed" / "zero3.json")}
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: a gradient-based weighting"):
        check_config(parse_config(raw))
