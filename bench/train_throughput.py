"""Training throughput of the pipeline vs. a bare PyTorch loop, padding efficiency, and ZeRO memory.

    python bench/train_throughput.py --out bench/results/train_throughput.json          # CPU figures
    python bench/train_throughput.py --out gpu.json --encoder-config large --tasks rte \\
        --max-length 128 --max-tokens 16384 --tokenizer .gpu-data/tokenizer              # on a GPU

Tokens are real (unpadded) tokens. Every configuration trains the same model initialisation on the
very same (task, batch) sequence (the worker's sampler and length-grouped `TaskBatches`, by rows or
by a token budget), in this process as a world of one:
- plain loops (`plain_<precision>`): forward, backward, AdamW step, the pipeline's learning-rate
  schedule, nothing else. fp32, or bf16
  under torch.autocast with fp32 weights; torch's fused AdamW where the device has it
  (`plain_fp32_default_adamw`: torch.optim.AdamW's defaults, what a hand-written loop often runs;
  `plain_bf16_sync`: plus reading the loss on the host every step).
- pipeline configurations (`pipeline_...`): the pipeline's `Engine` (DeepSpeed, the warmup/decay
  schedule on) with a ZeRO stage and precision; gradient clipping off like the plain loops, except
  the `_clipping` ones, which run the shipped default (clip to norm 1.0). `ratio` is a
  configuration's tokens/s over the plain loop of the same precision: the pipeline's own overhead.
- MFU on a GPU: 6 x parameters x real tokens/s over the bf16 dense peak (989e12 on an H100).
The CPU run (default) keeps the earlier figures' method: the demo's encoder (the offline MiniLM) and
tasks, configurations run in alternating blocks of steps (each round in a fresh order, the first block of
each dropped as warm-up) because on a shared machine the load drifts; then the same for a tiny encoder
(2 layers, hidden 64), where per-step overhead, not arithmetic, decides (`tiny_overhead_ratio`);
then ZeRO memory: peak per-process bytes of live tensors with 2 launched worker processes.
On a GPU each configuration runs alone after its warm-up block (synchronised timings, one model
in memory at a time). Targets live in this JSON, never in tests.
"""
from __future__ import annotations

import os
import sys

# run as a script: make the project importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext, suppress  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import torch  # noqa: E402

from bench._common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE_PEAK = 989e12
# BERT shapes of the random-initialised encoders (the vocabulary is the tokenizer's)
ARCHITECTURES: dict[str, dict[str, int]] = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}
# tasks beyond the demo's three: read like the demo reads its own
EXTRA_TASKS: dict[str, dict[str, Any]] = {
    "rte": {"name": "rte", "type": "sequence_pair_classification", "format": "tsv", "train": "pair_rte/train.tsv",
            "dev": "pair_rte/dev.tsv", "text_column": "sentence1", "text_pair_column": "sentence2",
            "label_column": "label"},
}
Step = tuple[str, dict[str, torch.Tensor]]


def device_from_argv(argv: list[str]) -> str:
    """The device, decided before DeepSpeed is imported: its accelerator is fixed at import."""
    wanted = argv[argv.index("--device") + 1] if "--device" in argv[:-1] else "auto"
    return ("cuda" if torch.cuda.is_available() else "cpu") if wanted == "auto" else wanted


DEVICE = device_from_argv(sys.argv)
os.environ.setdefault("DS_ACCELERATOR", DEVICE)

from training.trainer.batches import TaskBatches, load_features, padding_efficiency  # noqa: E402
from training.config import DeepSpeedConfig, TrainingConfig, engine_plan  # noqa: E402
from training.trainer.engine import Engine, adamw, fused, param_groups  # noqa: E402
from training.trainer.step import train_step  # noqa: E402
from training.trainer.weighting import WEIGHTINGS  # noqa: E402
from training.launch.launcher import single_process_world  # noqa: E402
from training.model.multitask import MultiTaskModel, build_model, build_model_skeleton  # noqa: E402
from training.trainer.sampling import SAMPLERS  # noqa: E402
from training.task_spec import TaskSpec  # noqa: E402


@dataclass(frozen=True)
class Arm:
    """One configuration: a plain loop or the pipeline's engine, in one precision."""
    name: str
    loop: Literal["plain", "pipeline"]
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: Literal["auto", 0, 1, 2, 3] = 0
    mixed_precision: Literal["auto", "autocast", "deepspeed"] = "auto"
    clipping: float = 0.0
    fused: bool = True
    sync: bool = False
    compile: bool = False

    def deepspeed(self) -> DeepSpeedConfig:
        return DeepSpeedConfig(zero_stage=self.zero_stage, precision=self.precision,
                               mixed_precision=self.mixed_precision, gradient_clipping=self.clipping)


# the order they run in on a GPU (one after another): bf16, the figures that matter most there, first
ARMS = {arm.name: arm for arm in (
    Arm("plain_bf16", "plain", "bf16"),
    Arm("pipeline_bf16", "pipeline", "bf16"),
    Arm("pipeline_bf16_clipping", "pipeline", "bf16", clipping=1.0),
    Arm("plain_bf16_sync", "plain", "bf16", sync=True),
    Arm("pipeline_bf16_deepspeed", "pipeline", "bf16", mixed_precision="deepspeed"),
    Arm("pipeline_zero2_bf16", "pipeline", "bf16", zero_stage=2),
    Arm("pipeline_zero2_bf16_deepspeed", "pipeline", "bf16", zero_stage=2, mixed_precision="deepspeed"),
    Arm("plain_fp32", "plain"),
    Arm("plain_fp32_default_adamw", "plain", fused=False),
    Arm("pipeline_fp32", "pipeline"),
    Arm("pipeline_fp32_clipping", "pipeline", clipping=1.0),
    Arm("pipeline_zero2_fp32", "pipeline", zero_stage=2),
    Arm("pipeline_bf16_compile", "pipeline", "bf16", compile=True),
    # fp16 autocast leaves a process-wide mark in DeepSpeed that later ZeRO optimizers read: last
    Arm("pipeline_fp16", "pipeline", "fp16"),
)}
CPU_ARMS = ["pipeline_fp32", "pipeline_fp32_clipping", "plain_fp32", "plain_fp32_default_adamw"]
TINY_ARMS = ["pipeline_fp32", "pipeline_fp32_clipping", "plain_fp32"]


def task_configs(names: list[str]) -> list[Any]:
    from data_prep.config import TaskDataConfig
    from flows.config import load_config

    demo = {t.name: t for t in load_config(ROOT / "configs" / "demo.yaml").tasks}
    unknown = [n for n in names if n not in demo and n not in EXTRA_TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {sorted(demo) + sorted(EXTRA_TASKS)}")
    return [demo[n] if n in demo else TaskDataConfig.model_validate(EXTRA_TASKS[n]) for n in names]


def prepare(work: Path, names: list[str], examples: int, tokenizer_path: str,
            max_length: int) -> tuple[list[TaskSpec], dict[str, str], int]:
    """Ingest and tokenize the tasks with data_prep (data from MTL_DATA_DIR or ../shared/data)."""
    from transformers import AutoTokenizer

    from data_prep.cache import ArtifactCache
    from data_prep.config import TokenizeConfig
    from data_prep.sources import default_data_dir
    from data_prep.stage import ingest_cached, tokenize_cached

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    cache, data_dir = ArtifactCache(str(work / "cache")), default_data_dir()
    specs, features = [], {}
    for task in task_configs(names):
        task = task.model_copy(update={"max_train_examples": examples, "max_dev_examples": 10})
        ingested = ingest_cached(task, data_dir, cache, work / "data")
        features[task.name] = tokenize_cached(task, ingested, tokenizer_path, max_length, TokenizeConfig(), cache,
                                              work / "data", tokenizer)["features"]
        specs.append(TaskSpec(name=task.name, type=task.type, labels=ingested["labels"],
                              label_scheme=task.label_scheme))
    return specs, features, tokenizer.pad_token_id


def batches(train: TrainingConfig, features: dict[str, str], pad_id: int, grouped: bool,
            world: int = 1) -> list[Step]:
    """The exact (task, batch) sequence rank 0 of the worker takes."""
    data = TaskBatches({t: load_features(p) for t, p in features.items()}, train.micro_batch_size, 0, world,
                       train.seed, pad_id, grouped, train.length_bucket_batches, train.max_tokens)
    sampler = SAMPLERS[train.sampler](data.sizes(), train.seed, total_draws=train.steps)
    return [(task, data.next(task)) for task in (sampler.sample(d) for d in range(train.steps))]


def template_model(encoder: str, tokenizer_path: str, specs: list[TaskSpec], train: TrainingConfig,
                   dropout: float, work: Path) -> MultiTaskModel:
    """The one initialisation every configuration copies: the pretrained encoder at `encoder`
    (a folder or python:module.ATTR), or a BERT of one of ARCHITECTURES' shapes, randomly initialised."""
    torch.manual_seed(train.seed)
    if encoder not in ARCHITECTURES:
        return build_model(encoder, specs, train.sharing, dropout)
    from transformers import AutoTokenizer, BertConfig

    folder = work / f"encoder-{encoder}"
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_path))
    BertConfig(vocab_size=vocab, max_position_embeddings=512, **ARCHITECTURES[encoder]).save_pretrained(folder)
    return build_model_skeleton(folder, specs, train.sharing, dropout)


def autocast(precision: str, device: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def plain_step(model: MultiTaskModel, arm: Arm, train: TrainingConfig, device: str) -> Callable[[str, dict], None]:
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    model.to(device).train()
    groups = param_groups(model, train.weight_decay)
    optimizer = adamw(groups, train.learning_rate) if arm.fused else torch.optim.AdamW(groups, lr=train.learning_rate)
    # the pipeline's learning-rate schedule, so both take the very same steps (with a constant rate
    # the plain loop's weights drifted elsewhere; on CPU, into slow subnormal arithmetic)
    schedule = WarmupDecayLR(optimizer, total_num_steps=train.steps, warmup_min_lr=0.0,
                             warmup_max_lr=train.learning_rate, warmup_num_steps=train.warmup_steps,
                             warmup_type="linear")

    def step(task: str, batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(arm.precision, device):
            loss = model(task, **batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if arm.sync:
            float(loss.detach())
    return step


Built = tuple[Callable[[str, dict], Any], dict[str, Any], Callable[[], None]]


def build_arm(arm: Arm, template: MultiTaskModel, train: TrainingConfig, device: str) -> Built:
    """The step function of a configuration, what it runs (the engine's own description) and
    what releases it."""
    model = copy.deepcopy(template)
    if arm.loop == "plain":
        return plain_step(model, arm, train, device), {"loop": "plain", "precision": arm.precision,
                                                        "optimizer": "AdamW (fused)" if arm.fused else "AdamW"}, \
            lambda: None
    engine = Engine(model, arm.deepspeed(), train.model_copy(update={"compile": arm.compile}))
    engine.train()
    weighting = WEIGHTINGS["equal"](list(template.tasks))  # the worker's step: sampled task, weight 1
    return (lambda task, batch: train_step(engine, weighting, {task: batch})), \
        {"loop": "pipeline", **engine.describe()}, engine.close


def real_tokens(run: list[Step]) -> int:
    return sum(int(b["attention_mask"].sum()) for _, b in run)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(arms: list[Arm], template: MultiTaskModel, train: TrainingConfig, run: list[Step], block: int,
                device: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Real tokens per second of each configuration over alternating blocks of `block` steps."""
    built = {arm.name: build_arm(arm, template, train, device) for arm in arms}
    totals = {name: [0, 0.0] for name in built}
    order = random.Random(0)
    for first in range(0, len(run), block):
        # a fresh order every round: on a loaded machine a fixed order (always the same position and
        # the same predecessor) showed in the timings by a few per cent
        for name in order.sample(list(built), len(built)):
            step = built[name][0]
            synchronize(device)
            started = time.perf_counter()
            for task, batch in run[first:first + block]:
                step(task, batch)
            synchronize(device)
            if first:  # the first block of each configuration is warm-up
                totals[name][0] += real_tokens(run[first:first + block])
                totals[name][1] += time.perf_counter() - started
    for _, _, close in built.values():
        close()
    return {n: t / s for n, (t, s) in totals.items()}, {n: d for n, (_, d, _) in built.items()}


def sequential(arms: list[Arm], template: MultiTaskModel, train: TrainingConfig, run: list[Step], block: int,
               device: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Each configuration alone: its first `block` steps warm up, the rest are timed; one model
    in memory at a time. A configuration that fails is reported and the others go on."""
    speed, described = {}, {}
    for arm in arms:
        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            step, described[arm.name], close = build_arm(arm, template, train, device)
            for task, batch in run[:block]:
                step(task, batch)
            synchronize(device)
            started = time.perf_counter()
            for task, batch in run[block:]:
                step(task, batch)
            synchronize(device)
            speed[arm.name] = real_tokens(run[block:]) / (time.perf_counter() - started)
        except (RuntimeError, ValueError, AssertionError, NotImplementedError) as exc:  # keep the other numbers
            described[arm.name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(f"configuration {arm.name} failed: {described[arm.name]['error']}", flush=True)
        finally:
            with suppress(RuntimeError, AttributeError):  # a broken configuration must not stop the others
                close()
            step = None  # noqa: F841  (drop the model before the next one is built)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        print(f"{arm.name}: {speed.get(arm.name, float('nan')):.1f} real tokens/s", flush=True)
    return speed, described


def configurations(arms: list[Arm], speed: dict[str, float], described: dict[str, dict[str, Any]],
                   params: int, device: str) -> list[dict[str, Any]]:
    """Per configuration: tokens/s, ratio to the plain loop of the same precision, MFU on a GPU."""
    rows = []
    for arm in arms:
        tps = speed.get(arm.name)
        # no plain fp16 loop (it would need a loss scaler of its own): fp16 is compared with bf16
        plain = f"plain_{'bf16' if arm.precision == 'fp16' else arm.precision}"
        base = speed.get(plain) if arm.name != plain else None
        rows.append({
            "name": arm.name, "tokens_per_s": None if tps is None else round(tps, 1),
            "ratio": round(tps / base, 3) if tps and base else None, "ratio_to": plain if base else None,
            "mfu": round(6 * params * tps / H100_BF16_DENSE_PEAK, 4) if tps and device == "cuda" else None,
            "runs": described.get(arm.name),
        })
    return rows


def launched_memory(encoder: Any, specs: list[TaskSpec], features: dict[str, str], train: TrainingConfig,
                    work: Path, steps: int) -> dict[str, int]:
    """Peak live-tensor bytes per process, 2 launched processes, ZeRO 0 and 3 in fp32 and bf16."""
    from training.launch.train import train_model

    memory: dict[str, int] = {}
    mem_train = train.model_copy(update={"steps": steps, "log_every": 1, "processes": 2,
                                         "log_memory": True, "threads_per_process": 1})
    for stage, precision in ((0, "fp32"), (3, "fp32"), (0, "bf16"), (3, "bf16")):
        run_dir = work / f"memory-zero{stage}-{precision}"
        # 2 processes partition: DeepSpeed's bf16 optimizer under ZeRO-3, as a multi-process run gets
        train_model(encoder, mem_train, DeepSpeedConfig(zero_stage=stage, precision=precision), specs, features,
                    run_dir, lambda line: None)
        rows = [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines() if l]
        memory[f"{stage}-{precision}"] = max(max(r["peak_tensor_bytes_per_rank"]) for r in rows)
    return memory


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when a GPU is present")
    parser.add_argument("--encoder-config", default="demo", choices=["demo", *ARCHITECTURES],
                        help="demo: the demo config's pretrained encoder; minilm, large (BERT-large: hidden 1024, "
                             "24 layers, 16 heads), tiny: BERTs of those shapes, randomly initialised")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: the demo encoder's); a random encoder takes its vocabulary")
    parser.add_argument("--tasks", default="pos,ner,sst2", help="comma-separated: the demo's tasks, or rte")
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated configurations (default: CPU {CPU_ARMS}; CUDA all but "
                             f"plain_fp32_default_adamw and pipeline_bf16_compile); choices: {list(ARMS)}")
    parser.add_argument("--schedule", choices=["auto", "interleaved", "sequential"], default="auto",
                        help="auto: interleaved blocks on CPU (the load of a shared machine drifts), each "
                             "configuration alone on a GPU (one model in memory at a time)")
    parser.add_argument("--steps", type=int, default=48, help="steps per configuration, warm-up block included")
    parser.add_argument("--block", type=int, default=4, help="steps per block (the first one warms up)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per micro-batch instead of rows")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the demo's)")
    parser.add_argument("--examples", type=int, default=2000, help="training examples per task")
    parser.add_argument("--tiny-steps", type=int, default=480,
                        help="CPU: steps per configuration of the tiny-encoder overhead case; 0 skips it")
    parser.add_argument("--tiny-block", type=int, default=16,
                        help="CPU: steps per block of the tiny case (its steps take milliseconds: short "
                             "blocks would time the machine's scheduling more than the step)")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="CPU: 0 skips the memory runs; else at least 2: ZeRO 0's peak (gradients beside "
                             "the optimizer's state, which its first step creates) comes at the second step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; on CPU 1 by default because on a shared, oversubscribed CPU the "
                             "spin-waits of multi-threaded kernels make timings collapse and drift; on a GPU "
                             "torch's default")
    args = parser.parse_args()
    if args.memory_steps == 1:
        parser.error("--memory-steps 1 would miss ZeRO 0's peak, which comes at the second step: use 0 or >= 2")
    if args.steps <= args.block or (args.tiny_steps and args.tiny_steps <= args.tiny_block):
        parser.error("--steps (--tiny-steps) must be more than --block (--tiny-block): the first block only warms up")
    return args


def measure(encoder: str, arms: list[Arm], run: list[Step], specs: list[TaskSpec], train: TrainingConfig,
            args: argparse.Namespace, tokenizer: str, dropout: float, work: Path, block: int) -> dict[str, Any]:
    template = template_model(encoder, tokenizer, specs, train, dropout, work)
    params = sum(p.numel() for p in template.parameters())
    schedule = args.schedule if args.schedule != "auto" else "sequential" if DEVICE == "cuda" else "interleaved"
    timed = sequential if schedule == "sequential" else interleaved
    speed, described = timed(arms, template, train, run, block, DEVICE)
    return {"encoder": encoder, "parameters": params, "real_tokens_per_step": round(real_tokens(run) / len(run), 1),
            "configurations": configurations(arms, speed, described, params, DEVICE), "speed": speed}


def main() -> None:
    args = parse_args()
    threads = args.threads or (1 if DEVICE == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    if DEVICE == "cpu":
        # CPU arithmetic on subnormal floats is many times slower, so without this a configuration's
        # speed depends on where its weights drift (clipping changes that): measured up to ~8 %
        torch.set_flush_denormal(True)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    from flows.config import load_config

    demo = load_config(ROOT / "configs" / "demo.yaml")
    encoder = demo.encoder.name_or_path if args.encoder_config == "demo" else args.encoder_config
    tokenizer = args.tokenizer or _resolve(demo.encoder.name_or_path)
    max_length = args.max_length or demo.encoder.max_length
    names = [n for n in args.tasks.split(",") if n]
    specs, features, pad_id = prepare(work, names, args.examples, tokenizer, max_length)
    train = TrainingConfig(steps=args.steps, micro_batch_size=args.micro_batch, max_tokens=args.max_tokens,
                           warmup_steps=5, processes=1, log_every=10, checkpoint_every=10**6,
                           threads_per_process=threads, seed=0)
    default = CPU_ARMS if DEVICE == "cpu" else [n for n in ARMS if n not in ("plain_fp32_default_adamw",
                                                                              "pipeline_bf16_compile")]
    chosen = [n for n in (args.configs.split(",") if args.configs else default) if n]
    if unknown := [n for n in chosen if n not in ARMS]:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {list(ARMS)}")
    arms = [ARMS[n] for n in ARMS if n in chosen]  # ARMS' order: the fp16 arm last
    run = batches(train, features, pad_id, grouped=True)
    naive = batches(train.model_copy(update={"max_tokens": None}), features, pad_id, grouped=False)

    tiny: dict[str, Any] | None = None
    # one world for every engine of this process (DeepSpeed keeps its process groups for good); the
    # launched memory runs after it must not inherit it
    with single_process_world():
        t0 = time.perf_counter()
        main_result = measure(encoder, arms, run, specs, train, args, tokenizer, demo.encoder.dropout, work,
                              args.block)
        t1 = time.perf_counter()
        if DEVICE == "cpu" and args.tiny_steps:
            tiny_train = train.model_copy(update={"steps": args.tiny_steps})
            tiny_run = batches(tiny_train, features, pad_id, grouped=True)
            tiny = measure("tiny", [ARMS[n] for n in TINY_ARMS], tiny_run, specs, tiny_train, args, tokenizer,
                           demo.encoder.dropout, work, args.tiny_block)
        t2 = time.perf_counter()
    memory = launched_memory(demo.encoder, specs, features, train, work, args.memory_steps) \
        if DEVICE == "cpu" and args.memory_steps and args.encoder_config == "demo" else {}
    t3 = time.perf_counter()
    result = summary(args, main_result, tiny, memory, run, naive, names, threads)
    result["seconds"] = {"throughput": round(t1 - t0, 1), "tiny": round(t2 - t1, 1), "memory": round(t3 - t2, 1)}
    write_result(args.out, result, table)


def _resolve(name_or_path: str) -> str:
    from training.model.multitask import resolve_encoder_path

    return resolve_encoder_path(name_or_path)


def summary(args: argparse.Namespace, main_result: dict[str, Any], tiny: dict[str, Any] | None,
            memory: dict[str, int], run: list[Step], naive: list[Step], names: list[str],
            threads: int) -> dict[str, Any]:
    speed = main_result.pop("speed")
    result: dict[str, Any] = {
        **main_result, "tasks": names, "steps": args.steps, "block": args.block,
        "micro_batch_size": None if args.max_tokens else args.micro_batch, "max_tokens": args.max_tokens,
        "world_size": 1, "threads": threads, "device": DEVICE,
        "device_name": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if DEVICE == "cuda" else None,
        "auto_plan_bf16_one_process": vars(engine_plan(DeepSpeedConfig(precision="bf16"), 1)),
        "padding_efficiency": round(padding_efficiency([b for _, b in run]), 4),
        "naive_padding_efficiency": round(padding_efficiency([b for _, b in naive]), 4),
        "mfu_peak_flops": H100_BF16_DENSE_PEAK if DEVICE == "cuda" else None,
    }
    pipeline, clipped, plain = (speed.get(n) for n in ("pipeline_fp32", "pipeline_fp32_clipping", "plain_fp32"))
    default_adamw = speed.get("plain_fp32_default_adamw")
    if pipeline and plain:  # the figures the CPU tables have carried since issue 4
        result.update({
            "pipeline_tokens_per_s": round(pipeline, 1), "plain_tokens_per_s": round(plain, 1),
            "ratio": round(pipeline / plain, 3),
            "optimizer": "AdamW (fused)" if fused(adamw([{"params": [torch.zeros(1, requires_grad=True)]}], 1e-3))
            else "AdamW"})
    if clipped and plain:
        result.update({"pipeline_with_clipping_tokens_per_s": round(clipped, 1),
                       "ratio_with_clipping": round(clipped / plain, 3)})
    if clipped and default_adamw:
        result.update({"plain_default_adamw_tokens_per_s": round(default_adamw, 1),
                       "speedup_over_default_adamw_loop": round(clipped / default_adamw, 3)})
    if tiny is not None:
        tiny_speed = tiny.pop("speed")
        result["tiny"] = tiny
        result["tiny_overhead_ratio"] = round(tiny_speed["pipeline_fp32"] / tiny_speed["plain_fp32"], 3)
        result["tiny_overhead_ratio_with_clipping"] = round(
            tiny_speed["pipeline_fp32_clipping"] / tiny_speed["plain_fp32"], 3)
    result.update({
        "peak_tensor_bytes_per_process": memory, "memory_processes": 2 if memory else None,
        "zero3_over_zero0_memory": round(memory["3-fp32"] / memory["0-fp32"], 3) if memory else None,
        "zero3_over_zero0_memory_bf16": round(memory["3-bf16"] / memory["0-bf16"], 3) if memory else None,
        "targets": {"ratio_with_clipping (CPU, MiniLM)": ">= 0.95", "tiny_overhead_ratio (CPU)": ">= 0.9",
                    "padding_efficiency": ">= 0.90", "zero3_over_zero0_memory": "<= 0.6",
                    "pipeline_bf16 ratio (GPU, MiniLM and BERT-large)": ">= 1.0",
                    "pipeline_bf16 mfu (GPU, BERT-large)": ">= 0.40",
                    "pipeline_zero2_bf16 / pipeline_bf16 (GPU)": ">= 1.0"},
    })
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['encoder']} on {result['device_name']}: {result['real_tokens_per_step']} real tokens/step, "
             f"padding efficiency {result['padding_efficiency']}",
             f"{'configuration':34} {'tokens/s':>10} {'ratio':>7} {'MFU':>7}  runs"]
    tiny = [{**row, "name": "tiny " + row["name"]} for row in result["tiny"]["configurations"]] \
        if "tiny" in result else []
    for row in result["configurations"] + tiny:
        runs = row["runs"] or {}
        what = runs.get("error") or ", ".join(f"{k}={runs[k]}" for k in ("zero_stage", "mixed_precision",
                                                                         "clipping_in") if k in runs)
        fmt = lambda v, spec: format("-" if v is None else format(v, spec), ">" + spec.split(".")[0])  # noqa: E731
        lines.append(f"{row['name']:34} {fmt(row['tokens_per_s'], '10.1f')} {fmt(row['ratio'], '7.3f')} "
                     f"{fmt(row['mfu'], '7.3f')}  {what}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
