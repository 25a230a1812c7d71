"""Mutation testing of the code that decides results: the promotion gate, how the engine applies
loss weights, the sharing strategies' forward paths, gradient reversal, checkpoint publishing
order, resume, the dev metrics and label alignment, and the four bugs an audit once planted
unnoticed (issue 14).

    make mutation                                   # every mutant below
    .venv/bin/python tools/mutation.py --only gate-no-slack soft-pull-pushes
    .venv/bin/python tools/mutation.py --list

Each mutant is one exact source snippet of one file and its replacement, with the tests that
should catch it. The tree (git's tracked and untracked, not ignored files) is copied once to a
temporary folder; each mutant is applied there by string replacement, its tests run with pytest,
and the file is put back. A snippet must occur exactly once: a file that moved or changed fails
the run naming the mutant, instead of quietly testing nothing. The unmutated copy must pass every
listed test first. Each run is forked from this process once it has imported the heavy libraries
(torch, DeepSpeed, MLflow), never a project module, so every run imports the mutated copy and
none pays ~5 s of imports again; `--no-fork` starts a fresh interpreter per run instead. Killed: the tests failed (or timed out); survived: they passed. Exit status 1
when fewer than 90 % are killed, 2 when the run itself cannot be trusted (a missing snippet, a
failing baseline, a test id pytest does not know). Not part of `make test` or CI.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KILL_RATE = 0.9


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    snippet: str
    replacement: str
    tests: tuple[str, ...]


def mutant(name: str, file: str, snippet: str, replacement: str, *tests: str) -> Mutant:
    return Mutant(name, file, snippet, replacement, tests)


TECH = "tests/test_techniques.py::test_"
GATE = "tests/test_gate_boundary.py::test_"
PUBLISH = "tests/test_checkpoint_publish.py"
RESUME = "tests/test_worker_resume.py::test_worker_resumed_in_process_goes_on_as_the_uninterrupted_run"
METRICS = "tests/test_metrics.py"
ALIGN = ("tests/test_tokenize.py", "tests/test_label_alignment.py")
MARKER_WRITE = '''            marker = json.dumps({"step": step, "checksummed": True})
            if self.remote:
                target = f"{self.uri}/{tag}/{COMPLETE}"
                with_retries(lambda: self._fs().pipe_file(target, marker.encode()), f"marker {target}")
            else:
                (Path(self.local) / tag / COMPLETE).write_text(marker)
'''

MUTANTS: list[Mutant] = [
    # -- the four bugs planted by the audit of issue 14 --
    mutant("planted-sampled-step-ignores-weight", "training/trainer/weighting/base.py",
           "return torch.tensor([self.weight(t) for t in tasks], dtype=torch.float32)",
           "return torch.ones(len(tasks))",
           TECH + "a_task_weighted_zero_by_static_leaves_its_head_unchanged",
           TECH + "the_sampled_step_scales_the_task_gradient_by_its_weight"),
    mutant("planted-all-task-step-ignores-weights", "training/trainer/step.py",
           "engine.backward(sum(float(c) * out.loss for c, out in zip(coefficients, outputs)))",
           "engine.backward(sum(out.loss for out in outputs))",
           TECH + "a_task_weighted_zero_by_static_leaves_its_head_unchanged",
           TECH + "the_all_task_step_applies_each_tasks_weight_to_its_gradient"),
    mutant("planted-no-gradient-reversal", "training/model/sharing/adversarial.py",
           "pooled = GradReverse.apply(masked_mean(shared, attention_mask), self.params.reversal_scale)",
           "pooled = masked_mean(shared, attention_mask)",
           TECH + "adversarial_discriminator_gradient_reaches_the_encoder_reversed"),
    mutant("planted-marker-before-upload", "training/trainer/checkpoints.py",
           "            if self.remote:\n                self._upload(tag)\n"
           "        barrier()\n        if rank == 0:\n" + MARKER_WRITE,
           "        barrier()\n        if rank == 0:\n" + MARKER_WRITE
           + "        if self.remote and local_rank == 0:\n            self._upload(tag)\n",
           PUBLISH),
    mutant("planted-weighting-state-not-resumed", "training/trainer/worker.py",
           'states: dict[str, Any] = {"batches": data, "weighting": weighting}', 'states: dict[str, Any] = {"batches": data}', RESUME + "[dwa]"),
    # -- the promotion gate --
    mutant("gate-ignores-tolerance", "training/release/gate.py",
           "mine >= held - tolerance - GATE_SLACK", "mine >= held - GATE_SLACK",
           GATE + "gate_passes_exactly_at_the_boundary_and_refuses_just_below"),
    mutant("gate-tolerance-added", "training/release/gate.py",
           "mine >= held - tolerance - GATE_SLACK", "mine >= held + tolerance - GATE_SLACK",
           GATE + "gate_passes_exactly_at_the_boundary_and_refuses_just_below"),
    mutant("gate-no-slack", "training/release/gate.py",
           "mine >= held - tolerance - GATE_SLACK", "mine >= held - tolerance",
           GATE + "gate_passes_exactly_at_the_boundary_and_refuses_just_below"),
    mutant("gate-slack-too-wide", "training/release/gate.py", "GATE_SLACK = 1e-9", "GATE_SLACK = 1e-5",
           GATE + "gate_passes_exactly_at_the_boundary_and_refuses_just_below"),
    mutant("gate-missing-metric-passes", "training/release/gate.py",
           "ok = mine is not None and mine >=", "ok = mine is None or mine >=",
           GATE + "gate_refuses_a_challenger_without_the_tasks_primary_metric"),
    mutant("gate-dropped-task-passes", "training/release/gate.py",
           "for task in sorted(champion or {}) if task not in primary]",
           "for task in sorted(champion or {}) if False]",
           "tests/test_registry.py::test_gate_refuses_a_challenger_that_drops_a_task"),
    mutant("promotion-ignores-refusal", "training/release/registry.py",
           "    if report.promoted:\n        move_alias(", "    if True:\n        move_alias(",
           GATE + "promotion_at_the_boundary_with_a_real_store"),
    mutant("bio-primary-metric-accuracy", "training/task_spec.py",
           '            return "entity_f1"', '            return "accuracy"', GATE + "primary_metrics_the_gate_compares"),
    # -- how the engine and the model apply loss weights --
    mutant("engine-losses-misordered", "training/trainer/step.py",
           "raw.cpu() if weighting.all_tasks_step", "raw.flip(0).cpu() if weighting.all_tasks_step",
           TECH + "dwa_gives_the_task_whose_loss_fell_less_the_larger_share"),
    mutant("engine-probe-gradients-swapped", "training/trainer/engine.py",
           "for handle in handles]))", "for handle in handles[::-1]]))",
           TECH + "gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient",
           TECH + "pcgrad_removes_the_conflict_between_task_gradients_at_the_shared_probe"),
    mutant("model-ignores-learned-weights", "training/model/multitask.py",
           "loss = self.loss_weighting(task, raw) if self.loss_weighting is not None else raw", "loss = raw",
           TECH + "uncertainty_scales_each_task_by_its_learned_precision"),
    mutant("uncertainty-weighted-twice", "training/trainer/weighting/uncertainty.py",
           'step must not scale the loss again."""\n        return 1.0',
           'step must not scale the loss again."""\n        return self.weights()[task]',
           TECH + "uncertainty_scales_each_task_by_its_learned_precision"),
    mutant("uncertainty-regulariser-doubled", "training/trainer/weighting/uncertainty.py",
           "return torch.exp(-s) * loss + 0.5 * s", "return torch.exp(-s) * loss + s",
           TECH + "uncertainty_scales_each_task_by_its_learned_precision"),
    mutant("static-weights-ignored", "training/trainer/weighting/static.py",
           "float(given.get(t, 1.0))", "1.0",
           TECH + "a_task_weighted_zero_by_static_leaves_its_head_unchanged"),
    mutant("dwa-ratio-inverted", "training/trainer/weighting/dwa.py",
           "ratios = torch.tensor(self.history[-1]) / torch.tensor(self.history[-2])",
           "ratios = torch.tensor(self.history[-2]) / torch.tensor(self.history[-1])",
           TECH + "dwa_gives_the_task_whose_loss_fell_less_the_larger_share"),
    mutant("gradnorm-step-sign", "training/trainer/weighting/gradnorm.py",
           "step = torch.sign(g - target)", "step = torch.sign(target - g)",
           TECH + "gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient"),
    mutant("pcgrad-projects-agreeing-gradients", "training/trainer/weighting/pcgrad.py",
           "if j != i and dot < 0 and gram[j, j] > 0:", "if j != i and dot > 0 and gram[j, j] > 0:",
           TECH + "pcgrad_removes_the_conflict_between_task_gradients_at_the_shared_probe"),
    # -- sharing strategies' forward paths and gradient reversal --
    mutant("hard-encoder-detached", "training/model/sharing/hard.py",
           "        return encode(self.encoder, input_ids, attention_mask, token_type_ids), None",
           "        return encode(self.encoder, input_ids, attention_mask, token_type_ids).detach(), None",
           TECH + "hard_sharing_trains_one_encoder_that_every_task_reads"),
    mutant("soft-adapters-bypassed", "training/model/sharing/soft.py",
           "return self.adapters[self._owner[0].active](self.shared(x))", "return self.shared(x)",
           TECH + "soft_sharing_trains_only_the_active_tasks_adapters"),
    mutant("soft-active-task-not-set", "training/model/sharing/soft.py",
           "        self.active = task\n        hidden = encode(", "        hidden = encode(",
           TECH + "soft_sharing_trains_only_the_active_tasks_adapters"),
    mutant("soft-pull-pushes-apart", "training/model/sharing/soft.py",
           "return self.params.l2_pull * torch.stack(terms).sum()",
           "return -self.params.l2_pull * torch.stack(terms).sum()",
           TECH + "soft_sharing_pull_draws_each_tasks_adapters_toward_the_others"),
    mutant("soft-pull-moves-own-adapter-only", "training/model/sharing/soft.py",
           "(own - torch.stack(every).mean(0)).pow(2)", "(own - torch.stack(every).mean(0).detach()).pow(2)",
           TECH + "soft_sharing_pull_draws_each_tasks_adapters_toward_the_others"),
    mutant("attention-layer-mix-frozen", "training/model/sharing/attention.py",
           "weights = torch.softmax(self.logits, 0)", "weights = torch.softmax(self.logits.detach(), 0)",
           TECH + "attention_layer_weights_receive_gradients_per_task_and_part"),
    mutant("attention-one-mix-for-all-tasks", "training/model/sharing/attention.py",
           "mixed = self.mix[task](states)", "mixed = self.mix[next(iter(self.mix))](states)",
           TECH + "attention_layer_weights_receive_gradients_per_task_and_part"),
    mutant("attention-pooling-skipped", "training/model/sharing/attention.py",
           "        if task not in self.pool:\n            return mixed", "        if True:\n            return mixed",
           TECH + "attention_layer_weights_receive_gradients_per_task_and_part"),
    mutant("adversarial-discriminator-loss-dropped", "training/model/sharing/adversarial.py",
           "return self.params.adversarial_weight * F.cross_entropy(logits.float(), target)",
           "return 0.0 * F.cross_entropy(logits.float(), target)",
           TECH + "adversarial_discriminator_gradient_reaches_the_encoder_reversed"),
    mutant("adversarial-private-features-unused", "training/model/sharing/adversarial.py",
           "        return shared + private, self._adversarial(", "        return shared + 0 * private, self._adversarial(",
           TECH + "adversarial_discriminator_gradient_reaches_the_encoder_reversed"),
    mutant("reversal-keeps-sign", "training/model/sharing/common.py",
           "return -ctx.scale * grad, None", "return ctx.scale * grad, None",
           TECH + "adversarial_discriminator_gradient_reaches_the_encoder_reversed"),
    mutant("reversal-ignores-scale", "training/model/sharing/common.py",
           "return -ctx.scale * grad, None", "return -grad, None",
           TECH + "adversarial_discriminator_gradient_reaches_the_encoder_reversed"),
    # -- checkpoint publishing order --
    mutant("publish-before-ranks-wrote", "training/trainer/checkpoints.py",
           "        barrier()\n        if local_rank == 0:  # this node's files are all written",
           "        if local_rank == 0:  # this node's files are all written", PUBLISH),
    mutant("publish-before-nodes-uploaded", "training/trainer/checkpoints.py",
           "            self._upload(tag)\n        barrier()\n        if rank == 0:",
           "            self._upload(tag)\n        if rank == 0:", PUBLISH),
    mutant("s3-tags-without-marker-offered", "training/trainer/checkpoints.py",
           'fs.glob(f"{self.uri}/step_*/{COMPLETE}")', 'fs.glob(f"{self.uri}/step_*/*")', PUBLISH),
    mutant("local-tags-without-marker-offered", "training/trainer/checkpoints.py",
           'p.name.startswith("step_") and (p / COMPLETE).is_file()', 'p.name.startswith("step_") and p.is_dir()',
           PUBLISH),
    # -- resume of the weighting, data and sampler state --
    mutant("data-counters-not-resumed", "training/trainer/worker.py",
           'states: dict[str, Any] = {"batches": data, "weighting": weighting}', 'states: dict[str, Any] = {"weighting": weighting}', RESUME + "[uncertainty-temperature]"),
    mutant("rng-state-not-resumed", "training/trainer/worker.py",
           'rank_states={"rng": RandomState()}', "rank_states={}", RESUME + "[uncertainty-temperature]"),
    mutant("resume-forgets-the-step", "training/trainer/checkpointer.py",
           'return int(client["step"])', "return 0", RESUME + "[uncertainty-temperature]"),
    mutant("sampler-draw-ignores-the-step", "training/trainer/loop.py",
           "[sampler.sample(step * gas + micro)]", "[sampler.sample(micro)]",
           RESUME + "[uncertainty-temperature]"),
    mutant("dwa-window-not-checkpointed", "training/trainer/weighting/dwa.py",
           '"window": [list(r) for r in self.window]}', '"window": []}', RESUME + "[dwa]"),
    # -- dev metrics --
    mutant("accuracy-per-sentence", "training/evaluation/metrics.py",
           "/ max(1, len(pairs))", "/ max(1, len(gold))", METRICS),
    mutant("macro-f1-is-micro", "training/evaluation/metrics.py", 'average="macro"', 'average="micro"', METRICS),
    mutant("entity-f1-strict-mode", "training/evaluation/metrics.py",
           "return float(entity_f1_score(gold, pred))",
           'return float(entity_f1_score(gold, pred, mode="strict", '
           'scheme=__import__("seqeval.scheme", fromlist=["IOB2"]).IOB2))', METRICS),
    mutant("neg-mse-sign", "training/evaluation/metrics.py",
           "return -float(np.mean((g - p) ** 2))", "return float(np.mean((g - p) ** 2))", METRICS),
    mutant("correlation-of-a-constant", "training/evaluation/metrics.py",
           "if len(g) < 2 or np.ptp(g) == 0 or np.ptp(p) == 0:", "if len(g) < 2:", METRICS),
    mutant("bio-tasks-without-entity-f1", "training/evaluation/metrics.py",
           'return ["accuracy", "entity_f1"] if label_scheme == "bio" else ["accuracy"]', 'return ["accuracy"]',
           METRICS),
    # -- label alignment --
    mutant("first-alignment-reads-last-subword", "data_prep/tokenize.py",
           "label_id[tags[w]] for w in chunk.first_subword_word]", "label_id[tags[w]] for w in chunk.last_subword_word]",
           *ALIGN),
    mutant("all-alignment-labels-context-words", "data_prep/tokenize.py",
           "owned = {w for w in chunk.first_subword_word if w >= 0}", "owned = {w for w in chunk.word_ids if w >= 0}",
           *ALIGN),
    mutant("label-ids-sorted", "data_prep/tokenize.py",
           "label_id = {lab: i for i, lab in enumerate(labels)}",
           "label_id = {lab: i for i, lab in enumerate(sorted(labels))}", *ALIGN),
    mutant("windows-label-words-they-do-not-own", "data_prep/tokenize.py",
           "            if w >= 0 and owner[w] == index:", "            if w >= 0:", *ALIGN),
    mutant("owner-ties-go-to-the-later-window", "data_prep/tokenize.py",
           "            if m > margin[w]:", "            if m >= margin[w]:", *ALIGN),
    mutant("every-subword-is-a-first-subword", "data_prep/tokenize.py",
           "            if w >= 0:\n                if pos == 0 or wids[pos - 1] != w:",
           "            if w >= 0:\n                if True:", *ALIGN),
]


class RunError(Exception):
    """The mutation run cannot be trusted (exit status 2)."""


@dataclass
class Result:
    mutant: Mutant
    verdict: str  # killed, survived or timeout
    seconds: float
    tail: str


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_snippets(tree: Path, mutants: list[Mutant]) -> None:
    """Every snippet occurs exactly once, before anything runs."""
    problems = []
    for m in mutants:
        path = tree / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist (moved?); update MUTANTS in tools/mutation.py")
            continue
        count = path.read_text(encoding="utf-8").count(m.snippet)
        if count != 1:
            problems.append(f"{m.name}: its snippet occurs {count} times in {m.file}, not once; update MUTANTS "
                            f"in tools/mutation.py (snippet: {m.snippet.strip()[:70]!r})")
    if problems:
        raise RunError("\n".join(problems))


def test_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {"DS_ACCELERATOR": "cpu", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        env.setdefault(key, value)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutated module is never read back from a stale .pyc
    env["MTL_TEST_TMP"] = str(work / "session")
    env.pop("PYTHONPATH", None)  # the copy's packages, not this checkout's
    # the copy has no ../shared/data beside it; data_prep.sources is not imported to find it,
    # since a forked run must import every project module from the mutated copy
    beside = ROOT.parent / "shared" / "data"
    if "MTL_DATA_DIR" not in env and beside.is_dir():
        env["MTL_DATA_DIR"] = str(beside.resolve())
    return env


# Imported once here, before the runs fork: each run then skips the ~5 s these cost (torch and
# DeepSpeed above all). Never a project module, and not Prefect (it reads its settings at import).
PRELOAD = ("torch", "transformers", "transformers.models.bert.modeling_bert", "deepspeed", "numpy",
           "scipy.stats", "sklearn.metrics", "seqeval.metrics", "safetensors.torch", "pydantic", "fsspec",
           "s3fs", "boto3", "moto.server", "mlflow", "pytest")


def preload(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)  # some libraries read their settings at import (offline hub, accelerator)
    for name in PRELOAD:
        importlib.import_module(name)
    project = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "data_prep", "flows"))
    if project:
        raise RunError(f"preloading imported project modules {project[:3]}; a forked run would test those")


def pytest_args(work: Path, tests: tuple[str, ...]) -> list[str]:
    return ["-x", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 'pytest'}", *tests]


def run_tests(tree: Path, tests: tuple[str, ...], env: dict[str, str], work: Path, timeout_s: float,
              fork: bool) -> tuple[int | None, float, str]:
    """(pytest exit status or None on timeout, seconds, the output's tail)."""
    start = time.monotonic()
    code, output = (forked_pytest if fork else subprocess_pytest)(tree, pytest_args(work, tests), env, work, timeout_s)
    shutil.rmtree(work / "pytest", ignore_errors=True)
    return code, time.monotonic() - start, "\n".join(output.strip().splitlines()[-15:])


def subprocess_pytest(tree: Path, args: list[str], env: dict[str, str], work: Path,
                      timeout_s: float) -> tuple[int | None, str]:
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout or ""
        return None, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    return done.returncode, done.stdout + done.stderr


def forked_pytest(tree: Path, args: list[str], env: dict[str, str], work: Path,
                  timeout_s: float) -> tuple[int | None, str]:
    """pytest in a child forked from this process (libraries preloaded, no project module), in its
    own session so a timeout kills whatever it started."""
    log = work / "pytest.log"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        exit_status = 3  # pytest's "internal error": the run stops instead of counting a kill
        try:
            os.setsid()
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.chdir(tree)
            os.environ.clear()
            os.environ.update(env)
            sys.path[:] = [str(tree)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "tools")]
            import pytest

            exit_status = int(pytest.main(args))
        except BaseException:  # noqa: BLE001 - whatever happens, the child reports and exits here
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_status)
    deadline = time.monotonic() + timeout_s
    code: int | None = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.1)
    return code, log.read_text(errors="replace") if log.exists() else ""


def verdict(m: Mutant, code: int | None, tail: str) -> str:
    if code is None:
        return "timeout"
    if code == 0:
        return "survived"
    if code in (1, 2):  # tests failed, or collection failed (the mutant broke an import)
        return "killed"
    raise RunError(f"{m.name}: pytest exited {code} (usage error or no tests collected): check its test ids\n"
                   f"{tail}")


def first_failure(tail: str) -> str:
    lines = tail.splitlines()
    text = next((l for l in lines if l.startswith(("FAILED ", "ERROR "))), lines[-1] if lines else "")
    return text if len(text) <= 160 else text[:157] + "..."


def apply(tree: Path, m: Mutant) -> str:
    path = tree / m.file
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(m.snippet, m.replacement, 1), encoding="utf-8")
    return original


def run(mutants: list[Mutant], timeout_s: float, fork: bool) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="mtl-mutation-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        copy_tree(ROOT, tree)
        check_snippets(tree, mutants)
        env = test_env(work)
        if fork:
            preload(env)
        every = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        print(f"baseline: {len(every)} test selections on the unmutated tree ...", flush=True)
        code, seconds, tail = run_tests(tree, every, env, work, timeout_s * 2, fork)
        if code != 0:
            raise RunError(f"the unmutated tree fails its tests (exit {code}); no mutant can be judged\n{tail}")
        print(f"baseline passed in {seconds:.0f} s", flush=True)
        results = []
        for i, m in enumerate(mutants, 1):
            original = apply(tree, m)
            try:
                code, seconds, tail = run_tests(tree, m.tests, env, work, timeout_s, fork)
            finally:
                (tree / m.file).write_text(original, encoding="utf-8")
            result = Result(m, verdict(m, code, tail), seconds, tail)
            results.append(result)
            print(f"[{i:2d}/{len(mutants)}] {result.verdict:8s} {seconds:6.1f} s  {m.name}  ({m.file})", flush=True)
            if result.verdict == "killed":  # by what: an assertion is a catch, an import error is not much of one
                print(f"            {first_failure(tail)}", flush=True)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's tests (default 300)")
    parser.add_argument("--no-fork", action="store_true",
                        help="start each run as a fresh Python process (slower: every run imports torch anew)")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        print("error: mutant names repeat in tools/mutation.py", file=sys.stderr)
        return 2
    chosen = MUTANTS
    if args.only:
        if unknown := sorted(set(args.only) - set(names)):
            print(f"error: unknown mutant(s) {unknown}; see --list", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.file})\n    " + "\n    ".join(m.tests))
        return 0
    start = time.monotonic()
    try:
        results = run(chosen, args.timeout, fork=not args.no_fork and hasattr(os, "fork"))
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    killed = [r for r in results if r.verdict != "survived"]
    rate = len(killed) / len(results)
    print(f"\nkilled {len(killed)} of {len(results)} mutants: {rate:.1%} "
          f"(required {REQUIRED_KILL_RATE:.0%}) in {time.monotonic() - start:.0f} s")
    for r in results:
        if r.verdict == "survived":
            print(f"  survived: {r.mutant.name} ({r.mutant.file}); tests: {', '.join(r.mutant.tests)}")
    return 0 if rate >= REQUIRED_KILL_RATE else 1


if __name__ == "__main__":
    sys.exit(main())
