"""Production mode against real servers (tests/servers.py, started once per session): deploy
prefect.yaml to a Prefect server on PostgreSQL, let a process worker run the `on-demand`
deployment with overridden fields, and find the model on an MLflow server whose store is
PostgreSQL and whose artifacts are in S3."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import servers

pytestmark = pytest.mark.slow
MODEL = "mtl-prod"


def client(stack: servers.Stack):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(stack.api_url)


@pytest.fixture(scope="module")
def deployed(production_stack: servers.Stack) -> dict[str, Any]:
    """`prefect deploy --all` from the project folder, as the README says, against the test server."""
    # without MTL_PROJECT_DIR: the pull step keeps its placeholder, the worker's environment fills it
    env = {k: v for k, v in production_stack.env.items() if k != "MTL_PROJECT_DIR"}
    out = servers.prefect_cli(["deploy", "--all"], env)
    with client(production_stack) as api:
        found = {d.name: d for d in api.read_deployments()}
    assert {"nightly", "on-demand", "full-config", "promote"} <= set(found), out
    pull = found["on-demand"].pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $MTL_PROJECT_DIR }}"
    return found


def wait_final(stack: servers.Stack, flow_run_id, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    with client(stack) as api:
        while time.monotonic() < deadline:
            run = api.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} not finished after {timeout:.0f} s (state {run.state_name}); "
                f"end of the worker log:\n{servers.log_tail(stack.worker.log, 60)}")


@pytest.fixture(scope="module")
def on_demand_run(production_stack: servers.Stack, deployed, tiny_encoder: Path, tmp_path_factory) -> Any:
    """The on-demand deployment on configs/demo.yaml, shrunk field by field to a minute's run."""
    state = tmp_path_factory.mktemp("prod-state")
    parameters = {
        "config_path": "configs/demo.yaml", "steps": 4, "processes": 1, "max_train_examples": 32,
        "max_dev_examples": 16,
        "overrides": {"encoder.name_or_path": str(tiny_encoder), "encoder.max_length": 32,
                      "tasks": [t for t in deployed_tasks() if t["name"] in ("pos", "sst2")],
                      "training.micro_batch_size": 4, "training.warmup_steps": 1, "training.checkpoint_every": 4,
                      "training.log_every": 2, "deepspeed.zero_stage": "auto", "affinity.method": "off",
                      "storage.root": str(state), "registry.model_name": MODEL, "registry.experiment": MODEL}}
    with client(production_stack) as api:
        run = api.create_flow_run_from_deployment(deployed["on-demand"].id, parameters=parameters)
    return wait_final(production_stack, run.id, timeout=420)


def deployed_tasks() -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load((servers.ROOT / "configs" / "demo.yaml").read_text())["tasks"]


def test_nightly_cron_schedules_runs_at_two_utc(production_stack, deployed):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, \
        FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    nightly = deployed["nightly"]
    wanted = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    deadline, runs = time.monotonic() + 60, []
    with client(production_stack) as api:
        while time.monotonic() < deadline and len(runs) < 3:
            runs = api.read_flow_runs(flow_run_filter=wanted, deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[nightly.id])), sort="EXPECTED_START_TIME_ASC", limit=3)
            time.sleep(1)
    assert len(runs) == 3, "the scheduler made no 3 runs of the nightly deployment in 60 s"
    starts = [r.expected_start_time for r in runs]
    assert all((s.hour, s.minute, s.utcoffset()) == (2, 0, timedelta(0)) for s in starts), starts
    assert [b - a for a, b in zip(starts, starts[1:])] == [timedelta(days=1)] * 2
    assert all(r.parameters == {"config_path": "configs/demo.yaml"} for r in runs)
    with client(production_stack) as api:  # a nightly run due during the session would train the demo
        api.pause_deployment(nightly.id)


def test_on_demand_run_registers_and_promotes_on_the_mlflow_server(production_stack, on_demand_run):
    from mlflow import MlflowClient

    assert on_demand_run.state.is_completed(), (on_demand_run.state.message,
                                                servers.log_tail(production_stack.worker.log, 60))
    mlflow = MlflowClient(production_stack.mlflow.url)
    champion = mlflow.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and set(champion.aliases) == {"champion", "challenger"}
    params = mlflow.get_run(champion.run_id).data.params
    # the overridden fields reached the run; the untouched ones are the file's
    assert (params["training.steps"], params["training.processes"], params["tasks.pos.max_train_examples"]) == \
        ("4", "1", "32")
    assert (params["training.learning_rate"], params["name"]) == ("0.0001", "demo")
    assert "tasks.ner.name" not in params


def test_the_stores_behind_the_servers_are_postgres_and_s3(production_stack, on_demand_run):
    import boto3
    import psycopg2

    pg = production_stack.postgres
    with psycopg2.connect(pg.server.get_uri("mlflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, storage_location FROM model_versions WHERE name = %s", (MODEL,))
        assert [row[0] for row in cur.fetchall()] == [1]
    with psycopg2.connect(pg.server.get_uri("prefect")) as conn, conn.cursor() as cur:
        cur.execute("SELECT state_type FROM flow_run WHERE id = %s", (str(on_demand_run.id),))
        assert cur.fetchone() == ("COMPLETED",)
    s3 = boto3.client("s3", endpoint_url=production_stack.s3.url, region_name="us-east-1",
                      aws_access_key_id=servers.S3_KEY, aws_secret_access_key=servers.S3_SECRET)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=servers.ARTIFACT_BUCKET)
            for o in page.get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.endswith("model.safetensors") for k in keys), keys


def test_the_server_refuses_a_choice_outside_the_enum(production_stack, deployed):
    """The deployed form's schema carries the choices: the API refuses another before any run."""
    from prefect.exceptions import PrefectHTTPStatusError

    schema = deployed["on-demand"].parameter_openapi_schema["properties"]
    assert "soft" in schema["sharing"]["enum"] and schema["sharing"]["enum"][0] == "file"  # no None toggle
    with client(production_stack) as api, pytest.raises(PrefectHTTPStatusError) as refused:
        api.create_flow_run_from_deployment(deployed["on-demand"].id, parameters={"sharing": "magic"})
    assert "sharing" in refused.value.response.text and "magic" in refused.value.response.text
