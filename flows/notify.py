"""Outcomes people are told about: the `mtl.gate.refused` event and the Prefect automations that
turn a failed retrain or a refused model into a message through a notification block (Slack, a
custom webhook, e-mail: any Prefect block that can `notify`).

The Prefect server does the telling: its triggers service matches events (a flow run's state
change, or the event the promote task emits) against the automations `ensure_automations` keeps
up to date, and its actions service renders the Jinja templates below and calls the block. A
flow process that dies under a worker therefore still gets reported: the worker marks it Crashed.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import AutomationCore

GATE_REFUSED_EVENT = "mtl.gate.refused"
FAILED_AUTOMATION = "mtl: retrain failed"
REFUSED_AUTOMATION = "mtl: gate refused"
RETRAIN_FLOWS = ("retrain", "retrain-from-file")
# a refused model's report is context, the table is the message: a report too large for one event
# (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES) is dropped before the table is cut
TABLE_LIMIT = 20_000

FAILED_SUBJECT = "mtl: {{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}"
FAILED_BODY = """\
Flow run {{ flow.name }}/{{ flow_run.name }} ended in state {{ flow_run.state.name }} \
at {{ flow_run.state.timestamp }}.{% if deployment %} Deployment: {{ deployment.name }}.{% endif %}
Message: {{ flow_run.state.message or "(none)" }}
Link: {{ flow_run|ui_url or "(no UI URL: set PREFECT_UI_URL on the Prefect server)" }}
Flow run id: {{ flow_run.id }}
Nothing from this run was promoted; the champion alias is unchanged.
"""
REFUSED_SUBJECT = ("mtl: {{ event.payload.model_name }} v{{ event.payload.version }} "
                   "refused by the promotion gate")
REFUSED_BODY = """\
{{ event.payload.model_name }} version {{ event.payload.version }} was registered but not promoted: \
the gate refused it, the champion stays.

{{ event.payload.table }}
{% if flow_run %}
Flow run: {{ flow_run.name }} {{ flow_run|ui_url or "" }}{% endif %}
"""

logger = logging.getLogger(__name__)


class NotifySetupError(ValueError):
    """Automations cannot be set up: names the block or server and the fix."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run (its lines reach the Prefect UI), else ours."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _jsonable(value: Any) -> Any:
    # a report may hold numpy floats or paths; the event goes over the wire as JSON
    return json.loads(json.dumps(value, default=str))


def gate_refused_event(model_name: str, version: str, report: dict[str, Any], markdown: str,
                       with_report: bool = True) -> dict[str, Any]:
    """The keyword arguments of `emit_event` for a refusal (no Prefect import: cheap to test)."""
    payload: dict[str, Any] = {"model_name": model_name, "version": str(version),
                               "table": markdown if with_report else markdown[:TABLE_LIMIT]}
    if with_report:
        payload["report"] = _jsonable(report)
    return {
        "event": GATE_REFUSED_EVENT,
        "resource": {"prefect.resource.id": f"mtl.model.{model_name}", "prefect.resource.name": model_name},
        "related": [{"prefect.resource.id": f"mtl.model.{model_name}.version.{version}",
                     "prefect.resource.role": "model-version",
                     "prefect.resource.name": f"{model_name} v{version}"}],
        "payload": payload,
    }


def emit_gate_refused(model_name: str, version: str, report: dict[str, Any], markdown: str) -> None:
    """Tell the Prefect server the gate refused `model_name` v`version`: the `mtl.gate.refused`
    event, which the "mtl: gate refused" automation turns into a message with `markdown` (the
    gate's table). Never raises: a refusal nobody hears of is logged, the run still ends Refused."""
    from prefect.events import emit_event
    from prefect.exceptions import EventTooLarge

    log = _logger()
    try:
        try:
            sent = emit_event(**gate_refused_event(model_name, version, report, markdown))
        except EventTooLarge:
            log.warning("the gate report of %s v%s is too large for one event; sending the table alone",
                        model_name, version)
            sent = emit_event(**gate_refused_event(model_name, version, report, markdown, with_report=False))
    except Exception as exc:  # noqa: BLE001 -- the notification is secondary to the run's outcome
        log.warning("could not emit %s for %s v%s (%s: %s); nobody is notified of this refusal",
                    GATE_REFUSED_EVENT, model_name, version, type(exc).__name__, exc)
        return
    if sent is None:
        log.warning("%s for %s v%s was not sent: Prefect events are off in this process (no API to send to)",
                    GATE_REFUSED_EVENT, model_name, version)


def parse_block(block: str) -> tuple[str, str]:
    """'slack-webhook/ops' -> ('slack-webhook', 'ops')."""
    slug, _, name = block.partition("/")
    if not slug or not name or "/" in name:
        raise NotifySetupError(
            f"notification block {block!r}: expected '<block-type-slug>/<name>', e.g. 'slack-webhook/ops' or "
            "'custom-webhook/mtl-alerts' (`prefect block ls` lists them as slug/name)")
    return slug, name


def _block_id(client: "SyncPrefectClient", block: str) -> UUID:
    from prefect.exceptions import ObjectNotFound

    slug, name = parse_block(block)
    try:
        document = client.read_block_document_by_name(name=name, block_type_slug=slug, include_secrets=False)
    except ObjectNotFound:
        raise NotifySetupError(
            f"notification block {block!r} not found on the Prefect server at {client.api_url}: create it first, "
            f"e.g. `prefect block create {slug}` (UI form), or in Python "
            "`SlackWebhook(url=...).save('ops')` / `CustomWebhookNotificationBlock(name=..., url=..., "
            "json_data={'text': '{{subject}}\\n{{body}}'}).save('mtl-alerts')`") from None
    capabilities = document.block_schema.capabilities if document.block_schema else ["notify"]
    if "notify" not in capabilities:
        raise NotifySetupError(f"block {block!r} cannot send notifications (its capabilities: {capabilities}); "
                               "use a notification block such as slack-webhook or custom-webhook")
    return document.id


def failed_automation(block_id: UUID, flows: tuple[str, ...] = RETRAIN_FLOWS) -> "AutomationCore":
    """A flow run of `flows` enters a Failed- or Crashed-type state -> a message naming the run."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    # matched on the state type, not the event name (prefect.flow-run.<state name>), so that a
    # Failed-type state of another name (TimedOut, or one a flow names itself) is reported too;
    # a failure that will be retried is AwaitingRetry (Scheduled) and reports nothing yet
    trigger = EventTrigger(
        expect={"prefect.flow-run.*"},
        match={"prefect.resource.id": "prefect.flow-run.*", "prefect.state-type": ["FAILED", "CRASHED"]},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(flows)},
        for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=timedelta(0))
    return AutomationCore(
        name=FAILED_AUTOMATION, description=f"Notify when a run of {', '.join(flows)} fails or crashes (mtl deploy)",
        enabled=True, tags=["mtl"], trigger=trigger,
        actions=[SendNotification(block_document_id=block_id, subject=FAILED_SUBJECT, body=FAILED_BODY)])


def refused_automation(block_id: UUID) -> "AutomationCore":
    """The promotion gate refused a model (event mtl.gate.refused) -> a message with its table."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(
        expect={GATE_REFUSED_EVENT}, match={"prefect.resource.id": "mtl.model.*"}, match_related={},
        for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=timedelta(0))
    return AutomationCore(
        name=REFUSED_AUTOMATION, description="Notify when the promotion gate refuses a model (mtl deploy)",
        enabled=True, tags=["mtl"], trigger=trigger,
        actions=[SendNotification(block_document_id=block_id, subject=REFUSED_SUBJECT, body=REFUSED_BODY)])


def _upsert(client: "SyncPrefectClient", automation: "AutomationCore") -> UUID:
    """Create, or replace the one of the same name; duplicates of that name (made by hand, or by
    two deploys at once) go, so a failure is never reported twice."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        return client.create_automation(automation)
    keep, *extra = existing
    # the client sends only the fields marked as set (exclude_unset): revalidated from a full dump,
    # every field is, so the stored automation is replaced whole (nested `type`s included); the
    # update API refuses `owner_resource` (Prefect's own Automation.update leaves it out too)
    whole = automation.model_dump(mode="json", exclude={"owner_resource"})
    client.update_automation(keep.id, type(automation).model_validate(whole))
    for duplicate in extra:
        client.delete_automation(duplicate.id)
    return keep.id


def require_prefect_server(what: str, error: type[Exception]) -> str:
    """The Prefect API URL, after checking the server there answers; otherwise `error` naming
    `what` lives on the server and the fix (mtl deploy and the automations share the check)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise error(f"PREFECT_API_URL is not set: {what} live on a Prefect server; "
                    "export PREFECT_API_URL=http://127.0.0.1:4200/api (or your server's /api URL)")
    with get_client(sync_client=True) as client:
        if (unreachable := client.api_healthcheck()) is not None:
            raise error(f"the Prefect server at {api_url} does not answer ({unreachable}); "
                        "start it or fix PREFECT_API_URL")
    return str(api_url)


def ensure_automations(block: str, flows: tuple[str, ...] = RETRAIN_FLOWS) -> list[str]:
    """Create or update (by name, idempotent) on the Prefect server at PREFECT_API_URL:
    "mtl: retrain failed" (a run of `flows` fails or crashes) and "mtl: gate refused" (event
    mtl.gate.refused), both sending to the notification block `block` ('<block-type-slug>/<name>').
    Returns their ids, in that order."""
    from prefect.client.orchestration import get_client

    if not flows:
        raise NotifySetupError("ensure_automations: `flows` is empty; name the flows whose failures to report, "
                               f"e.g. {RETRAIN_FLOWS}")
    require_prefect_server("automations", NotifySetupError)
    with get_client(sync_client=True) as client:
        block_id = _block_id(client, block)
        wanted = [failed_automation(block_id, tuple(flows)), refused_automation(block_id)]
        return [str(_upsert(client, automation)) for automation in wanted]
