"""What a deployment's form and `prefect deployment run --param` get: choices as enums, help texts
intact, and field overrides by dotted key, refused naming the key."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
from prefect.utilities.callables import parameter_schema

from flows.config import ConfigError, apply_overrides, load_config
from flows.retrain import retrain, retrain_from_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
TAG = re.compile(r"<[A-Za-z/][^>]*>")  # what a form rendering help texts as HTML would swallow


def walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, sub-schema) of a JSON schema."""
    found = [(path, node)] if isinstance(node, dict) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        found += walk(child, f"{path}/{key}")
    return found


def test_registry_names_are_the_literal_choices():
    from data_prep.config import ReaderFormat
    from data_prep.readers import READERS
    from training.config import SamplerName, ScheduleName, SharingName, WeightingName
    from training.launch.schedule import SCHEDULES
    from training.model.sharing import SHARING
    from training.trainer.sampling import SAMPLERS
    from training.trainer.weighting import WEIGHTINGS

    for literal, registry in ((SharingName, SHARING), (SamplerName, SAMPLERS), (WeightingName, WEIGHTINGS),
                              (ScheduleName, SCHEDULES), (ReaderFormat, READERS)):
        assert set(get_args(literal)) == set(registry), literal


def test_full_config_form_offers_choices_and_keeps_every_help_text():
    schema = parameter_schema(retrain.fn).model_dump_for_openapi()
    defs = schema["definitions"]
    training, task = defs["TrainingConfig"]["properties"], defs["TaskDataConfig"]["properties"]
    assert training["sharing"]["enum"] == ["hard", "soft", "attention", "adversarial", "multi_encoder"]
    assert "pcgrad" in training["weighting"]["enum"] and "round_robin" in training["sampler"]["enum"]
    assert training["schedule"]["enum"] == ["single", "mtdnn"]
    assert "conllu" in task["format"]["anyOf"][0]["enum"]
    descriptions = {path: node["description"] for path, node in walk(schema) if "description" in node}
    assert len(descriptions) > 60
    assert not {p: d for p, d in descriptions.items() if TAG.search(d)}
    cache = defs["StorageConfig"]["properties"]["cache"]["description"]
    assert "default: the cache folder under root" in cache


def test_on_demand_form_is_short_typed_and_described():
    schema = parameter_schema(retrain_from_file.fn).model_dump_for_openapi()
    props = schema["properties"]
    assert list(props) == ["config_path", "steps", "learning_rate", "processes", "sharing", "weighting", "sampler",
                           "max_train_examples", "max_dev_examples", "overrides", "resume_run_dir", "force"]
    assert "required" not in schema  # every field has a default: the form starts filled
    # no toggle: a dropdown whose first choice keeps the file's value, a number box whose 0 does
    for name in ("sharing", "weighting", "sampler"):
        assert "anyOf" not in props[name] and props[name]["enum"][0] == "file" and props[name]["default"] == "file"
    for name in ("steps", "processes", "max_train_examples", "max_dev_examples"):
        assert (props[name]["type"], props[name]["default"], props[name]["minimum"]) == ("integer", 0, 0), name
    assert all(p.get("description") for p in props.values())
    assert props["steps"]["description"].startswith("training.steps")
    assert "tasks.pos.max_train_examples" in props["overrides"]["description"]


def test_dotted_overrides_set_one_field_each():
    config = load_config(DEMO, {"training.steps": 5, "tasks.pos.max_train_examples": 10, "tasks[2].dev": "d.tsv",
                                "tasks.*.max_dev_examples": 7, "training.sharing": "soft", "storage.s3.region": "x"})
    assert (config.training.steps, config.training.sharing, config.storage.s3.region) == (5, "soft", "x")
    assert [t.max_train_examples for t in config.tasks] == [10, 4000, 4000]
    assert [t.max_dev_examples for t in config.tasks] == [7, 7, 7]
    assert config.tasks[2].dev == "d.tsv" and config.training.learning_rate == 1e-4  # the rest is the file's
    two = [{"name": "a", "type": "sequence_classification", "format": "tsv", "train": "t", "dev": "d"}] * 2
    replaced = apply_overrides({"tasks": []}, {"tasks.*.max_train_examples": 3, "tasks": two})
    assert [t["max_train_examples"] for t in replaced["tasks"]] == [3, 3]  # the section first, then its fields


@pytest.mark.parametrize("overrides, problem", [
    ({"training.stepz": 5}, "training.stepz: Extra inputs are not permitted (got 5)"),
    ({"training.steps": "many"}, "training.steps: Input should be a valid integer"),
    ({"training.sharing": "magic"}, "training.sharing: Input should be 'hard', 'soft', 'attention', 'adversarial' "
                                    "or 'multi_encoder' (got 'magic')"),
    ({"training.sharing": "transfer"}, "training.sharing: 'transfer' is no longer a sharing strategy"),
    ({"tasks.chunk.dev": "x"}, "tasks.chunk: no such entry; the tasks are pos, ner, sst2"),
    ({"tasks[9].dev": "x"}, "tasks[9]: no such entry"),
    ({"name.first": "x"}, "name.first: name is not a section one can set keys in"),
    ({"training steps": 5}, "training steps: not a config key"),
    ({"tasks.*.format": "xml"}, "tasks[0].format: Input should be 'conllu', 'conll', 'tsv'"),
])
def test_a_wrong_override_is_refused_naming_its_key(overrides, problem):
    with pytest.raises(ConfigError) as refused:
        load_config(DEMO, overrides)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
    assert str(refused.value).startswith(f"{DEMO} with overrides {next(iter(overrides))}: ")


def test_the_on_demand_flow_refuses_a_wrong_field_before_any_work(tmp_path, monkeypatch):
    """The flow body itself (no engine): the typed fields and the dotted keys meet one check."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=r"training.stepz: Extra inputs are not permitted"):
        retrain_from_file.fn(steps=3, overrides={"training.stepz": 3, "storage.root": str(tmp_path)})
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"training.steps: Input should be greater than 0 \(got -1\)"):
        retrain_from_file.fn(steps=-1)


def test_the_on_demand_forms_untouched_fields_keep_the_files_values():
    from flows.retrain import file_config

    untouched = file_config(str(DEMO), 0, 0.0, 0, "file", "file", "file", 0, 0, {})
    assert untouched == load_config(DEMO)
    changed = file_config(str(DEMO), 7, 0.0, 1, "soft", "file", "uniform", 0, 9, {})
    assert (changed.training.steps, changed.training.processes, changed.training.sharing) == (7, 1, "soft")
    assert (changed.training.sampler, changed.training.weighting, changed.training.learning_rate) == \
        ("uniform", "equal", 1e-4)
    assert [t.max_dev_examples for t in changed.tasks] == [9, 9, 9]
