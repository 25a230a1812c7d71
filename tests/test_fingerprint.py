"""The run fingerprint: what made a model, so an unchanged nightly can stop before training."""
from __future__ import annotations

import shutil
from pathlib import Path

from data_prep.config import TaskDataConfig
from data_prep.stage import source_fingerprints
from flows.config import parse_config
from helpers import tiny_config
from training.release.fingerprint import content_only, differences, make_fingerprint, training_settings


def config_dict(tiny_encoder: Path, tmp_path: Path, data_dir: Path, **training: object) -> dict:
    return parse_config(tiny_config(tiny_encoder, tmp_path / "state", data_dir, **training)).model_dump(mode="json")


def sources_of(config: dict, data_dir: Path) -> dict:
    return {t["name"]: source_fingerprints(TaskDataConfig.model_validate(t), str(data_dir), None)
            for t in config["tasks"]}


def test_run_only_settings_do_not_change_the_fingerprint_and_training_settings_do(tiny_encoder, tmp_path, data_dir):
    base = config_dict(tiny_encoder, tmp_path, data_dir)
    sources = sources_of(base, data_dir)
    first = make_fingerprint(base, str(tiny_encoder), sources)
    moved = {**base, "name": "other", "storage": {"root": "/elsewhere"}, "promotion": {"tolerance": 0.5},
             "registry": {"model_name": "x", "tracking_uri": "http://u:secret@host"},
             "training": {**base["training"], "log_every": 1, "timeout_s": 5, "checkpoint_every": 2}}
    assert make_fingerprint(moved, str(tiny_encoder), sources).value == first.value
    for changed in ({**base["training"], "steps": 13}, {**base["training"], "seed": 1},
                    {**base["training"], "processes": 1}):
        other = make_fingerprint({**base, "training": changed}, str(tiny_encoder), sources)
        assert other.value != first.value and differences(other.parts, first.parts) == ["config"]
    assert "secret" not in str(training_settings(moved))


def test_data_content_counts_and_its_location_does_not(tiny_encoder, tmp_path, data_dir):
    base = config_dict(tiny_encoder, tmp_path, data_dir)
    copy = tmp_path / "data"
    for task in base["tasks"]:
        for split in ("train", "dev"):
            (copy / task[split]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir / task[split], copy / task[split])
    first = make_fingerprint(base, str(tiny_encoder), sources_of(base, data_dir))
    assert make_fingerprint(base, str(tiny_encoder), sources_of(base, copy)).value == first.value
    with open(copy / base["tasks"][2]["train"], "a", encoding="utf-8") as handle:
        handle.write("one more sentence .\t1\n")
    changed = make_fingerprint(base, str(tiny_encoder), sources_of(base, copy))
    assert differences(changed.parts, first.parts) == ["data.sst2"]


def test_an_unpinned_source_or_another_encoder_says_so(tiny_encoder, tmp_path, data_dir):
    base = config_dict(tiny_encoder, tmp_path, data_dir)
    sources = sources_of(base, data_dir)
    unpinned = make_fingerprint(base, str(tiny_encoder), {**sources, "pos": None})
    assert unpinned.value is None and unpinned.unpinned[0].startswith("pos: its data cannot be pinned")
    other = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, other)
    weights = next(p for p in other.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert differences(make_fingerprint(base, str(other), sources).parts,
                       make_fingerprint(base, str(tiny_encoder), sources).parts) == ["encoder"]
    assert differences({"a": "1", "b": "2"}, {"a": "1", "c": "3"}) == ["new: b", "gone: c"]
    assert content_only([("train", [("/x/a.txt", "blake2b:ab")])]) == [["train", ["blake2b:ab"]]]


def skip_check(config: dict, force: bool = False) -> dict:
    """The flow's fingerprint task alone, in a flow run of its own."""
    from prefect import flow

    from flows.loop import check_fingerprint

    @flow(name="fingerprint-only")
    def only() -> dict:
        return check_fingerprint(parse_config(config), str(Path(config["storage"]["root"])), force)

    Path(config["storage"]["root"]).mkdir(parents=True, exist_ok=True)
    return only()


def test_the_skip_check_trains_and_says_why_on_an_old_champion_or_an_unreachable_registry(
        tiny_encoder, tmp_path, data_dir, prefect_engine, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the unreachable server: fail at once

    from test_gate_boundary import Store, dev

    raw = tiny_config(tiny_encoder, tmp_path / "state", data_dir)
    store = Store(tmp_path, model=raw["registry"]["model_name"])
    raw["registry"]["tracking_uri"] = store.uri
    first = skip_check(raw)
    assert (first["skip"], first["reason"]) == (False, "no champion tiny-mtl@champion yet: training")
    old = store.version(dev(0.8, 0.6))  # registered before fingerprints: no tag
    MlflowClient(store.uri).set_registered_model_alias("tiny-mtl", "champion", old)
    found = skip_check(raw)
    assert not found["skip"] and "has no fingerprint (registered before fingerprints were recorded)" in found["reason"]
    for key, value in (("mtl.fingerprint", found["value"]), ("mtl.fingerprint.parts", "{}")):
        MlflowClient(store.uri).set_model_version_tag("tiny-mtl", old, key, value)
    assert skip_check(raw)["skip"] is True
    forced = skip_check(raw, force=True)
    assert not forced["skip"] and "force is set" in forced["reason"]
    raw["registry"]["tracking_uri"] = "http://127.0.0.1:9"  # nothing listens there
    down = skip_check(raw)
    assert not down["skip"] and down["reason"].startswith("the registry could not be read for the skip check")
