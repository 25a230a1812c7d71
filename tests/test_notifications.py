"""Notifications through the real Prefect server of the production stack (tests/servers.py): its
triggers service matches the events, its actions service renders the templates and calls a
custom-webhook block that posts to a receiver on loopback, here. A failed run of a flow named
`retrain` must arrive as a message naming the run, a refused model as one carrying the gate's table."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import servers

pytestmark = pytest.mark.slow
WAIT_S = 60  # from the event to the message it is seconds; a minute means the automation never fired
TABLE = ("| task | metric | champion | challenger | verdict |\n|---|---|---|---|---|\n"
         "| pos | accuracy | 0.9100 | 0.8700 | worse by 0.0400 > tolerance 0.0100 |")


@dataclass
class Receiver:
    """What a notification block posts to: every JSON body it got, in order."""
    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while (found := next((m for m in self.messages if wanted(m)), None)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.arrived.wait(left)
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with received.arrived:
                received.messages.append(json.loads(body or b"{}"))
                received.arrived.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # the test's output is for failures
            pass

    server = ThreadingHTTPServer(("127.0.0.1", servers.free_port()), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, name="notification-receiver", daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def automations(production_stack: servers.Stack, receiver: Receiver) -> Iterator[list[str]]:
    """A custom-webhook block posting to the receiver, then `mtl deploy --notify` with it, as the
    README says, then `ensure_automations` once more: it must update, not duplicate. The
    automations and the block go at the end of the module, so no later test's runs notify anyone;
    deployments paused before (test_production pauses the nightly) are paused again."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.notify import FAILED_AUTOMATION, REFUSED_AUTOMATION, ensure_automations

    block = f"custom-webhook/mtl-test-{uuid.uuid4().hex[:8]}"
    block_id: uuid.UUID | None = None
    made: list[str] = []
    with SyncPrefectClient(production_stack.api_url) as api:
        paused = [d.id for d in api.read_deployments() if d.paused]
    try:
        # the settings only around the calls: a context held across the yield would reach the tests
        with temporary_settings({PREFECT_API_URL: production_stack.api_url}):
            block_id = CustomWebhookNotificationBlock(
                name="mtl tests", url=receiver.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
            ).save(block.split("/")[1])
        deploy = f"import sys; from flows.cli import main; sys.exit(main(['deploy', '--notify', {block!r}]))"
        printed = run_python(production_stack, deploy, timeout=300)
        with SyncPrefectClient(production_stack.api_url) as api:
            stored = {a: api.read_automations_by_name(a) for a in (FAILED_AUTOMATION, REFUSED_AUTOMATION)}
        made += [str(a.id) for found in stored.values() for a in found]
        with temporary_settings({PREFECT_API_URL: production_stack.api_url}):
            ids = ensure_automations(block)
        assert ids == made, "a second ensure_automations made new automations instead of updating them"
        assert "work pool mtl-cpu: exists" in printed and "retrain-from-file/on-demand" in printed, printed
        assert all(f"automation {a!r} ({i}) -> {block}" in printed for a, i in zip(stored, ids)), printed
        yield ids
    finally:
        with SyncPrefectClient(production_stack.api_url) as api:
            for automation_id in made:
                api.delete_automation(uuid.UUID(automation_id))
            if block_id is not None:
                api.delete_block_document(block_id)
            for deployment_id in paused:
                api.pause_deployment(deployment_id)


def run_python(stack: servers.Stack, code: str, timeout: float = 120) -> str:
    """`code` in a fresh process against the stack's API, as a flow process on a worker would be."""
    done = subprocess.run([sys.executable, "-c", code], env={**stack.env, "PYTHONPATH": str(servers.ROOT)},
                          cwd=servers.ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"the helper process failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done.stdout


def wait_message(stack: servers.Stack, receiver: Receiver, wanted: Callable[[dict[str, Any]], bool],
                 what: str) -> dict[str, Any]:
    found = receiver.wait_for(wanted, WAIT_S)
    if found is None:
        pytest.fail(f"no notification {what} within {WAIT_S} s; the receiver got {len(receiver.messages)}: "
                    f"{json.dumps(receiver.messages, indent=1)[-3000:]}\n"
                    f"end of the Prefect server log:\n{servers.log_tail(stack.prefect.log, 60)}")
    return found


def test_a_failed_retrain_run_is_reported_with_its_name_message_and_link(production_stack, receiver, automations):
    run_name = f"notify-check-{uuid.uuid4().hex[:8]}"
    out = run_python(production_stack, f"""
from prefect import flow

@flow(name="retrain", flow_run_name={run_name!r})
def retrain():
    raise RuntimeError("the shared disk is full (on purpose)")

state = retrain(return_state=True)
print(state.type.value, state.state_details.flow_run_id)
""")
    state_type, run_id = out.split()[-2:]
    assert state_type == "FAILED", out
    message = wait_message(production_stack, receiver, lambda m: run_name in m.get("body", ""),
                           f"naming the failed run {run_name}")
    body = message["body"]
    assert f"retrain/{run_name} ended in state Failed" in body, body
    assert "the shared disk is full (on purpose)" in body, body
    assert f"{production_stack.prefect.url}/runs/flow-run/{run_id}" in body, body
    assert message["subject"] == f"mtl: retrain run {run_name} ended Failed"


def test_a_refused_model_is_reported_with_the_gate_table(production_stack, receiver, automations):
    model = f"mtl-notify-{uuid.uuid4().hex[:8]}"
    # called from a task in a flow run, as the promote task does: the message links the run
    run_python(production_stack, f"""
from prefect import flow, task
from flows.notify import emit_gate_refused

@task
def gate():
    emit_gate_refused({model!r}, "7", {{"promoted": False, "tasks": {{"pos": {{"delta": -0.04}}}}}}, {TABLE!r})

@flow(name="gate-check", flow_run_name="gate-check-{model}")
def check():
    gate()

check()
""")
    message = wait_message(production_stack, receiver, lambda m: model in m.get("subject", ""),
                           f"for the refused model {model}")
    assert message["subject"] == f"mtl: {model} v7 refused by the promotion gate"
    assert TABLE in message["body"], message["body"]
    assert f"{model} version 7 was registered but not promoted" in message["body"]
    assert f"Flow run: gate-check-{model} {production_stack.prefect.url}/runs/flow-run/" in message["body"]


def test_a_missing_or_malformed_block_is_refused_naming_the_fix(production_stack, automations):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.notify import NotifySetupError, ensure_automations

    with temporary_settings({PREFECT_API_URL: production_stack.api_url}):
        missing = "'slack-webhook/nobody' not found on the Prefect server.*prefect block create slack-webhook"
        with pytest.raises(NotifySetupError, match=missing):
            ensure_automations("slack-webhook/nobody")
        with pytest.raises(NotifySetupError, match="expected '<block-type-slug>/<name>'"):
            ensure_automations("ops")
