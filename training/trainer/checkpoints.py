"""Where checkpoints live: a local (or shared) folder, or any fsspec URL such as `s3://bucket/run`.

A checkpoint is a folder `step_NNNNNNNN` holding DeepSpeed's files, one `rank_state_R.pt` per
rank, and a `COMPLETE` marker written last, once every rank's files are in place. Readers only
ever consider tags with the marker, so a crash mid-save leaves debris, never a half checkpoint.

For a remote store DeepSpeed still writes to a node-local staging folder (it only writes local
paths); then each node's local rank 0 uploads its node's files, and after a barrier global rank 0
writes the marker. Resuming downloads the newest complete tag into the staging folder.

Pruning keeps the newest `keep` checkpoints and every pinned one (the best steps of evaluation
during training, which the export is assembled from).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_complete_tags(root: str | Path) -> list[str]:
    path = Path(root)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name.startswith("step_") and (p / COMPLETE).is_file())


class CheckpointStore:
    def __init__(self, uri: str, staging_dir: str | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.remote = is_remote(uri)
        if self.remote and not staging_dir:
            raise ValueError(f"checkpoints at {uri} need a local staging folder")
        # the folder DeepSpeed reads and writes: the store itself when it is local
        self.local = str(staging_dir if self.remote else uri)
        Path(self.local).mkdir(parents=True, exist_ok=True)
        self.pinned: set[str] = set()

    def pin(self, tags: set[str]) -> None:
        """Tags that pruning must keep besides the newest ones (replaces the previous pins)."""
        self.pinned = set(tags)

    def _fs(self) -> Any:
        """The fsspec filesystem of the store (imported lazily: local runs need no s3fs)."""
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.uri)
        fs.invalidate_cache()  # listings are cached by s3fs; another rank may have just written
        return fs

    def complete_tags(self) -> list[str]:
        if not self.remote:
            return local_complete_tags(self.local)
        fs = self._fs()
        if not fs.exists(self.uri):
            return []
        return sorted(Path(p).parent.name for p in fs.glob(f"{self.uri}/step_*/{COMPLETE}"))

    def latest(self) -> str | None:
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def publish(self, tag: str, step: int, rank: int, local_rank: int, barrier: Callable[[], None],
                keep: int) -> None:
        """Called by every rank once its files of `tag` are written locally."""
        barrier()
        if self.remote and local_rank == 0:
            self._upload(tag)
        barrier()
        if rank == 0:
            marker = json.dumps({"step": step})
            if self.remote:
                self._fs().pipe_file(f"{self.uri}/{tag}/{COMPLETE}", marker.encode())
            else:
                (Path(self.local) / tag / COMPLETE).write_text(marker)
            self.prune(keep)
        if self.remote and local_rank == 0:
            # the staging folder only needs the newest tag (for consolidation at the end)
            self._prune_local(keep=1, newest=tag)
        barrier()

    def fetch(self, tag: str) -> str:
        """Make `tag` complete in the local folder (downloading what is missing); returns that folder."""
        if self.remote:
            fs = self._fs()
            prefix = f"{self.uri}/{tag}/"
            for remote in fs.find(prefix):
                rel = remote.split(f"/{tag}/", 1)[1]
                target = Path(self.local) / tag / rel
                if not target.is_file() or target.stat().st_size != fs.size(remote):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(remote, str(target))
        return self.local

    def _upload(self, tag: str) -> None:
        fs = self._fs()
        folder = Path(self.local) / tag
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != COMPLETE:
                fs.put_file(str(path), f"{self.uri}/{tag}/{path.relative_to(folder).as_posix()}")

    def prune(self, keep: int) -> None:
        """Drop complete checkpoints beyond the newest `keep`, and older half-written ones."""
        tags = self.complete_tags()
        if not tags:
            return
        if self.remote:
            fs = self._fs()
            for tag in tags[:-keep]:
                if tag not in self.pinned:
                    fs.rm(f"{self.uri}/{tag}", recursive=True)
            return
        self._prune_local(keep, tags[-1])

    def _prune_local(self, keep: int, newest: str) -> None:
        complete = local_complete_tags(self.local)
        # a remote store's staging folder keeps only the newest tag: pinned ones are fetched when needed
        drop = set(complete[:-keep]) - self.pinned if not self.remote else {t for t in complete if t != newest}
        for path in Path(self.local).iterdir():
            # a folder without the marker older than the newest complete one is debris of a crash
            if path.is_dir() and path.name.startswith("step_") and (
                    path.name in drop or (path.name < newest and path.name not in complete)):
                shutil.rmtree(path, ignore_errors=True)
