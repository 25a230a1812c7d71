"""A content-addressed cache in the artifact store (a local folder or `s3://bucket/prefix`).

An entry is a folder `<root>/<kind>/<key>/` of files plus a `_COMMITTED` marker written last.
Locally the folder is first written under a temporary name and renamed into place; on S3 (no
rename) the marker is the commit. A reader ignores any folder without the marker, so a crash
mid-write never leaves an entry that is later read.

Keys hash everything that decides the content: the source bytes (S3 ETags), the reader
settings, the tokenizer files, max length, and the code of this package.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from data_prep.config import S3Config
from data_prep.sources import filesystem, is_url

MARKER = "_COMMITTED"
Kind = Literal["ingest", "tokenize"]
PACKAGE_DIR = Path(__file__).resolve().parent


def digest(*parts: Any) -> str:
    """A stable hash of JSON-able parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of this package's source: changing how data is read or tokenized invalidates entries."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(name_or_path: str) -> str:
    """A hash of a local tokenizer's files (vocab, merges, config); a hub name stands for itself."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return "name:" + name_or_path
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.startswith(("tokenizer", "vocab", "merges", "special_tokens",
                                                    "spiece", "sentencepiece", "added_tokens")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return "files:" + h.hexdigest()[:32]


class ArtifactCache:
    def __init__(self, root: str, s3: S3Config | None = None) -> None:
        self.root = root.rstrip("/")
        self.s3 = s3
        self.remote = is_url(root) and not root.startswith("file://")
        self.fs, self.base = filesystem(self.root, s3)

    def location(self, kind: Kind, key: str) -> str:
        return f"{self.root}/{kind}/{key}"

    def _path(self, kind: Kind, key: str, name: str = "") -> str:
        return "/".join(p for p in (self.base, kind, key, name) if p)

    def has(self, kind: Kind, key: str) -> bool:
        return bool(self.fs.exists(self._path(kind, key, MARKER)))

    @contextmanager
    def writer(self, kind: Kind, key: str) -> Iterator[Path]:
        """A local folder to write an entry's files into; committed atomically when the block
        ends without an exception, discarded otherwise."""
        if self.remote:
            with tempfile.TemporaryDirectory(prefix=f"mtl-{kind}-") as staging:
                yield Path(staging)
                for source in sorted(Path(staging).iterdir()):
                    self.fs.put_file(str(source), self._path(kind, key, source.name))
                self.fs.pipe_file(self._path(kind, key, MARKER), b"ok")  # the commit: after every file
            return
        final = Path(self._path(kind, key))
        tmp = final.with_name(f".tmp-{key}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / MARKER).write_text("ok")
            if final.exists():  # a half entry left by a crash (no marker), or a concurrent writer's
                if (final / MARKER).exists():
                    return
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def fetch(self, kind: Kind, key: str, name: str, work_dir: str | Path) -> str:
        """A local path to an entry's file: the entry itself for a local store, else a download
        into `work_dir` (training and evaluation read local files)."""
        if not self.remote:
            return self._path(kind, key, name)
        target = Path(work_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        self.fs.get_file(self._path(kind, key, name), str(tmp))
        os.replace(tmp, target)
        return str(target)

    def read_json(self, kind: Kind, key: str, name: str) -> Any:
        with self.fs.open(self._path(kind, key, name), "r", encoding="utf-8") as handle:
            return json.load(handle)
