"""`mtl`: run, validate, promote, roll back and predict from the command line."""
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

    summary = retrain(config, resume_run_dir=args.resume, force=args.force)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(text)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Point the alias at a version by hand (audited); a refusal is one line, exit 2, before any flow run."""
    from flows.promote import promote, uri_for
    from training.release.audit import check_promotion

    # a RegistryRefusal is refused input: main() prints it in one line and exits 2
    check_promotion(uri_for(args.model_name, args.tracking_uri, args.state_dir), args.model_name, args.version,
                    args.reason)
    moved = promote(args.model_name, args.version, args.reason, args.by, args.alias, args.tracking_uri,
                    args.state_dir)
    print(json.dumps(moved, indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Point the alias back at the version its holder replaced (audited); a refusal is one line, exit 2."""
    from flows.promote import rollback, uri_for
    from training.release.audit import check_rollback

    check_rollback(uri_for(args.model_name, args.tracking_uri, args.state_dir), args.model_name, args.alias,
                   args.reason)
    moved = rollback(args.model_name, args.reason, args.by, args.alias, args.tracking_uri, args.state_dir)
    print(json.dumps(moved, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.config import StorageConfig
    from training.config import RegistryConfig
    from training.release.registry import tracking_uri
    from training.release.serving import ServingError, predict_file

    uri = tracking_uri(RegistryConfig(tracking_uri=args.tracking_uri), StorageConfig().root)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        count = predict_file(args.model_uri, args.file, args.out, tasks, uri, chunk=args.chunk_rows,
                             device=args.device, precision=args.precision)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        print(f"{count} predictions written to {args.out}", file=sys.stderr)
    return 0


def add_device_flags(command: argparse.ArgumentParser) -> None:
    """--device and --precision: the inference policy's choices (training/evaluation/device.py)."""
    command.add_argument("--device", default=None,
                         help="auto, cpu, cuda or cuda:N (default: $MTL_DEVICE, else CUDA when present, else cpu)")
    command.add_argument("--precision", default=None,
                         help="auto, fp32, bf16 or fp16 autocast (default: $MTL_PRECISION, else bf16 on a GPU that "
                              "has it, else fp32)")


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.config import StorageConfig
    from training.config import RegistryConfig
    from training.release.registry import tracking_uri
    from training.release.server import serve
    from training.release.serving import ServingError

    uri = tracking_uri(RegistryConfig(tracking_uri=args.tracking_uri), StorageConfig().root)
    try:
        return serve(args.model_uri, args.host, args.port, args.poll_s, uri, device=args.device,
                     precision=args.precision)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_deploy(args: argparse.Namespace) -> int:
    """Work pool, prefect.yaml's deployments and the notification automations, on PREFECT_API_URL."""
    from flows.deploy import DeployError, deploy
    from flows.notify import NotifySetupError

    try:
        made = deploy(args.pool, args.notify)
    except (DeployError, NotifySetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(made.lines()))
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


def add_alias_move(command: argparse.ArgumentParser) -> None:
    """The options `mtl promote` and `mtl rollback` share."""
    command.add_argument("--reason", required=True, help="why, recorded on the version (mtl.promotion_reason)")
    command.add_argument("--by", default=None, help="who, recorded on the version (default: your OS user)")
    command.add_argument("--alias", default="champion")
    command.add_argument("--tracking-uri", default=None,
                         help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///STATE_DIR/mlflow.db)")
    command.add_argument("--state-dir", default=".mtl")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl", description="Multi-task NLP training pipeline")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the retrain flow locally")
    run.add_argument("config")
    run.add_argument("--summary", help="write a JSON summary of the registered model here")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="go on in this earlier run's folder (<storage.root>/runs/<name>-<id>), from its newest "
                          "sound checkpoint, e.g. after its flow process was killed")
    run.add_argument("--force", action="store_true",
                     help="train even when the champion was made from the same data, settings, code and encoder "
                          "(otherwise the run ends Skipped)")
    add_set(run)
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check config and data without training")
    val.add_argument("config")
    add_set(val)
    val.set_defaults(func=cmd_validate)
    pro = sub.add_parser("promote", help="point the champion alias at a model version by hand, with a reason "
                                         "(recorded on the version, gate override included)")
    pro.add_argument("model_name")
    pro.add_argument("version")
    add_alias_move(pro)
    pro.set_defaults(func=cmd_promote)
    rol = sub.add_parser("rollback", help="point the champion alias back at the version its holder replaced "
                                          "(its mtl.previous_<alias> tag), with a reason")
    rol.add_argument("model_name")
    add_alias_move(rol)
    rol.set_defaults(func=cmd_rollback)
    pre = sub.add_parser("predict", help="predict every task for each input of a JSONL/CSV/TSV file, as JSONL")
    pre.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or an "
                                       "export folder")
    pre.add_argument("file", help="inputs: JSONL ({text|tokens, text_pair?, id?} per line), or CSV/TSV with a "
                                  "header (text, text_pair, id)")
    pre.add_argument("--out", help="write the JSONL here (default: stdout)")
    pre.add_argument("--tasks", help="comma-separated tasks to predict (default: all the model's)")
    pre.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///.mtl/mlflow.db)")
    pre.add_argument("--chunk-rows", type=int, default=1024,
                     help="inputs read, predicted and written per step; a rerun after a crash goes on from the "
                          "last row written (default: 1024)")
    add_device_flags(pre)
    pre.set_defaults(func=cmd_predict)
    srv = sub.add_parser("serve", help="serve a model over HTTP (MLflow's /invocations), following a models:/NAME@ALIAS "
                                       "alias as it moves")
    srv.add_argument("model_uri", help="models:/NAME@ALIAS (followed), models:/NAME/VERSION, runs:/RUN_ID/model or an "
                                       "export folder")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=5001)
    srv.add_argument("--poll-s", type=float, default=30.0,
                     help="look at the alias every this many seconds; a new version is loaded beside the old one "
                          "and swapped in (default: 30)")
    srv.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///.mtl/mlflow.db)")
    add_device_flags(srv)
    srv.set_defaults(func=cmd_serve)
    dep = sub.add_parser("deploy", help="create the work pool if missing, deploy prefect.yaml and set up the "
                                        "notification automations, on the Prefect server at PREFECT_API_URL")
    dep.add_argument("--notify", metavar="BLOCK", default=None,
                     help="notification block as <block-type-slug>/<name>, e.g. slack-webhook/ops or "
                          "custom-webhook/mtl-alerts (default: $MTL_NOTIFY_BLOCK; neither: no automations)")
    dep.add_argument("--pool", default="mtl-cpu", help="work pool for every deployment (default: mtl-cpu)")
    dep.set_defaults(func=cmd_deploy)
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
