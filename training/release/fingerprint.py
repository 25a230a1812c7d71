"""What made a model, as one digest: the data's content, the settings that change training, the
project's code and the encoder's files. A registered version carries it (tags `mtl.fingerprint`
and `mtl.fingerprint.parts`), so a scheduled run on unchanged data finds that the champion was
made from exactly this and stops instead of training a copy of it.

Pure apart from reading files: no MLflow, no Prefect.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from data_prep.cache import digest, tokenizer_fingerprint

FINGERPRINT_TAG = "mtl.fingerprint"
PARTS_TAG = "mtl.fingerprint.parts"
PROJECT_DIR = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("flows", "training", "data_prep")

# Settings that say where and how a run goes, not what it trains: changing them must not force a
# retrain. Dotted keys of the root config; `tasks.*.` applies to every task.
RUN_ONLY: frozenset[str] = frozenset({
    "name", "data_dir", "storage", "registry", "promotion", "affinity",
    "tokenize.num_proc", "tokenize.batch_size",
    "training.node_rank", "training.master_addr", "training.master_port", "training.hostfile",
    "training.multi_node_launch", "training.launcher", "training.checkpoint_uri", "training.checkpoint_every",
    "training.keep_checkpoints", "training.log_every", "training.log_memory", "training.timeout_s",
    "training.threads_per_process", "training.eval_batch_size", "training.eval_device",
    # where a task's files are is not what they hold: their content is the data part
    "tasks.*.train", "tasks.*.dev", "tasks.*.max_label_shift",
})


@dataclass(frozen=True)
class Fingerprint:
    """`parts`: a digest per component (config, code, encoder, data.<task>); `value` digests them
    all. `unpinned`: why no fingerprint can be trusted (data that may change under the same name)."""
    parts: dict[str, str]
    unpinned: list[str] = field(default_factory=list)

    @property
    def value(self) -> str | None:
        return None if self.unpinned else digest("fingerprint", self.parts)

    def parts_json(self) -> str:
        return json.dumps(self.parts, sort_keys=True, separators=(",", ":"))


def training_settings(config: dict[str, Any], run_only: frozenset[str] = RUN_ONLY) -> dict[str, Any]:
    """The resolved config (as JSON) without the run-only keys; secrets are inside `storage` and
    `registry`, both run-only, so none reach the digest."""
    out = json.loads(json.dumps(config))
    for key in run_only:
        section, _, rest = key.partition(".")
        if not rest:
            out.pop(section, None)
        elif section == "tasks" and rest.startswith("*."):
            for task in out.get("tasks") or []:
                task.pop(rest[2:], None)
        elif isinstance(out.get(section), dict):
            out[section].pop(rest, None)
    return out


@lru_cache(maxsize=1)
def code_digest() -> str:
    """The project's version: package version plus a hash of every source file that runs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        h = hashlib.sha256(version("mtl-pipeline").encode())
    except PackageNotFoundError:
        h = hashlib.sha256(b"unversioned")
    for package in CODE_PACKAGES:
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            h.update(str(path.relative_to(PROJECT_DIR)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:32]


@lru_cache(maxsize=8)
def encoder_digest(path: str) -> str:
    """A local encoder folder by its files' bytes (weights, config, tokenizer); a hub name by its name."""
    folder = Path(path)
    if not folder.is_dir():
        return "name:" + path
    h = hashlib.blake2b(digest_size=20)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder)).encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 22):
                h.update(block)
    return f"files:{h.hexdigest()}:{tokenizer_fingerprint(path)}"


def make_fingerprint(config: dict[str, Any], encoder_path: str, data_sources: dict[str, Any | None]) -> Fingerprint:
    """`data_sources`: each task's source identity (`data_prep.stage.source_fingerprints`: file
    hashes or S3 ETags), None where it cannot be pinned (a hub dataset without a revision)."""
    parts = {"config": digest("config", training_settings(config)), "code": code_digest(),
             "encoder": digest("encoder", encoder_digest(encoder_path))}
    unpinned = []
    for task, sources in sorted(data_sources.items()):
        if sources is None:
            unpinned.append(f"{task}: its data cannot be pinned (a hub dataset without a revision, or a file "
                            "that could not be read)")
            continue
        parts[f"data.{task}"] = digest("data", content_only(sources))
    return Fingerprint(parts, unpinned)


def content_only(sources: Any) -> Any:
    """Source identities without the paths they were read from: a corpus moved to another
    folder or bucket with the same bytes is the same data."""
    if isinstance(sources, (list, tuple)):
        if len(sources) == 2 and isinstance(sources[1], str) and sources[1].startswith(("blake2b:", "etag:")):
            return sources[1]
        return [content_only(item) for item in sources]
    return sources


def differences(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The components that differ, for people: `data.ner`, `config`, `task added: trec`, ..."""
    out = [key for key in sorted(set(mine) & set(theirs)) if mine[key] != theirs[key]]
    out += [f"new: {key}" for key in sorted(set(mine) - set(theirs))]
    out += [f"gone: {key}" for key in sorted(set(theirs) - set(mine))]
    return out
