"""Promote (or roll back) by hand: point the champion alias at a given model version.

    python flows/promote.py MODEL_NAME VERSION [--tracking-uri URI]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.alias_lock import alias_lock  # noqa: E402
from flows.config import StorageConfig  # noqa: E402
from training.config import RegistryConfig  # noqa: E402
from training.release.registry import aliases_of, set_champion, tracking_uri  # noqa: E402


@task(name="set-alias", retries=2, retry_delay_seconds=5)
def set_alias(uri: str, model_name: str, version: str, alias: str) -> str | None:
    with alias_lock(model_name, alias):  # never in the middle of a run's gate and promotion
        return set_champion(uri, model_name, version, alias)


@flow(name="promote", description="Move the champion alias to a chosen model version (promotion or rollback).")
def promote(model_name: str, version: str, alias: str = "champion", tracking_uri_override: str | None = None,
            state_dir: str = StorageConfig().root) -> dict[str, Any]:
    uri = tracking_uri(RegistryConfig(tracking_uri=tracking_uri_override, model_name=model_name), state_dir)
    previous = set_alias(uri, model_name, str(version), alias)
    get_run_logger().info("%s@%s: %s -> %s", model_name, alias, previous, version)
    from mlflow import MlflowClient

    return {"model_name": model_name, "version": str(version), "previous": previous,
            "aliases": aliases_of(MlflowClient(uri), model_name, str(version))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_name")
    parser.add_argument("version")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    print(promote(args.model_name, args.version, args.alias, args.tracking_uri))
