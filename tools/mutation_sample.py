"""Mutation testing by a real tool (mutmut 3), on a seeded sample per module, with only the tests
that reach each mutated function (issue 27). `make mutation` runs it after the curated smoke set
(tools/mutation.py).

    make mutation                                               # curated set, then this
    .venv/bin/python tools/mutation_sample.py                   # this alone (about 15 min, 2 cores)
    .venv/bin/python tools/mutation_sample.py --list            # mutants per module and the sample
    .venv/bin/python tools/mutation_sample.py --module flows/config.py --sample 60
    .venv/bin/python tools/mutation_sample.py --keep /tmp/mut   # keep the copy: `mutmut show NAME` there

How it runs:
- The tree (git's tracked and untracked, not ignored files) is copied to a temporary folder and a
  `[tool.mutmut]` section is written into the copy's pyproject.toml: mutmut writes its `mutants/`
  folder there, never in this checkout, and the checkout's sources are never rewritten.
- The mutants of every module in MODULES are listed with mutmut's own generator (the same code
  `mutmut run` uses, so the names match; checked after the run). Each module's sample is the
  `--sample` mutants whose sha256(seed, mutant key) rank lowest: a mutant's key names its file,
  function, the code it changes and what into, not its line or number, so an edit elsewhere does
  not reshuffle the sample, and a triaged mutant keeps its entry.
- `mutmut run NAMES...` collects which tests call which function (its trampolines record the
  calls, one pass over the selected test files), runs those tests on the unmutated copy, then each
  sampled mutant in a forked child with only the tests that called its function, under a CPU- and
  wall-time limit that scales with those tests' measured time (timeout_multiplier/constant below).
  tools/mutation_plugin.py deselects slow and server tests and refuses any launched process.
- Verdicts are read from mutmut's meta files; survivors are matched against
  tests/mutation_triage.toml, where each is either killed by a named test or shown equivalent with a
  reason. Kill rate per module = killed / (sampled - equivalent); a timeout counts as killed.

Writes `.mtl/mutation/sample.json` and `.mtl/mutation/sample.md` (a table per module and every
survivor with its key, for triage). Exit status 1 when a module is below 85 %, 2 when the run
cannot be trusted (the unmutated tests fail, mutmut stops, its mutants differ from the listing, a
triage entry is malformed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

from mutation import copy_tree, test_env

ROOT = Path(__file__).resolve().parents[1]
TRIAGE = ROOT / "tests" / "mutation_triage.toml"
OUT = ROOT / ".mtl" / "mutation"
REQUIRED_KILL_RATE = 0.85
DEFAULT_SEED = 27  # the number; any fixed value gives a reproducible sample
DEFAULT_SAMPLE = 30
# per-mutant limit: (the covering tests' measured seconds + constant) x multiplier of wall time,
# twice that of CPU time; the constant also covers module fixtures, whose setup is not measured
TIMEOUT_MULTIPLIER = 10.0
TIMEOUT_CONSTANT = 10.0
KILLED = {"killed", "timeout", "segfault"}


@dataclass(frozen=True)
class Module:
    """A listed module: its source files (fnmatch patterns) and the test files that cover them.
    The union of every module's tests is what mutmut runs once to learn which test calls which
    function; each mutant then runs only the tests that called its function."""
    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]


MODULES = (
    Module("data_prep", ("data_prep/*.py",),
           ("tests/test_data_cache.py", "tests/test_data_formats.py", "tests/test_data_fuzz.py",
            "tests/test_data_labels.py", "tests/test_data_profile.py", "tests/test_data_validation.py",
            "tests/test_readers.py", "tests/test_tokenize.py", "tests/test_label_alignment.py",
            "tests/test_properties.py", "tests/test_config.py", "tests/test_parsing.py",
            "tests/test_many_tasks.py")),
    Module("training/evaluation", ("training/evaluation/*.py",),
           ("tests/test_metrics.py", "tests/test_selection.py", "tests/test_affinity.py",
            "tests/test_inference_device.py", "tests/test_properties.py", "tests/test_parsing.py",
            "tests/test_many_tasks.py")),
    Module("training/release", ("training/release/*.py",),
           ("tests/test_registry.py", "tests/test_gate_boundary.py", "tests/test_fingerprint.py",
            "tests/test_audit.py", "tests/test_warm_start.py", "tests/test_mlflow_run.py",
            "tests/test_refusals.py", "tests/test_data_profile.py", "tests/test_properties.py",
            "tests/test_server.py", "tests/test_serving.py")),
    Module("training/redaction.py", ("training/redaction.py",),
           ("tests/test_properties.py", "tests/test_registry.py", "tests/test_mlflow_run.py")),
    Module("training/trainer (pure)",
           ("training/trainer/sampling.py", "training/trainer/weighting/*.py", "training/trainer/batches.py",
            "training/trainer/checkpoints.py", "training/trainer/checkpointer.py"),
           ("tests/test_sampling.py", "tests/test_weighting.py", "tests/test_batches.py",
            "tests/test_engine_batches.py", "tests/test_checkpoint_publish.py", "tests/test_properties.py",
            "tests/test_techniques.py", "tests/test_worker_resume.py", "tests/test_selection.py",
            "tests/test_parsing.py")),
    Module("flows/config.py", ("flows/config.py",),
           ("tests/test_config.py", "tests/test_config_reachability.py", "tests/test_deployments.py",
            "tests/test_production_params.py")),
)


class RunError(Exception):
    """The run cannot be trusted (exit status 2)."""


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's: module.x_function__mutmut_N or module.xǁClassǁmethod__mutmut_N
    module: str
    file: str
    function: str
    line: int
    before: str
    after: str
    key: str  # file, function, the code changed and into what, and which occurrence of that change


def module_of(rel: str) -> Module | None:
    return next((m for m in MODULES if any(fnmatch(rel, p) for p in m.files)), None)


def one_line(text: str, limit: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def file_mutants(tree: Path, rel: str, module: str) -> list[Mutant]:
    """The mutants `mutmut run` makes of one file, named as it names them (its own generator)."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider
    from mutmut.mutation.file_mutation import create_mutations
    from mutmut.mutation.trampoline_templates import mangle_function_name
    from mutmut.utils.format_utils import get_mutant_name

    source = (tree / rel).read_text(encoding="utf-8")
    parsed, mutations, _, _ = create_mutations(rel, source)
    # mutmut names the mutants of top-level functions and of methods of top-level classes only
    functions: dict[cst.CSTNode, tuple[str, str]] = {}
    for statement in parsed.body:
        if isinstance(statement, cst.FunctionDef):
            functions[statement] = (mangle_function_name(name=statement.name.value, class_name=None),
                                    statement.name.value)
        elif isinstance(statement, cst.ClassDef) and isinstance(statement.body, cst.IndentedBlock):
            for method in statement.body.body:
                if isinstance(method, cst.FunctionDef):
                    functions[method] = (mangle_function_name(name=method.name.value, class_name=statement.name.value),
                                         f"{statement.name.value}.{method.name.value}")
    positions = MetadataWrapper(parsed, unsafe_skip_copy=True).resolve(PositionProvider)
    lines = source.splitlines()
    numbers: Counter[str] = Counter()
    occurrences: Counter[tuple[str, str, str]] = Counter()
    out = []
    for mutation in mutations:
        owner = functions.get(mutation.contained_by_top_level_function)  # type: ignore[arg-type]
        if owner is None:
            continue
        mangled, function = owner
        numbers[mangled] += 1
        old, new = parsed.code_for_node(mutation.original_node), parsed.code_for_node(mutation.mutated_node)
        occurrences[(mangled, old, new)] += 1
        where = positions[mutation.original_node]
        first, last = where.start.line - 1, where.end.line - 1
        before = "\n".join(lines[first:last + 1])
        tail = len(lines[last]) - where.end.column
        after = before[:where.start.column] + new + before[len(before) - tail:]
        identity = json.dumps([rel, function, old, new, occurrences[(mangled, old, new)]])
        out.append(Mutant(name=get_mutant_name(Path(rel), f"{mangled}__mutmut_{numbers[mangled]}"), module=module,
                          file=rel, function=function, line=where.start.line, before=one_line(before),
                          after=one_line(after), key=hashlib.sha256(identity.encode()).hexdigest()[:12]))
    return out


def list_mutants(tree: Path, cache_path: Path) -> list[Mutant]:
    """Every mutant of every listed module (cwd: the copy, where mutmut reads its config). A file's
    listing is cached by its content and mutmut's version (listing all takes minutes on 2 busy cores)."""
    from mutmut.configuration import reset_config

    reset_config()
    version = metadata.version("mutmut")
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except json.JSONDecodeError:
        cache = {}
    fresh: dict[str, list[dict[str, object]]] = {}
    found = []
    for path in sorted(tree.rglob("*.py")):
        rel = path.relative_to(tree).as_posix()
        if (module := module_of(rel)) is None:
            continue
        key = hashlib.sha256(f"{version}:{module.name}:{rel}:".encode() + path.read_bytes()).hexdigest()
        if key not in cache:
            cache[key] = [asdict(m) for m in file_mutants(tree, rel, module.name)]
        fresh[key] = cache[key]
        found.extend(Mutant(**m) for m in cache[key])  # type: ignore[arg-type]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(fresh))  # only the files as they are now
    return found


def sample(mutants: list[Mutant], size: int, seed: int) -> dict[str, list[Mutant]]:
    by_module: dict[str, list[Mutant]] = defaultdict(list)
    for m in mutants:
        by_module[m.module].append(m)
    rank = lambda m: hashlib.sha256(f"{seed}:{m.key}".encode()).hexdigest()  # noqa: E731
    return {name: sorted(sorted(found, key=rank)[:size], key=lambda m: (m.file, m.line, m.name))
            for name, found in by_module.items()}


def write_config(tree: Path, modules: list[Module], deselect: list[str]) -> None:
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if "[tool.mutmut]" in text:
        raise RunError("pyproject.toml has a [tool.mutmut] section; tools/mutation_sample.py writes its own "
                       "into the copy: remove it from pyproject.toml")
    tests = sorted({t for m in modules for t in m.tests})
    missing = [t for t in tests if not (tree / t).is_file()]
    if missing:
        raise RunError(f"test files named in MODULES (tools/mutation_sample.py) do not exist: {missing}")
    extra = sorted(p.name for p in tree.iterdir() if p.name not in ("data_prep", "training", "flows", "tests"))
    config = {
        "source_paths": ["data_prep", "training", "flows"],
        "only_mutate": [p for m in modules for p in m.files],
        "also_copy": extra,  # configs/, infra/, prefect.yaml ...: the tests read them beside the code
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "tools.mutation_plugin", "-o", "addopts=",
                                *(f"--deselect={test}" for test in deselect)],
        "timeout_multiplier": TIMEOUT_MULTIPLIER,
        "timeout_constant": TIMEOUT_CONSTANT,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    pyproject.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")


def mutmut_env(work: Path) -> dict[str, str]:
    env = test_env(work)
    env.pop("MLFLOW_TRACKING_URI", None)
    # every pytest run here keeps its temp folders in the work folder: pytest prunes old numbered
    # folders under its root, which must never be a concurrent session's
    for name in ("PYTEST_DEBUG_TEMPROOT", "TMPDIR"):
        env[name] = str(work / "tmp")
    # the children are forked from a process that ran torch: one thread each, no OpenMP pool to
    # inherit (a forked child waits forever on a pool its parent started), and 2 cores are 2 children
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


PROGRESS = re.compile(r"(\d+)/(\d+)\s+🎉 (\d+)\s*🫥 (\d+)\s+⏰ (\d+)\s+🤔 (\d+)\s+🙁 (\d+)")
PHASES = ("Generating mutants", "Running stats", "Running clean tests", "Running forced fail test",
          "Running mutation testing")


def run_mutmut(tree: Path, names: list[str], env: dict[str, str], children: int, limit_s: float, log: Path) -> None:
    """`mutmut run NAMES` in the copy, its output to `log`, a progress line now and then."""
    command = [str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(children), *names]
    start = time.monotonic()
    seen: set[str] = set()
    last_print = 0.0
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        assert proc.stdout is not None
        tail = ""
        try:
            while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
                out.write(chunk)
                tail = (tail + chunk.decode(errors="replace"))[-4000:]
                for phase in PHASES:
                    if phase in tail and phase not in seen:
                        seen.add(phase)
                        print(f"  {time.monotonic() - start:6.0f} s  {phase.lower()}", flush=True)
                progress = PROGRESS.findall(tail)
                if progress and time.monotonic() - last_print > 30:
                    done, total, killed, no_tests, timeout, suspicious, survived = progress[-1]
                    print(f"  {time.monotonic() - start:6.0f} s  {done}/{total} mutants: {killed} killed, "
                          f"{timeout} timeout, {survived} survived, {no_tests} without tests", flush=True)
                    last_print = time.monotonic()
                if time.monotonic() - start > limit_s:
                    raise RunError(f"mutmut ran past --limit {limit_s:.0f} s; see {log}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RunError(f"mutmut stopped (exit {proc.returncode}); the last of its output:\n{tail[-1500:]}\n"
                       f"(whole log: {log})")


def verdicts(tree: Path, mutants: list[Mutant]) -> dict[str, str]:
    """mutmut's verdict of each sampled mutant, from its meta files; every file's mutants must be
    the ones listed (else the listing and mutmut disagree, and the sample is not what ran)."""
    from mutmut.stats import status_by_exit_code

    listed: dict[str, set[str]] = defaultdict(set)
    for m in mutants:
        listed[m.file].add(m.name)
    codes: dict[str, int | None] = {}
    for rel, names in listed.items():
        meta = tree / "mutants" / f"{rel}.meta"
        if not meta.is_file():
            raise RunError(f"mutmut wrote no {meta.name} for {rel}: it did not mutate the file")
        found = json.loads(meta.read_text())["exit_code_by_key"]
        if set(found) != names:
            raise RunError(f"mutmut's mutants of {rel} differ from the listing ({len(found)} against {len(names)}, "
                           f"e.g. {sorted(set(found) ^ names)[:3]}): is mutmut the pinned version?")
        codes.update(found)
    return {name: status_by_exit_code[code] for name, code in codes.items()}


@dataclass
class Triage:
    key: str
    verdict: str
    where: str
    change: str
    reason: str = ""
    test: str = ""


def load_triage(path: Path) -> dict[str, Triage]:
    if not path.is_file():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RunError(f"{path}: not valid TOML ({exc})") from exc
    entries: dict[str, Triage] = {}
    problems = []
    for i, item in enumerate(raw.get("mutant", []), 1):
        label = f"{path.name} [[mutant]] #{i} ({item.get('key', 'no key')})"
        unknown = set(item) - {f.name for f in Triage.__dataclass_fields__.values()}
        if unknown or not {"key", "verdict", "where", "change"} <= set(item):
            problems.append(f"{label}: needs key, verdict, where, change (and reason or test); unknown {sorted(unknown)}")
            continue
        entry = Triage(**item)
        if entry.verdict == "equivalent" and not entry.reason:
            problems.append(f"{label}: an equivalent mutant needs the reason it is equivalent")
        elif entry.verdict == "killed" and not entry.test:
            problems.append(f"{label}: a killed survivor needs the test that kills it")
        elif entry.verdict not in ("equivalent", "killed"):
            problems.append(f"{label}: verdict must be 'equivalent' or 'killed', not {entry.verdict!r}")
        if entry.key in entries:
            problems.append(f"{label}: the key appears twice")
        entries[entry.key] = entry
    if problems:
        raise RunError("\n".join(problems))
    return entries


@dataclass
class ModuleReport:
    module: str
    generated: int
    sampled: int
    killed: int = 0
    equivalent: int = 0
    survived: int = 0
    timeouts: int = 0
    no_tests: int = 0
    kill_rate: float | None = None
    mutants: list[dict[str, object]] = field(default_factory=list)


def report(everything: list[Mutant], chosen: dict[str, list[Mutant]], status: dict[str, str],
           triage: dict[str, Triage]) -> list[ModuleReport]:
    generated = Counter(m.module for m in everything)
    out = []
    for module in (m.name for m in MODULES):
        if module not in chosen:
            continue
        r = ModuleReport(module, generated[module], len(chosen[module]))
        for m in chosen[module]:
            verdict = status[m.name]
            entry = triage.get(m.key)
            if verdict in KILLED:
                r.killed += 1
                r.timeouts += verdict != "killed"
                outcome = "killed"
            elif entry is not None and entry.verdict == "equivalent":
                r.equivalent += 1
                outcome = "equivalent"
            else:
                r.survived += 1
                r.no_tests += verdict == "no tests"
                outcome = "survived"
            r.mutants.append({**asdict(m), "mutmut": verdict, "outcome": outcome,
                              "triage": asdict(entry) if entry else None})
        judged = r.sampled - r.equivalent
        r.kill_rate = r.killed / judged if judged else None
        out.append(r)
    return out


def markdown(reports: list[ModuleReport], run: dict[str, object]) -> str:
    rows = ["| module | generated | sampled | killed | equivalent | survived | kill rate |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rate = "n/a" if r.kill_rate is None else f"{r.kill_rate:.1%}"
        rows.append(f"| {r.module} | {r.generated} | {r.sampled} | {r.killed} | {r.equivalent} | {r.survived} | {rate} |")
    text = [f"mutmut {run['mutmut']} on a sample of {run['sample']} mutants per module, seed {run['seed']} "
            f"({run['seconds']:.0f} s on {run['children']} children). Killed includes timeouts; the kill rate "
            "leaves equivalent mutants out.", "", *rows]
    survivors = [m for r in reports for m in r.mutants if m["outcome"] == "survived"]
    if survivors:
        text += ["", "Survivors (add each to tests/mutation_triage.toml: killed by a new test, or equivalent):", ""]
        for m in survivors:
            why = " (no selected test calls this function)" if m["mutmut"] == "no tests" else ""
            text.append(f"- `{m['key']}` {m['file']}:{m['line']} `{m['function']}`{why}: "
                        f"`{m['before']}` -> `{m['after']}` ({m['name']})")
    return "\n".join(text) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help=f"mutants per module (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"the sample's seed (default {DEFAULT_SEED})")
    parser.add_argument("--module", nargs="+", metavar="NAME", help="only these modules (names as in --list)")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--limit", type=float, default=3600.0, help="seconds for the whole mutmut run (default 3600)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR (created) and keep it, for `mutmut show`")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where sample.json and sample.md go (default {OUT})")
    parser.add_argument("--deselect", action="append", default=[], metavar="TEST",
                        help="leave this test id out (repeatable), e.g. one broken by work in progress")
    parser.add_argument("--list", action="store_true", help="list the modules' mutant counts and the sample; run nothing")
    args = parser.parse_args(argv)
    known = [m.name for m in MODULES]
    if args.module and (unknown := sorted(set(args.module) - set(known))):
        parser.error(f"unknown module(s) {unknown}; the modules are {known}")
    if args.sample < 1:
        parser.error("--sample must be at least 1")
    args.out = args.out.resolve()  # the run changes into the copy
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mtl-mutmut-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        tree = work / "tree"
        if tree.exists():
            print(f"error: {tree} exists; give --keep an empty or new folder", file=sys.stderr)
            return 2
        try:
            load_triage(TRIAGE)  # a malformed entry stops the run before it starts
            copy_tree(ROOT, tree)
            (work / "tmp").mkdir(parents=True, exist_ok=True)
            os.chdir(tree)
            modules = [m for m in MODULES if not args.module or m.name in args.module]
            write_config(tree, modules, args.deselect)
            everything = [m for m in list_mutants(tree, args.out / 'listing-cache.json')
                          if not args.module or m.module in args.module]
            chosen = sample(everything, args.sample, args.seed)
            if args.list:
                for name, picked in chosen.items():
                    total = sum(m.module == name for m in everything)
                    print(f"{name}: {total} mutants, sample {len(picked)}")
                    for m in picked:
                        print(f"    {m.key} {m.file}:{m.line} {m.function}: {m.before} -> {m.after}")
                return 0
            names = [m.name for picked in chosen.values() for m in picked]
            print(f"mutmut {metadata.version('mutmut')}: {len(everything)} mutants in {len(chosen)} modules, "
                  f"sampling {len(names)} (seed {args.seed}, up to {args.sample} per module) in {tree}", flush=True)
            run_mutmut(tree, names, mutmut_env(work), args.children, args.limit, work / "mutmut.log")
            status = verdicts(tree, everything)
            triage = load_triage(TRIAGE)  # read again: it may have been edited during the run
        except RunError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            os.chdir(ROOT)
    reports = report(everything, chosen, status, triage)
    run = {"mutmut": metadata.version("mutmut"), "seed": args.seed, "sample": args.sample, "children": args.children,
           "seconds": round(time.monotonic() - start, 1), "required_kill_rate": REQUIRED_KILL_RATE,
           "tests": sorted({t for m in MODULES if m.name in chosen for t in m.tests}), "deselected": args.deselect}
    sampled_keys = {m.key for picked in chosen.values() for m in picked}
    regressed = [t for t in triage.values() if t.verdict == "killed" and t.key in sampled_keys
                 and status[next(m.name for m in everything if m.key == t.key)] not in KILLED]
    stale = sorted(t.key for t in triage.values() if t.key not in {m.key for m in everything})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sample.json").write_text(json.dumps({"run": run, "modules": [asdict(r) for r in reports],
                                                      "stale_triage": stale}, indent=1) + "\n")
    (args.out / "sample.md").write_text(markdown(reports, run))
    print("\n" + markdown(reports, run))
    for t in regressed:
        print(f"regressed: {t.key} ({t.where}) is triaged as killed by {t.test}, and survived")
    if stale and not args.module:
        print(f"note: triage entries whose mutant no longer exists (code changed): {stale}")
    low = [r.module for r in reports if r.kill_rate is not None and r.kill_rate < REQUIRED_KILL_RATE]
    if low:
        print(f"below {REQUIRED_KILL_RATE:.0%}: {', '.join(low)}")
    print(f"reports: {args.out / 'sample.md'}, {args.out / 'sample.json'}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
