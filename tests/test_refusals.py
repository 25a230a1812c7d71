"""Bad config and bad data fail in `mtl validate` and in `mtl run` before training, naming the key
or the file, and nothing is registered."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import main
from helpers import tiny_config


def write_config(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def bad_configs(encoder: Path, state: Path, data_dir: Path, tmp_path: Path) -> dict[str, tuple[dict, str]]:
    unknown_type = tiny_config(encoder, state, data_dir)
    unknown_type["tasks"][0]["type"] = "parsing"
    missing_file = tiny_config(encoder, state, data_dir)
    missing_file["tasks"][1]["train"] = "ner_conll2003/nope.txt"
    bad_column = tiny_config(encoder, state, data_dir)
    bad_column["tasks"][2]["label_column"] = "sentiment"
    return {
        "unknown task type": (unknown_type, "tasks[0].type: Input should be 'token_classification'"),
        "missing data file": (missing_file, "nope.txt: tasks.ner.train: file not found"),
        "label column": (bad_column, "label_column: column 'sentiment' does not exist"),
    }


@pytest.mark.parametrize("case", ["unknown task type", "missing data file", "label column"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_refused_before_training(case, command, tiny_encoder, data_dir, tmp_path, capsys, prefect_engine):
    state = tmp_path / "state"
    raw, message = bad_configs(tiny_encoder, state, data_dir, tmp_path)[case]
    assert main([command, write_config(tmp_path, raw)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not list(state.glob("runs/*/train_spec.json")), "training must not start"
    # the flow run's MLflow run is opened before ingest (it spans the flow run): a refusal there
    # leaves it FAILED with the reason, and no model version anywhere
    store = state / "mlflow.db"
    if store.exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{store}")
        assert not client.search_model_versions(), "nothing may be registered"
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert runs and all(r.info.status == "FAILED" and "mtl.failure" in r.data.tags for r in runs)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_set_on_the_command_line_is_checked_with_the_file(command, tiny_encoder, data_dir, tmp_path, capsys):
    state = tmp_path / "state"
    path = write_config(tmp_path, tiny_config(tiny_encoder, state, data_dir))
    assert main([command, path, "--set", "training.stepz=3", "--set", "tasks.sst2.label_column=sentiment"]) == 2
    err = capsys.readouterr().err
    assert f"{path} with overrides training.stepz, tasks.sst2.label_column" in err
    assert "training.stepz: Extra inputs are not permitted (got 3)" in err
    assert not list(state.glob("runs/*")), "nothing may start"
    with pytest.raises(SystemExit):
        main([command, path, "--set", "training.steps"])
    assert "argument --set: 'training.steps' is not KEY=VALUE" in capsys.readouterr().err
