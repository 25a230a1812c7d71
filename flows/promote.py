"""Promote or roll back by hand, audited: point an alias at a chosen model version, or back at the
version its holder replaced, with who and why recorded on the version (training/release/audit.py).

    python flows/promote.py MODEL_NAME VERSION --reason TEXT [--by NAME] [--alias A] [--tracking-uri URI]
    python flows/promote.py MODEL_NAME --rollback --reason TEXT [--by NAME] [--alias A] [--tracking-uri URI]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.alias_lock import alias_lock  # noqa: E402
from flows.config import StorageConfig  # noqa: E402
from flows.tasks import TASK_DEFAULTS  # noqa: E402
from training.config import RegistryConfig  # noqa: E402
from training.release.audit import check_promotion, check_rollback, promote_by_hand  # noqa: E402
from training.release.audit import rollback as rollback_alias  # noqa: E402
from training.release.registry import RegistryRefusal, tracking_uri  # noqa: E402


# no such version, nothing to roll back to, no reason: a retry cannot change that (RegistryRefusal
# is refused input, see flows.config.REFUSED); a registry that did not answer may
MOVE_TASK: dict[str, Any] = TASK_DEFAULTS


@task(name="promote-by-hand", **MOVE_TASK)
def promote_version(uri: str, model_name: str, version: str, alias: str, reason: str, by: str | None) -> dict[str, Any]:
    check_promotion(uri, model_name, version, reason)  # refused before the lock is even taken
    with alias_lock(model_name, alias):  # never in the middle of a run's gate and promotion
        return promote_by_hand(uri, model_name, version, alias, reason=reason, by=by)


@task(name="rollback-alias", **MOVE_TASK)
def roll_back(uri: str, model_name: str, alias: str, reason: str, by: str | None) -> dict[str, Any]:
    check_rollback(uri, model_name, alias, reason)
    with alias_lock(model_name, alias):  # the holder read under the lock is the one rolled back
        return rollback_alias(uri, model_name, alias, reason=reason, by=by)


def report(moved: dict[str, Any]) -> dict[str, Any]:
    """Log the move and leave it as a Prefect artifact."""
    name, alias = moved["model_name"], moved["alias"]
    if moved.get("unchanged"):
        line = f"{name}@{alias} already points at v{moved['version']}: nothing changed"
    else:
        override = f" (overriding the gate: {moved['gate']})" if moved["gate_override"] else ""
        line = (f"{name}@{alias}: v{moved['previous'] or '-'} -> v{moved['version']} ({moved['how']} by "
                f"{moved['by']}: {moved['reason']}){override}")
    get_run_logger().info("%s", line)
    create_markdown_artifact(line, key="alias-move", description="the alias move this flow run made")
    return moved


def uri_for(model_name: str, tracking_uri_override: str | None, state_dir: str) -> str:
    return tracking_uri(RegistryConfig(tracking_uri=tracking_uri_override, model_name=model_name), state_dir)


@flow(name="promote", description="Point an alias (champion) at a chosen model version by hand, with a reason; "
                                  "who, why and whether it overrides the gate are recorded on the version.")
def promote(model_name: str, version: int | str, reason: str, by: str | None = None, alias: str = "champion",
            tracking_uri_override: str | None = None, state_dir: str = StorageConfig().root) -> dict[str, Any]:
    """
    Args:
        model_name: the registered model, e.g. mtl-demo
        version: the version to point the alias at, e.g. 3
        reason: why, recorded on the version (mtl.promotion_reason); refused when empty
        by: who (default: the OS user running the flow; set it for a deployment run)
        alias: the alias to move
        tracking_uri_override: the MLflow store (default: MLFLOW_TRACKING_URI, else the state folder's)
        state_dir: the state folder holding the default sqlite store
    """
    uri = uri_for(model_name, tracking_uri_override, state_dir)
    return report(promote_version(uri, model_name, str(version), alias, reason, by))


@flow(name="rollback", description="Point an alias (champion) back at the version its holder replaced, with a "
                                   "reason; recorded like a promotion by hand.")
def rollback(model_name: str, reason: str, by: str | None = None, alias: str = "champion",
             tracking_uri_override: str | None = None, state_dir: str = StorageConfig().root) -> dict[str, Any]:
    """
    Args:
        model_name: the registered model, e.g. mtl-demo
        reason: why, recorded on the version (mtl.promotion_reason); refused when empty
        by: who (default: the OS user running the flow; set it for a deployment run)
        alias: the alias to move back
        tracking_uri_override: the MLflow store (default: MLFLOW_TRACKING_URI, else the state folder's)
        state_dir: the state folder holding the default sqlite store
    """
    uri = uri_for(model_name, tracking_uri_override, state_dir)
    return report(roll_back(uri, model_name, alias, reason, by))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_name")
    parser.add_argument("version", nargs="?")
    parser.add_argument("--rollback", action="store_true", help="roll the alias back instead of promoting VERSION")
    parser.add_argument("--reason", required=True)
    parser.add_argument("--by", default=None)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    if args.rollback == (args.version is not None):
        parser.error("give either VERSION or --rollback")
    try:
        print(rollback(args.model_name, args.reason, args.by, args.alias, args.tracking_uri) if args.rollback
              else promote(args.model_name, args.version, args.reason, args.by, args.alias, args.tracking_uri))
    except RegistryRefusal as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
