"""A content-addressed cache in the artifact store (a local folder or `s3://bucket/prefix`).

An entry is a folder `<root>/<kind>/<key>/` of files plus a `_COMMITTED` marker written last.
Locally the folder is first written under a temporary name and renamed into place; on S3 (no
rename) the marker is the commit. A reader ignores any folder without the marker, so a crash
mid-write never leaves an entry that is later read.

The marker holds every file's size and SHA-256, checked on each read: a file damaged at rest
(a flipped bit, a truncation, a partial copy between stores) is reported as `CorruptEntry`,
never loaded; `ArtifactCache.load` logs it, removes the entry and lets the step recompute.

Keys hash everything that decides the content: the source bytes (S3 ETags), the reader
settings, the tokenizer files, max length, and the code of this package.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from data_prep.config import S3Config
from data_prep.retry import with_retries
from data_prep.sources import filesystem, is_url

MARKER = "_COMMITTED"
Kind = Literal["ingest", "tokenize"]
PACKAGE_DIR = Path(__file__).resolve().parent
T = TypeVar("T")
log = logging.getLogger(__name__)


class CorruptEntry(Exception):
    """A committed entry whose files do not match the checksums written with it."""


def checksum(handle: IO[bytes]) -> dict[str, Any]:
    """Size and SHA-256 of a file's bytes, read in blocks."""
    digest_ = hashlib.sha256()
    size = 0
    while block := handle.read(1 << 22):
        digest_.update(block)
        size += len(block)
    return {"size": size, "sha256": digest_.hexdigest()}


def manifest(folder: Path) -> bytes:
    """The marker's content: every file of a staged entry with its checksum."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MARKER:
            with open(path, "rb") as handle:
                files[path.name] = checksum(handle)
    return json.dumps({"files": files}, sort_keys=True).encode()


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
                    target = self._path(kind, key, source.name)
                    with_retries(lambda s=str(source), t=target: self.fs.put_file(s, t), f"upload of {target}")
                # the commit, after every file: it holds their checksums
                marker, content = self._path(kind, key, MARKER), manifest(Path(staging))
                with_retries(lambda: self.fs.pipe_file(marker, content), f"commit of {marker}")
            return
        final = Path(self._path(kind, key))
        tmp = final.with_name(f".tmp-{key}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / MARKER).write_bytes(manifest(tmp))
            if final.exists():  # a half entry left by a crash (no marker), or a concurrent writer's
                if (final / MARKER).exists():
                    return
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def load(self, kind: Kind, key: str, read: Callable[[], T]) -> T | None:
        """`read()` on a committed entry (it reads through `fetch` and `read_json`, which check
        every file); None when there is no entry, or when it is damaged: then the damage is
        logged and the entry removed, so the caller recomputes and commits a sound one."""
        if not self.has(kind, key):
            return None
        try:
            return read()
        except CorruptEntry as exc:
            log.warning("cache entry %s is damaged, recomputing it: %s", self.location(kind, key), exc)
            self.invalidate(kind, key)
            return None

    def invalidate(self, kind: Kind, key: str) -> None:
        """Remove an entry: the marker first, so no reader takes the rest while it goes."""
        marker = self._path(kind, key, MARKER)
        if self.fs.exists(marker):
            self.fs.rm_file(marker)
        if self.fs.exists(self._path(kind, key)):
            self.fs.rm(self._path(kind, key), recursive=True)

    def _expected(self, kind: Kind, key: str, name: str) -> dict[str, Any]:
        """The checksum the entry's marker holds for one of its files."""
        try:
            with self.fs.open(self._path(kind, key, MARKER), "rb") as handle:
                files = json.loads(handle.read())["files"]
            expected = files[name]
            return {"size": int(expected["size"]), "sha256": str(expected["sha256"])}
        except FileNotFoundError:
            raise CorruptEntry(f"{MARKER} is gone") from None
        except (ValueError, KeyError, TypeError) as exc:  # a damaged marker, or one from before checksums
            raise CorruptEntry(f"{MARKER} holds no checksum for {name} ({type(exc).__name__}: {exc})") from None

    def _verify(self, kind: Kind, key: str, name: str, handle: IO[bytes]) -> None:
        expected = self._expected(kind, key, name)
        found = checksum(handle)
        if found != expected:
            raise CorruptEntry(f"{name}: {found['size']} bytes with SHA-256 {found['sha256'][:12]}..., "
                               f"written as {expected['size']} bytes with {expected['sha256'][:12]}...")

    def fetch(self, kind: Kind, key: str, name: str, work_dir: str | Path) -> str:
        """A local path to an entry's file, checked against its checksum: the entry itself for a
        local store, else a download into `work_dir` (training and evaluation read local files).
        Raises `CorruptEntry` for a damaged or missing file."""
        if not self.remote:
            path = self._path(kind, key, name)
            try:
                with open(path, "rb") as handle:
                    self._verify(kind, key, name, handle)
            except FileNotFoundError:
                raise CorruptEntry(f"{name} is gone") from None
            return path
        target = Path(work_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.get_file(self._path(kind, key, name), str(tmp))
            with open(tmp, "rb") as handle:
                self._verify(kind, key, name, handle)
            os.replace(tmp, target)
        except FileNotFoundError:
            raise CorruptEntry(f"{name} is gone") from None
        finally:
            tmp.unlink(missing_ok=True)
        return str(target)

    def read_json(self, kind: Kind, key: str, name: str) -> Any:
        """An entry's JSON file, checked against its checksum (`CorruptEntry` if damaged)."""
        try:
            with self.fs.open(self._path(kind, key, name), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise CorruptEntry(f"{name} is gone") from None
        self._verify(kind, key, name, io.BytesIO(data))
        return json.loads(data)
