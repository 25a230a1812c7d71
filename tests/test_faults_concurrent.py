"""Two `mtl run`s of one config at once (two registered models: one model's runs queue), sharing a state folder, an `s3://` cache (moto server on
loopback) and an MLflow tracking server, with credentials planted in the config (storage.s3) and
a password in MLFLOW_TRACKING_URI. Figures: versions created (1 per model, distinct runs), champions (1 per model), cache
entries (each committed whole and sound, none half), checkpoints (each run's own, all sound),
and the planted secrets found in logs, summaries, run folders, MLflow params, tags and artifacts,
Prefect artifacts and flow run parameters: 0."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import tiny_config
from training.launch.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
S3_KEY, S3_SECRET, MLFLOW_PASSWORD = "AKIAPLANTED7F3A9C", "planted-s3-secret-7f3a9c", "planted-mlflow-pw-51c2"
PLANTED = (S3_KEY, S3_SECRET, MLFLOW_PASSWORD)


@pytest.fixture(scope="module")
def moto_endpoint():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=S3_KEY,
                 aws_secret_access_key=S3_SECRET).create_bucket(Bucket="shared-cache")
    yield url
    server.stop()


@pytest.fixture(scope="module")
def two_runs(tiny_encoder, data_dir, tmp_path_factory, prefect_engine, moto_endpoint, mlflow_server):
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("concurrent")
    raw = tiny_config(tiny_encoder, base / "state", data_dir, steps=6, checkpoint_every=3, threads_per_process=1)
    raw["tasks"] = raw["tasks"][1:]  # ner and sst2: a token and a sentence task
    raw["affinity"] = {"method": "off"}
    raw["storage"].update(cache="s3://shared-cache/mtl", s3={"endpoint_url": moto_endpoint, "region": "us-east-1",
                                                             "access_key_id": S3_KEY, "secret_access_key": S3_SECRET})
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "MLFLOW_TRACKING_URI": f"http://mtl:{MLFLOW_PASSWORD}@127.0.0.1:{mlflow_server}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key in [k for k in env if k.startswith("AWS_")]:
        env.pop(key)  # the credentials come from the config alone
    procs = []
    # two registered models: runs of one model queue behind its retrain lock (and a second run of the
    # same inputs would be skipped), so two runs that train at once are runs of two models
    for n, model in ((1, "tiny-mtl"), (2, "tiny-mtl-b")):
        out = open(base / f"flow{n}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config), "--summary",
                                        str(base / f"summary{n}.json"), "--set", f"registry.model_name={model}",
                                        "--set", "registry.experiment=tiny"], env=env, cwd=base, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True), out))
    for proc, out in procs:
        proc.wait(timeout=900)
        out.close()
    codes = [proc.returncode for proc, _ in procs]
    assert codes == [0, 0], [(base / f"flow{n}.log").read_text()[-3000:] for n in (1, 2)]
    summaries = [json.loads((base / f"summary{n}.json").read_text()) for n in (1, 2)]
    return {"base": base, "summaries": summaries, "uri": f"http://127.0.0.1:{mlflow_server}",
            "s3": raw["storage"]["s3"]}


@pytest.mark.slow
def test_two_runs_at_once_make_one_version_and_one_champion_each(two_runs):
    from mlflow import MlflowClient

    client = MlflowClient(two_runs["uri"])
    registered = [v for s in two_runs["summaries"] for v in client.search_model_versions(f"name='{s['model_name']}'")]
    assert sorted((v.name, str(v.version)) for v in registered) == [("tiny-mtl", "1"), ("tiny-mtl-b", "1")]
    assert len({v.run_id for v in registered}) == 2
    for summary in two_runs["summaries"]:
        champion = client.get_model_version_by_alias(summary["model_name"], "champion")
        assert (str(champion.version), summary["promoted"], summary["outcome"]) == ("1", True, "Promoted")
    print(f"versions created: {len(registered)}, one champion per model")


@pytest.mark.slow
def test_two_runs_at_once_share_no_checkpoint_and_no_half_cache_entry(two_runs):
    from data_prep.cache import MARKER, ArtifactCache
    from data_prep.config import S3Config
    from training.trainer.checkpoints import damage, local_complete_tags

    runs = [Path(s["run_dir"]) for s in two_runs["summaries"]]
    assert runs[0] != runs[1]
    for run in runs:
        spec = json.loads((run / "train_spec.json").read_text())
        assert Path(spec["checkpoint_dir"]) == run / "checkpoints"
        tags = local_complete_tags(run / "checkpoints")
        assert tags == ["step_00000003", "step_00000006"]
        assert [damage(run / "checkpoints" / t) for t in tags] == [None, None]
    cache = ArtifactCache("s3://shared-cache/mtl", S3Config.model_validate(two_runs["s3"]))
    entries = {(kind, Path(p).name) for kind in ("ingest", "tokenize") for p in cache.fs.ls(f"shared-cache/mtl/{kind}")}
    assert len(entries) == 4  # 2 tasks x (ingest, tokenize): both runs read and wrote the same keys
    work = two_runs["base"] / "cache-check"
    for kind, key in entries:
        names = {Path(p).name for p in cache.fs.ls(f"shared-cache/mtl/{kind}/{key}")}
        assert MARKER in names
        for name in names - {MARKER}:
            cache.fetch(kind, key, name, work / kind / key)  # raises CorruptEntry on a half or mixed file
    print(f"cache entries: {len(entries)}, all committed and sound")


async def _prefect_texts() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_artifacts()
        flow_runs = await client.read_flow_runs()
    return [repr(a.data) + repr(a.description) for a in artifacts] + [json.dumps(r.parameters, default=str)
                                                                      for r in flow_runs]


@pytest.mark.slow
def test_planted_secrets_are_found_nowhere(two_runs, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    base = two_runs["base"]
    texts: dict[str, str] = {}
    for path in [*base.glob("flow*.log"), *base.glob("summary*.json"),
                 *(p for s in two_runs["summaries"] for p in Path(s["run_dir"]).rglob("*") if p.is_file()
                   and p.suffix in (".json", ".jsonl", ".txt", ".log", ".yaml", ""))]:
        texts[str(path)] = path.read_text(errors="replace")
    client = MlflowClient(two_runs["uri"])
    for summary in two_runs["summaries"]:
        run = client.get_run(summary["run_id"])
        texts[f"mlflow params {summary['run_id']}"] = json.dumps(run.data.params)
        texts[f"mlflow tags {summary['run_id']}"] = json.dumps(run.data.tags)
        local = mlflow.artifacts.download_artifacts(run_id=summary["run_id"], dst_path=str(tmp_path / run.info.run_id),
                                                    tracking_uri=two_runs["uri"])
        for path in Path(local).rglob("*"):
            if path.is_file():
                texts[f"mlflow artifact {path}"] = path.read_bytes().decode("utf-8", errors="replace")
        version = client.get_model_version(summary["model_name"], summary["version"])
        texts[f"model version {summary['version']}"] = json.dumps(version.tags) + (version.description or "")
    for n, text in enumerate(asyncio.run(_prefect_texts())):
        texts[f"prefect {n}"] = text
    found = {where: [s for s in PLANTED if s in text] for where, text in texts.items()}
    found = {where: hits for where, hits in found.items() if hits}
    print(f"searched {len(texts)} logs, files, params, tags and artifacts: {len(found)} with a secret")
    assert len(texts) > 20 and any("model" in w for w in texts)
    assert not found, found
