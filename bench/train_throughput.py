"""Training throughput of the pipeline vs. a bare PyTorch loop, padding efficiency, and ZeRO memory.

    python bench/train_throughput.py --out bench/results/train_throughput.json

One run, the demo's encoder (the offline MiniLM) and the demo's three real tasks:
- `pipeline_tokens_per_s`: the pipeline's `Engine` (DeepSpeed, world size 1, ZeRO 0 unless
  --zero-stage, the warmup/decay schedule on) on the pipeline's batches, doing the plain loop's
  work: gradient clipping off, as the plain loop does not clip.
- `plain_tokens_per_s`: forward, backward, AdamW step on the very same batches (same sampler, same
  length-grouped `TaskBatches`), same model initialisation, same threads, and the same optimizer
  the pipeline builds (torch's fused AdamW where the device has it). `ratio` is their quotient:
  the pipeline's own overhead.
- `pipeline_with_clipping_tokens_per_s` and `ratio_with_clipping`: the pipeline in its default
  configuration, clipping to a global norm of 1.0, which reads every gradient once more per step.
- `plain_default_adamw_tokens_per_s`: the plain loop with `torch.optim.AdamW`'s defaults (what a
  hand-written loop usually runs); `speedup_over_default_adamw_loop`: the default-configured
  pipeline (clipping on) over it.
  All arms run in this process in alternating blocks of steps (ABCDABCD...), first block of each
  dropped as warm-up: on a shared machine the load drifts, and interleaving makes every arm see the
  same load.
- `padding_efficiency` (real / processed tokens) of the pipeline's batches over the run, and
  `naive_padding_efficiency` of random batches padded to their longest row.
- `zero3_over_zero0_memory`: peak per-process bytes of live tensors (model, gradients, optimizer)
  with 2 launched worker processes, ZeRO 3 over ZeRO 0, fp32; `..._bf16` the same in bf16.
Tokens are real (unpadded) tokens. No GPU here: no MFU. Targets live in this JSON, never in tests.
"""
from __future__ import annotations

import os
import sys

# bench/tokenize.py shares the stdlib module's name (which inspect and linecache import): keep this
# folder off the import path, and the project root on it, before anything else is imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

from data_prep.cache import ArtifactCache  # noqa: E402
from data_prep.stage import ingest_cached, tokenize_cached  # noqa: E402
from flows.config import load_config  # noqa: E402
from training.trainer.batches import TaskBatches, load_features, padding_efficiency  # noqa: E402
from training.config import DeepSpeedConfig, TrainingConfig  # noqa: E402
from training.trainer.engine import adamw, fused, param_groups  # noqa: E402
from training.launch.launcher import single_process_world  # noqa: E402
from training.model.multitask import build_model, resolve_encoder_path  # noqa: E402
from training.launch.train import train_model  # noqa: E402
from training.trainer.sampling import SAMPLERS  # noqa: E402
from training.task_spec import TaskSpec  # noqa: E402


def prepare(work: Path, examples: int) -> tuple[Any, list[TaskSpec], dict[str, str]]:
    from transformers import AutoTokenizer

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(cfg.encoder.name_or_path))
    cache = ArtifactCache(str(work / "cache"))
    specs, features = [], {}
    for task in cfg.tasks:
        task = task.model_copy(update={"max_train_examples": examples})
        ingested = ingest_cached(task, cfg.resolved_data_dir(), cache, work / "data")
        features[task.name] = tokenize_cached(task, ingested, resolve_encoder_path(cfg.encoder.name_or_path),
                                              cfg.encoder.max_length, cfg.tokenize, cache, work / "data",
                                              tokenizer)["features"]
        specs.append(TaskSpec(name=task.name, type=task.type, labels=ingested["labels"],
                              label_scheme=task.label_scheme))
    return cfg, specs, features


def batches(train: TrainingConfig, features: dict[str, str], pad_id: int, grouped: bool,
            world: int = 1) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The exact (task, batch) sequence rank 0 of the worker takes."""
    data = TaskBatches({t: load_features(p) for t, p in features.items()}, train.micro_batch_size, 0, world,
                       train.seed, pad_id, grouped, train.length_bucket_batches)
    sampler = SAMPLERS[train.sampler](data.sizes(), train.seed, total_draws=train.steps)
    return [(task, data.next(task)) for task in (sampler.sample(d) for d in range(train.steps))]


def throughput(cfg: Any, specs: list[TaskSpec], train: TrainingConfig, zero_stage: int,
               run: list[tuple[str, dict[str, torch.Tensor]]], block: int) -> dict[str, float]:
    """Real tokens per second of each arm over alternating blocks of `block` steps."""
    from training.trainer.engine import Engine
    from training.trainer.step import train_step
    from training.trainer.weighting import WEIGHTINGS

    def pipeline(clipping: float) -> Any:
        torch.manual_seed(train.seed)
        engine = Engine(build_model(cfg.encoder.name_or_path, specs, train.sharing, cfg.encoder.dropout),
                        DeepSpeedConfig(zero_stage=zero_stage, gradient_clipping=clipping), train)
        engine.train()
        weighting = WEIGHTINGS[train.weighting]([t.name for t in specs])
        return lambda task, batch: train_step(engine, weighting, {task: batch})

    def plain_loop(fused: bool) -> Any:
        torch.manual_seed(train.seed)
        model = build_model(cfg.encoder.name_or_path, specs, train.sharing, cfg.encoder.dropout)
        model.train()
        groups = param_groups(model, train.weight_decay)
        optimizer = adamw(groups, train.learning_rate) if fused else torch.optim.AdamW(groups, lr=train.learning_rate)

        def plain_step(task: str, batch: dict[str, torch.Tensor]) -> None:
            loss = model(task, **batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return plain_step

    totals: dict[str, list[float]] = {}
    with single_process_world():  # the launched memory runs after it must not inherit this world
        arms = {"pipeline": pipeline(0.0), "pipeline_with_clipping": pipeline(DeepSpeedConfig().gradient_clipping),
                "plain": plain_loop(True), "plain_default_adamw": plain_loop(False)}
        totals = {arm: [0, 0.0] for arm in arms}
        for first in range(0, len(run), block):
            for arm, step_fn in arms.items():
                started = time.perf_counter()
                for task, batch in run[first:first + block]:
                    step_fn(task, batch)
                if first:  # the first block of each arm is warm-up
                    totals[arm][0] += sum(int(b["attention_mask"].sum()) for _, b in run[first:first + block])
                    totals[arm][1] += time.perf_counter() - started
    return {arm: tokens / seconds for arm, (tokens, seconds) in totals.items()}


def launched(cfg: Any, specs: list[TaskSpec], features: dict[str, str], train: TrainingConfig,
             ds: DeepSpeedConfig, run_dir: Path) -> list[dict[str, Any]]:
    train_model(cfg.encoder, train, ds, specs, features, run_dir, lambda line: None)
    return [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines() if l]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=48, help="steps per arm")
    parser.add_argument("--block", type=int, default=4, help="steps per alternating block")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--examples", type=int, default=2000, help="training examples per task")
    parser.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="0: skip the memory runs; else at least 2: ZeRO 0's peak (gradients beside "
                             "the optimizer's state, which its first step creates) comes at the second step")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because on a shared, oversubscribed CPU the "
                             "spin-waits of multi-threaded kernels make timings collapse and drift")
    args = parser.parse_args()
    if args.memory_steps == 1:
        parser.error("--memory-steps 1 would miss ZeRO 0's peak, which comes at the second step: use 0 or >= 2")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    threads = args.threads
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg, specs, features = prepare(work, args.examples)
    train = TrainingConfig(steps=args.steps, micro_batch_size=args.micro_batch, warmup_steps=5, processes=1,
                           log_every=10, checkpoint_every=10**6, threads_per_process=threads, seed=0)
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(resolve_encoder_path(cfg.encoder.name_or_path)).pad_token_id
    run = batches(train, features, pad_id, grouped=True)
    naive = batches(train, features, pad_id, grouped=False)

    t0 = time.perf_counter()
    speed = throughput(cfg, specs, train, args.zero_stage, run, args.block)
    pipeline, plain = speed["pipeline"], speed["plain"]
    t1 = time.perf_counter()

    memory: dict[str, int] = {}
    mem_train = train.model_copy(update={"steps": args.memory_steps, "log_every": 1, "processes": 2,
                                         "log_memory": True, "threads_per_process": 1})
    for stage, precision in ((0, "fp32"), (3, "fp32"), (0, "bf16"), (3, "bf16")) if args.memory_steps else ():
        mem_rows = launched(cfg, specs, features, mem_train, DeepSpeedConfig(zero_stage=stage, precision=precision),
                            work / f"memory-zero{stage}-{precision}")
        memory[f"{stage}-{precision}"] = max(max(r["peak_tensor_bytes_per_rank"]) for r in mem_rows)
    t2 = time.perf_counter()

    result = {
        "encoder": cfg.encoder.name_or_path, "tasks": [s.name for s in specs], "steps": args.steps,
        "micro_batch_size": args.micro_batch, "world_size": 1, "pipeline_zero_stage": args.zero_stage,
        "threads": threads, "device": "cpu", "mfu": None, "mfu_note": "no GPU on this machine",
        "pipeline_tokens_per_s": round(pipeline, 1),
        "plain_tokens_per_s": round(plain, 1),
        "ratio": round(pipeline / plain, 3),
        "optimizer": "AdamW (fused)" if fused(adamw([{"params": [torch.zeros(1, requires_grad=True)]}], 1e-3))
        else "AdamW",
        "pipeline_with_clipping_tokens_per_s": round(speed["pipeline_with_clipping"], 1),
        "ratio_with_clipping": round(speed["pipeline_with_clipping"] / plain, 3),
        "plain_default_adamw_tokens_per_s": round(speed["plain_default_adamw"], 1),
        "speedup_over_default_adamw_loop": round(speed["pipeline_with_clipping"] / speed["plain_default_adamw"], 3),
        "padding_efficiency": round(padding_efficiency([b for _, b in run]), 4),
        "naive_padding_efficiency": round(padding_efficiency([b for _, b in naive]), 4),
        "peak_tensor_bytes_per_process": memory,
        "zero3_over_zero0_memory": round(memory["3-fp32"] / memory["0-fp32"], 3) if memory else None,
        "zero3_over_zero0_memory_bf16": round(memory["3-bf16"] / memory["0-bf16"], 3) if memory else None,
        "memory_processes": 2,
        "seconds": {"throughput": round(t1 - t0, 1), "memory": round(t2 - t1, 1)},
        "targets": {"ratio": ">= 0.95", "padding_efficiency": ">= 0.90", "zero3_over_zero0_memory": "<= 0.6"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
