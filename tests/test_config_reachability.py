"""Every setting reaches the code that uses it (issue 27).

One case per field of the pipeline config (flows/config.py PipelineConfig and every sub-model, the
schedules' parameter models included) and per parameter of each deployed flow (prefect.yaml). A
case sets a non-default value, takes the cheapest real path to the code that consumes it and
asserts that code sees the new value (and that it saw something else without it, so the check
cannot pass by accident). The paths, from the flow's side to the worker's:

- the flow layer: `retrain_from_file`'s `file_config`, `apply_overrides` and `parse_config` build
  every config here, as a deployment's `overrides` do;
- the flow tasks that need no Prefect server, run as their bodies (`.fn`): prepare-run,
  open-mlflow-run, champion-labels, task-affinity;
- the cache keys (`ingest_key`, `tokenize_key`) and what they fingerprint;
- `train_model` -> the schedule's plan -> `launch_stage`, stopped at the "launching:" line: the
  launcher command, and each stage's worker spec read back as the worker reads it;
- what the worker builds from that spec (training/trainer/worker.py `train`): batches, sampler,
  loss weighting, model with its sharing strategy, DeepSpeed config and engine plan, the dev
  evaluator, torch threads;
- the gate (`promote_if_better`), the MLflow params (`mlflow_params`) and the run fingerprint:
  every field's value must show in the MLflow params, and must change the fingerprint exactly
  when it is not a run-only setting.

The deployment parameters run their real flows on the Prefect test server (one run covers all of
`retrain_from_file`'s): a resume folder whose saved config differs from the expected one in a
marker key only makes `prepare-run` refuse naming exactly the keys that differ, so the run stops
before any work and says whether every parameter arrived.

No training runs and nothing is mocked. A field whose last consumer runs only inside a launched
process (the loop, the engine) is checked where it leaves for it, the worker spec; a field no
code reads would be listed in UNCONSUMED with its reason (none is today). A new field or
parameter without a case fails `test_every_setting_and_parameter_has_a_case`.

The worker's side is built by the worker's own function (`build_parts`), never by a copy of its
lines here: a copy would pass while the worker dropped the value. Drops planted one per layer
(2026-12-04), each caught by its case: the worker spec (log_every replaced in `launch_stage`), the
ingest cache key (label_separator left out), the worker's sampler (a fixed temperature) and loss
weighting (a fixed seed), the MLflow params (registry.experiment popped), the gate (tolerance 0), a
deployment's parameter (promote's `by` not passed on in flows/promote.py).
"""
from __future__ import annotations

import dis
import itertools
import json
import os
import shutil
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from data_prep.cache import ArtifactCache
from data_prep.stage import ingest_key, source_fingerprints, tokenize_key
from flows.config import ConfigError, PipelineConfig, apply_overrides, parse_config
from training.launch.schedule import SCHEDULES
from training.release.fingerprint import make_fingerprint

ROOT = Path(__file__).resolve().parents[1]
PAD = 0
MARKER = "zz_reachability_marker"  # a key only the saved config of a resume folder has
SAME, DIFFERS, UNCHANGED = object(), object(), object()  # what a check expects (see Check)
_runs = itertools.count()


# --------------------------------------------------------------------------------------- the schema

def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the pydantic model inside an annotation, whether it is a list of them)."""
    args = typing.get_args(annotation)
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate, typing.get_origin(annotation) is list
    return None, False


def schema_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> set[str]:
    """Every leaf field as a dotted key; `tasks.*.` for each entry of a list of sections; a
    schedule's parameters as `training.schedule_params(<schedule>).<field>`."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        sub, is_list = _submodel(info.annotation)
        if sub is not None:
            keys |= schema_keys(sub, f"{prefix}{name}.*." if is_list else f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    if model is PipelineConfig:
        for schedule, cls in SCHEDULES.items():
            keys |= {f"training.schedule_params({schedule}).{f}" for f in cls.Params.model_fields}
    return keys


def deployed_flows() -> dict[str, Any]:
    """The flows prefect.yaml deploys, by function name."""
    import importlib

    found = {}
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        found[name] = getattr(module, name)
    return found


def deployment_keys() -> set[str]:
    import inspect

    return {f"{name}({param})" for name, flow_ in deployed_flows().items()
            for param in inspect.signature(flow_.fn).parameters}


# --------------------------------------------------------------------------------------------- world

TASK_ROWS = {  # the two tasks of the base config: one token task, one sentence task
    "pos": {"labels": ["NOUN", "VERB"], "dev": lambda i: {"tokens": ["dogs", "run"], "tags": ["NOUN", "VERB"]}},
    "sst2": {"labels": ["0", "1"], "dev": lambda i: {"text": f"film {i}", "label": str(i % 2)}},
}


@dataclass
class World:
    """Files the configs point at, and the base config every case changes one thing of."""
    tmp: Path
    encoder: Path
    raw: dict[str, Any]
    yaml_path: Path
    labels: list[list[str]]
    features: list[Path]
    dev: list[Path]
    extra: dict[str, str] = field(default_factory=dict)

    def config(self, overrides: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None) -> PipelineConfig:
        """The base config with dotted-key overrides (the deployments' `overrides` path) and
        secrets set as a YAML file would hold them (overrides refuse credentials)."""
        raw = apply_overrides(self.raw, overrides or {}, "case")
        for key, value in (secrets or {}).items():
            node = raw
            *sections, last = key.split(".")
            for part in sections:
                node = node.setdefault(part, {})
            node[last] = value
        return parse_config(raw, "case")


def write_data(folder: Path) -> None:
    (folder / "pos").mkdir(parents=True, exist_ok=True)
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    sentence = "# sent_id = {i}\n1\tdogs\tdog\tNOUN\t_\t_\t2\tnsubj\t_\t_\n2\trun\trun\tVERB\t_\t_\t0\troot\t_\t_\n\n"
    for split in ("train", "dev"):
        (folder / "pos" / f"{split}.conllu").write_text("".join(sentence.format(i=i) for i in range(6)))
        (folder / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(
            f"film number {i}\t{i % 2}\n" for i in range(6)))
    for name in ("train_copy.tsv", "dev_copy.tsv"):  # the same bytes under another name
        shutil.copyfile(folder / "sst2" / "train.tsv", folder / "sst2" / name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reach")
    saved_data_dir = os.environ.pop("MTL_DATA_DIR", None)  # it would win over every config's data_dir
    write_data(tmp / "data")
    shutil.copytree(tmp / "data", tmp / "data2")
    features, dev = [], []
    for index, (task, rows) in enumerate(TASK_ROWS.items()):
        path = tmp / "features" / f"{task}.jsonl"
        path.parent.mkdir(exist_ok=True)
        lines = []
        for i in range(40):
            n = 5 + i % 26
            label: Any = [i % 2] * n if task == "pos" else i % 2
            lines.append(json.dumps({"input_ids": [101] + [7] * (n - 2) + [102], "token_type_ids": [0] * n,
                                     "labels": label}))
        path.write_text("\n".join(lines) + "\n")
        features.append(path)
        dev_path = tmp / "dev" / f"{task}.jsonl"
        dev_path.parent.mkdir(exist_ok=True)
        dev_path.write_text("".join(json.dumps({"file": "dev", "line": i + 1, **rows["dev"](i)}) + "\n"
                                    for i in range(30)))
        dev.append(dev_path)
    other_encoder = tmp / "encoder-copy"  # the tiny encoder with one more vocabulary entry
    shutil.copytree(tiny_encoder, other_encoder)
    with open(other_encoder / "vocab.txt", "a", encoding="utf-8") as handle:
        handle.write("reachability\n")
    (tmp / "ds_stage1.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    warm = tmp / "warm-export"
    warm.mkdir()
    (warm / "mtl_model.json").write_text(json.dumps({"tasks": [
        {"name": t, "type": "token_classification" if t == "pos" else "sequence_classification",
         "labels": rows["labels"]} for t, rows in TASK_ROWS.items()]}))
    raw = {
        "name": "reach", "data_dir": str(tmp / "data"),
        "encoder": {"name_or_path": str(tiny_encoder), "max_length": 48},
        "tasks": [
            {"name": "pos", "type": "token_classification", "format": "conllu",
             "train": "pos/train.conllu", "dev": "pos/dev.conllu"},
            {"name": "sst2", "type": "sequence_classification", "format": "tsv",
             "train": "sst2/train.tsv", "dev": "sst2/dev.tsv"},
        ],
        "training": {"steps": 12, "micro_batch_size": 4, "warmup_steps": 2, "processes": 2},
        "storage": {"root": str(tmp / "state")},
        "registry": {"model_name": "reach-mtl"},
    }
    yaml_path = tmp / "reach.yaml"
    yaml_path.write_text(yaml.safe_dump(raw))
    yield World(tmp, tiny_encoder, raw, yaml_path, [r["labels"] for r in TASK_ROWS.values()], features, dev,
                {"encoder_copy": str(other_encoder), "ds_file": str(tmp / "ds_stage1.json"), "warm": str(warm),
                 "hostfile": str(tmp / "hostfile")})
    if saved_data_dir is not None:
        os.environ["MTL_DATA_DIR"] = saved_data_dir


class Launched(Exception):
    """Raised from the training log at the line that would start the launcher: the spec is written."""

    def __init__(self, command: list[str]) -> None:
        super().__init__(" ".join(command))
        self.command = command


def stop_at_launch(line: str) -> None:
    if line.startswith("launching: "):
        raise Launched(line[len("launching: "):].split(" "))


@pytest.fixture(scope="module")
def store(world: World) -> dict[str, Any]:
    """The base config's default MLflow store with the champion `reach-mtl@champion` (its run holds
    a model card, so the champion-labels task finds label lists)."""
    from mlflow import MlflowClient

    from training.release.registry import CARD_ARTIFACT, tracking_uri

    cfg = world.config()
    uri = tracking_uri(cfg.registry, cfg.storage.root)
    client = MlflowClient(uri)
    experiment = client.create_experiment("reach-store")
    run = client.create_run(experiment)
    card = {"tasks": [{"name": t, "labels": rows["labels"]} for t, rows in TASK_ROWS.items()]}
    client.log_text(run.info.run_id, json.dumps(card), f"{CARD_ARTIFACT}/mtl_model.json")
    client.create_registered_model("reach-mtl")
    version = client.create_model_version("reach-mtl", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("reach-mtl", "champion", version.version)
    return {"uri": uri, "client": client, "experiment": experiment}


# ------------------------------------------------------------------------------------- what is seen

class Seen:
    """What the consumers of one config see, each computed on first use."""

    def __init__(self, world: World, cfg: PipelineConfig, store: dict[str, Any] | None) -> None:
        self.world, self.cfg, self.store = world, cfg, store
        self.run_dir = world.tmp / "runs" / f"run-{next(_runs)}"

    # ---- train_model -> plan -> launch_stage, stopped before the launcher starts
    @cached_property
    def launches(self) -> list[tuple[Any, list[str]]]:
        """(worker spec as the worker reads it, launcher command) of every planned stage."""
        from training.launch.spec import WorkerSpec
        from training.launch.train import train_model
        from training.task_spec import spec_for

        cfg = self.cfg
        specs = [spec_for(t, self.world.labels[i]) for i, t in enumerate(cfg.tasks)]
        features = {t.name: str(self.world.features[i]) for i, t in enumerate(cfg.tasks)}
        dev = {t.name: str(self.world.dev[i]) for i, t in enumerate(cfg.tasks)}
        out = []
        for _ in range(8):
            try:
                train_model(cfg.encoder, cfg.training, cfg.deepspeed, specs, features, self.run_dir, stop_at_launch,
                            dev)
            except Launched as launched:
                spec_file = Path(launched.command[launched.command.index("--spec") + 1])
                spec = WorkerSpec.model_validate_json(spec_file.read_text())
                out.append((spec, launched.command))
                # the stage counts as exported, so the next call plans on to the next stage
                exported = [Path(spec.export_dir)] + ([self.run_dir / "model"] if spec.stage else [])
                for folder in exported:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "mtl_model.json").write_text("{}")
            else:
                return out
        raise AssertionError(f"more than 8 stages planned for {cfg.training.schedule}")

    @property
    def spec(self) -> Any:
        return self.launches[0][0]

    @property
    def command(self) -> list[str]:
        return self.launches[0][1]

    def flag(self, name: str) -> str | None:
        return next((a.split("=", 1)[1] for a in self.command if a.startswith(f"--{name}=")), None)

    # ---- what training/trainer/worker.py `train` builds from the spec (its own functions, rank 0)
    @property
    def world_size(self) -> int:
        return self.spec.training.processes * self.spec.training.nodes

    @cached_property
    def parts(self) -> tuple[Any, Any, Any, Any]:
        """The worker's own construction (training/trainer/worker.py `build_parts`), rank 0."""
        from training.trainer.worker import build_parts

        return build_parts(self.spec, 0, self.world_size, PAD)

    @property
    def batches(self) -> Any:
        return self.parts[0]

    @property
    def sampler(self) -> Any:
        return self.parts[1]

    @property
    def weighting(self) -> Any:
        return self.parts[2]

    @property
    def model(self) -> Any:
        return self.parts[3]

    @cached_property
    def ds_config(self) -> dict[str, Any]:
        from training.trainer.engine import deepspeed_config

        return deepspeed_config(self.spec.deepspeed, self.spec.training)

    @cached_property
    def plan(self) -> Any:
        from training.config import engine_plan

        return engine_plan(self.spec.deepspeed, self.world_size)

    @cached_property
    def evaluator(self) -> Any:
        from training.trainer.worker import dev_evaluator

        return dev_evaluator(self.spec, None, None, None)  # the engine, tokenizer and log are only kept

    def threads(self) -> int:
        import torch

        from training.trainer.worker import set_threads

        before = torch.get_num_threads()
        try:
            set_threads(self.spec.training, 1)
            return torch.get_num_threads()
        finally:
            torch.set_num_threads(before)

    # ---- the flow's side
    def task(self, name: str) -> Any:
        return next(t for t in self.cfg.tasks if t.name == name)

    @cached_property
    def sources(self) -> dict[str, Any]:
        cfg = self.cfg
        return {t.name: source_fingerprints(t, cfg.resolved_data_dir(), cfg.storage.s3) for t in cfg.tasks}

    @cached_property
    def ingest_keys(self) -> dict[str, str | None]:
        """The keys the ingest task computes (flows/tasks.py `ingest` -> `ingest_cached`), no previous labels."""
        return {t.name: ingest_key(t, self.cfg.resolved_data_dir(), self.cfg.storage.s3, None) for t in self.cfg.tasks}

    @cached_property
    def tokenize_keys(self) -> dict[str, str | None]:
        """The keys the tokenize task computes (flows/tasks.py `tokenize` -> `tokenize_cached`)."""
        from training.model.multitask import resolve_encoder_path

        path = resolve_encoder_path(self.cfg.encoder.name_or_path)
        return {t.name: tokenize_key(t, {"key": self.ingest_keys[t.name]}, path, self.cfg.encoder.max_length,
                                     self.cfg.tokenize) for t in self.cfg.tasks}

    @cached_property
    def cache(self) -> ArtifactCache:
        """The cache the ingest and tokenize tasks open."""
        return ArtifactCache(self.cfg.storage.cache_root(), self.cfg.storage.s3)

    @cached_property
    def params(self) -> dict[str, Any]:
        from flows.retrain import mlflow_params

        return mlflow_params(self.cfg)

    @cached_property
    def fingerprint(self) -> dict[str, str]:
        """The parts the fingerprint task digests (flows/loop.py `check_fingerprint`)."""
        from training.model.multitask import resolve_encoder_path

        return make_fingerprint(self.cfg.model_dump(mode="json"), resolve_encoder_path(self.cfg.encoder.name_or_path),
                                self.sources).parts

    @cached_property
    def prepared(self) -> tuple[Path, dict[str, Any]]:
        """The prepare-run task's body: the run folder and the resolved config saved there."""
        from prefect.logging import disable_run_logger

        from flows.tasks import prepare_run

        with disable_run_logger():
            run_dir = Path(prepare_run.fn(self.cfg))
        return run_dir, json.loads((run_dir / "config.resolved.json").read_text())

    def experiment(self) -> str:
        """The open-mlflow-run task's body: the experiment the flow run's MLflow run went to."""
        from mlflow import MlflowClient
        from prefect.logging import disable_run_logger

        from flows.tasks import open_mlflow_run

        with disable_run_logger():
            ref = open_mlflow_run.fn(self.cfg.registry, self.cfg.storage.root, str(self.run_dir), {})
        return MlflowClient(ref["tracking_uri"]).get_experiment(ref["experiment_id"]).name

    def champion_labels(self) -> dict[str, list[str]]:
        """The champion-labels task's body: the label lists a retrain keeps."""
        from prefect.logging import disable_run_logger

        from flows.tasks import champion_label_maps

        assert self.store is not None
        with disable_run_logger():
            return champion_label_maps.fn(self.cfg.registry, self.cfg.promotion, self.cfg.storage.root)

    def gate(self) -> tuple[bool, list[str]]:
        """The gate on logged scores (`promote_if_better`, the promote task's fallback) for a fresh
        model: champion v1 at dev accuracy 0.80, challenger v2 at 0.77 (refused at the default
        tolerance). Returns (promoted, the aliases v2 holds afterwards)."""
        from training.release.registry import aliases_of, promote_if_better

        assert self.store is not None
        client, name = self.store["client"], f"gate-{next(_runs)}"
        client.create_registered_model(name)
        for version, score in ((1, 0.80), (2, 0.77)):
            run = client.create_run(self.store["experiment"])
            client.log_metric(run.info.run_id, "dev.sst2.accuracy", score)
            client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias(name, "champion", "1")
        promoted, _ = promote_if_better(self.store["uri"], name, "2", {"sst2": "accuracy"}, self.cfg.promotion)
        return promoted, sorted(aliases_of(client, name, "2"))

    def gate_on_primary(self) -> tuple[bool, str]:
        """The gate on logged scores for the tasks the worker trains, comparing what the promote task
        compares (`primary_metrics` of the specs): champion v1 at dev accuracy 0.80 and macro F1 0.50,
        challenger v2 at 0.77 and 0.90. Returns (promoted, sst2's metric compared)."""
        from training.release.gate import primary_metrics
        from training.release.registry import promote_if_better

        assert self.store is not None
        client, name = self.store["client"], f"gate-{next(_runs)}"
        client.create_registered_model(name)
        for version, scores in ((1, {"accuracy": 0.80, "macro_f1": 0.50}), (2, {"accuracy": 0.77, "macro_f1": 0.90})):
            run = client.create_run(self.store["experiment"])
            for metric, score in scores.items():
                client.log_metric(run.info.run_id, f"dev.sst2.{metric}", score)
            client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias(name, "champion", "1")
        primary = {t: m for t, m in primary_metrics(self.spec.tasks).items() if t == "sst2"}
        promoted, _ = promote_if_better(self.store["uri"], name, "2", primary, self.cfg.promotion)
        return promoted, primary["sst2"]

    def eval_device(self) -> str:
        """The flow's evaluate task on an export that does not exist: the device is chosen before the
        export is read, and a CUDA device this machine lacks is refused naming the field."""
        from flows.tasks import evaluate
        from training.evaluation.device import DeviceError

        try:
            evaluate.fn(str(self.world.tmp / "no-export"), [], {}, 8, None, self.cfg.training.eval_device)
        except DeviceError as exc:
            return "refused: " + str(exc).split(":", 1)[0]
        except OSError:
            return "went for the export"
        return "evaluated"

    def affinity(self) -> str:
        """The task-affinity task's body on a run that does not exist: `off` returns before it."""
        from flows.tasks import task_affinity

        features = {t.name: str(self.world.features[i]) for i, t in enumerate(self.cfg.tasks)}
        try:
            return "skipped" if task_affinity.fn(str(self.world.tmp / "no-run"), self.cfg.training, self.cfg.tasks,
                                                 features, self.cfg.affinity) == {} \
                else "computed"
        except (OSError, ValueError):
            return "computed"  # it went for the export

    def affinity_batches(self) -> tuple[int, int]:
        """(batches per task, rows per batch) the affinity report is computed over, as
        `affinity_from_export` samples them from the task's settings."""
        from training.evaluation.affinity import sample_batches

        features = {t.name: str(self.world.features[i]) for i, t in enumerate(self.cfg.tasks)}
        sampled = sample_batches(features, PAD, self.cfg.affinity.rounds, self.cfg.affinity.batch_size)["sst2"]
        return len(sampled), int(sampled[0]["input_ids"].shape[0])


# ---------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Check:
    """One consumer's view: `seen(Seen) -> value`. `expect`: SAME (the case's value), DIFFERS (other
    than without the change: a digest), UNCHANGED (the same as without it: a key that must leave
    the setting out), a literal, or a predicate `(seen, value) -> bool`. With SAME or a literal the
    base config must be seen otherwise (the check cannot pass by accident)."""
    consumer: str
    seen: Callable[[Seen], Any]
    expect: Any = SAME


@dataclass(frozen=True)
class Case:
    value: Any
    checks: tuple[Check, ...]
    key: str | None = None  # the override key when it is not the field's (tasks by name)
    also: dict[str, Any] = field(default_factory=dict)  # set in both configs, so the value can take effect
    along: dict[str, Any] = field(default_factory=dict)  # set with the value (what it cannot go without)
    note: str = ""  # where the value goes after the last check, when that is inside a launched worker
    store: bool = False  # needs the MLflow store with a champion


def spec_check(attribute: str) -> Check:
    """The worker spec carries it (its last hop before the launched worker reads it)."""
    section, name = attribute.split(".")
    return Check("worker spec", lambda s: getattr(getattr(s.spec, section), name))


def task_spec(task: str, attribute: str) -> Check:
    return Check("worker spec task", lambda s: getattr(next(t for t in s.spec.tasks if t.name == task), attribute))


def dev_score(seen: Seen, task: str) -> dict[str, float]:
    """The metrics `evaluate.score` computes for the worker spec's task on two dev rows."""
    from training.evaluation.evaluate import score

    return score(next(t for t in seen.spec.tasks if t.name == task), [["1"], ["0"]], [["1"], ["1"]])


INGEST = Check("ingest cache key", lambda s: s.ingest_keys["sst2"], DIFFERS)
INGEST_POS = Check("ingest cache key", lambda s: s.ingest_keys["pos"], DIFFERS)
TOKENIZE = Check("tokenize cache key", lambda s: s.tokenize_keys["sst2"], DIFFERS)
INGEST_KEEPS = Check("ingest cache key (leaves it out)", lambda s: s.ingest_keys["sst2"], UNCHANGED)
TOKENIZE_KEEPS = Check("tokenize cache key (leaves it out)", lambda s: s.tokenize_keys["sst2"], UNCHANGED)
HUB = {"tasks.sst2.source": "hub", "tasks.sst2.hub": {"name": "glue", "config": "sst2", "revision": "v1"}}
DEV_RATIO = {"tasks.sst2.dev": None, "tasks.sst2.dev_ratio": 0.2}
TWO_NODES = {"training.nodes": 2, "training.master_port": 29501}
EVAL = {"training.eval_every": 5}
MTDNN = {"training.schedule": "mtdnn"}
S3_CACHE = {"storage.cache": "s3://reach-bucket/cache"}
# stage cards where sst2's multi-task weights scored above its fine-tuning on the same dev sample
MULTITASK_HIGHER = ({"selection": {"tasks": {"sst2": {"score": 0.9}}}}, {"sst2": {"selection": {"tasks": {"sst2": {
    "score": 0.8}}}}})


def secret_check(option: str) -> Check:
    return Check("s3fs options of the cache", lambda s: s.cache.fs.storage_options.get(option))


CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- root
    "name": Case("renamed", (Check("prepare-run: the run folder", lambda s: s.prepared[0].name.split("-")[0]),)),
    "data_dir": Case("<data2>", (Check("prepare-run: the resolved config", lambda s: s.prepared[1]["data_dir"]),
                                 Check("ingest: the files fingerprinted", lambda s: s.sources["sst2"][0][1][0][0],
                                       lambda seen, value: seen.startswith(value)))),
    # ---------------------------------------------------------------- encoder
    "encoder.name_or_path": Case("<encoder_copy>", (
        spec_check("encoder.name_or_path"), TOKENIZE,
        Check("fingerprint encoder part", lambda s: s.fingerprint["encoder"], DIFFERS))),
    "encoder.max_length": Case(32, (spec_check("encoder.max_length"), TOKENIZE)),
    "encoder.dropout": Case(0.3, (Check("model heads' dropout", lambda s: {
        m.p for m in s.model.heads.modules() if type(m).__name__ == "Dropout"}, {0.3}),)),
    "encoder.attn_implementation": Case("eager", (Check("model encoder", lambda s: (
        s.model.sharing.encoder.config._attn_implementation)),)),
    # ---------------------------------------------------------------- tasks (sst2 unless said)
    "tasks.*.name": Case("movie", (Check("worker spec tasks", lambda s: [t.name for t in s.spec.tasks],
                                         ["pos", "movie"]),
                                   Check("ingest cache key", lambda s: s.ingest_keys.get("movie", s.ingest_keys.get(
                                       "sst2")), DIFFERS))),
    "tasks.*.type": Case("sequence_regression", (task_spec("sst2", "type"), INGEST)),
    "tasks.*.source": Case("hub", (INGEST,), also={"tasks.sst2.hub": HUB["tasks.sst2.hub"]}),
    "tasks.*.format": Case("csv", (INGEST,)),
    "tasks.*.hub.name": Case("super_glue", (INGEST,), also=HUB),
    "tasks.*.hub.config": Case("rte", (INGEST,), also=HUB),
    "tasks.*.hub.data_files": Case(["<data>/sst2/train.tsv"], (INGEST,), also=HUB),
    "tasks.*.hub.revision": Case("v2", (INGEST,), also=HUB),
    "tasks.*.train": Case("sst2/train_copy.tsv", (INGEST, Check("ingest: the files fingerprinted", lambda s: (
        s.sources["sst2"][0][1][0][0]), lambda seen, value: seen.endswith(value)))),
    "tasks.*.dev": Case("sst2/dev_copy.tsv", (INGEST,)),
    "tasks.*.dev_ratio": Case(0.2, (INGEST,), along={"tasks.sst2.dev": None}),
    "tasks.*.split_seed": Case(7, (INGEST,), also=DEV_RATIO),
    "tasks.*.token_column": Case(1, (INGEST_POS,), key="tasks.pos.token_column"),
    "tasks.*.tag_column": Case(3, (INGEST_POS,), key="tasks.pos.tag_column"),
    "tasks.*.text_column": Case("text", (INGEST,)),
    "tasks.*.text_pair_column": Case("hypothesis", (INGEST,)),
    "tasks.*.label_column": Case("gold", (INGEST,)),
    "tasks.*.label_separator": Case(":", (INGEST,)),
    "tasks.*.header": Case(False, (INGEST,)),
    "tasks.*.delimiter": Case(";", (INGEST,)),
    "tasks.*.encoding": Case("latin-1", (INGEST,)),
    "tasks.*.encoding_errors": Case("replace", (INGEST,)),
    "tasks.*.labels": Case(["0", "1"], (INGEST,)),
    "tasks.*.label_scheme": Case("bio", (task_spec("pos", "label_scheme"), INGEST_POS), key="tasks.pos.label_scheme"),
    "tasks.*.bio_repair": Case(True, (INGEST_POS,), key="tasks.pos.bio_repair"),
    "tasks.*.label_alignment": Case("last", (Check("tokenize cache key", lambda s: s.tokenize_keys["pos"], DIFFERS),
                                             Check("ingest cache key (leaves it out)", lambda s: s.ingest_keys["pos"],
                                                   UNCHANGED)), key="tasks.pos.label_alignment"),
    "tasks.*.auxiliary": Case(True, (task_spec("sst2", "auxiliary"), INGEST_KEEPS)),
    "tasks.*.max_train_examples": Case(3, (INGEST,)),
    "tasks.*.max_dev_examples": Case(3, (INGEST,)),
    "tasks.*.sample_seed": Case(7, (INGEST,)),
    "tasks.*.positive_label": Case("1", (task_spec("sst2", "positive_label"), Check(
        "dev metrics of the task (evaluate.score, as evaluation during and after training computes them)",
        lambda s: sorted(dev_score(s, "sst2")), ["accuracy", "f1", "macro_f1"]), INGEST_KEEPS)),
    "tasks.*.primary_metric": Case("macro_f1", (
        task_spec("sst2", "primary_metric"),
        Check("dev evaluator selection", lambda s: s.evaluator.selection.primary["sst2"]),
        Check("gate: the metric compared and the decision", lambda s: s.gate_on_primary(), (True, "macro_f1")),
        INGEST_KEEPS), also=EVAL, store=True),
    "tasks.*.max_label_shift": Case(0.1, (INGEST_KEEPS, TOKENIZE_KEEPS),
                                    note="read by the data-report task against the champion's data profile "
                                         "(flows/loop.py data_report -> shift_problems); tests/test_data_profile.py"),
    # ---------------------------------------------------------------- tokenize
    "tokenize.stride": Case(4, (TOKENIZE,)),
    "tokenize.num_proc": Case(2, (TOKENIZE_KEEPS,), note="how many processes tokenize (tokenize_cached -> "
                                                         "tokenize_with_stats); the features are the same"),
    "tokenize.batch_size": Case(10, (TOKENIZE_KEEPS,), note="rows per fast-tokenizer call (tokenize_with_stats); "
                                                            "the features are the same"),
    # ---------------------------------------------------------------- training
    "training.steps": Case(24, (
        spec_check("training.steps"),
        Check("DeepSpeed scheduler", lambda s: s.ds_config["scheduler"]["params"]["total_num_steps"]),
        Check("sampler draws", lambda s: s.sampler.total_draws))),
    "training.micro_batch_size": Case(3, (Check("batch rows per rank", lambda s: int(
        s.batches.next("sst2")["input_ids"].shape[0])), Check("DeepSpeed config", lambda s: (
            s.ds_config["train_micro_batch_size_per_gpu"])))),
    "training.max_tokens": Case(96, (Check("token-budget batches", lambda s: s.batches.max_tokens),)),
    "training.compile": Case(True, (spec_check("training.compile"),), note="Engine compiles the model (worker)"),
    "training.learning_rate": Case(3e-4, (Check("DeepSpeed scheduler", lambda s: (
        s.ds_config["scheduler"]["params"]["warmup_max_lr"])),)),
    "training.weight_decay": Case(0.2, (Check("DeepSpeed optimizer", lambda s: (
        s.ds_config["optimizer"]["params"]["weight_decay"])),), also={"deepspeed.offload_optimizer": True}),
    "training.warmup_steps": Case(5, (Check("DeepSpeed scheduler", lambda s: (
        s.ds_config["scheduler"]["params"]["warmup_num_steps"])),)),
    "training.seed": Case(7, (Check("sampler", lambda s: s.sampler.seed), Check("batches", lambda s: s.batches.seed),
                              Check("loss weighting (pcgrad's projection order)", lambda s: s.weighting.seed))),
    "training.processes": Case(1, (Check("launcher command", lambda s: s.flag("num_gpus"), "1"),
                                   Check("engine plan world", lambda s: s.plan.zero_stage, 0))),
    "training.nodes": Case(2, (Check("launcher command", lambda s: s.flag("num_nodes"), "2"),),
                           along={"training.master_port": 29501}),
    "training.launcher": Case("torchrun", (Check("launcher command", lambda s: Path(s.command[0]).name),)),
    "training.node_rank": Case(1, (Check("launcher command", lambda s: s.flag("node_rank"), "1"),), also=TWO_NODES),
    "training.master_addr": Case("10.1.2.3", (Check("launcher command", lambda s: s.flag("master_addr")),)),
    "training.master_port": Case(29555, (Check("launcher command", lambda s: s.flag("master_port"), "29555"),)),
    "training.hostfile": Case("<hostfile>", (Check("launcher command", lambda s: s.flag("hostfile")),), also=TWO_NODES),
    "training.multi_node_launch": Case("ssh", (Check("launcher command", lambda s: (
        "per_node" if "--no_ssh" in s.command else "ssh")),), also={**TWO_NODES, "training.hostfile": "<hostfile>"}),
    "training.checkpoint_uri": Case("<tmp>/checkpoints", (Check("worker spec checkpoint_dir", lambda s: (
        s.spec.checkpoint_dir), lambda seen, value: seen.startswith(value)),)),
    "training.schedule": Case("mtdnn", (Check("planned stages", lambda s: [spec.stage for spec, _ in s.launches],
                                              ["multitask", "finetune-pos", "finetune-sst2"]),)),
    "training.schedule_params": Case({"finetune_tasks": ["sst2"]}, (Check("planned stages", lambda s: (
        [spec.stage for spec, _ in s.launches]), ["multitask", "finetune-sst2"]),), also=MTDNN),
    "training.schedule_params(mtdnn).finetune_tasks": Case(["pos"], (Check("planned stages", lambda s: (
        [spec.stage for spec, _ in s.launches]), ["multitask", "finetune-pos"]),),
        key="training.schedule_params.finetune_tasks", also=MTDNN),
    "training.schedule_params(mtdnn).multitask_learning_rate": Case(3e-5, (
        Check("multi-task stage spec", lambda s: s.launches[0][0].training.learning_rate),
        Check("fine-tuning stage spec", lambda s: s.launches[1][0].training.learning_rate, UNCHANGED)),
        key="training.schedule_params.multitask_learning_rate", also=MTDNN),
    "training.schedule_params(mtdnn).finetune_steps": Case(5, (Check("fine-tuning stage spec", lambda s: (
        s.launches[1][0].training.steps)),), key="training.schedule_params.finetune_steps", also=MTDNN),
    "training.schedule_params(mtdnn).finetune_learning_rates": Case({"sst2": 3e-5}, (Check(
        "fine-tuning stage spec", lambda s: s.launches[2][0].training.learning_rate, 3e-5),),
        key="training.schedule_params.finetune_learning_rates", also=MTDNN),
    "training.schedule_params(mtdnn).finetune_task_steps": Case({"sst2": 7}, (Check(
        "fine-tuning stage spec", lambda s: [spec.training.steps for spec, _ in s.launches[1:]], [6, 7]),),
        key="training.schedule_params.finetune_task_steps", also=MTDNN),
    "training.schedule_params(mtdnn).multitask_fallback": Case(False, (Check(
        "mtdnn assembly: the fine-tuned weights it exports when the multi-task stage scored higher",
        lambda s: SCHEDULES["mtdnn"].kept(s.cfg.training, *MULTITASK_HIGHER), ["sst2"]),),
        key="training.schedule_params.multitask_fallback", also=MTDNN),
    "training.sharing": Case("soft", (Check("model sharing strategy", lambda s: type(s.model.sharing).__name__,
                                            "SoftSharing"),)),
    "training.sampler": Case("uniform", (Check("sampler", lambda s: type(s.sampler).__name__, "UniformSampler"),)),
    "training.sampler_temperature": Case(0.5, (Check("sampler", lambda s: s.sampler.temperature),),
                                         also={"training.sampler": "temperature"}),
    "training.sampler_final_alpha": Case(0.3, (Check("sampler", lambda s: s.sampler.final_alpha),),
                                         also={"training.sampler": "annealed"}),
    "training.group_by_length": Case(False, (Check("batches", lambda s: s.batches.group_by_length),)),
    "training.length_bucket_batches": Case(3, (Check("batches", lambda s: s.batches.bucket_batches),)),
    "training.weighting": Case("uncertainty", (Check("loss weighting", lambda s: type(s.weighting).__name__,
                                                     "UncertaintyWeighting"),)),
    "training.sharing_params": Case({"bottleneck": 8}, (Check("model adapters", lambda s: sorted({
        m.out_features for n, m in s.model.sharing.named_modules() if n.endswith("down")}), [8]),),
        also={"training.sharing": "soft"}),
    "training.weighting_params": Case({"weights": {"sst2": 2.0}}, (Check("loss weighting", lambda s: (
        {"weights": s.weighting.params.weights})),), also={"training.weighting": "static"}),
    "training.checkpoint_every": Case(5, (spec_check("training.checkpoint_every"),), note="train_loop (worker)"),
    "training.keep_checkpoints": Case(4, (spec_check("training.keep_checkpoints"),), note="Checkpointer (worker)"),
    "training.log_every": Case(2, (spec_check("training.log_every"),), note="train_loop (worker)"),
    "training.log_memory": Case(True, (spec_check("training.log_memory"),), note="Engine and train_loop (worker)"),
    "training.eval_batch_size": Case(8, (Check("dev evaluator", lambda s: s.evaluator.batch_size),), also=EVAL,
                                     note="also the flow's evaluate and evaluate-champion tasks"),
    "training.eval_device": Case("cuda", (Check("the flow's evaluate task", lambda s: s.eval_device(),
                                                "refused: training.eval_device='cuda'"),),
                                note="also the evaluate-champion and task-affinity tasks"),
    "training.eval_every": Case(5, (Check("dev evaluator", lambda s: s.evaluator and s.evaluator.every),)),
    "training.eval_max_examples": Case(10, (Check("dev evaluator sample", lambda s: (
        len(s.evaluator.examples["sst2"]))),), also=EVAL),
    "training.selection": Case("mean", (Check("dev evaluator selection", lambda s: s.evaluator.selection.mode),),
                               also=EVAL),
    "training.patience": Case(2, (Check("dev evaluator selection", lambda s: s.evaluator.selection.patience),),
                              also=EVAL),
    "training.timeout_s": Case(99, (spec_check("training.timeout_s"),),
                               note="launch_stage hands it to run_launcher with the stage's training config"),
    "training.threads_per_process": Case(7, (Check("worker torch threads", lambda s: s.threads()),)),
    "training.init_from": Case("<warm>", (Check("worker spec init_from", lambda s: s.spec.init_from,
                                                lambda seen, value: Path(seen) == Path(value).resolve()),)),
    # ---------------------------------------------------------------- deepspeed
    "deepspeed.zero_stage": Case(1, (Check("engine plan", lambda s: s.plan.zero_stage),)),
    "deepspeed.precision": Case("bf16", (Check("engine plan", lambda s: s.plan.precision),)),
    "deepspeed.mixed_precision": Case("autocast", (Check("engine plan", lambda s: s.plan.mixed_precision),),
                                      also={"deepspeed.precision": "bf16"}),
    "deepspeed.gradient_accumulation_steps": Case(3, (Check("DeepSpeed config", lambda s: (
        s.ds_config["gradient_accumulation_steps"])), Check("sampler draws", lambda s: s.sampler.total_draws, 36))),
    "deepspeed.gradient_clipping": Case(0.5, (Check("DeepSpeed config", lambda s: s.ds_config["gradient_clipping"]),)),
    "deepspeed.offload_optimizer": Case(True, (Check("DeepSpeed config", lambda s: (
        "offload_optimizer" in s.ds_config["zero_optimization"])),)),
    "deepspeed.offload_params": Case(True, (Check("DeepSpeed config", lambda s: (
        "offload_param" in s.ds_config["zero_optimization"])),)),
    "deepspeed.config_file": Case("<ds_file>", (Check("engine plan", lambda s: s.plan.zero_stage, 1),)),
    # ---------------------------------------------------------------- storage
    "storage.root": Case("<tmp>/state2", (
        Check("prepare-run: the run folder", lambda s: str(s.prepared[0].parent.parent)),
        Check("cache of the ingest task", lambda s: s.cache.root, lambda seen, value: seen.startswith(value + "/")),
        Check("champion-labels: the default store", lambda s: s.champion_labels(), {})), store=True),
    "storage.cache": Case("<tmp>/cache2", (Check("cache of the ingest task", lambda s: s.cache.root),)),
    "storage.s3.endpoint_url": Case("http://127.0.0.1:9", (Check("s3fs options of the cache", lambda s: (
        s.cache.fs.storage_options["client_kwargs"].get("endpoint_url"))),), also=S3_CACHE),
    "storage.s3.region": Case("eu-west-3", (Check("s3fs options of the cache", lambda s: (
        s.cache.fs.storage_options["client_kwargs"].get("region_name"))),), also=S3_CACHE),
    "storage.s3.access_key_id": Case("reach-key-id", (secret_check("key"),), also=S3_CACHE),
    "storage.s3.secret_access_key": Case("reach-secret", (secret_check("secret"),), also=S3_CACHE),
    "storage.s3.session_token": Case("reach-token", (secret_check("token"),), also=S3_CACHE),
    # ---------------------------------------------------------------- affinity
    "affinity.method": Case("off", (Check("task-affinity task", lambda s: s.affinity(), "skipped"),)),
    "affinity.rounds": Case(2, (Check("affinity batches", lambda s: s.affinity_batches()[0]),)),
    "affinity.batch_size": Case(5, (Check("affinity batches", lambda s: s.affinity_batches()[1]),)),
    # ---------------------------------------------------------------- registry and promotion
    "registry.tracking_uri": Case("sqlite:///<tmp>/other-store.db", (
        Check("champion-labels: the store", lambda s: s.champion_labels(), {}),), store=True),
    "registry.experiment": Case("reach-experiment", (
        Check("open-mlflow-run: the experiment", lambda s: s.experiment()),), store=True),
    "registry.model_name": Case("reach-other", (
        Check("champion-labels: the model", lambda s: s.champion_labels(), {}),), store=True),
    "promotion.alias": Case("gold", (Check("champion-labels: the alias", lambda s: s.champion_labels(), {}),
                                     Check("gate: the alias moved", lambda s: s.gate()[1], ["gold"])), store=True),
    "promotion.challenger_alias": Case("contender", (), note="register_model sets it on the new version: that needs "
                                                             "a trained export (tests/test_registry.py, test_e2e.py)"),
    "promotion.tolerance": Case(0.05, (Check("gate: the decision", lambda s: s.gate()[0], True),), store=True),
    "promotion.enabled": Case(False, (), note="the promote task's first line (flows/tasks.py promote): see "
                                              "test_promotion_disabled_stops_the_promote_task"),
}

# fields no code reads: listed with the reason (a field here is either wired up or removed)
UNCONSUMED: dict[str, str] = {}


def placeholders(value: Any, world: World) -> Any:
    """`<tmp>`, `<data>`, `<data2>` and the world's extra files in a case's value."""
    if isinstance(value, str):
        for name, path in {"tmp": str(world.tmp), "data2": str(world.tmp / "data2"), "data": str(world.tmp / "data"),
                           **world.extra}.items():
            value = value.replace(f"<{name}>", path)
        return value
    if isinstance(value, list):
        return [placeholders(v, world) for v in value]
    if isinstance(value, dict):
        return {k: placeholders(v, world) for k, v in value.items()}
    return value


def override_key(key: str, case: Case) -> str:
    return case.key or key.replace("tasks.*.", "tasks.sst2.")


def configs(world: World, key: str, case: Case) -> tuple[PipelineConfig, PipelineConfig, Any]:
    """(base config with the case's `also`, the same with the value, the value)."""
    also, value = placeholders(case.also, world), placeholders(case.value, world)
    target = override_key(key, case)
    base = world.config(also)
    changes = {**also, **placeholders(case.along, world)}
    if key.startswith("storage.s3.") and key.split(".")[-1] in ("access_key_id", "secret_access_key", "session_token"):
        return base, world.config(changes, secrets={target: value}), value
    return base, world.config({**changes, target: value}), value


# Where and how a run goes, not what it trains: these must leave the run fingerprint as it is, every
# other setting must change it. The test's own list (training/release/fingerprint.py RUN_ONLY holds the
# same): a setting that moves in or out of RUN_ONLY by mistake fails its case here.
RUN_ONLY_SETTINGS = frozenset({
    "name", "data_dir", "storage", "registry", "promotion", "affinity", "tokenize.num_proc", "tokenize.batch_size",
    "training.node_rank", "training.master_addr", "training.master_port", "training.hostfile",
    "training.multi_node_launch", "training.launcher", "training.checkpoint_uri", "training.checkpoint_every",
    "training.keep_checkpoints", "training.log_every", "training.log_memory", "training.timeout_s",
    "training.threads_per_process", "training.eval_batch_size", "training.eval_device",
    "tasks.*.train", "tasks.*.dev", "tasks.*.max_label_shift",
})


def run_only(key: str) -> bool:
    parts = key.split(".")
    if key.startswith("tasks.*."):
        return f"tasks.*.{parts[2]}" in RUN_ONLY_SETTINGS
    return parts[0] in RUN_ONLY_SETTINGS or ".".join(parts[:2]) in RUN_ONLY_SETTINGS


def flat(prefix: str, value: Any) -> dict[str, Any]:
    """A value as `mlflow_params` flattens it under `prefix`."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(f"{prefix}.{key}", item).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(f"{prefix}.{i}", item).items()}
    return {prefix: value}


def param_prefix(key: str, target: str, value: Any) -> str:
    """The MLflow param key of an override key: a task's params go by its name, the new one if renamed."""
    return f"tasks.{value}.name" if key == "tasks.*.name" else target


# ---------------------------------------------------------------------------------------------- tests

def test_every_setting_and_parameter_has_a_case() -> None:
    """A field or deployment parameter added without a case here fails: say where its value goes."""
    fields = schema_keys()
    assert not set(CASES) & set(UNCONSUMED), "a field is either consumed or listed as unconsumed"
    assert fields - set(CASES) - set(UNCONSUMED) == set(), "fields without a reachability case"
    assert (set(CASES) | set(UNCONSUMED)) - fields == set(), "cases of fields that are gone"
    assert deployment_keys() == set(DEPLOYMENT_CASES), "deployment parameters without (or with stale) cases"


@pytest.mark.parametrize("key", sorted(CASES))
def test_setting_reaches_its_consumer(key: str, world: World, request: pytest.FixtureRequest) -> None:
    """The case's value, set on the base config, is what each of its consumers sees; its MLflow
    params show it (masked when secret); it changes the run fingerprint exactly when it is not a
    run-only setting."""
    case = CASES[key]
    store = request.getfixturevalue("store") if case.store else None
    base_cfg, cfg, value = configs(world, key, case)
    base, seen = Seen(world, base_cfg, store), Seen(world, cfg, store)
    for check in case.checks:
        got = check.seen(seen)
        if check.expect is DIFFERS:
            assert got != check.seen(base), f"{key}: {check.consumer} did not change"
        elif check.expect is UNCHANGED:
            assert got == check.seen(base), f"{key}: {check.consumer} changed, but must leave it out"
        elif callable(check.expect):
            assert check.expect(got, value), f"{key}: {check.consumer} saw {got!r}, set {value!r}"
        else:
            want = value if check.expect is SAME else check.expect
            assert got == want, f"{key}: {check.consumer} saw {got!r}, not {want!r}"
            assert check.seen(base) != want, f"{key}: {check.consumer} sees {want!r} without the change too"
    # the MLflow params: the run's record of its settings
    target = override_key(key, case)
    params = seen.params
    if isinstance(value, str) and key.startswith("storage.s3.") and key.endswith(("key_id", "access_key", "token")):
        assert params[target] == "**********" and all(value not in str(v) for v in params.values())
    else:
        expected = flat(param_prefix(key, target, value), value)
        assert {k: params.get(k) for k in expected} == expected, f"{key}: not in the MLflow params as set"
    # the fingerprint: what makes a model
    moved = seen.fingerprint["config"] != base.fingerprint["config"]
    assert moved != run_only(key), (f"{key}: the fingerprint's config part {'changed' if moved else 'did not change'}; "
                                    f"it is {'a run-only' if run_only(key) else 'a training'} setting")


def test_promotion_disabled_stops_the_promote_task(world: World) -> None:
    """`promotion.enabled: false` reaches the promote task, which then moves nothing."""
    from prefect.logging import disable_run_logger

    from flows.tasks import promote

    cfg = world.config({"promotion.enabled": False})
    with disable_run_logger():
        found = promote.fn({"model_name": "none", "version": "1", "tracking_uri": "sqlite:///nowhere.db"}, [],
                           cfg.promotion)
    assert found == {"promoted": False, "reasons": ["promotion disabled in config"], "report": None}


# ----------------------------------------------------------------------------------- deployment params

def loads(function: Callable[..., Any]) -> set[str]:
    """The local names a function's body reads (a parameter it never reads is dropped)."""
    return {i.argval for i in dis.get_instructions(function) if i.opname.startswith("LOAD_FAST")}


def forwarded(param: str, *functions: Callable[..., Any]) -> bool:
    """Whether each function of a call chain reads `param` (passes it on or uses it)."""
    return all(param in loads(f) for f in functions)


@pytest.fixture(scope="module")
def deployment_runs(world: World, store: dict[str, Any], prefect_engine: None,
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every deployed flow run with non-default parameters, once; what each consumer saw."""
    from flows.loop import check_fingerprint
    from flows.promote import promote, rollback
    from flows.retrain import retrain, retrain_from_file
    from flows.tasks import ingest, redacted

    seen: dict[str, Any] = {}

    def resume_folder(cfg: PipelineConfig, name: str) -> Path:
        """A run folder whose saved config is `cfg`'s plus the marker key."""
        folder = tmp_path_factory.mktemp(name)
        resolved = redacted(cfg.model_dump(mode="json"))
        resolved["data_dir"] = cfg.resolved_data_dir()
        (folder / "config.resolved.json").write_text(json.dumps({**resolved, MARKER: True}))
        return folder

    def refused_keys(state: Any) -> list[str] | str:
        """The config keys prepare-run refused the resume for (or what happened instead)."""
        error = state.result(raise_on_failure=False)
        if not isinstance(error, ConfigError):
            return f"the run did not stop at prepare-run: {state.name}: {error!r}"
        return sorted(p.split(":")[0] for p in error.problems)

    def moved(state: Any) -> dict[str, Any]:
        """What a promote or rollback run moved, or why it failed (a case fails on it, not the fixture)."""
        found = state.result(raise_on_failure=False)
        return found if isinstance(found, dict) else {"failed": repr(found)}

    # retrain_from_file: every parameter that makes the config, at once
    raw = yaml.safe_load(world.yaml_path.read_text())
    raw["name"] = "reach-file"
    config_path = world.tmp / "reach-file.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    given = {"steps": 7, "learning_rate": 3e-4, "processes": 1, "sharing": "soft", "weighting": "uncertainty",
             "sampler": "uniform", "max_train_examples": 11, "max_dev_examples": 9,
             "overrides": {"training.seed": 5}}
    # the expected config by hand, not through the overrides machinery the run goes through
    raw["training"].update({"steps": 7, "learning_rate": 3e-4, "processes": 1, "sharing": "soft",
                            "weighting": "uncertainty", "sampler": "uniform", "seed": 5})
    for task in raw["tasks"]:
        task.update({"max_train_examples": 11, "max_dev_examples": 9})
    expected = parse_config(raw)
    folder = resume_folder(expected, "resume-file")
    state = retrain_from_file(config_path=str(config_path), resume_run_dir=str(folder), force=True, return_state=True,
                              **given)
    seen["retrain_from_file"] = refused_keys(state)
    # retrain: the whole config and the resume folder
    folder = resume_folder(world.config(), "resume-config")
    state = retrain(world.config(), previous_labels={"sst2": ["zz", "0", "1"]}, resume_run_dir=str(folder), force=True,
                    return_state=True)
    seen["retrain"] = refused_keys(state)
    # force and previous_labels at the tasks that read them: the champion was made from these very inputs
    from prefect import flow

    cfg = world.config()

    @flow(name="reachability-tasks")
    def tasks_flow() -> dict[str, Any]:
        run_dir = tmp_path_factory.mktemp("reach-run")
        first = check_fingerprint(cfg, str(run_dir))
        store["client"].set_model_version_tag("reach-mtl", "1", "mtl.fingerprint", first["value"])
        return {"unforced": check_fingerprint(cfg, str(run_dir)), "forced": check_fingerprint(cfg, str(run_dir), True),
                "ingested": ingest([cfg.tasks[1]], cfg.resolved_data_dir(), str(run_dir), cfg.storage,
                                   {"sst2": ["zz", "0", "1"]})}

    seen.update(tasks_flow())
    # promote and rollback: by hand, on a model of three versions, once through each way to the store
    client, name = store["client"], "reach-hand"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, "file:///reach/model", None)
    root, elsewhere = str(world.config().storage.root), str(tmp_path_factory.mktemp("empty-state"))
    seen["promote"] = moved(promote(name, 1, "first by hand", by="alice", alias="gold", state_dir=root,
                                    return_state=True))
    seen["promote_override"] = moved(promote(name, "2", "second", by="carol", alias="gold", return_state=True,
                                             tracking_uri_override=store["uri"], state_dir=elsewhere))
    promote(name, 3, "third", by="alice", alias="gold", state_dir=root, return_state=True)
    seen["rollback"] = moved(rollback(name, "back one", by="bob", alias="gold", state_dir=root, return_state=True))
    seen["rollback_override"] = moved(rollback(name, "back two", by="dan", alias="gold",
                                               tracking_uri_override=store["uri"], state_dir=elsewhere,
                                               return_state=True))
    return seen


def _file_run(s: dict[str, Any]) -> list[str]:
    return s["retrain_from_file"]


FROM_FILE = "the retrain-from-file run refused only the marker: every parameter made the expected config"
DEPLOYMENT_CASES: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    **{f"retrain_from_file({p})": (FROM_FILE, lambda s: _file_run(s) == [MARKER])
       for p in ("config_path", "steps", "learning_rate", "processes", "sharing", "weighting", "sampler",
                 "max_train_examples", "max_dev_examples", "overrides", "resume_run_dir")},
    "retrain_from_file(force)": (
        "forwarded to check_fingerprint, which trains anyway when forced",
        lambda s: forwarded("force", *_chain("retrain_from_file")) and s["forced"]["skip"] is False
        and "force is set" in s["forced"]["reason"] and s["unforced"]["skip"] is True),
    "retrain(config)": ("the retrain run refused only the marker", lambda s: s["retrain"] == [MARKER]),
    "retrain(resume_run_dir)": ("the retrain run read the resume folder", lambda s: s["retrain"] == [MARKER]),
    "retrain(force)": (
        "forwarded to check_fingerprint, which trains anyway when forced",
        lambda s: forwarded("force", *_chain("retrain")) and "force is set" in s["forced"]["reason"]),
    "retrain(previous_labels)": (
        "forwarded to the ingest task: the old labels keep their ids",
        lambda s: forwarded("previous_labels", *_chain("retrain"))
        and s["ingested"]["sst2"]["labels"][:3] == ["zz", "0", "1"]),
    **{f"promote({p})": ("the promotion by hand records it", lambda s: tuple(s["promote"].get(k) for k in (
        "model_name", "version", "reason", "by", "alias")) == ("reach-hand", "1", "first by hand", "alice", "gold"))
       for p in ("model_name", "version", "reason", "by", "alias", "state_dir")},
    "promote(tracking_uri_override)": ("the store named wins over the (empty) state folder",
                                       lambda s: s["promote_override"].get("version") == "2"),
    **{f"rollback({p})": ("the rollback records it", lambda s: tuple(s["rollback"].get(k) for k in (
        "model_name", "version", "reason", "by", "alias")) == ("reach-hand", "2", "back one", "bob", "gold"))
       for p in ("model_name", "reason", "by", "alias", "state_dir")},
    "rollback(tracking_uri_override)": ("the store named wins over the (empty) state folder",
                                        lambda s: s["rollback_override"].get("version") == "1"),
}


def _chain(flow_name: str) -> list[Callable[..., Any]]:
    """The functions a deployment's parameters pass through on their way to the tasks."""
    from flows import retrain

    head = retrain.retrain_from_file.fn if flow_name == "retrain_from_file" else retrain.retrain.fn
    return [head, retrain.run_pipeline, retrain.pipeline_steps]


@pytest.mark.parametrize("key", sorted(DEPLOYMENT_CASES))
def test_deployment_parameter_reaches_its_consumer(key: str, deployment_runs: dict[str, Any]) -> None:
    """Each deployed flow's parameter, given a non-default value in a real flow run, arrives."""
    what, check = DEPLOYMENT_CASES[key]
    assert check(deployment_runs), f"{key}: {what}; seen: {deployment_runs}"
