"""infra/ runs the servers as the production tests do (tests/servers.py): PostgreSQL behind both
servers, MLflow artifacts proxied to S3, no MLflow job runner, the `mtl-cpu` process pool. Parsed
only: there is no container engine here."""
from __future__ import annotations

from pathlib import Path

import yaml

import servers

INFRA = Path(__file__).resolve().parents[1] / "infra"


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]


def test_both_servers_keep_their_state_in_postgres():
    services = compose()
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    command = services["mlflow"]["command"]
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("@postgres:5432/mlflow")
    init = (INFRA / "postgres" / "init.sql").read_text()
    assert "CREATE DATABASE prefect;" in init and "CREATE DATABASE mlflow;" in init


def test_mlflow_serves_artifacts_from_s3_without_a_job_runner():
    mlflow = compose()["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--artifacts-destination") + 1] == f"s3://{servers.ARTIFACT_BUCKET}"
    assert "--serve-artifacts" in command
    assert servers.MLFLOW_SERVER_ENV.items() <= mlflow["environment"].items()
    k8s = next(yaml.safe_load_all((INFRA / "k8s" / "mlflow.yaml").read_text()))
    env = {e["name"]: e.get("value") for e in k8s["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert servers.MLFLOW_SERVER_ENV.items() <= env.items()
    assert f"mc mb --ignore-existing local/{servers.ARTIFACT_BUCKET}" in compose()["minio-init"]["command"][0]


def test_the_worker_serves_the_pool_prefect_yaml_deploys_to():
    worker = compose()["worker"]
    dockerfile = (INFRA / "worker.Dockerfile").read_text()
    assert f'ENTRYPOINT ["prefect", "worker", "start", "--pool", "{servers.POOL}"]' in dockerfile
    assert worker["command"][:2] == ["--type", "process"]
    assert worker["environment"]["MTL_PROJECT_DIR"] == "/opt/mtl"  # prefect.yaml's pull step goes there
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((INFRA.parent / "prefect.yaml").read_text())["deployments"]}
    assert pools == {servers.POOL}
