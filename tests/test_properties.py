"""Property-based tests of the pure core: the contract of each part, written in its test's docstring,
checked by hypothesis against inputs it generates (what must hold for any input the type allows).

Each edge case a search found is kept below its property as a plain example test, named after what
it found; where it was a bug, the fix is in the module and the example says which.

Deterministic: `derandomize=True` (the same examples every run, no example database), no deadline
(2 shared cores make timings meaningless), example counts sized so the file takes well under a
minute on one core.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from data_prep.cache import digest
from data_prep.config import TaskDataConfig, TokenizeConfig
from data_prep.examples import Example
from data_prep.labels import build_label_list, label_ids
from data_prep.stage import TOKENIZE_ONLY, TRAINING_ONLY, ingest_key, tokenize_key
from training.evaluation.evaluate import dev_sample
from training.redaction import USERINFO, mask_userinfo, redact_uri
from training.release.fingerprint import RUN_ONLY, content_only, differences, make_fingerprint, training_settings
from training.release.gate import GATE_SLACK, decide, gate, metric_key, nested
from training.trainer.batches import TaskBatches, budget_cut
from training.trainer.checkpoints import COMPLETE, MANIFEST_PREFIX, damage, folder_checksums
from training.trainer.sampling import SAMPLERS, AnnealedSampler, RoundRobinSampler, TemperatureSampler


def props(examples: int) -> settings:
    """The settings every property here runs with: reproducible, no timing flakiness."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


TASK_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
SEED = st.integers(0, 2**32 - 1)

# --------------------------------------------------------------------------------------------- samplers

SIZES = st.dictionaries(TASK_NAME, st.integers(1, 10**7), min_size=1, max_size=6)


@st.composite
def sampler_args(draw: Any) -> dict[str, Any]:
    return {"sizes": draw(SIZES), "seed": draw(SEED), "total_draws": draw(st.integers(0, 10**6)),
            "temperature": draw(st.floats(1e-3, 1e3)), "final_alpha": draw(st.floats(0.0, 1.0))}


@props(150)
@given(name=st.sampled_from(sorted(SAMPLERS)), args=sampler_args(), draw=st.integers(0, 10**7))
def test_every_sampler_draws_a_task_it_gives_weight_to_and_the_same_one_after_a_restart(
        name: str, args: dict[str, Any], draw: int) -> None:
    """Every sampler, for any positive task sizes, seed, draw count, temperature > 0 and final alpha
    in [0, 1]: `probabilities(draw)` covers exactly the tasks, each in [0, 1], summing to 1;
    `sample(draw)` is one of the tasks with a positive probability; a sampler built anew with the
    same arguments (a resumed run, another rank) and with the sizes given in another order samples
    the same task (the draw index is the only state)."""
    sampler = SAMPLERS[name](**args)
    probs = sampler.probabilities(draw)
    assert sorted(probs) == sorted(args["sizes"])
    assert all(0.0 <= p <= 1.0 for p in probs.values()) and math.isclose(sum(probs.values()), 1.0, rel_tol=1e-9)
    task = sampler.sample(draw)
    assert probs[task] > 0
    reordered = dict(reversed(list(args["sizes"].items())))
    assert SAMPLERS[name](**{**args, "sizes": reordered}).sample(draw) == task
    assert SAMPLERS[name](**args).sample(draw) == task


@props(100)
@given(args=sampler_args(), draw=st.integers(0, 10**7))
def test_size_based_samplers_never_favour_a_smaller_task(args: dict[str, Any], draw: int) -> None:
    """Proportional, temperature and annealed sampling: a task at least as large as another is at
    least as likely (p ~ size^alpha with alpha >= 0); equal sizes get equal probabilities."""
    sizes = args["sizes"]
    for name in ("proportional", "temperature", "annealed"):
        probs = SAMPLERS[name](**args).probabilities(draw)
        for a in sizes:
            for b in sizes:
                if sizes[a] >= sizes[b]:
                    assert probs[a] >= probs[b] * (1 - 1e-9)


@props(100)
@given(args=sampler_args(), draws=st.lists(st.integers(0, 10**7), min_size=2, max_size=2))
def test_annealing_runs_from_proportional_to_the_final_alpha_and_never_back(
        args: dict[str, Any], draws: list[int]) -> None:
    """The annealed sampler's alpha is 1 at draw 0 (proportional sampling), `final_alpha` from the
    last draw on, and never rises in between; temperature 1 is proportional sampling."""
    sampler = AnnealedSampler(**args)
    assert sampler.alpha(0) == 1.0
    assert math.isclose(sampler.alpha(max(0, args["total_draws"] - 1) + draws[0]), args["final_alpha"],
                        abs_tol=1e-12) or \
        args["total_draws"] <= 1 and draws[0] == 0
    early, late = sorted(draws)
    assert sampler.alpha(early) >= sampler.alpha(late)
    proportional = SAMPLERS["proportional"](**args).probabilities(0)
    for task, p in TemperatureSampler(**{**args, "temperature": 1.0}).probabilities(0).items():
        assert math.isclose(p, proportional[task], rel_tol=1e-12)


@props(60)
@given(sizes=SIZES, seed=SEED, start=st.integers(0, 10**6))
def test_round_robin_gives_every_task_one_draw_in_each_round(sizes: dict[str, int], seed: int, start: int) -> None:
    """Round robin: any len(tasks) consecutive draws hold every task exactly once."""
    sampler = RoundRobinSampler(sizes, seed)
    assert sorted(sampler.sample(start + i) for i in range(len(sizes))) == sorted(sizes)


def test_a_small_temperature_does_not_overflow_into_nan() -> None:
    """Found by the sampler property: size ** (1 / 0.01) overflowed float64 and inf / inf made the
    probabilities NaN, so the first draw raised (fixed in training/trainer/sampling.py: log space)."""
    sampler = TemperatureSampler({"big": 10_000, "small": 5}, seed=1, temperature=0.01)
    assert sampler.probabilities() == {"big": 1.0, "small": 0.0}
    assert sampler.sample(0) == "big"


def test_a_negative_training_seed_is_refused_when_the_config_is_read() -> None:
    """Found by the dev-sampling property: numpy seeds must be non-negative, so `training.seed: -1`
    passed the config and failed in every worker's first draw (fixed in training/config.py: ge=0)."""
    from pydantic import ValidationError

    from training.config import TrainingConfig

    with pytest.raises(ValueError, match="expected non-negative integer"):
        dev_sample(list(range(10)), 3, -1, "pos")
    with pytest.raises(ValidationError, match="seed"):
        TrainingConfig(seed=-1)


# ---------------------------------------------------------------------------------------- dev sampling

def examples(count: int) -> list[Example]:
    return [Example(file="dev.tsv", line=i + 1, text=f"row {i}", label="a") for i in range(count)]


@props(150)
@given(count=st.integers(0, 300), limit=st.none() | st.integers(1, 400), seed=SEED, task=TASK_NAME)
def test_dev_sample_is_a_fixed_subsequence_in_file_order(count: int, limit: int | None, seed: int, task: str) -> None:
    """`dev_sample(examples, limit, seed, task)`: min(limit, n) distinct examples (all of them when
    limit is None or not smaller), in file order, the same ones on every call with the same seed
    and task (every process, every run), whatever other tasks exist."""
    rows = examples(count)
    picked = dev_sample(rows, limit, seed, task)
    assert len(picked) == (count if limit is None else min(limit, count))
    lines = [e.line for e in picked]
    assert lines == sorted(set(lines)) and all(1 <= line <= count for line in lines)
    if limit is None or limit >= count:
        assert picked == rows
    assert [e.line for e in dev_sample(examples(count), limit, seed, task)] == lines


# ------------------------------------------------------------------------------------------- cache keys

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@props(200)
@given(a=JSON, b=JSON)
def test_digest_is_a_function_of_the_canonical_json(a: Any, b: Any) -> None:
    """`digest(*parts)` for JSON values: 32 hex characters; equal exactly when the parts' canonical
    JSON (keys sorted) is equal, so dict order never splits an entry and a changed value never
    hits another's."""
    key = digest(a)
    assert len(key) == 32 and int(key, 16) >= 0
    assert (digest(a) == digest(b)) == (canonical(a) == canonical(b))
    if isinstance(a, dict):
        assert digest(dict(reversed(list(a.items())))) == key


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("property-data")
    (folder / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n", encoding="utf-8")
    return folder


def tsv_task(**fields: Any) -> TaskDataConfig:
    return TaskDataConfig.model_validate({"name": "sst2", "type": "sequence_classification", "format": "tsv",
                                          "train": "train.tsv", "dev": "dev.tsv", **fields})


# one non-default value per setting a files task has (hub settings need no files: tested by the reachability test)
TASK_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.just("other"), "type": st.just("sequence_regression"), "format": st.just("csv"),
    "dev_ratio": st.floats(0.01, 0.99), "split_seed": st.integers(0, 10**6).filter(lambda v: v != 13),
    "token_column": st.integers(0, 9), "tag_column": st.integers(-9, 9), "text_column": st.just("text"),
    "text_pair_column": st.just("hypothesis"), "label_column": st.just("gold"), "label_separator": st.just(":"),
    "header": st.just(False), "delimiter": st.sampled_from([",", ";", "|"]), "encoding": st.just("latin-1"),
    "encoding_errors": st.just("replace"), "labels": st.just(["0", "1"]), "label_scheme": st.just("bio"),
    "bio_repair": st.just(True), "label_alignment": st.sampled_from(["all", "last"]), "auxiliary": st.just(True),
    "max_train_examples": st.integers(1, 10**6), "max_dev_examples": st.integers(1, 10**6),
    "sample_seed": st.integers(0, 10**6).filter(lambda v: v != 13), "max_label_shift": st.floats(0.0, 1.0),
    "positive_label": st.just("1"), "primary_metric": st.just("macro_f1"),
}


def changed_task(field: str, value: Any) -> TaskDataConfig:
    extra: dict[str, Any] = {field: value}
    if field == "dev_ratio":
        extra["dev"] = None
    if field == "label_scheme":
        extra["labels"] = None
    if field == "type":
        extra["labels"] = None
    return tsv_task(**extra)


def test_every_task_setting_has_a_change_in_the_cache_key_property() -> None:
    """A setting added to TaskDataConfig must get a value in TASK_CHANGES (hub ones aside)."""
    assert set(TaskDataConfig.model_fields) - {"source", "hub", "train", "dev"} == set(TASK_CHANGES)


@props(120)
@given(data=st.data(), field=st.sampled_from(sorted(TASK_CHANGES)))
def test_ingest_key_changes_exactly_with_what_ingest_reads(task_files: Path, data: Any, field: str) -> None:
    """`ingest_key`: the same for the same settings, files and previous labels; different when any
    setting ingest reads changes, and the same when only a tokenize-only or training-only setting
    (label_alignment; auxiliary, max_label_shift) changes: those must not redo ingest."""
    base = ingest_key(tsv_task(), str(task_files), None, None)
    value = data.draw(TASK_CHANGES[field], label=field)
    other = ingest_key(changed_task(field, value), str(task_files), None, None)
    assert base is not None and other is not None
    assert (other == base) == (field in TOKENIZE_ONLY | TRAINING_ONLY)


@props(100)
@given(first=st.none() | st.lists(st.text(min_size=1, max_size=4), max_size=5),
       second=st.none() | st.lists(st.text(min_size=1, max_size=4), max_size=5))
def test_ingest_key_follows_the_previous_label_list_and_its_order(task_files: Path, first: list[str] | None,
                                                                  second: list[str] | None) -> None:
    """The champion's label list decides the label ids ingest writes: two lists (order included)
    give one key only when they are the same list."""
    a = ingest_key(tsv_task(), str(task_files), None, first)
    b = ingest_key(tsv_task(), str(task_files), None, second)
    assert (a == b) == (first == second)


def test_ingest_key_follows_the_bytes_of_the_data(task_files: Path, tmp_path: Path) -> None:
    """Another byte in a split file is another key (the files' location is part of the key too: a
    moved corpus is a miss, never a wrong hit; the run fingerprint is the one that ignores paths);
    a split file that cannot be read leaves no key."""
    shutil.copytree(task_files, tmp_path / "copy")
    key = ingest_key(tsv_task(), str(tmp_path / "copy"), None, None)
    assert ingest_key(tsv_task(), str(tmp_path / "copy"), None, None) == key
    with open(tmp_path / "copy" / "dev.tsv", "a", encoding="utf-8") as handle:
        handle.write("more\t0\n")
    assert ingest_key(tsv_task(), str(tmp_path / "copy"), None, None) != key
    assert ingest_key(tsv_task(dev="missing.tsv"), str(task_files), None, None) is None


@props(120)
@given(change=st.sampled_from(["ingest", "type", "label_alignment", "tokenizer", "max_length", "stride",
                               "num_proc", "batch_size", "auxiliary"]),
       number=st.integers(1, 10**4))
def test_tokenize_key_changes_exactly_with_what_tokenization_reads(change: str, number: int) -> None:
    """`tokenize_key`: different when the ingest entry, the task type, the label alignment, the
    tokenizer, max_length or the stride changes; the same when only the tokenizing processes, the
    tokenizer batch size or a training-only setting change (the features are the same); None
    without an ingest key (nothing pins the entry)."""
    cfg, ingested, tokenizer, max_length, settings_ = tsv_task(), {"key": "k1"}, "tok-a", 64, TokenizeConfig()
    base = tokenize_key(cfg, ingested, tokenizer, max_length, settings_)
    moved = {
        "ingest": lambda: tokenize_key(cfg, {"key": f"k{number + 1}"}, tokenizer, max_length, settings_),
        "type": lambda: tokenize_key(tsv_task(type="sequence_regression"), ingested, tokenizer, max_length, settings_),
        "label_alignment": lambda: tokenize_key(tsv_task(label_alignment="last"), ingested, tokenizer, max_length,
                                                settings_),
        "tokenizer": lambda: tokenize_key(cfg, ingested, f"tok-{number}", max_length, settings_),
        "max_length": lambda: tokenize_key(cfg, ingested, tokenizer, max_length + number, settings_),
        "stride": lambda: tokenize_key(cfg, ingested, tokenizer, max_length, TokenizeConfig(stride=16 + number)),
        "num_proc": lambda: tokenize_key(cfg, ingested, tokenizer, max_length, TokenizeConfig(num_proc=1 + number)),
        "batch_size": lambda: tokenize_key(cfg, ingested, tokenizer, max_length,
                                           TokenizeConfig(batch_size=1000 + number)),
        "auxiliary": lambda: tokenize_key(tsv_task(auxiliary=True, max_label_shift=0.5), ingested, tokenizer,
                                          max_length, settings_),
    }[change]()
    assert (moved == base) == (change in ("num_proc", "batch_size", "auxiliary"))
    assert tokenize_key(cfg, {"key": None}, tokenizer, max_length, settings_) is None


# ---------------------------------------------------------------------------------- credential masking

# RFC 3986 userinfo characters, '@' included: a password holding an unescaped one is masked whole
USERINFO_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%@")
SECRET = st.text(USERINFO_CHARS, min_size=1, max_size=12).map(lambda s: "Zq" + s)  # recognisable in the output
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,4})?", fullmatch=True) | st.just("[::1]")
SCHEME = st.sampled_from(["http", "https", "s3", "postgresql", "postgresql+psycopg2", "databricks"])
PROSE = st.text(st.characters(codec="utf-8", exclude_characters="/@Z"), max_size=20)


@st.composite
def uris(draw: Any) -> tuple[str, str, str]:
    """(uri, user, password) with userinfo; the port may be one urllib refuses to parse."""
    user, password = draw(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)), draw(SECRET)
    port = draw(st.none() | st.integers(1, 99999).map(str) | st.just("abc"))
    path = draw(st.sampled_from(["", "/", "/api/2.0", "/bucket/key.json", "?x=1"]))
    uri = f"{draw(SCHEME)}://{user}:{password}@{draw(HOST)}{':' + port if port else ''}{path}"
    return uri, user, password


@props(200)
@given(found=uris(), before=PROSE, after=PROSE)
def test_masked_text_holds_no_password(found: tuple[str, str, str], before: str, after: str) -> None:
    """`mask_userinfo(text)`: for any text holding a URI with user:password@ (the password any
    userinfo characters, an unescaped '@' included), the password is gone and `***@` stands in
    its place; masking again changes nothing; text with no '//...@' is returned as it is."""
    uri, _, password = found
    text = f"{before} {uri} {after}"
    masked = mask_userinfo(text)
    assert password not in masked and "//***@" in masked
    assert mask_userinfo(masked) == masked
    assert mask_userinfo(f"{before} {after}") == f"{before} {after}"


@props(200)
@given(found=uris())
def test_a_redacted_uri_keeps_where_it_points_and_loses_who_asks(found: tuple[str, str, str]) -> None:
    """`redact_uri(uri)`: no user and no password left, everything after the userinfo (host as
    written, IPv6 brackets included, port, path) kept; never raises (a bad port is not its
    business); a URI without credentials is returned unchanged; idempotent."""
    uri, user, password = found
    redacted = redact_uri(uri)
    assert password not in redacted and f"//{user}:" not in redacted
    assert redacted == uri.replace(f"{user}:{password}@", "***@", 1)
    assert redact_uri(redacted) == redacted
    plain = uri.replace(f"{user}:{password}@", "")
    assert redact_uri(plain) == plain


def test_redacting_an_ipv6_tracking_uri_keeps_its_brackets() -> None:
    """Found by the redaction property: the host was rebuilt from `hostname`, which drops an IPv6
    address's brackets (http://***@::1:5000), and `port` raised on a port out of range (fixed in
    training/redaction.py: the netloc after the userinfo is kept as written)."""
    assert redact_uri("http://u:pw@[::1]:5000/x") == "http://***@[::1]:5000/x"
    assert redact_uri("http://u:pw@host:99999/x") == "http://***@host:99999/x"
    assert redact_uri("http://u:pw@[::1/x") == "http://***@[::1/x"


def test_a_uri_inside_another_uris_query_is_masked_too() -> None:
    """Found by reading the contract: credentials in a nested URI were returned as given."""
    assert redact_uri("https://host/login?next=https://u:pw@inner/") == "https://host/login?next=https://***@inner/"
    assert USERINFO.search("sqlite:////tmp/mlflow@2.db") is None  # a local path with '@' is no userinfo


# ---------------------------------------------------------------------------------- checksum manifests

FILE_TREE = st.dictionaries(st.from_regex(r"([a-z]{1,4}/){0,2}[a-z]{1,6}\.(pt|json|bin)", fullmatch=True),
                            st.binary(max_size=64), min_size=1, max_size=6)


def write_checkpoint(folder: Path, files: dict[str, bytes], nodes: int) -> None:
    """What `CheckpointStore.publish` leaves: each node's local rank 0 writes a manifest of the
    files then present, the marker comes last (here node n writes its share, then its manifest)."""
    names = sorted(files)
    for node in range(nodes):
        for name in names[node::nodes]:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(files[name])
        (folder / f"{MANIFEST_PREFIX}{node}.json").write_text(json.dumps({"files": folder_checksums(folder)}))
    (folder / COMPLETE).write_text(json.dumps({"step": 1, "checksummed": True}))


@props(40)
@given(files=FILE_TREE, nodes=st.integers(1, 3), data=st.data())
def test_any_changed_missing_or_cut_file_of_a_checkpoint_is_named(files: dict[str, bytes], nodes: int,
                                                                  data: Any) -> None:
    """A checkpoint folder whose manifests (one per node, merged) were written over its files:
    `damage` is None while every file is as written, and names the file when any one of them
    gets another byte, loses bytes or disappears; a folder marked `checksummed` whose manifests
    are gone is damaged too."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "step_00000001"
        folder.mkdir()
        write_checkpoint(folder, files, nodes)
        assert damage(folder) is None
        name = data.draw(st.sampled_from(sorted(files)), label="file")
        how = data.draw(st.sampled_from(["flip", "cut", "grow", "delete"]), label="how")
        content = files[name]
        if how == "flip" and content:
            index = data.draw(st.integers(0, len(content) - 1), label="byte")
            (folder / name).write_bytes(content[:index] + bytes([content[index] ^ 1]) + content[index + 1:])
        elif how == "cut" and content:
            (folder / name).write_bytes(content[:-1])
        elif how == "delete":
            (folder / name).unlink()
        else:
            (folder / name).write_bytes(content + b"\0")
        found = damage(folder)
        assert found is not None and found.startswith(name)
        for manifest in folder.glob(f"{MANIFEST_PREFIX}*"):
            manifest.unlink()
        assert damage(folder) == "no checksum manifest"


# ---------------------------------------------------------------------------------- token-budget batches

@st.composite
def budget_inputs(draw: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    world = draw(st.integers(1, 4))
    max_tokens = draw(st.integers(8, 512))
    lengths = np.array(draw(st.lists(st.integers(1, max_tokens), min_size=world, max_size=80)))
    rows = len(lengths) // world * world
    order = np.array(draw(st.permutations(range(len(lengths)))))[:rows]
    return order, lengths, world, max_tokens


@props(150)
@given(inputs=budget_inputs())
def test_budget_cut_keeps_every_row_and_every_rank_within_its_budget(
        inputs: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    """`budget_cut(order, lengths, world, max_tokens)` with every row within the budget: the batches
    in turn are `order` itself (no row lost, none repeated, order kept); each holds whole groups of
    `world` rows; each rank's micro-batch (every world-th row) pads to at most `max_tokens`; and
    each cut is needed: one more group would break the budget."""
    order, lengths, world, max_tokens = inputs
    batches = budget_cut(order, lengths, world, max_tokens)
    assert np.array_equal(np.concatenate(batches), order)
    for batch in batches:
        assert len(batch) > 0 and len(batch) % world == 0
        for rank in range(world):
            mine = lengths[batch[rank::world]]
            assert len(mine) * int(mine.max()) <= max_tokens
    for batch, following in zip(batches, batches[1:]):
        grown = np.concatenate([batch, following[:world]])
        assert len(grown) // world * int(lengths[grown].max()) > max_tokens


def features_of(lengths: list[int]) -> list[dict[str, Any]]:
    """Rows whose label is their index, so a batch says which rows it holds."""
    return [{"input_ids": [7] * n, "token_type_ids": [0] * n, "labels": i} for i, n in enumerate(lengths)]


@props(40)
@given(lengths=st.lists(st.integers(2, 48), min_size=4, max_size=60), world=st.integers(1, 3),
       max_tokens=st.integers(48, 256), group=st.booleans(), bucket=st.integers(1, 4), seed=SEED)
def test_token_budget_batches_agree_across_ranks_and_cover_an_epoch_once(
        lengths: list[int], world: int, max_tokens: int, group: bool, bucket: int, seed: int) -> None:
    """TaskBatches with `max_tokens`: every rank cuts the same number of batches per epoch (they
    step together), each rank's micro-batch is within the budget (rows x padded length), one
    epoch's batches over all ranks hold each row at most once and leave out fewer than `world`
    rows, and a copy restored from the counters (a resumed run) yields the same next batch."""
    assume(len(lengths) >= world)
    task = {"t": features_of(lengths)}
    ranks = [TaskBatches(task, 4, rank, world, seed, 0, group, bucket, max_tokens) for rank in range(world)]
    epoch = [len(r._epoch("t", 0)) for r in ranks]
    assert len(set(epoch)) == 1
    seen: list[int] = []
    for rank in ranks:
        for _ in range(epoch[0]):
            batch = rank.next("t")
            assert batch["attention_mask"].numel() <= max_tokens
            seen += batch["labels"].tolist()
    assert len(seen) == len(set(seen)) and len(lengths) - len(seen) < world
    restored = TaskBatches(task, 4, 0, world, seed, 0, group, bucket, max_tokens)
    restored.load_state_dict(ranks[0].state_dict())
    assert restored.next("t")["labels"].tolist() == ranks[0].next("t")["labels"].tolist()


# ---------------------------------------------------------------------------------------- label maps

LABEL = st.text(st.sampled_from("ABCOIX-_"), min_size=1, max_size=4)


@props(200)
@given(observed=st.lists(LABEL, max_size=12), previous=st.none() | st.lists(LABEL, max_size=6),
       declared=st.none() | st.lists(LABEL, max_size=6, unique=True))
def test_previous_labels_keep_their_ids_and_new_ones_are_appended(
        observed: list[str], previous: list[str] | None, declared: list[str] | None) -> None:
    """`build_label_list(observed, previous, declared)`: every label once; the previous list
    (first occurrence of each) is the prefix, so each old label keeps its id, even one no longer
    seen; then the declared labels it lacked, in declared order; then labels seen for the first
    time, sorted (the data's order and repetitions do not matter); the list fed back as the next
    run's previous one gives the same list (ids stable over retrains); `label_ids` inverts it."""
    labels = build_label_list(observed, previous, declared)
    old = list(dict.fromkeys(previous or []))
    assert len(labels) == len(set(labels)) and labels[:len(old)] == old
    assert set(observed) | set(declared or []) <= set(labels)
    added_declared = [label for label in declared or [] if label not in old]
    assert labels[len(old):len(old) + len(added_declared)] == added_declared
    rest = labels[len(old) + len(added_declared):]
    assert rest == sorted(rest) and set(rest) == set(observed) - set(old) - set(declared or [])
    assert build_label_list(list(reversed(observed)) * 2, previous, declared) == labels
    assert build_label_list(observed, labels, declared) == labels
    assert label_ids(labels) == {label: i for i, label in enumerate(labels)}


# ---------------------------------------------------------------------------------------------- gate

SCORE = st.floats(-1.0, 1.0, allow_nan=False) | st.just(float("nan"))
METRIC = st.sampled_from(["accuracy", "entity_f1", "pearson"])


@st.composite
def gate_inputs(draw: Any) -> tuple[dict, dict | None, dict[str, str], float]:
    tasks = draw(st.lists(TASK_NAME, min_size=1, max_size=4, unique=True))
    primary = {task: draw(METRIC) for task in tasks}
    challenger = {t: {m: draw(SCORE)} for t, m in primary.items()}
    for task in draw(st.lists(st.sampled_from(tasks), max_size=2)):
        challenger.pop(task, None)  # a task the challenger has no score for
    champion_tasks = draw(st.lists(TASK_NAME, max_size=5, unique=True))
    champion_tasks += [t for t in tasks if draw(st.booleans()) and t not in champion_tasks]
    champion = None if draw(st.booleans()) else {t: {primary.get(t, "accuracy"): draw(SCORE)} for t in champion_tasks}
    return challenger, champion, primary, draw(st.floats(0.0, 0.5))


def expected_promotion(challenger: dict, champion: dict | None, primary: dict[str, str], tolerance: float) -> bool:
    if champion is None:
        return True
    for task, metric in primary.items():
        held = champion.get(task, {}).get(metric)
        if held is None or math.isnan(held):
            continue
        mine = challenger.get(task, {}).get(metric)
        if mine is None or math.isnan(mine) or mine < held - tolerance - GATE_SLACK:
            return False
    return set(champion) <= set(primary)


@props(250)
@given(inputs=gate_inputs(), raise_by=st.floats(0.0, 0.5), extra_tolerance=st.floats(0.0, 0.5))
def test_gate_promotes_exactly_when_no_task_falls_below_the_champion_by_more_than_the_tolerance(
        inputs: tuple[dict, dict | None, dict[str, str], float], raise_by: float, extra_tolerance: float) -> None:
    """`decide(challenger, champion, primary, tolerance, ...)`: no champion: promoted. Otherwise
    promoted exactly when every primary metric the champion has a number for is matched by a
    challenger number (NaN or missing never passes) at least champion - tolerance, and the champion
    has no task the challenger lacks; a refusal gives a reason per failing task. Raising the
    challenger's scores or the tolerance never turns a promotion into a refusal; a challenger
    equal to the champion always passes; the report is JSON (no NaN); the flat-metric `gate` says
    the same."""
    challenger, champion, primary, tolerance = inputs
    report = decide(challenger, champion, primary, tolerance, "3" if champion is not None else None, [])
    assert report.promoted == expected_promotion(challenger, champion, primary, tolerance)
    assert report.decision == ("no champion" if champion is None else "promoted" if report.promoted else "refused")
    assert bool(report.reasons) == (report.decision == "refused")
    assert [r.task for r in report.rows] == sorted(primary)
    json.dumps(report.as_dict(), allow_nan=False)
    if report.promoted:
        better = {t: {m: v + raise_by for m, v in s.items()} for t, s in challenger.items()}
        assert decide(better, champion, primary, tolerance, "3", []).promoted
        assert decide(challenger, champion, primary, tolerance + extra_tolerance, "3", []).promoted
    if champion is not None:
        assert decide(champion, champion, {t: next(iter(s)) for t, s in champion.items()}, 0.0, "3", []).promoted
        flat = lambda scores: {metric_key(t, m): v for t, s in scores.items() for m, v in s.items()}  # noqa: E731
        assert gate(flat(challenger), flat(champion), primary, tolerance) == report.reasons
        assert nested(flat(champion)) == champion


def test_a_challenger_exactly_at_champion_minus_tolerance_passes() -> None:
    """Decimal tolerances are binary floats (0.8 - 0.1 = 0.7000000000000001): the slack lets the
    boundary itself pass, as tests/test_gate_boundary.py pins."""
    assert decide({"a": {"accuracy": 0.7}}, {"a": {"accuracy": 0.8}}, {"a": "accuracy"}, 0.1, "1", []).promoted


# ---------------------------------------------------------------------------------------- fingerprint

BASE_CONFIG: dict[str, Any] = {
    "name": "demo", "data_dir": None,
    "encoder": {"name_or_path": "enc", "max_length": 64, "dropout": 0.1, "attn_implementation": "auto"},
    "tasks": [{"name": "pos", "type": "token_classification", "train": "a.conllu", "dev": "b.conllu",
               "max_train_examples": 100, "max_label_shift": None, "label_alignment": "first"},
              {"name": "sst2", "type": "sequence_classification", "train": "t.tsv", "dev": "d.tsv",
               "max_train_examples": None, "max_label_shift": 0.2, "label_alignment": "first"}],
    "tokenize": {"stride": 16, "num_proc": 1, "batch_size": 1000},
    "training": {"steps": 600, "seed": 42, "sampler": "proportional", "learning_rate": 1e-4, "log_every": 20,
                 "checkpoint_uri": None, "timeout_s": 100, "processes": 2, "master_port": None},
    "deepspeed": {"zero_stage": "auto", "precision": "fp32"},
    "storage": {"root": ".mtl", "cache": None}, "affinity": {"method": "lookahead"},
    "registry": {"model_name": "m", "tracking_uri": None}, "promotion": {"tolerance": 0.005},
}


def leaves(config: dict[str, Any], prefix: str = "") -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += [(key, *rest) for rest in leaves(value)]
        elif isinstance(value, list):
            out += [(key, str(i), *rest) for i, item in enumerate(value) for rest in leaves(item)]
        else:
            out.append((key,))
    return out


def run_only(path: tuple[str, ...]) -> bool:
    if path[0] in RUN_ONLY:
        return True
    if path[0] == "tasks":
        return f"tasks.*.{path[2]}" in RUN_ONLY
    return ".".join(path[:2]) in RUN_ONLY


def set_leaf(config: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    node: Any = out
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[path[-1]] = value
    return out


def get_leaf(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


SOURCES = {"pos": [["train", [["a.conllu", "blake2b:1"]]]], "sst2": [["train", [["t.tsv", "blake2b:2"]]]]}


@props(200)
@given(path=st.sampled_from(leaves(BASE_CONFIG)), value=JSON)
def test_fingerprint_changes_exactly_with_settings_that_change_training(path: tuple[str, ...], value: Any) -> None:
    """`make_fingerprint(config, encoder, sources)`: the same for the same inputs; for any one
    setting set to another value, the config part changes unless the setting is run-only (where
    and how a run goes: RUN_ONLY), and then nothing changes; the input config is not modified."""
    assume(canonical(value) != canonical(get_leaf(BASE_CONFIG, path)))
    before = json.dumps(BASE_CONFIG, sort_keys=True)
    first = make_fingerprint(BASE_CONFIG, "enc", SOURCES)
    moved = set_leaf(BASE_CONFIG, path, value)
    second = make_fingerprint(moved, "enc", SOURCES)
    assert json.dumps(BASE_CONFIG, sort_keys=True) == before
    assert first.value is not None and second.value is not None
    if run_only(path):
        assert second.value == first.value
    else:
        assert differences(second.parts, first.parts) == ["config"]


@props(100)
@given(paths=st.lists(st.text(st.sampled_from("abc/"), min_size=1, max_size=6), min_size=1, max_size=3),
       hashes=st.lists(st.from_regex(r"(blake2b|etag):[0-9a-f]{1,8}", fullmatch=True), min_size=1, max_size=3),
       moved=st.text(st.sampled_from("xyz/"), min_size=1, max_size=6))
def test_data_part_follows_the_bytes_not_the_paths(paths: list[str], hashes: list[str], moved: str) -> None:
    """A task's data part digests its files' content identities only: the same hashes read from
    other paths give the same part, another hash another part; a task whose data cannot be pinned
    leaves no fingerprint value, and says which task."""
    files = [[p, h] for p, h in zip(paths, hashes)]
    sources = [["train", files]]
    elsewhere = [["train", [[moved + p, h] for p, h in files]]]
    assert content_only(sources) == content_only(elsewhere) == [["train", [h for _, h in files]]]
    first = make_fingerprint(BASE_CONFIG, "enc", {"pos": sources})
    assert make_fingerprint(BASE_CONFIG, "enc", {"pos": elsewhere}).parts == first.parts
    changed = [["train", [[files[0][0], files[0][1] + "0"], *files[1:]]]]
    assert differences(make_fingerprint(BASE_CONFIG, "enc", {"pos": changed}).parts, first.parts) == ["data.pos"]
    unpinned = make_fingerprint(BASE_CONFIG, "enc", {"pos": sources, "ner": None})
    assert unpinned.value is None and unpinned.unpinned[0].startswith("ner:")


@props(100)
@given(mine=st.dictionaries(st.sampled_from(["config", "code", "encoder", "data.a", "data.b"]),
                            st.sampled_from(["1", "2"])),
       theirs=st.dictionaries(st.sampled_from(["config", "code", "encoder", "data.a", "data.c"]),
                              st.sampled_from(["1", "2"])))
def test_differences_name_every_part_that_differs_and_nothing_else(mine: dict[str, str],
                                                                  theirs: dict[str, str]) -> None:
    """`differences(mine, theirs)`: empty exactly when the parts are equal; a changed part by its
    name, one only here as `new: ...`, one only there as `gone: ...`."""
    found = differences(mine, theirs)
    assert (found == []) == (mine == theirs)
    assert {d for d in found if not d.startswith(("new: ", "gone: "))} == \
        {k for k in set(mine) & set(theirs) if mine[k] != theirs[k]}
    assert {d[5:] for d in found if d.startswith("new: ")} == set(mine) - set(theirs)
    assert {d[6:] for d in found if d.startswith("gone: ")} == set(theirs) - set(mine)


def test_training_settings_leave_out_secrets_and_locations() -> None:
    """Run-only sections (storage, registry) hold the credentials: none reach the digest."""
    config = set_leaf(set_leaf(BASE_CONFIG, ("registry", "tracking_uri"), "http://u:secret@h"),
                      ("storage", "root"), "s3://bucket/secret")
    assert "secret" not in json.dumps(training_settings(config))


def test_a_redacted_uri_hides_a_password_holding_an_at_sign_and_a_space():
    """Edge case for mutation testing (tests/mutation_triage.toml): the text mask alone stops at
    whitespace, so only the split of the netloc at its last `@` hides such a password whole."""
    assert redact_uri("http://u:p@s s@host/x") == "http://***@host/x"
    assert redact_uri("http://u:p w@host/x") == "http://***@host/x"
