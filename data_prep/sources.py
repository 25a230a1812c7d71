"""Where data comes from: local paths and fsspec URLs (`s3://` through s3fs), expanded from
globs and folders of shards, and hub datasets through `datasets.load_dataset`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import fsspec

from data_prep.config import HubSource, S3Config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GLOB_CHARS = set("*?[")


def default_data_dir(configured: str | None = None) -> str | None:
    """`MTL_DATA_DIR` wins, then the config's value, then `../shared/data` beside the project."""
    if env := os.environ.get("MTL_DATA_DIR"):
        return env
    if configured:
        return configured
    for candidate in (Path.cwd().parent / "shared" / "data", PROJECT_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate)
    return None


def is_url(location: str) -> bool:
    return "://" in location


def resolve(location: str, data_dir: str | None) -> str:
    """An absolute path or URL for a configured location."""
    if is_url(location) or os.path.isabs(location) or data_dir is None:
        return location
    if is_url(data_dir):
        return data_dir.rstrip("/") + "/" + location
    return str(Path(data_dir) / location)


def storage_options(location: str, s3: S3Config | None) -> dict[str, Any]:
    """fsspec options for a location: S3 settings only for `s3://`, none for local files."""
    if location.startswith(("s3://", "s3a://")):
        return (s3 or S3Config()).storage_options()
    return {}


def filesystem(location: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(location, **storage_options(location, s3))


def _full(fs: fsspec.AbstractFileSystem, location: str, path: str) -> str:
    """The path fsspec returns, with the protocol put back so it can be opened again anywhere."""
    return fs.unstrip_protocol(path) if is_url(location) else path


def expand(location: str, s3: S3Config | None = None) -> list[str]:
    """The files a location names, sorted: itself, a glob's matches, or the visible files of a
    folder (its shards). Empty when nothing is there."""
    fs, path = filesystem(location, s3)
    if GLOB_CHARS & set(path):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if not any(part.startswith((".", "_")) for part in
                                                      p[len(path.rstrip("/")) + 1:].split("/"))]
    elif fs.isfile(path):
        found = [path]
    else:
        found = []
    return sorted(_full(fs, location, p) for p in found)


def exists(location: str, s3: S3Config | None = None) -> bool:
    return bool(expand(location, s3))


def read_bytes(location: str, s3: S3Config | None = None) -> bytes:
    fs, path = filesystem(location, s3)
    with fs.open(path, "rb") as handle:
        return handle.read()


def fingerprint(location: str, s3: S3Config | None = None) -> str:
    """What identifies a file's content: the S3 ETag (no download), else a hash of the bytes.
    Size and mtime alone would miss a same-size rewrite within a second."""
    fs, path = filesystem(location, s3)
    if is_url(location) and not location.startswith("file://"):
        info = fs.info(path)
        tag = info.get("ETag") or info.get("etag") or info.get("md5")
        if tag:
            return f"etag:{str(tag).strip(chr(34))}:{info.get('size')}"
    digest = hashlib.blake2b(digest_size=20)
    with fs.open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return "blake2b:" + digest.hexdigest()


def load_hub_split(hub: HubSource, split: str) -> Any:
    """One split of a hub dataset (a `datasets.Dataset`) through the ordinary `load_dataset` path,
    so the hub's own cache, revision pinning and offline mode (HF_HUB_OFFLINE) all apply."""
    from datasets import load_dataset

    return load_dataset(hub.name, hub.config, split=split, data_files=hub.data_files, revision=hub.revision)
