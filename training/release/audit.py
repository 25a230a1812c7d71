"""Alias moves by hand, audited: who pointed which alias at which version, why and when.

Each move by hand writes on the version it lands on: `mtl.promoted_by`, `mtl.promotion_reason`,
`mtl.promoted_at` (UTC ISO), `mtl.gate_override` ("true" when the version had not passed the
gate) and `mtl.previous_<alias>` (what a rollback goes back to); and on the registered model
`mtl.<alias>_set_by`, JSON {version, by, at, how}, which the pipeline writes too on every alias
move it makes. An alias that points elsewhere than that record says was moved outside these
paths (the MLflow UI): `moved_by_hand` says so in a sentence.

Run the moves under the alias lock (flows.alias_lock) so they never land inside a run's gate.
"""
from __future__ import annotations

import json
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from training.release.registry import (GATE_TAG, MAX_TAG_VALUE, AliasMove, RegistryRefusal, alias_holder,
                                       alias_record_tag, aliases_of, client_for, move_alias, os_user,
                                       record_alias_move, require_model, require_store, require_version,
                                       utc_now)

__all__ = ["RegistryRefusal", "check_promotion", "check_rollback", "last_alias_move", "moved_by_hand",
           "promote_by_hand", "record_alias_move", "rollback"]

PROMOTED_BY = "mtl.promoted_by"
PROMOTION_REASON = "mtl.promotion_reason"
PROMOTED_AT = "mtl.promoted_at"
GATE_OVERRIDE = "mtl.gate_override"
ROLLED_BACK_FROM = "mtl.rolled_back_from"


def previous_tag(alias: str) -> str:
    return f"mtl.previous_{alias}"


def require_reason(reason: str | None, what: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise RegistryRefusal(f"a {what} by hand needs a reason (--reason TEXT, the flow's `reason`): it is "
                              "recorded on the version for whoever looks at it next")
    return text


def check_promotion(uri: str, model_name: str, version: str | int, reason: str | None) -> ModelVersion:
    """What `promote_by_hand` refuses, checked without writing anything: the version to promote."""
    require_reason(reason, "promotion")
    require_store(uri)
    return require_version(client_for(uri), model_name, version)


def check_rollback(uri: str, model_name: str, alias: str, reason: str | None) -> tuple[ModelVersion, ModelVersion]:
    """What `rollback` refuses, checked without writing anything: (the holder, the version it goes back to)."""
    require_reason(reason, "rollback")
    require_store(uri)
    client = client_for(uri)
    holder = alias_holder(client, model_name, alias)
    if holder is None:
        require_model(client, model_name)
        raise RegistryRefusal(f"{model_name} has no alias {alias}: nothing to roll back")
    previous = holder.tags.get(previous_tag(alias))
    if not previous or previous == str(holder.version):
        raise RegistryRefusal(f"{model_name}@{alias} is v{holder.version}, which records no earlier {alias} "
                              f"(tag {previous_tag(alias)}): nothing to roll back to; point it at a version by hand "
                              f"with `mtl promote {model_name} VERSION --reason TEXT`")
    return holder, require_version(client, model_name, previous)


def _gate_text(version: ModelVersion) -> str:
    return version.tags.get(GATE_TAG) or "never gated"


def _audit(client: MlflowClient, model_name: str, version: ModelVersion, alias: str, reason: str, by: str,
           how: AliasMove, previous: str | None) -> dict[str, Any]:
    """Tag the version a person moved `alias` to with who, why, when and whether it overrides the gate."""
    gate = _gate_text(version)
    at = utc_now()
    tags = {PROMOTED_BY: by, PROMOTION_REASON: reason[:MAX_TAG_VALUE], PROMOTED_AT: at,
            GATE_OVERRIDE: "false" if gate == "passed" else "true"}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version.version), key, value)
    return {"model_name": model_name, "alias": alias, "version": str(version.version), "previous": previous,
            "how": how, "by": by, "reason": reason, "at": at, "gate": gate, "gate_override": gate != "passed"}


def promote_by_hand(uri: str, model_name: str, version: str | int, alias: str = "champion", *, reason: str,
                    by: str | None = None) -> dict[str, Any]:
    """Point `alias` at `version` whatever the gate said, recording who (`by`, default the OS
    user), why and when; the holder it replaces becomes the version's `mtl.previous_<alias>`.
    A version that already holds the alias is left as it is (a retried call changes nothing)."""
    candidate = check_promotion(uri, model_name, version, reason)
    client = client_for(uri)
    held = alias_holder(client, model_name, alias)
    if held is not None and str(held.version) == str(candidate.version):
        return {"model_name": model_name, "alias": alias, "version": str(candidate.version), "previous": None,
                "how": "promote", "unchanged": True, "gate": _gate_text(candidate),
                "aliases": aliases_of(client, model_name, str(candidate.version))}
    who = by or os_user()
    previous = None if held is None else str(held.version)
    result = _audit(client, model_name, candidate, alias, reason.strip(), who, "promote", previous)
    move_alias(client, model_name, str(candidate.version), alias, "promote", who)
    return {**result, "aliases": aliases_of(client, model_name, str(candidate.version))}


def rollback(uri: str, model_name: str, alias: str = "champion", *, reason: str,
             by: str | None = None) -> dict[str, Any]:
    """Point `alias` back at the version its holder replaced (the holder's `mtl.previous_<alias>`).
    The target keeps its own `mtl.previous_<alias>`, so a second rollback goes one further back;
    it is tagged `mtl.rolled_back_from` with the version it replaced."""
    holder, target = check_rollback(uri, model_name, alias, reason)
    client = client_for(uri)
    who = by or os_user()
    result = _audit(client, model_name, target, alias, reason.strip(), who, "rollback", str(holder.version))
    client.set_model_version_tag(model_name, str(target.version), ROLLED_BACK_FROM, str(holder.version))
    move_alias(client, model_name, str(target.version), alias, "rollback", who, remember_previous=False)
    return {**result, "aliases": aliases_of(client, model_name, str(target.version))}


def last_alias_move(client: MlflowClient, model_name: str, alias: str) -> dict[str, str] | None:
    """The last recorded move of `alias` ({version, by, at, how}); None when none was recorded."""
    text = client.get_registered_model(model_name).tags.get(alias_record_tag(alias))
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None  # a hand-edited tag: as good as none
    return record if isinstance(record, dict) and "version" in record else None


def moved_by_hand(uri: str, model_name: str, alias: str = "champion") -> str | None:
    """A sentence when `alias` points at another version than its last recorded move set (moved
    in the MLflow UI or by a plain client call, so nothing says who or why); None when they agree."""
    require_store(uri)
    client = client_for(uri)
    require_model(client, model_name)
    holder = alias_holder(client, model_name, alias)
    record = last_alias_move(client, model_name, alias)
    now = None if holder is None else str(holder.version)
    if record is None:
        return None if now is None else (f"{model_name}@{alias} points at v{now}, and no move of it was recorded: it "
                                         "was set outside the pipeline and `mtl promote` (e.g. in the MLflow UI)")
    if now == str(record["version"]):
        return None
    last = (f"the last recorded move set v{record['version']} ({record.get('how', '?')} by "
            f"{record.get('by', '?')} at {record.get('at', '?')})")
    if now is None:
        return (f"{model_name}@{alias} no longer exists, but {last}: it was removed outside the pipeline "
                "and `mtl promote`")
    return (f"{model_name}@{alias} points at v{now}, but {last}: it was moved outside the pipeline and "
            "`mtl promote` (e.g. in the MLflow UI), so nothing records who moved it or why")

