"""Where checkpoints live: a local (or shared) folder, or any fsspec URL such as `s3://bucket/run`.

A checkpoint is a folder `step_NNNNNNNN` holding DeepSpeed's files, one `rank_state_R.pt` per
rank, and a `COMPLETE` marker written last, once every rank's files are in place. Readers only
ever consider tags with the marker, so a crash mid-save leaves debris, never a half checkpoint.

For a remote store DeepSpeed still writes to a node-local staging folder (it only writes local
paths); then each node's local rank 0 uploads its node's files, and after a barrier global rank 0
writes the marker. Resuming downloads the newest complete tag into the staging folder.

Pruning keeps the newest `keep` checkpoints and every pinned one (the best steps of evaluation
during training, which the export is assembled from).

Before the marker, each node's local rank 0 writes a manifest `SHA256SUMS.<rank>.json` of its
files' sizes and SHA-256 (the cache's checksums, data_prep/cache.py). A resume verifies the
newest tag against them and never loads a damaged one: it is logged, its marker removed (a
redone step rewrites it), and the previous sound tag is taken. Uploads and the marker's write
ride out an endpoint that is down for a while (data_prep/retry.py); one that stays down fails
the save before the marker, so the task's retry resumes from the previous tag.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_prep.cache import checksum
from data_prep.retry import with_retries

COMPLETE = "COMPLETE"
MANIFEST_PREFIX = "SHA256SUMS."


def is_manifest(name: str) -> bool:
    return name.startswith(MANIFEST_PREFIX) and name.endswith(".json")


def folder_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under `folder` (relative POSIX path) but the marker and manifests, checksummed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE and not is_manifest(path.name):
            with open(path, "rb") as handle:
                found[path.relative_to(folder).as_posix()] = checksum(handle)
    return found


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder against its manifests; None when every file is sound."""
    manifests = sorted(p for p in folder.iterdir() if is_manifest(p.name)) if folder.is_dir() else []
    if not manifests:
        return None if written_before_checksums(folder) else "no checksum manifest"
    expected: dict[str, Any] = {}
    for path in manifests:
        try:
            expected.update(json.loads(path.read_text())["files"])
        except (ValueError, KeyError, TypeError) as exc:
            return f"{path.name} is unreadable ({type(exc).__name__})"
    for name, want in sorted(expected.items()):
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        with open(file, "rb") as handle:
            got = checksum(handle)
        if got != want:
            return (f"{name}: {got['size']} bytes with SHA-256 {got['sha256'][:12]}..., written as "
                    f"{want['size']} bytes with {want['sha256'][:12]}...")
    return None


def written_before_checksums(folder: Path) -> bool:
    """A checkpoint from before checksum manifests (its marker does not say `checksummed`): taken as
    it is, as it always was, rather than thrown away on the upgrade; a newer one without its
    manifest is damaged."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and not marker.get("checksummed")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    """The step of a checkpoint tag (the inverse of `tag_for`)."""
    return int(tag.removeprefix("step_"))


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
        if local_rank == 0:  # this node's files are all written: checksum them before they count
            folder = Path(self.local) / tag
            (folder / f"{MANIFEST_PREFIX}{rank}.json").write_text(json.dumps({"files": folder_checksums(folder)}))
            if self.remote:
                self._upload(tag)
        barrier()
        if rank == 0:
            marker = json.dumps({"step": step, "checksummed": True})
            if self.remote:
                target = f"{self.uri}/{tag}/{COMPLETE}"
                with_retries(lambda: self._fs().pipe_file(target, marker.encode()), f"marker {target}")
            else:
                (Path(self.local) / tag / COMPLETE).write_text(marker)
            self.prune(keep)
        if self.remote and local_rank == 0:
            # the staging folder only needs the newest tag (for consolidation at the end)
            self._prune_local(keep=1, newest=tag)
        barrier()

    def fetch(self, tag: str, again: bool = False) -> str:
        """Make `tag` complete in the local folder (downloading what is missing, or everything when
        `again`); returns that folder."""
        if self.remote:
            fs = self._fs()
            prefix = f"{self.uri}/{tag}/"
            for remote in fs.find(prefix):
                rel = remote.split(f"/{tag}/", 1)[1]
                target = Path(self.local) / tag / rel
                if again or not target.is_file() or target.stat().st_size != fs.size(remote):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(remote, str(target))
        return self.local

    def latest_sound(self, log: Callable[[str], None] = print) -> str | None:
        """The newest complete tag whose files match their manifests, fetched into the local folder.
        A damaged one is logged and unmarked, so no later reader takes it either."""
        for tag in reversed(self.complete_tags()):
            problem = damage(Path(self.fetch(tag)) / tag)
            if problem and self.remote:  # perhaps only the local copy is bad: download it anew
                problem = damage(Path(self.fetch(tag, again=True)) / tag)
            if problem is None:
                if written_before_checksums(Path(self.local) / tag):
                    log(f"checkpoint {tag} in {self.uri} was written before checksum manifests: loaded unchecked")
                return tag
            log(f"checkpoint {tag} in {self.uri} is damaged, not loading it: {problem}")
            self.unmark(tag)
        return None

    def unmark(self, tag: str) -> None:
        """Take a tag out of what readers consider (its files stay, as debris that pruning removes)."""
        if self.remote:
            fs = self._fs()
            if fs.exists(f"{self.uri}/{tag}/{COMPLETE}"):
                fs.rm_file(f"{self.uri}/{tag}/{COMPLETE}")
        (Path(self.local) / tag / COMPLETE).unlink(missing_ok=True)

    def _upload(self, tag: str) -> None:
        fs = self._fs()
        folder = Path(self.local) / tag
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != COMPLETE:
                target = f"{self.uri}/{tag}/{path.relative_to(folder).as_posix()}"
                with_retries(lambda p=str(path), t=target: fs.put_file(p, t), f"upload of {target}")

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
