"""Storage faults, each with its figure: a checkpoint damaged at rest is detected by its SHA-256
manifest and never loaded (resume takes the previous sound tag); a real S3 endpoint (moto server
on loopback) stopped during a checkpoint upload or a cache write is ridden out by the retries
when it comes back, and when it does not, the write fails before its marker: no half checkpoint
is ever marked COMPLETE and no half cache entry is ever read."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data_prep.cache import MARKER, ArtifactCache
from training.launch.launcher import free_port
from training.trainer.checkpoints import COMPLETE, CheckpointStore, damage

PREVIOUS, TAG = "step_00000004", "step_00000008"
FILES = {"mp_rank_00_model_states.pt": b"model" * 50,
         "zero_pp_rank_0_mp_rank_00_optim_states.pt": b"optim" * 80,
         "zero_pp_rank_1_mp_rank_00_optim_states.pt": b"optim" * 81, "rank_state_0.pt": b"rng0", "rank_state_1.pt": b"rng1"}
OUTAGE_S = 1.0  # the endpoint comes back after this; the retries (0.2 + 0.4 + 0.8 s) outlast it


class Endpoint:
    """A moto S3 server on one loopback port that can be stopped and started again (its buckets
    live in the process, so they are there again after a restart, as a real store's would be)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: Any = None
        self.stops = 0

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.stops += 1

    def down_for(self, seconds: float | None) -> None:
        """Stop now; start again after `seconds` (None: stays down until the test starts it)."""
        self.stop()
        if seconds is not None:
            threading.Timer(seconds, self.start).start()


@pytest.fixture()
def endpoint(monkeypatch) -> Iterator[Endpoint]:
    import boto3
    import s3fs

    point = Endpoint()
    point.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{point.port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    # one try per request below ours, so the figures are the store's retries, not botocore's
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr("data_prep.retry.FIRST_DELAY_S", 0.2)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="faults")
    s3fs.S3FileSystem.clear_instance_cache()
    yield point
    s3fs.S3FileSystem.clear_instance_cache()
    if point.server is not None:
        try:
            point.server.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass


def write_tag(folder: Path, tag: str) -> None:
    (folder / tag).mkdir(parents=True, exist_ok=True)
    for name, data in FILES.items():
        (folder / tag / name).write_bytes(data)


def publish(store: CheckpointStore, tag: str) -> None:
    write_tag(Path(store.local), tag)
    store.publish(tag, int(tag.split("_")[1]), rank=0, local_rank=0, barrier=lambda: None, keep=3)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def stop_at_put(store_or_cache: Any, endpoint: Endpoint, nth: int, outage_s: float | None) -> dict[str, int]:
    """Stop the endpoint just before the n-th file upload (the first ones are in the store)."""
    fs = store_or_cache._fs() if isinstance(store_or_cache, CheckpointStore) else store_or_cache.fs
    real_put, calls = fs.put_file, {"puts": 0}

    def put_file(local: str, remote: str, **kw: Any) -> Any:
        calls["puts"] += 1
        if calls["puts"] == nth:
            endpoint.down_for(outage_s)
        return real_put(local, remote, **kw)

    fs.put_file = put_file
    return calls


# -- checksums ---------------------------------------------------------------------------------

def test_damaged_local_checkpoint_is_detected_and_the_previous_sound_one_taken(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    for tag in (PREVIOUS, TAG):
        publish(store, tag)
    assert store.complete_tags() == [PREVIOUS, TAG] and damage(tmp_path / "ckpt" / TAG) is None
    flip_a_byte(tmp_path / "ckpt" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    logged: list[str] = []
    assert store.latest_sound(logged.append) == PREVIOUS
    assert len(logged) == 1 and "damaged" in logged[0] and "zero_pp_rank_1" in logged[0]
    # unmarked: no later reader (another rank, the next resume) takes it; a redone step rewrites it
    assert store.complete_tags() == [PREVIOUS]


def test_checkpoint_with_a_missing_file_or_manifest_is_not_loaded(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    for tag in (PREVIOUS, TAG):
        publish(store, tag)
    (tmp_path / "ckpt" / TAG / "rank_state_1.pt").unlink()
    (tmp_path / "ckpt" / PREVIOUS / "SHA256SUMS.0.json").unlink()
    logged: list[str] = []
    assert store.latest_sound(logged.append) is None  # neither is sound: start from scratch
    assert [("missing" in logged[0]), ("no checksum manifest" in logged[1])] == [True, True]


def test_a_checkpoint_from_before_manifests_is_still_resumed_from(tmp_path):
    """An upgrade keeps a run's checkpoints: one whose marker predates checksums (no `checksummed`)
    is loaded, with a line saying it is unchecked, not unmarked as damaged."""
    store = CheckpointStore(str(tmp_path / "ckpt"))
    publish(store, TAG)
    folder = tmp_path / "ckpt" / TAG
    (folder / "SHA256SUMS.0.json").unlink()
    (folder / "COMPLETE").write_text(json.dumps({"step": 12}))  # the marker as it was written before
    logged: list[str] = []
    assert store.latest_sound(logged.append) == TAG and store.complete_tags() == [TAG]
    assert len(logged) == 1 and "before checksum manifests" in logged[0]


def test_checkpoint_damaged_in_the_bucket_is_detected_after_a_fresh_download(endpoint, tmp_path):
    store = CheckpointStore("s3://faults/ckpt", str(tmp_path / "staging"))
    for tag in (PREVIOUS, TAG):
        publish(store, tag)
    fs = store._fs()
    key = f"faults/ckpt/{TAG}/mp_rank_00_model_states.pt"
    fs.pipe_file(key, fs.cat(key)[:-7])  # truncated in the store itself
    logged: list[str] = []
    fresh = CheckpointStore("s3://faults/ckpt", str(tmp_path / "other-node"))
    assert fresh.latest_sound(logged.append) == PREVIOUS
    assert len(logged) == 1 and "mp_rank_00_model_states.pt" in logged[0]
    assert fresh.complete_tags() == [PREVIOUS]


# -- the endpoint stopped during a checkpoint upload --------------------------------------------

def test_s3_stopped_during_a_checkpoint_upload_is_retried_and_completes(endpoint, tmp_path, caplog):
    store = CheckpointStore("s3://faults/ride", str(tmp_path / "staging"))
    publish(store, PREVIOUS)
    calls = stop_at_put(store, endpoint, nth=2, outage_s=OUTAGE_S)
    started = time.monotonic()
    publish(store, TAG)
    took = time.monotonic() - started
    retries = [r for r in caplog.records if "attempt" in r.getMessage() and TAG in r.getMessage()]
    assert endpoint.stops == 1 and 1 <= len(retries) <= 3 and took >= OUTAGE_S
    assert calls["puts"] == len(FILES) + 1 + len(retries)  # every file and the manifest, plus the retries
    assert store.complete_tags() == [PREVIOUS, TAG]
    other = CheckpointStore("s3://faults/ride", str(tmp_path / "other-node"))
    assert other.latest_sound() == TAG and damage(tmp_path / "other-node" / TAG) is None


def test_s3_down_for_good_during_a_checkpoint_upload_leaves_no_marker(endpoint, tmp_path):
    store = CheckpointStore("s3://faults/down", str(tmp_path / "staging"))
    publish(store, PREVIOUS)
    stop_at_put(store, endpoint, nth=3, outage_s=None)
    with pytest.raises(Exception) as failed:
        publish(store, TAG)
    assert "connect" in str(failed.value).lower()
    endpoint.start()  # the store is back: what is in it?
    fs = store._fs()
    uploaded = {Path(p).name for p in fs.find(f"faults/down/{TAG}/")}
    assert 0 < len(uploaded) < len(FILES) and COMPLETE not in uploaded
    assert store.complete_tags() == [PREVIOUS] and store.latest_sound() == PREVIOUS


# -- the endpoint stopped during a cache write --------------------------------------------------

def write_entry(cache: ArtifactCache, key: str) -> None:
    with cache.writer("tokenize", key) as folder:
        for name, data in FILES.items():
            (folder / name).write_bytes(data)


def read_entry(cache: ArtifactCache, key: str, work: Path) -> dict[str, bytes] | None:
    return cache.load("tokenize", key, lambda: {n: Path(cache.fetch("tokenize", key, n, work)).read_bytes()
                                                for n in FILES})


def test_s3_stopped_during_a_cache_write_is_retried_and_commits(endpoint, tmp_path):
    cache = ArtifactCache("s3://faults/cache")
    stop_at_put(cache, endpoint, nth=2, outage_s=OUTAGE_S)
    write_entry(cache, "k1")
    assert endpoint.stops == 1 and read_entry(cache, "k1", tmp_path / "w") == FILES


def test_s3_down_for_good_during_a_cache_write_leaves_no_entry_that_is_read(endpoint, tmp_path):
    cache = ArtifactCache("s3://faults/cache")
    stop_at_put(cache, endpoint, nth=3, outage_s=None)
    with pytest.raises(Exception, match="(?i)connect"):
        write_entry(cache, "k2")
    endpoint.start()
    written = {Path(p).name for p in cache.fs.find("faults/cache/tokenize/k2/")}
    assert 0 < len(written) < len(FILES) and MARKER not in written  # the half entry is there, unmarked
    assert not cache.has("tokenize", "k2") and read_entry(cache, "k2", tmp_path / "w") is None
    write_entry(ArtifactCache("s3://faults/cache"), "k2")  # the task's retry writes it whole
    assert read_entry(cache, "k2", tmp_path / "w2") == FILES
