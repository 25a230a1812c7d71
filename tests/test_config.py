"""The typed config: shipped configs parse, problems are collected and name their keys."""
from __future__ import annotations

import re
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
    raw["training"]["sampler"] = "magic"  # a choice (Literal): refused as the file is parsed, listing the valid ones
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert "training.sampler: Input should be 'proportional', 'temperature', 'annealed', 'uniform' or 'round_robin' " \
           "(got 'magic')" in str(err.value)
    raw["training"]["sampler"] = "uniform"
    raw["tasks"].append(dict(raw["tasks"][0]))
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(raw))
    assert "task name 'pos' is used more than once" in str(err.value)


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


def test_the_retired_transfer_strategy_names_the_schedule_key(data_dir):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["training"]["sharing"] = "transfer"
    raw["training"]["sharing_params"] = {"finetune_steps": 10}
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(raw))
    problems = err.value.problems
    assert any(p.startswith("training.sharing: 'transfer' is no longer a sharing strategy") and
               "training.schedule: mtdnn" in p for p in problems), problems
    assert not any("unknown sharing strategy" in p for p in problems), problems


def test_mtdnn_schedule_is_checked_before_anything_runs(data_dir):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["training"].update({"schedule": "mtdnn", "sharing": "soft",
                            "schedule_params": {"finetune_tasks": ["pos", "chunking"], "finetune_step": 3}})
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(raw))
    text = str(err.value)
    assert "training.schedule_params.finetune_step: Extra inputs are not permitted" in text
    assert "training.schedule_params.finetune_tasks: unknown task(s) ['chunking']" in text
    assert "training.sharing: the mtdnn schedule fine-tunes each task" in text
    raw["training"]["schedule"] = "curriculum"
    with pytest.raises(ConfigError, match=r"training.schedule: Input should be 'single' or 'mtdnn' \(got 'curriculum'\)"):
        check_config(parse_config(raw))


def test_a_value_that_may_be_a_secret_is_never_repeated_in_an_error():
    """A config error reaches stderr, logs and the Prefect state: a misspelt credential field
    (here `secret_key`) is named, its value is not; a URI's password is masked."""
    raw = {"tasks": [{"name": "a", "type": "token_classification", "format": "conllu", "train": "x", "dev": "y"}],
           "storage": {"s3": {"secret_key": "hunter2"}}, "registry": {"tracking_uri": 5,
                                                                      "experiment": ["http://bob:hunter3@h"]}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    assert "storage.s3.secret_key: Extra inputs are not permitted (value not shown" in text
    assert "registry.experiment" in text and "hunter" not in text


def test_overrides_refuse_credentials_and_keep_token_columns():
    from flows.config import apply_overrides

    raw = {"tasks": [{"name": "pos", "token_column": 1}], "storage": {}, "registry": {}}
    with pytest.raises(ConfigError) as err:
        apply_overrides(raw, {"storage.s3.secret_access_key": "k", "registry.tracking_uri": "http://u:pw@host",
                              "storage.s3.session_token": "t"})
    assert len(err.value.problems) == 3 and all("worker's environment" in p for p in err.value.problems)
    assert "pw" not in str(err.value)
    assert apply_overrides(raw, {"tasks.pos.token_column": 0})["tasks"][0]["token_column"] == 0


def test_the_resolved_config_written_beside_a_run_has_no_uri_password():
    from flows.tasks import redacted

    resolved = redacted({"registry": {"tracking_uri": "http://bob:hunter2@mlflow:5000"},
                         "tasks": [{"train": "s3://bucket/train.conllu"}]})
    assert resolved == {"registry": {"tracking_uri": "http://***@mlflow:5000"},
                        "tasks": [{"train": "s3://bucket/train.conllu"}]}


def test_quality_config_stages_rte_with_snli_as_auxiliary(data_dir):
    """configs/quality.yaml (README "Multi-task quality"): SNLI trains in the multi-task stage only,
    every main task is fine-tuned, and the bench's one-model-per-task baselines get by default the
    same total steps as the staged run, or the steps `--single-steps` names."""
    from helpers import quality_bench
    from training.launch.schedule import SCHEDULES

    cfg = load_config(ROOT / "configs" / "quality.yaml")
    check_config(cfg, "configs/quality.yaml")
    names = [t.name for t in cfg.tasks]
    auxiliary = [t.name for t in cfg.tasks if t.auxiliary]
    assert auxiliary == ["snli"] and cfg.training.eval_every and cfg.training.schedule == "mtdnn"
    stages = SCHEDULES["mtdnn"].plan(cfg.training, names, auxiliary)
    assert [(s.name, s.tasks) for s in stages] == [("multitask", names)] + [
        (f"finetune-{t}", [t]) for t in ("pos", "ner", "sst2", "rte")]
    rates = {s.name: s.training.learning_rate for s in stages}
    assert rates == {"multitask": 1e-4, "finetune-pos": 1e-4, "finetune-ner": 1e-4, "finetune-sst2": 1e-4,
                     "finetune-rte": 5e-5}  # RTE's own rate, chosen on dev (README)
    bench = quality_bench()
    assert [s.training.steps for s in stages] == [3000, 1000, 1000, 1000, 1000]
    single = bench.single_task_training(cfg.training, names, auxiliary)
    assert single.schedule == "single" and single.eval_every == cfg.training.eval_every
    assert 4 * single.steps == bench.total_steps(cfg.training, names, auxiliary) == 7000  # the same compute
    assert bench.single_task_training(cfg.training, names, auxiliary, 1000).steps == 1000  # --single-steps


def test_set_on_the_command_line_is_a_dotted_key_and_a_yaml_value(tmp_path):
    from flows.config import parse_set

    assert parse_set("training.steps=200") == ("training.steps", 200)
    assert parse_set("training.schedule_params={finetune_learning_rates: {rte: 3e-5}}") == \
        ("training.schedule_params", {"finetune_learning_rates": {"rte": 3e-5}})
    assert parse_set("tasks.pos.dev=ud/dev.conllu") == ("tasks.pos.dev", "ud/dev.conllu")
    assert parse_set("encoder.name_or_path=1e-3x") == ("encoder.name_or_path", "1e-3x")
    for bad, says in [("training.steps", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE"),
                      ("training.schedule_params={a: [1,", "training.schedule_params: the value is not YAML")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_set(bad)
    with pytest.raises(ValueError) as err:
        parse_set("http://bob:s3cret@mlflow:5000")
    assert "s3cret" not in str(err.value)


def test_override_and_file_errors_name_the_source_the_key_and_the_way_out(tmp_path):
    """Each refusal of a config file or an override names where it came from, the key, and what to
    write instead, word for word (mutants of flows/config.py that changed a message survived)."""
    from flows.config import apply_overrides

    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value) == f"{missing}: 1 config problem(s):\n  - file not found"
    refusals = [({}, {"training..steps": 1}, "training..steps: not a config key; write sections and fields with "
                 "dots, e.g. training.steps, tasks.pos.max_train_examples or tasks[0].dev"),
                ({"tasks": []}, {"tasks.pos.dev": "x"},
                 "tasks.pos: no such entry; empty (by name, e.g. tasks.pos.dev, or by position, tasks[0].dev)"),
                ({"training": {}}, {"tasks.*.dev": "x"},
                 "tasks.*.dev: tasks is not a list (* stands for each of its entries)")]
    for raw, overrides, says in refusals:
        with pytest.raises(ConfigError) as err:
            apply_overrides(raw, overrides)
        assert str(err.value) == f"overrides: 1 config problem(s):\n  - {says}"
