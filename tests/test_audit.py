"""The gate's report and the audited alias moves: `decide` on scores measured in one flow run, the
report written on a version, a promotion by hand over a refused gate, a rollback, an alias moved
outside the pipeline, and `mtl promote` / `mtl rollback` refusing in one line. Real MLflow
database store (one per module, a model per test), real Prefect engine for the CLI."""
from __future__ import annotations

import json
import math

import pytest
from test_gate_boundary import BELOW, PRIMARY, Store, dev

from training.config import PromotionConfig
from training.release.audit import moved_by_hand, promote_by_hand, rollback
from training.release.gate import GATE_END, decide
from training.release.registry import RegistryRefusal, promote_if_better, promote_with_report, set_champion

SAME_RUN = "scores measured in this flow run on the current dev split (40 examples per task)"


def scores(pos: float, ner: float, **extra: float) -> dict[str, dict[str, float]]:
    out = {"pos": {"accuracy": pos}, "ner": {"entity_f1": ner, "accuracy": 0.99}}
    out.update({task: {"accuracy": value} for task, value in extra.items()})
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("audit"), model="audit-base")


@pytest.fixture()
def store(shared: Store, request) -> Store:
    return shared.another(request.node.name.replace("[", "-").replace("]", ""))


# -- decide: pure --

def test_decide_promotes_within_tolerance_and_reports_every_row():
    report = decide(scores(0.895, 0.70), scores(0.90, 0.60), PRIMARY, 0.01, "3", [SAME_RUN])
    assert (report.decision, report.promoted, report.reasons) == ("promoted", True, [])
    assert [(r.task, r.metric, r.ok) for r in report.rows] == [("ner", "entity_f1", True), ("pos", "accuracy", True)]
    assert report.rows[1].delta == pytest.approx(-0.005) and report.rows[0].champion == 0.60
    text = report.markdown()
    assert "| task | metric | champion v3 | challenger | delta | tolerance | ok |" in text
    assert "| pos | accuracy | 0.9000 | 0.8950 | -0.0050 | 0.01 | yes |" in text
    assert "passed, promoted to champion" in text and f"- {SAME_RUN}" in text
    assert json.loads(json.dumps(report.as_dict(), allow_nan=False))["rows"][0]["task"] == "ner"


@pytest.mark.parametrize("champion,tolerance", [(0.8, 0.1), (0.014, 0.005), (0.862, 0.005), (0.5, 0.0)])
def test_decide_at_the_tolerance_boundary(champion, tolerance):
    at = round(champion - tolerance, 12)
    held = scores(champion, 0.5)
    assert decide(scores(at, 0.5), held, PRIMARY, tolerance, "1", []).decision == "promoted"
    below = decide(scores(at - BELOW, 0.5), held, PRIMARY, tolerance, "1", [])
    assert below.decision == "refused" and below.reasons == [
        f"pos accuracy {at - BELOW:.4f} < champion {champion:.4f} - {tolerance}"]
    assert [r.ok for r in below.rows] == [True, False]


def test_decide_refuses_missing_tasks_and_scores():
    dropped = decide(scores(0.9, 0.7), scores(0.9, 0.7, sst2=0.8, rte=0.6), PRIMARY, 0.0, "2", [])
    assert dropped.reasons == ["task rte of the champion is missing from the challenger",
                               "task sst2 of the champion is missing from the challenger"]
    lacking = {"pos": {"macro_f1": 0.99}, "ner": {"entity_f1": 0.7}}
    no_metric = decide(lacking, scores(0.9, 0.7), PRIMARY, 0.5, "2", [])
    assert no_metric.reasons == ["pos accuracy nan < champion 0.9000 - 0.5"]
    nan = decide(scores(math.nan, 0.7), scores(0.9, 0.7), PRIMARY, 0.5, "2", [])  # a NaN never passes
    assert nan.decision == "refused" and nan.rows[1].challenger is None
    assert json.dumps(nan.as_dict(), allow_nan=False)


def test_decide_with_no_champion_or_a_task_new_since_it():
    first = decide(scores(0.1, 0.1), None, PRIMARY, 0.0, None, [])
    assert (first.decision, first.promoted, first.reasons) == ("no champion", True, [])
    assert first.table().startswith("| task | metric | this version |")
    note = "sst2: a task new since the champion, not compared"
    grown = decide(scores(0.9, 0.7, sst2=0.1), scores(0.9, 0.7), {**PRIMARY, "sst2": "accuracy"}, 0.0, "4", [note])
    assert grown.decision == "promoted" and grown.rows[-1].champion is None and grown.notes == [note]


# -- the report on a version, the pipeline's alias move --

def test_the_report_is_written_on_the_version_and_the_move_recorded(store):
    champion = store.version(dev(0.8, 0.6))
    assert promote_if_better(store.uri, store.model, champion, PRIMARY, PromotionConfig(tolerance=0.0)) == (True, [])
    mine = store.version(dev(0.5, 0.5))
    store.client.update_model_version(store.model, mine, "Registered from run key `k`")
    report = decide(scores(0.81, 0.59), scores(0.80, 0.60), PRIMARY, 0.01, champion, [SAME_RUN])
    assert promote_with_report(store.uri, store.model, mine, report, "champion", "same-run dev scores", by="flow x")
    version = store.client.get_model_version(store.model, mine)
    assert version.tags["mtl.gate"] == "passed" and version.tags["mtl.previous_champion"] == champion
    head, _, note = version.description.partition(GATE_END)
    assert head.startswith(f"Gate against champion v{champion}, tolerance 0.01: passed")
    assert "**same-run dev scores**" in head and f"| champion v{champion} |" in head and SAME_RUN in head
    assert note == "Registered from run key `k`"
    record = json.loads(store.client.get_registered_model(store.model).tags["mtl.champion_set_by"])
    assert (record["version"], record["how"], record["by"]) == (mine, "pipeline", "flow x")
    assert moved_by_hand(store.uri, store.model) is None


# -- by hand --

def test_promoting_a_refused_version_by_hand_records_who_why_and_the_override(store):
    champion, worse = store.version(dev(0.8, 0.6)), store.version(dev(0.5, 0.5))
    promotion = PromotionConfig(tolerance=0.0)
    assert promote_if_better(store.uri, store.model, champion, PRIMARY, promotion) == (True, [])
    assert promote_if_better(store.uri, store.model, worse, PRIMARY, promotion)[0] is False
    with pytest.raises(RegistryRefusal, match="needs a reason"):
        promote_by_hand(store.uri, store.model, worse, reason="  ")
    moved = promote_by_hand(store.uri, store.model, int(worse), reason="ner labels fixed upstream", by="ana")
    assert (moved["previous"], moved["gate_override"], store.champion()) == (champion, True, worse)
    assert moved["gate"] == ("ner entity_f1 0.5000 < champion 0.6000 - 0.0; "
                             "pos accuracy 0.5000 < champion 0.8000 - 0.0")
    tags = store.client.get_model_version(store.model, worse).tags
    assert (tags["mtl.promoted_by"], tags["mtl.promotion_reason"], tags["mtl.gate_override"]) == (
        "ana", "ner labels fixed upstream", "true")
    assert tags["mtl.previous_champion"] == champion and tags["mtl.promoted_at"].endswith("+00:00")
    record = json.loads(store.client.get_registered_model(store.model).tags["mtl.champion_set_by"])
    assert (record["version"], record["how"], record["by"]) == (worse, "promote", "ana")
    again = promote_by_hand(store.uri, store.model, worse, reason="retried")  # already there: nothing written
    assert again["unchanged"] is True
    assert store.client.get_model_version(store.model, worse).tags["mtl.promotion_reason"] == "ner labels fixed upstream"


def test_rollback_restores_the_previous_champion_and_records_it(store):
    first, second, third = (store.version(dev(0.8, 0.6)) for _ in range(3))
    for version in (first, second, third):
        set_champion(store.uri, store.model, version)
    back = rollback(store.uri, store.model, reason="v3 drifts on new traffic", by="ops")
    assert (back["version"], back["previous"], back["how"], store.champion()) == (second, third, "rollback", second)
    tags = store.client.get_model_version(store.model, second).tags
    assert (tags["mtl.promoted_by"], tags["mtl.rolled_back_from"], tags["mtl.gate_override"]) == ("ops", third, "true")
    assert json.loads(store.client.get_registered_model(store.model).tags["mtl.champion_set_by"])["how"] == "rollback"
    assert rollback(store.uri, store.model, reason="further", by="ops")["version"] == first  # walks back
    with pytest.raises(RegistryRefusal, match=f"@champion is v{first}, which records no earlier champion"):
        rollback(store.uri, store.model, reason="and further", by="ops")
    assert moved_by_hand(store.uri, store.model) is None


def test_an_alias_moved_outside_the_pipeline_is_noticed(store):
    first, second = store.version(dev(0.8, 0.6)), store.version(dev(0.8, 0.6))
    set_champion(store.uri, store.model, first)
    assert moved_by_hand(store.uri, store.model) is None
    store.client.set_registered_model_alias(store.model, "champion", second)  # what the MLflow UI does
    sentence = moved_by_hand(store.uri, store.model)
    assert sentence and sentence.startswith(f"{store.model}@champion points at v{second}, but the last recorded "
                                            f"move set v{first} (pipeline by ")


def test_a_version_that_does_not_exist_is_one_line_naming_those_that_do(store):
    for _ in range(3):
        store.version(dev(0.8, 0.6))
    with pytest.raises(RegistryRefusal) as refused:
        promote_by_hand(store.uri, store.model, 7, reason="r")
    assert str(refused.value) == f"{store.model} has no version 7; versions: 1, 2, 3"
    assert isinstance(refused.value, ValueError)
    with pytest.raises(RegistryRefusal, match="no registered model named nope; models: .*audit-base"):
        promote_by_hand(store.uri, "nope", 1, reason="r")


# -- the flows and the command line --

def test_the_promote_deployment_takes_a_number_for_version():
    from flows.promote import promote, rollback as rollback_flow

    assert promote.validate_parameters({"model_name": "m", "version": 2, "reason": "r"})["version"] == 2
    assert rollback_flow.validate_parameters({"model_name": "m", "reason": "r"})["alias"] == "champion"


def test_the_cli_promotes_rolls_back_and_refuses_in_one_line(store, prefect_engine, capsys, tmp_path):
    from flows.cli import main

    first, second = store.version(dev(0.8, 0.6)), store.version(dev(0.5, 0.5))
    set_champion(store.uri, store.model, first)
    where = ["--tracking-uri", store.uri, "--state-dir", str(tmp_path)]
    assert main(["promote", store.model, "7", "--reason", "r", *where]) == 2
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [f"error: {store.model} has no version 7; versions: 1, 2"], out.err
    assert main(["promote", store.model, second, "--reason", "hotfix", "--by", "cli", *where]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert (moved["version"], moved["previous"], moved["gate_override"]) == (second, first, True)
    assert store.champion() == second
    assert main(["rollback", store.model, "--reason", "hotfix broke ner", *where]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == first and store.champion() == first
    assert main(["rollback", store.model, "--reason", "again", *where]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {store.model}@champion is v{first}, which records")
