"""Checkpoints to s3:// on a real S3 endpoint (moto server on loopback): marker written last,
keep-last-K, and a rerun downloads the newest complete checkpoint and resumes from it."""
from __future__ import annotations

import shutil

import pytest

from engine_support import tiny_tasks, train
from training.trainer.checkpoints import CheckpointStore
from training.launch.launcher import free_port


@pytest.fixture()
def s3(monkeypatch):
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    # the launched workers inherit these through the launcher's environment
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ckpt")
    # fsspec caches filesystems by arguments, not by environment: drop any bound to an older server
    s3fs.S3FileSystem.clear_instance_cache()
    yield "s3://ckpt/runs"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_store_publishes_marker_last_and_prunes(s3, tmp_path):
    store = CheckpointStore(f"{s3}/unit", str(tmp_path / "staging"))
    for step in (1, 2, 3):
        folder = tmp_path / "staging" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "weights.pt").write_bytes(b"x" * step)
        assert store.latest() == (None if step == 1 else f"step_{step - 1:08d}")
        store.publish(folder.name, step, rank=0, local_rank=0, barrier=lambda: None, keep=2)
    assert store.complete_tags() == ["step_00000002", "step_00000003"]
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["step_00000003"]
    # a half upload (no marker) is never offered for resume
    store._fs().pipe_file(f"{s3}/unit/step_00000009/weights.pt", b"partial")
    assert store.latest() == "step_00000003"
    shutil.rmtree(tmp_path / "staging")
    fresh = CheckpointStore(f"{s3}/unit", str(tmp_path / "staging"))
    fresh.fetch("step_00000002")
    assert (tmp_path / "staging" / "step_00000002" / "weights.pt").read_bytes() == b"xx"


@pytest.mark.slow
def test_training_checkpoints_to_s3_and_resumes_from_there(s3, tiny_encoder, data_dir, tmp_path):
    tasks = tiny_tasks(tiny_encoder, data_dir, tmp_path / "tasks")
    run = tmp_path / "run-s3"
    train(tiny_encoder, tasks, run, {"zero_stage": 2}, checkpoint_uri=s3, keep_checkpoints=1)
    store = CheckpointStore(f"{s3}/{run.name}", str(tmp_path / "check"))
    assert store.complete_tags() == ["step_00000008"]
    assert not (run / "checkpoints").exists()
    # a retry on a fresh machine: no export, no staging folder; only the bucket remembers
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoint-staging")
    log: list[str] = []
    export = train(tiny_encoder, tasks, run, {"zero_stage": 2}, log, checkpoint_uri=s3, keep_checkpoints=1)
    assert any("resumed from checkpoint at step 8" in line for line in log)
    assert (run / "checkpoint-staging" / "step_00000008").is_dir()
    assert (run / "model" / "mtl_model.json").is_file() and export == str(run / "model")


@pytest.mark.slow
def test_two_staged_runs_on_one_checkpoint_uri_never_share_checkpoints(s3, tiny_encoder, data_dir, tmp_path):
    """Each run's checkpoints live under <uri>/<run folder>/<stage>: the run folder carries the flow
    run's id, so a second run of the same config starts fresh instead of resuming the first's."""
    tasks = tiny_tasks(tiny_encoder, data_dir, tmp_path / "tasks")
    staged = {"schedule": "mtdnn", "schedule_params": {"finetune_tasks": ["sst2"], "finetune_steps": 2},
              "steps": 4, "checkpoint_every": 2, "checkpoint_uri": s3, "keep_checkpoints": 1}
    logs: dict[str, list[str]] = {}
    for run in ("demo-flowrun1", "demo-flowrun2"):
        logs[run] = []
        train(tiny_encoder, tasks, tmp_path / run, {"zero_stage": 2}, logs[run], **staged)
    assert not any("resumed from checkpoint" in line for log in logs.values() for line in log)
    for run in logs:
        for stage, last in (("multitask", "step_00000004"), ("finetune-sst2", "step_00000002")):
            store = CheckpointStore(f"{s3}/{run}/{stage}", str(tmp_path / "check" / run / stage))
            assert store.complete_tags() == [last], (run, stage)
    fs = CheckpointStore(s3, str(tmp_path / "check" / "root"))._fs()
    top = {p.rsplit("/", 1)[-1] for p in fs.ls(s3)}  # other tests' runs may share the bucket
    assert {"demo-flowrun1", "demo-flowrun2"} <= top and not top & {"multitask", "finetune-sst2"}
