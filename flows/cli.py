"""`mtl`: run, validate, promote and predict from the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from flows.config import REFUSED, ConfigError, check_config, load_config, parse_set, semantic_problems


def _quiet_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cmd_validate(args: argparse.Namespace) -> int:
    """Config and data problems of every task, reported together; nothing is trained."""
    from data_prep.config import is_regression
    from data_prep.errors import DataValidationError
    from data_prep.ingest import TaskData, validate_tasks

    config = load_config(args.config, dict(args.set))
    problems = semantic_problems(config)
    loaded: dict[str, TaskData] = {}
    try:
        loaded = validate_tasks(config.tasks, config.resolved_data_dir(), s3=config.storage.s3)
    except DataValidationError as exc:
        # the config check already names missing files; keep each problem once
        problems += [p for p in map(str, exc.issues) if p not in problems]
        if exc.dropped:
            problems.append(f"... and {exc.dropped} more data problems")
    if problems:
        raise ConfigError(args.config, problems)
    for name, data in loaded.items():
        counts = ", ".join(f"{split} {len(ex)}" for split, ex in data.splits.items())
        if is_regression(data.type):
            values = [float(ex.label) for ex in data.splits["train"]]
            targets = f"target {min(values):g} to {max(values):g}" if values else "no targets"
        else:
            targets = f"{len(data.labels)} labels"
        print(f"{name}: {data.type}, {targets}, {counts}")
    print(f"{args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, dict(args.set))
    check_config(config, args.config)  # before a Prefect server is even started
    from flows.retrain import retrain

    summary = retrain(config, resume_run_dir=args.resume)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(text)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from flows.promote import promote

    print(json.dumps(promote(args.model_name, args.version, args.alias, args.tracking_uri, args.state_dir),
                     indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.config import StorageConfig
    from training.config import RegistryConfig
    from training.release.registry import tracking_uri
    from training.release.serving import ServingError, predict_file

    uri = tracking_uri(RegistryConfig(tracking_uri=args.tracking_uri), StorageConfig().root)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        count = predict_file(args.model_uri, args.file, args.out, tasks, uri)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        print(f"{count} predictions written to {args.out}", file=sys.stderr)
    return 0


def set_item(item: str) -> tuple[str, Any]:
    try:
        return parse_set(item)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument("--set", action="append", type=set_item, default=[], metavar="KEY=VALUE",
                         help="set a config field on top of the file, by its dotted key, the value as YAML "
                              "(repeatable): --set training.steps=200 --set tasks.pos.max_train_examples=2000")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl", description="Multi-task NLP training pipeline")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the retrain flow locally")
    run.add_argument("config")
    run.add_argument("--summary", help="write a JSON summary of the registered model here")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="go on in this earlier run's folder (<storage.root>/runs/<name>-<id>), from its newest "
                          "sound checkpoint, e.g. after its flow process was killed")
    add_set(run)
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check config and data without training")
    val.add_argument("config")
    add_set(val)
    val.set_defaults(func=cmd_validate)
    pro = sub.add_parser("promote", help="point the champion alias at a model version (promote or roll back)")
    pro.add_argument("model_name")
    pro.add_argument("version")
    pro.add_argument("--alias", default="champion")
    pro.add_argument("--tracking-uri", default=None)
    pro.add_argument("--state-dir", default=".mtl")
    pro.set_defaults(func=cmd_promote)
    pre = sub.add_parser("predict", help="predict every task for each input of a JSONL/CSV/TSV file, as JSONL")
    pre.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or an "
                                       "export folder")
    pre.add_argument("file", help="inputs: JSONL ({text|tokens, text_pair?, id?} per line), or CSV/TSV with a "
                                  "header (text, text_pair, id)")
    pre.add_argument("--out", help="write the JSONL here (default: stdout)")
    pre.add_argument("--tasks", help="comma-separated tasks to predict (default: all the model's)")
    pre.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///.mtl/mlflow.db)")
    pre.set_defaults(func=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_defaults()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except REFUSED as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
