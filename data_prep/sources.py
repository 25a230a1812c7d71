"""Where data comes from: local paths and fsspec URLs (`s3://` through s3fs)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def exists(location: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
    return bool(fs.isfile(path))


def read_bytes(location: str, storage_options: dict[str, Any] | None = None) -> bytes:
    with fsspec.open(location, "rb", **(storage_options or {})) as handle:
        return handle.read()
