"""`s3://` sources against a real S3 endpoint: a moto server on loopback, with a subset of the
real corpora uploaded to it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from data_prep.config import S3Config, TaskDataConfig
from data_prep.errors import DataValidationError
from data_prep.ingest import ingest_task
from data_prep.sources import expand, fingerprint

BUCKET = "corpora"
# the first lines of each real file: whole sentences, since every cut falls on a blank line
SUBSET = {"ud_en_ewt/en_ewt-ud-train.conllu": 8000, "ud_en_ewt/en_ewt-ud-dev.conllu": 1500,
          "cls_sst2/train.tsv": 400, "cls_sst2/dev.tsv": 100}


def _head(path: Path, lines: int) -> bytes:
    with open(path, "rb") as handle:
        text = b"".join(line for _, line in zip(range(lines), handle))
    # end on a sentence boundary so the subset stays valid CoNLL-U
    return text[: text.rfind(b"\n\n") + 2] if path.suffix == ".conllu" else text


@pytest.fixture(scope="module")
def s3(data_dir: Path) -> Iterator[S3Config]:
    """A moto S3 server on a free loopback port with the corpora subset in `s3://corpora/`."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    cfg = S3Config(endpoint_url=f"http://{host}:{port}", region="us-east-1",
                   access_key_id="testing-key", secret_access_key="testing-secret")
    client = boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing-key", aws_secret_access_key="testing-secret")
    client.create_bucket(Bucket=BUCKET)
    client.create_bucket(Bucket="cache")
    for key, lines in SUBSET.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=_head(data_dir / key, lines))
    try:
        yield cfg
    finally:
        server.stop()


@pytest.fixture()
def local_subset(data_dir: Path, tmp_path: Path) -> Path:
    for key, lines in SUBSET.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(_head(data_dir / key, lines))
    return tmp_path


POS = dict(name="pos", type="token_classification", format="conllu",
           train="ud_en_ewt/en_ewt-ud-train.conllu", dev="ud_en_ewt/en_ewt-ud-dev.conllu")
SST2 = dict(name="sst2", type="sequence_classification", format="tsv", train="cls_sst2/train.tsv",
            dev="cls_sst2/dev.tsv")


@pytest.mark.parametrize("spec", [POS, SST2], ids=["conllu", "tsv"])
def test_s3_reads_the_same_examples_as_local_files(spec, s3, local_subset):
    cfg = TaskDataConfig(**spec)
    remote = ingest_task(cfg, f"s3://{BUCKET}", s3=s3)
    local = ingest_task(cfg, str(local_subset))
    assert remote.labels == local.labels
    for split in ("train", "dev"):
        assert [e.tokens or e.text for e in remote.splits[split]] == [e.tokens or e.text for e in local.splits[split]]
        assert len(remote.splits[split]) > 10
    assert remote.splits["train"][0].file == f"s3://{BUCKET}/{spec['train']}"


def test_s3_glob_folder_and_etag(s3):
    assert expand(f"s3://{BUCKET}/cls_sst2/*.tsv", s3) == [f"s3://{BUCKET}/cls_sst2/dev.tsv",
                                                            f"s3://{BUCKET}/cls_sst2/train.tsv"]
    assert expand(f"s3://{BUCKET}/cls_sst2", s3) == expand(f"s3://{BUCKET}/cls_sst2/*", s3)
    assert fingerprint(f"s3://{BUCKET}/cls_sst2/dev.tsv", s3).startswith("etag:")


def test_s3_missing_file_is_reported_with_its_url(s3):
    cfg = TaskDataConfig(**{**SST2, "train": "cls_sst2/nope.tsv"})
    with pytest.raises(DataValidationError, match=rf"s3://{BUCKET}/cls_sst2/nope.tsv: tasks.sst2.train: file not found"):
        ingest_task(cfg, f"s3://{BUCKET}", s3=s3)


def test_credentials_from_the_usual_aws_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url or "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    data = ingest_task(TaskDataConfig(**SST2), f"s3://{BUCKET}", s3=S3Config())
    assert len(data.splits["train"]) > 10


def test_credentials_never_print_or_serialize(s3):
    for text in (repr(s3), str(s3), s3.model_dump_json(), str(s3.model_dump(mode="json"))):
        assert "testing-secret" not in text and "testing-key" not in text
    assert s3.storage_options()["secret"] == "testing-secret"  # revealed only for s3fs


def test_flow_ingest_and_tokenize_from_s3_with_an_s3_cache(s3, tiny_encoder, tmp_path, prefect_engine):
    """The flow's real ingest and tokenize tasks with the corpora and the cache both on s3://:
    a second run takes everything from the cache; no credential reaches results or artifacts."""
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.config import PipelineConfig
    from flows.retrain import mlflow_params
    from flows.tasks import ingest, tokenize, data_params

    config = PipelineConfig.model_validate({
        "data_dir": f"s3://{BUCKET}", "encoder": {"name_or_path": str(tiny_encoder), "max_length": 32},
        "tasks": [{**POS, "max_train_examples": 60}, {**SST2, "max_train_examples": 60}],
        "storage": {"root": str(tmp_path / "state"), "cache": "s3://cache/mtl",
                    "s3": s3.model_dump(mode="python")}})  # python mode keeps the SecretStr values
    assert config.storage.s3.storage_options()["secret"] == "testing-secret"

    @flow
    def data_only(run: str) -> dict:
        ingested = ingest(config.tasks, config.data_dir, str(tmp_path / run), config.storage)
        tokenized = tokenize(config.tasks, ingested, config.encoder, config.tokenize, str(tmp_path / run),
                             config.storage)
        return {"ingested": ingested, "tokenized": tokenized}

    cold, warm = data_only("r1"), data_only("r2")
    assert not any(r["cached"] for r in cold["tokenized"].values())
    assert all(r["cached"] for part in ("ingested", "tokenized") for r in warm[part].values())
    assert warm["tokenized"]["pos"]["stats"] == cold["tokenized"]["pos"]["stats"]
    assert data_params(warm["tokenized"])["data.sst2.examples"] == 60
    assert Path(warm["tokenized"]["pos"]["features"]).is_file()  # fetched for the local trainer

    async def artifacts() -> str:
        async with get_client() as client:
            return repr([a.data for a in await client.read_artifacts()])

    published_artifacts = asyncio.run(artifacts())
    assert "label_distribution" not in published_artifacts and "windowed" in published_artifacts
    published = published_artifacts + repr(cold) + repr(warm) + repr(mlflow_params(config))
    for secret in ("testing-secret", "testing-key"):
        assert secret not in published
    assert mlflow_params(config)["storage.s3.secret_access_key"] == "**********"


def test_retrain_flow_unchanged_with_corpora_on_s3(s3, tiny_encoder, tmp_path, prefect_engine):
    """The whole flow (train on 2 DeepSpeed processes, evaluate, register, promote) with the data
    directory on s3://: only `data_dir` and `storage.s3` differ from a local run."""
    from mlflow import MlflowClient

    from flows.config import PipelineConfig
    from flows.retrain import retrain

    config = PipelineConfig.model_validate({
        "name": "s3demo", "data_dir": f"s3://{BUCKET}",
        "encoder": {"name_or_path": str(tiny_encoder), "max_length": 32},
        "tasks": [{**POS, "max_train_examples": 64, "max_dev_examples": 30},
                  {**SST2, "max_train_examples": 64, "max_dev_examples": 30}],
        "training": {"steps": 6, "micro_batch_size": 4, "warmup_steps": 1, "checkpoint_every": 6, "log_every": 3},
        "affinity": {"method": "off"},
        "storage": {"root": str(tmp_path / "state"), "s3": s3.model_dump(mode="python")},
        "registry": {"model_name": "s3-mtl", "experiment": "s3"}})
    summary = retrain(config)
    assert (summary["version"], summary["promoted"]) == ("1", True)
    assert set(summary["metrics"]) == {"pos", "sst2"}
    client = MlflowClient(summary["tracking_uri"])
    assert str(client.get_model_version_by_alias("s3-mtl", "champion").version) == "1"
    params = client.get_run(summary["run_id"]).data.params
    assert params["data_dir"] == f"s3://{BUCKET}"
    assert "testing-secret" not in repr(params) and "testing-secret" not in repr(summary)


def test_damaged_s3_cache_entry_is_recomputed_not_loaded(s3, tmp_path, caplog):
    """An object changed at rest in an `s3://` cache (a flipped byte, a truncation) fails its
    checksum on download: logged, removed and recomputed; the damaged bytes never reach the run."""
    import logging

    from data_prep.cache import ArtifactCache
    from data_prep.stage import ingest_cached, read_examples

    cfg = TaskDataConfig(**{**SST2, "max_train_examples": 50})
    cache = ArtifactCache("s3://cache/damaged", s3)
    first = ingest_cached(cfg, f"s3://{BUCKET}", cache, tmp_path / "w1", s3)
    entry = cache.location("ingest", first["key"])
    sound = cache.fs.cat_file(f"{entry}/train.jsonl")
    for name, spoil in (("train.jsonl", lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:]),
                        ("meta.json", lambda b: b[: len(b) // 2])):
        cache.fs.pipe_file(f"{entry}/{name}", spoil(cache.fs.cat_file(f"{entry}/{name}")))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="data_prep.cache"):
            again = ingest_cached(cfg, f"s3://{BUCKET}", cache, tmp_path / name, s3)
        assert again["cached"] is False and f"cache entry {entry} is damaged" in caplog.text
        assert Path(again["splits"]["train"]).read_bytes() == sound
        assert [e.text for e in read_examples(again["splits"]["train"])] == \
            [e.text for e in read_examples(first["splits"]["train"])]
    assert ingest_cached(cfg, f"s3://{BUCKET}", cache, tmp_path / "w3", s3)["cached"] is True
    assert "testing-secret" not in caplog.text
