"""Checkpoint publishing order, checked while it happens: the COMPLETE marker appears only once
every rank's files are in the store, and a failure on the way (an upload, the marker write, a peer
that never reaches the barrier) leaves no marker, so a resume takes the previous checkpoint. The
real CheckpointStore on a local folder and on a real S3 endpoint (moto server on loopback).

The other ranks are simulated through the `barrier` the store is handed: they do their part of
publishing while this rank (global rank 0, local rank 0) waits there.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from test_engine_s3 import s3  # noqa: F401  (the moto S3 fixture)
from training.trainer.checkpoints import COMPLETE, CheckpointStore

PREVIOUS, TAG = "step_00000001", "step_00000002"
MANIFEST = "SHA256SUMS.0.json"  # this node's checksums, written before the marker


def rank_files(rank: int) -> dict[str, bytes]:
    """What each rank writes for a tag (DeepSpeed's files and the worker's RNG state)."""
    files = {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt": b"optim" * (rank + 1),
             f"rank_state_{rank}.pt": b"rng" * (rank + 1)}
    if rank == 0:
        files["mp_rank_00_model_states.pt"] = b"model"
    return files


def write_rank(folder: Path, rank: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in rank_files(rank).items():
        (folder / name).write_bytes(data)


class Peers:
    """Ranks 1 and 2 as this rank's barrier sees them, each barrier ending one of `actions`. First:
    every rank has written its files (rank 1 shares this node's folder, rank 2 is on another
    node). Second, for a remote store: each node's local rank 0 has uploaded its node's files.
    At none of them may the marker exist yet."""

    def __init__(self, marker_exists: Callable[[], bool], *actions: Callable[[], None],
                 fail_at: int | None = None) -> None:
        self.marker_exists, self.actions, self.fail_at = marker_exists, actions, fail_at
        self.calls = 0
        self.marker_seen: list[bool] = []

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f"a peer died before barrier {self.calls}")
        if self.calls <= len(self.actions):
            self.marker_seen.append(self.marker_exists())
            self.actions[self.calls - 1]()


def publish_previous(store: CheckpointStore) -> None:
    write_rank(Path(store.local) / PREVIOUS, 0)
    store.publish(PREVIOUS, 1, 0, 0, lambda: None, keep=2)


# -- a local (shared) folder ----------------------------------------------------------------

def local_peers(store: CheckpointStore, **kw: Any) -> Peers:
    folder = Path(store.local) / TAG

    def others_write() -> None:
        for rank in (1, 2):
            write_rank(folder, rank)

    return Peers(lambda: (folder / COMPLETE).exists(), others_write, **kw)  # a shared folder: no upload


def test_local_marker_is_written_after_every_rank_wrote(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    publish_previous(store)
    write_rank(tmp_path / "checkpoints" / TAG, 0)
    peers = local_peers(store)
    store.publish(TAG, 2, 0, 0, peers, keep=2)
    assert peers.marker_seen == [False]
    assert store.complete_tags() == [PREVIOUS, TAG]
    names = {p.name for p in (tmp_path / "checkpoints" / TAG).iterdir()}
    assert names == {COMPLETE, MANIFEST, *rank_files(0), *rank_files(1), *rank_files(2)}


def test_local_peer_failure_before_the_marker_leaves_no_marker(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    publish_previous(store)
    write_rank(tmp_path / "checkpoints" / TAG, 0)
    with pytest.raises(RuntimeError, match="peer died"):
        store.publish(TAG, 2, 0, 0, local_peers(store, fail_at=1), keep=2)
    assert not (tmp_path / "checkpoints" / TAG / COMPLETE).exists()
    assert store.latest() == PREVIOUS


# -- s3:// ----------------------------------------------------------------------------------

class FlakyFS:
    """The store's real filesystem, failing from the n-th upload on, or the marker write, on request
    (an endpoint that stays down: the store's retries do not get past it)."""

    def __init__(self, fs: Any, fail_put: int | None = None, fail_marker: bool = False) -> None:
        self._fs, self.fail_put, self.fail_marker, self.puts = fs, fail_put, fail_marker, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def put_file(self, local: str, remote: str, **kw: Any) -> None:
        self.puts += 1
        if self.fail_put is not None and self.puts >= self.fail_put:
            raise OSError(f"upload of {remote} failed")
        self._fs.put_file(local, remote, **kw)

    def pipe_file(self, path: str, data: bytes, **kw: Any) -> None:
        if self.fail_marker and path.endswith(f"/{COMPLETE}"):
            raise OSError(f"writing {path} failed")
        self._fs.pipe_file(path, data, **kw)


def remote_store(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **flaky: Any) -> tuple[CheckpointStore, Any]:
    monkeypatch.setattr("data_prep.retry.FIRST_DELAY_S", 0.01)
    store = CheckpointStore(uri, str(tmp_path / "staging"))
    publish_previous(store)
    real = store._fs()
    wrapped = FlakyFS(real, **flaky)
    monkeypatch.setattr(store, "_fs", lambda: (real.invalidate_cache(), wrapped)[1])
    write_rank(tmp_path / "staging" / TAG, 0)
    return store, real


def remote_peers(store: CheckpointStore, real: Any, tmp_path: Path, **kw: Any) -> Peers:
    def same_node_writes() -> None:  # rank 1 shares this node's staging folder; rank 2 writes on its node
        write_rank(tmp_path / "staging" / TAG, 1)

    def other_node_uploads() -> None:
        for name, data in rank_files(2).items():
            real.pipe_file(f"{store.uri}/{TAG}/{name}", data)

    def marker_exists() -> bool:
        real.invalidate_cache()
        return bool(real.exists(f"{store.uri}/{TAG}/{COMPLETE}"))

    return Peers(marker_exists, same_node_writes, other_node_uploads, **kw)


def remote_names(real: Any, uri: str) -> set[str]:
    real.invalidate_cache()
    return {Path(p).name for p in real.find(f"{uri}/{TAG}/")}


def test_s3_marker_is_written_after_every_node_uploaded(s3, tmp_path, monkeypatch):
    store, real = remote_store(f"{s3}/order", tmp_path, monkeypatch)
    peers = remote_peers(store, real, tmp_path)
    store.publish(TAG, 2, 0, 0, peers, keep=2)
    assert peers.marker_seen == [False, False]
    assert remote_names(real, store.uri) == {COMPLETE, MANIFEST, *rank_files(0), *rank_files(1), *rank_files(2)}
    assert store.latest() == TAG


@pytest.mark.parametrize("failure", ["upload", "marker", "peer"])
def test_s3_failure_between_upload_and_marker_leaves_no_marker(s3, tmp_path, monkeypatch, failure):
    flaky = {"upload": {"fail_put": 2}, "marker": {"fail_marker": True}, "peer": {}}[failure]
    store, real = remote_store(f"{s3}/fail-{failure}", tmp_path, monkeypatch, **flaky)
    peers = remote_peers(store, real, tmp_path, fail_at=2 if failure == "peer" else None)
    with pytest.raises((OSError, RuntimeError)):
        store.publish(TAG, 2, 0, 0, peers, keep=2)
    assert COMPLETE not in remote_names(real, store.uri)
    assert store.latest() == PREVIOUS
    if failure == "upload":  # the half upload is there, unmarked
        assert remote_names(real, store.uri) and len(remote_names(real, store.uri)) < len(rank_files(0)) + 1


def test_a_file_uri_is_a_local_store():
    from training.trainer.checkpoints import is_remote

    assert not is_remote("file:///tmp/run/checkpoints") and not is_remote("/tmp/run/checkpoints")
    assert is_remote("s3://bucket/run/checkpoints")


# -- a remote store without a server: fsspec's in-memory filesystem ---------------------------
# The same remote code paths as s3:// (upload, marker, fetch, re-download, staging pruning), for
# the fast tests the mutation run uses (it leaves out tests that start a server such as moto).

def memory_store(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(f"memory://ckpt-{tmp_path.name}", str(tmp_path / "staging"))
    assert store.remote
    publish_previous(store)
    write_rank(Path(store.local) / TAG, 0)
    store.publish(TAG, 2, 0, 0, lambda: None, keep=2)
    return store


def test_a_remote_store_keeps_only_the_newest_tag_in_its_staging_folder(tmp_path):
    store = memory_store(tmp_path)
    assert store.complete_tags() == [PREVIOUS, TAG]
    assert sorted(p.name for p in Path(store.local).iterdir()) == [TAG]


def test_a_damaged_staging_copy_is_downloaded_again_from_the_remote_store(tmp_path):
    store = memory_store(tmp_path)
    damaged = next(p for p in (Path(store.local) / TAG).iterdir() if p.name in rank_files(0))
    good = damaged.read_bytes()
    damaged.write_bytes(bytes(len(good)))  # the same size: only the checksum tells
    assert store.latest_sound(log=lambda line: None) == TAG
    assert damaged.read_bytes() == good


def test_fetch_keeps_each_files_path_below_its_tag_even_one_holding_the_tag_again(tmp_path):
    store = memory_store(tmp_path)
    nested = f"{store.uri}/{TAG}/sub/{TAG}/extra.bin"
    store._fs().pipe_file(nested, b"nested")
    store.fetch(TAG)
    assert (Path(store.local) / TAG / "sub" / TAG / "extra.bin").read_bytes() == b"nested"
