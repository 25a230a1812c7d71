"""Warm start against cold start on a pipeline config, through the retrain flow.

    python bench/warm_start.py --config configs/demo.yaml --out warm_start.json [--eval-every 50]

Three runs of the config in one fresh state folder: run A trains the champion on the config's data;
then the data changes (every task's train and dev subsample drawn with another `sample_seed`, the
kind of change a nightly sees), and on that new data run B trains from the base encoder (cold) and
run C from the champion (`training.init_from: champion`, warm). B and C evaluate on dev every
`--eval-every` steps (the same fixed sample). For each task: B's final primary score, the first step
at which C reaches it, and C's final score. Promotion is off for B and C: the bench compares
training curves, not the gate. JSON out, and a markdown table on stdout.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from flows.config import load_config  # noqa: E402
from training.launch.layout import RunLayout  # noqa: E402
from training.task_spec import spec_for  # noqa: E402


def curve(run_dir: str) -> dict[int, dict[str, dict[str, float]]]:
    """step -> {task: {metric: value}} from the evaluations during training."""
    out = {}
    for line in next(iter(RunLayout(Path(run_dir)).metrics_files().values())).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "eval" in row:
            out[int(row["step"])] = row["eval"]
    return out


def run(config_path: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], float]:
    from flows.retrain import retrain

    config = load_config(config_path, overrides)
    start = time.monotonic()
    summary = retrain(config, force=True)
    return summary, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-max-examples", type=int, default=500)
    parser.add_argument("--state", default=None, help="state folder (default: a new temporary one)")
    args = parser.parse_args()
    state = args.state or tempfile.mkdtemp(prefix="warm-start-bench-")
    base = {"storage.root": state, "registry.tracking_uri": f"sqlite:///{Path(state).resolve() / 'mlflow.db'}",
            "registry.model_name": "warm-bench", "affinity.method": "off"}
    changed = {**base, "tasks.*.sample_seed": 1, "promotion.enabled": False,
               "training.eval_every": args.eval_every, "training.eval_max_examples": args.eval_max_examples}
    champion, a_s = run(args.config, base)
    cold, b_s = run(args.config, changed)
    warm, c_s = run(args.config, {**changed, "training.init_from": "champion"})
    config = load_config(args.config)
    primary = {t.name: spec_for(t, ["x"]).primary_metric for t in config.tasks if not t.auxiliary}
    cold_curve, warm_curve = curve(cold["run_dir"]), curve(warm["run_dir"])
    rows = []
    for task, metric in primary.items():
        last = max(cold_curve)
        target = cold_curve[last][task][metric]
        reached = next((step for step in sorted(warm_curve) if warm_curve[step][task][metric] >= target), None)
        rows.append({"task": task, "metric": metric, "cold_final": target, "cold_steps": last,
                     "warm_first_step_at_cold_final": reached, "warm_at_first_eval": warm_curve[min(warm_curve)][task][metric],
                     "cold_at_first_eval": cold_curve[min(cold_curve)][task][metric],
                     "warm_final": warm_curve[max(warm_curve)][task][metric]})
    result = {"config": args.config, "eval_every": args.eval_every, "eval_max_examples": args.eval_max_examples,
              "seconds": {"champion": round(a_s, 1), "cold": round(b_s, 1), "warm": round(c_s, 1)},
              "champion_version": champion["version"], "rows": rows,
              "cold_curve": cold_curve, "warm_curve": warm_curve,
              "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| task | metric | cold final (step) | warm reaches it at step | warm / cold at the first eval | warm final |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['cold_final']:.4f} ({r['cold_steps']}) | "
              f"{r['warm_first_step_at_cold_final']} | {r['warm_at_first_eval']:.4f} / {r['cold_at_first_eval']:.4f} | "
              f"{r['warm_final']:.4f} |")


if __name__ == "__main__":
    main()
