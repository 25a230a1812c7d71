"""The promotion gate at its boundary: a task exactly at the champion's score minus the tolerance
passes, one just below is refused. Metrics and tolerances are decimals held as binary floats, so
"exactly at" must survive the subtraction's rounding (0.8 - 0.1 is 0.7000000000000001). Checked
on the gate itself (training/release/gate.py), through `promote_if_better` (which decides with
`decide` and writes with `promote_with_report`) on a real MLflow database store, and through the
flow's promote task on a real Prefect engine (the refuse path)."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.config import PromotionConfig
from training.release.gate import gate, metric_key
from training.release.registry import promote_if_better
from training.task_spec import TaskSpec

BELOW = 1e-6  # "just below": finer than any dev-set metric's resolution
# (champion, tolerance): some whose difference rounds up in floating point, some that are exact
BOUNDARIES = [(0.8, 0.1), (0.014, 0.005), (0.62, 0.02), (0.9, 0.005), (0.75, 0.25), (0.5, 0.0), (0.862, 0.005)]


@pytest.mark.parametrize("champion,tolerance", BOUNDARIES)
def test_gate_passes_exactly_at_the_boundary_and_refuses_just_below(champion, tolerance):
    key = metric_key("pos", "accuracy")
    at = round(champion - tolerance, 12)  # the decimal number a person reads as the boundary
    assert gate({key: at}, {key: champion}, {"pos": "accuracy"}, tolerance) == []
    reasons = gate({key: at - BELOW}, {key: champion}, {"pos": "accuracy"}, tolerance)
    assert len(reasons) == 1 and reasons[0].startswith("pos accuracy ")


def test_gate_refuses_a_challenger_without_the_tasks_primary_metric():
    champion = {metric_key("pos", "accuracy"): 0.9}
    assert gate({metric_key("pos", "macro_f1"): 0.99}, champion, {"pos": "accuracy"}, 0.5) == [
        "pos accuracy nan < champion 0.9000 - 0.5"]


def test_primary_metrics_the_gate_compares():
    def spec(task_type: str, scheme: str = "plain") -> TaskSpec:
        return TaskSpec(name="t", type=task_type, labels=["B-X", "I-X", "O"], label_scheme=scheme)

    assert spec("token_classification", "bio").primary_metric == "entity_f1"
    assert spec("token_classification").primary_metric == "accuracy"
    assert spec("sequence_classification").primary_metric == "accuracy"
    assert spec("sequence_pair_regression").primary_metric == "pearson"


class Store:
    """A real MLflow database store with versions of one model, each a run with dev metrics."""

    def __init__(self, folder: Path, model: str = "m") -> None:
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("gate", artifact_location=(folder / "artifacts").as_uri())
        self.model = model
        self.client.create_registered_model(model)

    def another(self, model: str) -> "Store":
        """The same store, versions of another model (tests share one database, each its own model)."""
        other = object.__new__(Store)
        other.uri, other.client, other.experiment, other.model = self.uri, self.client, self.experiment, model
        self.client.create_registered_model(model)
        return other

    def version(self, metrics: dict[str, float]) -> str:
        run = self.client.create_run(self.experiment)
        for key, value in metrics.items():
            self.client.log_metric(run.info.run_id, key, value)
        self.client.set_terminated(run.info.run_id)
        source = f"runs:/{run.info.run_id}/model"
        return str(self.client.create_model_version(self.model, source, run.info.run_id).version)

    def champion(self) -> str:
        return str(self.client.get_model_version_by_alias(self.model, "champion").version)


PRIMARY = {"pos": "accuracy", "ner": "entity_f1"}


def dev(pos: float, ner: float) -> dict[str, float]:
    return {metric_key("pos", "accuracy"): pos, metric_key("ner", "entity_f1"): ner}


def test_promotion_at_the_boundary_with_a_real_store(tmp_path):
    store = Store(tmp_path)
    promotion = PromotionConfig(tolerance=0.1)
    first = store.version(dev(0.8, 0.6))
    assert promote_if_better(store.uri, "m", first, PRIMARY, promotion) == (True, [])
    below = store.version(dev(0.7 - BELOW, 0.65))
    promoted, reasons = promote_if_better(store.uri, "m", below, PRIMARY, promotion)
    assert not promoted and len(reasons) == 1 and reasons[0].startswith("pos accuracy 0.7000 < champion 0.8000")
    assert store.champion() == first
    assert store.client.get_model_version("m", below).tags["mtl.gate"] == reasons[0]
    at = store.version(dev(0.7, 0.5))  # both tasks exactly at the boundary
    assert promote_if_better(store.uri, "m", at, PRIMARY, promotion) == (True, [])
    assert store.champion() == at
    assert store.client.get_model_version("m", at).tags["mtl.gate"] == "passed"
    assert store.client.get_model_version("m", at).tags["mtl.previous_champion"] == first


def gate_only_flow(store: Store, promotion: PromotionConfig):
    """A flow that runs only the retrain flow's promote task, on a version of `store`."""
    from prefect import flow

    from flows.tasks import promote

    specs = [TaskSpec(name="pos", type="token_classification", labels=["NOUN"]),
             TaskSpec(name="ner", type="token_classification", labels=["B-PER", "I-PER", "O"], label_scheme="bio")]

    @flow(name="gate-only")
    def gate_only(version: str) -> dict:
        return promote({"tracking_uri": store.uri, "model_name": "m", "version": version}, specs, promotion)

    return gate_only


def test_the_flows_promote_task_refuses_and_keeps_the_champion(tmp_path, prefect_engine):
    store = Store(tmp_path)
    gate_only = gate_only_flow(store, PromotionConfig(tolerance=0.005))
    first = store.version(dev(0.862, 0.75))
    assert {k: v for k, v in gate_only(first).items() if k in ("promoted", "reasons")} == {"promoted": True,
                                                                                          "reasons": []}
    worse = store.version(dev(0.857, 0.7449))  # pos exactly at the boundary, ner just below it
    decision = gate_only(worse)
    assert decision["promoted"] is False
    assert decision["reasons"] == ["ner entity_f1 0.7449 < champion 0.7500 - 0.005"]
    assert store.champion() == first


def test_a_promotion_waits_for_the_alias_and_gates_against_the_champion_it_finds(tmp_path, prefect_engine):
    """Another run holding the alias (mid-promotion) makes this run's promote task wait; once it is
    released, the gate compares with the champion that run left, not the one there before."""
    import threading
    import time

    from flows.alias_lock import alias_lock, lock_name

    store = Store(tmp_path)
    promotion = PromotionConfig(tolerance=0.0)
    gate_only = gate_only_flow(store, promotion)
    old = store.version(dev(0.80, 0.60))
    assert gate_only(old)["promoted"] is True
    middle, best = store.version(dev(0.85, 0.65)), store.version(dev(0.90, 0.70))
    decisions: list[dict] = []
    with alias_lock("m", "champion"):  # the other run, between reading the champion and moving it
        waiting = threading.Thread(target=lambda: decisions.append(gate_only(middle)))
        waiting.start()
        time.sleep(8)  # ample for the flow and its gate to have run, had it not waited
        assert decisions == [] and store.champion() == old
        assert promote_if_better(store.uri, "m", best, PRIMARY, promotion) == (True, [])
    waiting.join(timeout=120)
    assert decisions[0]["promoted"] is False, decisions
    assert "pos accuracy 0.8500 < champion 0.9000 - 0.0" in decisions[0]["reasons"]
    assert store.champion() == best
    assert lock_name("m/x", "champion") == "mlflow-alias-m_x.champion"


def test_the_promote_flow_rolls_the_alias_back_under_the_same_lock(tmp_path, prefect_engine):
    from flows.promote import promote as promote_flow

    store = Store(tmp_path)
    first, second = store.version(dev(0.8, 0.6)), store.version(dev(0.9, 0.7))
    promotion = PromotionConfig(tolerance=0.0)
    for version in (first, second):
        assert promote_if_better(store.uri, "m", version, PRIMARY, promotion) == (True, [])
    back = promote_flow("m", int(first), reason="v2 misbehaves in production", by="ops",
                        tracking_uri_override=store.uri, state_dir=str(tmp_path))
    assert back["previous"] == second and "champion" in back["aliases"] and store.champion() == first
    assert store.client.get_model_version("m", first).tags["mtl.previous_champion"] == second
    assert store.client.get_model_version("m", first).tags["mtl.promoted_by"] == "ops"


def test_one_retraining_run_per_model_at_a_time(prefect_engine):
    """The retrain lock, on the real Prefect server: while one run of a model holds it, another run
    of the same model waits (here: times out after 2 s), and a run of another model does not."""
    import time

    import pytest

    from flows.alias_lock import retrain_lock, retrain_lock_name

    with retrain_lock("lock-m", timeout_s=30):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            with retrain_lock("lock-m", timeout_s=2):
                pass
        assert time.monotonic() - start >= 2
        with retrain_lock("lock-other", timeout_s=5):
            pass
    with retrain_lock("lock-m", timeout_s=5):  # released at the end of the first holder's block
        pass
    assert retrain_lock_name("team/model x") == "mtl-retrain-team_model_x"


def test_the_gate_table_lists_each_task_with_this_version_and_the_champion():
    from training.release.gate import gate_table

    primary = {"pos": "accuracy", "ner": "entity_f1"}
    mine = {metric_key("pos", "accuracy"): 0.9, metric_key("ner", "entity_f1"): 0.75}
    held = {metric_key("pos", "accuracy"): 0.85}
    assert gate_table(mine, held, primary, "v3") == "\n".join([
        "| task | metric | this version | v3 |", "|---|---|---|---|",
        "| ner | entity_f1 | 0.7500 | - |", "| pos | accuracy | 0.9000 | 0.8500 |"])
    assert gate_table(mine, None, primary, None).splitlines()[0] == "| task | metric | this version |"
