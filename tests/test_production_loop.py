"""The retraining loop on the production stack (tests/servers.py: PostgreSQL, S3, MLflow and Prefect
servers, a process worker), driven through the deployments as a team runs it: run 1 registers and
promotes v1; run 2 on unchanged inputs ends Skipped with no new version; run 3 on changed data (new
rows, a new label) warm-starts from the champion, reports the shift and gates both models on the
new dev split; a run made to fail is reported to a webhook; `mtl rollback` puts v1 back and the
served champion answers as v1 again.

Notifications go through the real Prefect server: its triggers service matches the events, its
actions service renders the templates and calls a custom-webhook block that posts to a receiver on
loopback, here. A failed run of a flow named `retrain` must arrive as a message naming the run, a
refused model as one carrying the gate's table."""
from __future__ import annotations

import json
import shutil
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


def test_the_deployed_form_shows_the_config_files_values(production_stack, automations):
    """`mtl deploy` writes under each on-demand field what configs/demo.yaml holds; the field's own
    default (0, `file`) keeps that value."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(production_stack.api_url) as api:
        props = api.read_deployment_by_name("retrain-from-file/on-demand").parameter_openapi_schema["properties"]
    assert props["steps"]["description"].endswith("| in configs/demo.yaml: 450"), props["steps"]
    assert props["sharing"]["enum"][0] == "file" and props["sharing"]["description"].endswith(": hard")
    assert props["max_train_examples"]["description"].endswith(": pos 4000, ner 4000, sst2 4000")


def test_a_missing_or_malformed_block_is_refused_naming_the_fix(production_stack, automations):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.notify import NotifySetupError, ensure_automations

    with temporary_settings({PREFECT_API_URL: production_stack.api_url}):
        missing = "'slack-webhook/nobody' not found on the Prefect server.*prefect block create slack-webhook"
        with pytest.raises(NotifySetupError, match=missing):
            ensure_automations("slack-webhook/nobody")
        with pytest.raises(NotifySetupError, match="expected '<block-type-slug>/<name>'"):
            ensure_automations("ops")


# ------------------------------------------------------------------------------------------------
# the loop through the deployments

LOOP_MODEL = "loop-prod"
LOOP_FILES = {"pos": ("ud_en_ewt/en_ewt-ud-train.conllu", "ud_en_ewt/en_ewt-ud-dev.conllu"),
              "sst2": ("cls_sst2/train.tsv", "cls_sst2/dev.tsv")}
RUN_TIMEOUT_S = 600


def loop_config(encoder: Any, state: Any, data: Any) -> dict[str, Any]:
    """Two tasks of the demo shrunk to a short run, warm-starting from the champion once there is
    one; tolerance 1.0, so the gate passes and a rollback has a previous champion to go back to."""
    from helpers import tiny_config

    raw = tiny_config(encoder, state, data, steps=4, processes=1, checkpoint_every=4, log_every=2,
                      init_from="champion")
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in LOOP_FILES]
    raw["affinity"] = {"method": "off"}
    raw["registry"] = {"model_name": LOOP_MODEL}  # the tracking server: MLFLOW_TRACKING_URI of the worker
    raw["promotion"] = {"tolerance": 1.0}
    return raw


def run_deployment(stack: servers.Stack, name: str, parameters: dict[str, Any]) -> Any:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(stack.api_url) as api:
        deployment = api.read_deployment_by_name(name)
        run = api.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = api.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(2)
    pytest.fail(f"{name} run {run.id} not finished after {RUN_TIMEOUT_S} s (state {run.state_name}); end of "
                f"the worker log:\n{servers.log_tail(stack.worker.log, 60)}")


def artifact_text(stack: servers.Stack, flow_run_id: Any, key: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with SyncPrefectClient(stack.api_url) as api:
        found = api.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert found, f"no artifact {key!r} on flow run {flow_run_id}"
    return str(found[-1].data)


@pytest.fixture(scope="module")
def loop(production_stack, automations, receiver, tiny_encoder, data_dir, tmp_path_factory) -> dict[str, Any]:
    import yaml
    from mlflow import MlflowClient

    base = tmp_path_factory.mktemp("prod-loop")
    data = base / "data"  # the corpora the runs read: run 3 changes this copy
    for train, dev in LOOP_FILES.values():
        for name in (train, dev):
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir / name, data / name)
    config = base / "loop.yaml"
    config.write_text(yaml.safe_dump(loop_config(tiny_encoder, base / "state", data)))
    mlflow = MlflowClient(production_stack.mlflow.url)

    def versions() -> list[str]:
        return sorted(str(v.version) for v in mlflow.search_model_versions(f"name = '{LOOP_MODEL}'"))

    def champion() -> str:
        return str(mlflow.get_model_version_by_alias(LOOP_MODEL, "champion").version)

    on_demand = "retrain-from-file/on-demand"
    first = run_deployment(production_stack, on_demand, {"config_path": str(config)})
    after_first, first_champion = versions(), champion()
    second = run_deployment(production_stack, on_demand, {"config_path": str(config)})
    after_second = versions()
    for split in (0, 1):  # sst2's train and dev both gain sentences with a label the champion never saw
        with open(data / LOOP_FILES["sst2"][split], "a", encoding="utf-8") as handle:
            handle.writelines(f"a neutral sentence number {i} .\t2\n" for i in range(30))
    third = run_deployment(production_stack, on_demand, {"config_path": str(config)})
    failed = run_deployment(production_stack, on_demand, {"config_path": str(config),
                                                          "overrides": {"tasks.sst2.dev": "cls_sst2/missing.tsv"}})
    return {"runs": [first, second, third], "failed": failed, "versions": [after_first, after_second, versions()],
            "first_champion": first_champion, "mlflow": mlflow, "base": base}


def test_run_1_registers_and_promotes_v1_with_its_fingerprint(loop):
    first = loop["runs"][0]
    assert first.state.name == "Promoted", first.state.message
    assert loop["versions"][0] == ["1"]
    version = loop["mlflow"].get_model_version(LOOP_MODEL, "1")
    assert loop["first_champion"] == "1" and len(version.tags["mtl.fingerprint"]) == 32
    assert first.name.startswith("tiny-")  # <config name>-<date>


def test_run_2_on_unchanged_inputs_is_skipped_fast_with_no_new_version(production_stack, loop):
    first, second = loop["runs"][:2]
    assert second.state.name == "Skipped", second.state.message
    assert loop["versions"][1] == ["1"]
    assert "nothing to train" in artifact_text(production_stack, second.id, "fingerprint")
    ratio = second.total_run_time / first.total_run_time
    print(f"run 1 {first.total_run_time.total_seconds():.1f} s, skipped run 2 "
          f"{second.total_run_time.total_seconds():.1f} s ({ratio:.3f})")
    assert ratio < 0.1, (first.total_run_time, second.total_run_time)


def test_run_3_warm_starts_reports_the_shift_and_gates_both_models_on_the_new_dev_split(production_stack, loop):
    third = loop["runs"][2]
    assert third.state.name == "Promoted", third.state.message
    assert loop["versions"][2] == ["1", "2"]
    run_id = loop["mlflow"].get_model_version(LOOP_MODEL, "2").run_id
    with open(loop["mlflow"].download_artifacts(run_id, "card/mtl_model.json"), encoding="utf-8") as card_file:
        card = json.load(card_file)
    assert card["init_from"]["uri"] == f"models:/{LOOP_MODEL}/1"
    report = artifact_text(production_stack, third.id, "data-report")
    assert "sst2" in report and "2" in report
    gate = artifact_text(production_stack, third.id, "promotion")
    assert "| champion v1 |" in gate and "both models scored in this flow run" in gate, gate
    assert "labels 2 included" in gate, gate
    description = loop["mlflow"].get_model_version(LOOP_MODEL, "2").description
    assert "| champion v1 |" in description and "passed, promoted to champion" in description


def test_a_failed_run_is_reported_to_the_webhook(production_stack, loop, receiver):
    failed = loop["failed"]
    assert failed.state.is_failed(), failed.state
    message = wait_message(production_stack, receiver, lambda m: failed.name in m.get("body", ""),
                           f"naming the failed run {failed.name}")
    assert "ended in state Failed" in message["body"] and "missing.tsv" in message["body"], message["body"]


def test_rollback_restores_v1_and_the_served_champion_answers_as_v1(production_stack, loop):
    from serve_support import invoke, serving, wait_for_version

    uri = production_stack.mlflow.url
    env = {**production_stack.env, "PYTHONPATH": str(servers.ROOT)}
    with serving(f"models:/{LOOP_MODEL}@champion", uri, loop["base"] / "serve.log", env=env) as url:
        wait_for_version(url, "2")
        request = {"dataframe_records": [{"tokens": ["The", "cat", "sat", "."]}, {"text": "a witty movie ."}]}
        status, as_v2 = invoke(url, request)
        assert status == 200, as_v2
        rolled = run_python(production_stack, "import sys; from flows.cli import main; sys.exit(main(["
                            f"'rollback', {LOOP_MODEL!r}, '--reason', 'v2 misbehaves in production', "
                            "'--by', 'on-call']))")
        assert loop["mlflow"].get_model_version_by_alias(LOOP_MODEL, "champion").version in ("1", 1), rolled
        wait_for_version(url, "1")
        status, as_v1 = invoke(url, request)
    assert status == 200
    tags = loop["mlflow"].get_model_version(LOOP_MODEL, "1").tags
    assert tags["mtl.promoted_by"] == "on-call" and tags["mtl.promotion_reason"] == "v2 misbehaves in production"
    assert as_v1["predictions"] == predicted_by(uri, f"models:/{LOOP_MODEL}/1", request, loop["base"] / "v1")


def predicted_by(tracking_uri: str, model_uri: str, request: dict[str, Any], workdir: Any) -> list[dict[str, Any]]:
    """What the registered model answers to `request` through the Predictor, in this process."""
    from training.evaluation.predict import Predictor
    from training.release.serving import inputs_from_records, predict_inputs, resolve_export

    export = resolve_export(model_uri, tracking_uri, str(workdir))
    inputs = inputs_from_records(enumerate(request["dataframe_records"], start=1), "input")
    return json.loads(json.dumps(predict_inputs(Predictor(str(export)), inputs)))
