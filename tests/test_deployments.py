"""prefect.yaml: each deployment points at a real flow and its parameters fit the flow's signature."""
from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def load_flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_entrypoints_and_parameters():
    for name, dep in deployments().items():
        flow = load_flow(dep["entrypoint"])
        schema = parameter_schema(flow.fn).model_dump()
        params = dep.get("parameters", {})
        assert set(params) <= set(schema["properties"]), name
        # what a person types at run time: promote / rollback have no defaults to give them
        assert set(schema.get("required", [])) <= set(params) | {"model_name", "version", "reason"}, name
        flow.validate_parameters(params) if params else None


def test_nightly_is_a_cron_schedule_on_an_existing_config():
    nightly = deployments()["nightly"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert (ROOT / nightly["parameters"]["config_path"]).is_file()


def test_full_config_defaults_mirror_the_demo_config():
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert deployments()["full-config"]["parameters"]["config"] == demo


def test_on_demand_takes_a_config_file_and_field_overrides():
    on_demand = deployments()["on-demand"]
    assert on_demand["entrypoint"] == "flows/retrain.py:retrain_from_file"
    assert (ROOT / on_demand["parameters"]["config_path"]).is_file()


def test_the_experiment_follows_the_model_name_unless_set():
    """Overriding registry.model_name alone put the runs in the demo's experiment. Resolved in the
    config, so the registry (open_run, fail_run) and the saved config see the same name."""
    from flows.config import load_config

    demo = ROOT / "configs" / "demo.yaml"
    assert load_config(demo).registry.experiment == "mtl-demo"
    moved = load_config(demo, {"registry.model_name": "mtl-prod"}).registry
    assert (moved.model_name, moved.experiment) == ("mtl-prod", "mtl-prod")
    assert load_config(demo, {"registry.model_name": "mtl-prod", "registry.experiment": "team"}).registry.experiment \
        == "team"
    assert load_config(demo, {"registry.experiment": ""}).registry.experiment == "mtl-demo"  # a form's empty box
