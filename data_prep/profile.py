"""What a run's data looks like, and how it differs from the data the champion was trained on.

A profile is a JSON-able summary of each task's ingested splits (rows, label counts, target or
length statistics, a digest of the split file). `compare` sets two profiles side by side,
`report_markdown` renders the comparison for people, and `shift_problems` names the tasks whose
train label distribution moved further than the task's `max_label_shift` allows.

Pure: no MLflow, no Prefect; the registry side lives in `training/release/datasets.py`.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from typing import Any
from urllib.parse import urlencode

from data_prep.config import HubSource, TaskDataConfig, is_pair_task, is_regression, is_token_task
from data_prep.errors import DataIssue, DataValidationError
from data_prep.ingest import SPLITS, split_locations

PROFILE_VERSION = 1
DIGEST_CHARS = 16  # of the sha256 hex: plenty to tell files apart, short enough for a table or an MLflow digest
NO_CHAMPION = "no champion data profile"
# labels compared by proportions that differ by rounding alone are not a shift
SHIFT_SLACK = 1e-9
MOVES_SHOWN = 3


# ---------------------------------------------------------------- profiling


def profile_task(task_type: str, labels: list[str], splits: dict[str, str]) -> dict[str, Any]:
    """Per split of one task (split name -> local JSON lines of canonical examples): rows, the
    label counts (token tasks: tags over tokens; regression: none, the target's statistics
    instead), input length in words (pairs: both sides summed) and the file's digest."""
    return {"type": task_type, "labels": list(labels),
            "splits": {split: profile_split(task_type, path) for split, path in splits.items()}}


def profile_data(tasks: dict[str, tuple[str, list[str], dict[str, str]]]) -> dict[str, Any]:
    """Every task: name -> (task type, label list, split files)."""
    return {"version": PROFILE_VERSION,
            "tasks": {name: profile_task(*task) for name, task in sorted(tasks.items())}}


def profile_split(task_type: str, path: str) -> dict[str, Any]:
    # one streaming pass: the digest covers exactly the bytes the rows were counted from
    sha = hashlib.sha256()
    counts: dict[str, int] = {}
    lengths: list[int] = []
    targets: list[float] = []
    regression = is_regression(task_type)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            sha.update(raw)
            if not raw.strip():
                continue
            row = json.loads(raw)
            lengths.append(words(task_type, row))
            if is_token_task(task_type):
                for tag in row.get("tags") or []:
                    counts[tag] = counts.get(tag, 0) + 1
            elif regression:
                targets.append(target(row, path, number))
            else:
                label = str(row.get("label"))
                counts[label] = counts.get(label, 0) + 1
    return {"rows": len(lengths), "digest": sha.hexdigest()[:DIGEST_CHARS],
            "label_unit": None if regression else ("tokens" if is_token_task(task_type) else "examples"),
            "labels": None if regression else dict(sorted(counts.items())),
            "target": summary(targets) if regression else None,
            "length": length_stats(lengths)}


def words(task_type: str, row: dict[str, Any]) -> int:
    if is_token_task(task_type):
        return len(row.get("tokens") or [])
    count = len((row.get("text") or "").split())
    if is_pair_task(task_type):
        count += len((row.get("text_pair") or "").split())
    return count


def target(row: dict[str, Any], path: str, number: int) -> float:
    try:
        return float(row["label"])
    except (KeyError, TypeError, ValueError):
        issue = DataIssue(path, number, "label", f"regression target {row.get('label')!r} is not a number",
                          "profile the ingested files, whose targets ingest has checked")
        raise DataValidationError([issue]) from None


def length_stats(lengths: list[int]) -> dict[str, float | None]:
    if not lengths:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    ordered = sorted(lengths)
    return {"mean": round(sum(ordered) / len(ordered), 3), "p50": percentile(ordered, 0.5),
            "p95": percentile(ordered, 0.95), "max": ordered[-1]}


def percentile(ordered: list[int], q: float) -> int:
    """Nearest rank: always a length that occurs in the data."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
            "min": min(values), "max": max(values)}


def configured_sources(cfg: TaskDataConfig, data_dir: str | None) -> dict[str, str]:
    """Where each split of a task comes from, as the config says it (the sources of the MLflow
    dataset inputs): the resolved location(s), comma-separated; a dev cut from train is train's
    location with `#dev_ratio=...&split_seed=...`; a hub dataset is
    `hub:NAME?config=...&revision=...&split=...`. Credentials stay in: the MLflow side masks them."""
    if cfg.source == "hub" and cfg.hub is not None:
        train = hub_text(cfg.hub, cfg.train)
        dev = hub_text(cfg.hub, cfg.dev) if cfg.dev else None
    else:
        train = ", ".join(split_locations(cfg, "train", data_dir))
        dev = ", ".join(split_locations(cfg, "dev", data_dir)) if cfg.dev else None
    if dev is None:
        dev = f"{train}#dev_ratio={cfg.dev_ratio:g}&split_seed={cfg.split_seed}"
    return {"train": train, "dev": dev}


def hub_text(hub: HubSource, split: str | list[str]) -> str:
    query = {"config": hub.config, "revision": hub.revision,
             "split": split if isinstance(split, str) else ",".join(split),
             "data_files": None if hub.data_files is None else json.dumps(hub.data_files)}
    return f"hub:{hub.name}?" + urlencode({k: v for k, v in query.items() if v is not None})


# ---------------------------------------------------------------- comparing


def compare(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """This run's profile against the champion's: per task rows (old, new, delta), train/dev
    label shift (total variation distance), labels new and vanished in train, length (and
    target) statistics side by side; tasks added and removed. `old` None (a first run, or a
    champion trained before profiles were recorded): every task is reported with no old side."""
    new_tasks = new.get("tasks", {})
    old_tasks = (old or {}).get("tasks", {})
    report: dict[str, Any] = {"champion": old is not None, "note": None if old is not None else NO_CHAMPION,
                              "added": sorted(set(new_tasks) - set(old_tasks)) if old is not None else [],
                              "removed": sorted(set(old_tasks) - set(new_tasks)),
                              "tasks": {}}
    for name, task in sorted(new_tasks.items()):
        report["tasks"][name] = compare_task(old_tasks.get(name), task)
    return report


def compare_task(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    splits = [s for s in SPLITS if s in new["splits"]] + [s for s in new["splits"] if s not in SPLITS]
    old_splits = (old or {}).get("splits", {})
    out: dict[str, Any] = {"type": new["type"], "rows": {}, "same_data": {}, "shift": {}, "moves": {},
                           "length": {}, "target": {}}
    for split in splits:
        mine, held = new["splits"][split], old_splits.get(split)
        rows_old = None if held is None else held["rows"]
        out["rows"][split] = {"old": rows_old, "new": mine["rows"],
                              "delta": None if rows_old is None else mine["rows"] - rows_old}
        out["same_data"][split] = None if held is None else held.get("digest") == mine.get("digest")
        out["shift"][split] = tvd(held and held.get("labels"), mine.get("labels"))
        out["moves"][split] = label_moves(held and held.get("labels"), mine.get("labels"))
        out["length"][split] = {"old": None if held is None else held.get("length"), "new": mine.get("length")}
        if mine.get("target") is not None:
            out["target"][split] = {"old": None if held is None else held.get("target"), "new": mine["target"]}
    old_train = set(((old_splits.get("train") or {}).get("labels") or {}))
    new_train = set(((new["splits"].get("train") or {}).get("labels") or {}))
    out["labels_new"] = sorted(new_train - old_train) if old is not None else []
    out["labels_vanished"] = sorted(old_train - new_train) if old is not None else []
    return out


def proportions(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {label: n / total for label, n in counts.items()} if total else {}


def tvd(old: dict[str, int] | None, new: dict[str, int] | None) -> float | None:
    """Total variation distance, 0.5 * sum |p - q| over the union of labels: 0 the same
    distribution, 1 no label in common. None where either side has no labels to compare."""
    p, q = proportions(old or {}), proportions(new or {})
    if not p or not q:
        return None
    return 0.5 * sum(abs(p.get(label, 0.0) - q.get(label, 0.0)) for label in set(p) | set(q))


def label_moves(old: dict[str, int] | None, new: dict[str, int] | None) -> list[dict[str, Any]]:
    """Each label's share, old and new, the biggest change first."""
    p, q = proportions(old or {}), proportions(new or {})
    if not p or not q:
        return []
    moves = [{"label": label, "old": p.get(label, 0.0), "new": q.get(label, 0.0)} for label in set(p) | set(q)]
    return sorted(moves, key=lambda m: (-abs(m["new"] - m["old"]), m["label"]))


# ---------------------------------------------------------------- reporting


def report_markdown(report: dict[str, Any]) -> str:
    """The comparison as markdown (a Prefect artifact): one table per concern, a row per task."""
    tasks = report.get("tasks", {})
    head = ["# Data compared with the champion's"]
    if not report.get("champion"):
        head.append(f"**{NO_CHAMPION}** (a first run, or a champion trained before data profiles were recorded): "
                    "nothing to compare with; this run's data follows.")
    if report.get("added"):
        head.append("Tasks added: " + ", ".join(f"`{t}`" for t in report["added"]))
    if report.get("removed"):
        head.append("Tasks removed: " + ", ".join(f"`{t}`" for t in report["removed"]))
    sections = [rows_table(tasks), shift_table(tasks), length_table(tasks)]
    if any(t["target"] for t in tasks.values()):
        sections.append(target_table(tasks))
    return "\n\n".join(head + [s for s in sections if s]) + "\n"


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def signed(value: int | None) -> str:
    return "-" if value is None else f"{value:+d}"


def rows_table(tasks: dict[str, Any]) -> str:
    rows = []
    for name, t in tasks.items():
        train, dev = t["rows"].get("train", {}), t["rows"].get("dev", {})
        same = [s for s, v in t["same_data"].items() if v]
        rows.append([name, num(train.get("old")), num(train.get("new")), signed(train.get("delta")),
                     num(dev.get("old")), num(dev.get("new")), signed(dev.get("delta")),
                     ", ".join(same) if same else "-"])
    return table("Rows", ["task", "train old", "train new", "train Δ", "dev old", "dev new", "dev Δ", "same files"],
                 rows)


def shift_table(tasks: dict[str, Any]) -> str:
    rows = []
    for name, t in tasks.items():
        if t["type"] and is_regression(t["type"]):
            continue
        moves = t["moves"].get("train") or []
        biggest = ", ".join(move_text(m) for m in moves[:MOVES_SHOWN] if m["new"] != m["old"])
        rows.append([name, num(t["shift"].get("train")), num(t["shift"].get("dev")),
                     ", ".join(t["labels_new"]) or "-", ", ".join(t["labels_vanished"]) or "-", biggest or "-"])
    return table("Label shift (total variation distance, 0 same to 1 disjoint)",
                 ["task", "train", "dev", "new labels", "vanished labels", "biggest train moves"], rows)


def move_text(move: dict[str, Any]) -> str:
    return f"{move['label']} {move['old']:.1%} → {move['new']:.1%}"


def length_table(tasks: dict[str, Any]) -> str:
    rows = []
    for name, t in tasks.items():
        length = t["length"].get("train") or {}
        old, new = length.get("old") or {}, length.get("new") or {}
        rows.append([name] + [f"{num(old.get(k))} → {num(new.get(k))}" for k in ("mean", "p50", "p95", "max")])
    return table("Train input length in words (old → new)", ["task", "mean", "p50", "p95", "max"], rows)


def target_table(tasks: dict[str, Any]) -> str:
    rows = []
    for name, t in tasks.items():
        values = t["target"].get("train")
        if values:
            old, new = values.get("old") or {}, values.get("new") or {}
            rows.append([name] + [f"{num(old.get(k))} → {num(new.get(k))}" for k in ("mean", "std", "min", "max")])
    return table("Train regression target (old → new)", ["task", "mean", "std", "min", "max"], rows)


# ---------------------------------------------------------------- refusing


class DataShiftError(DataValidationError):
    """A task's train label distribution moved past its `max_label_shift`: refused input, not
    retried (it is a `DataValidationError`), every such task named at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__([as_issue(p) for p in problems])
        self.args = (f"label distribution shift past max_label_shift in {len(problems)} task(s):\n"
                     + "\n".join(f"  - {p}" for p in problems),)


def as_issue(line: str) -> DataIssue:
    # the lines come from `shift_issues`, shaped "file: field: problem (fix)": split back into
    # the same parts so `str(issue)` is the very line (the CLI prints issues one per line)
    parts = line.split(": ", 2)
    if len(parts) == 3:
        return DataIssue(parts[0], None, parts[1], parts[2])
    return DataIssue("label shift", None, "train labels", line)


def shift_issues(report: dict[str, Any], thresholds: dict[str, float | None]) -> list[DataIssue]:
    issues = []
    for name, t in sorted(report.get("tasks", {}).items()):
        limit, shift = thresholds.get(name), t["shift"].get("train")
        if limit is None or shift is None or shift <= limit + SHIFT_SLACK:
            continue
        moves = [move_text(m) for m in (t["moves"].get("train") or [])[:MOVES_SHOWN] if m["new"] != m["old"]]
        extra = "".join(f"; {what} labels: {', '.join(found)}" for what, found in
                        (("new", t["labels_new"]), ("vanished", t["labels_vanished"])) if found)
        issues.append(DataIssue(
            f"tasks.{name}", None, "train labels",
            f"label distribution shifted by {shift:.3f} (total variation distance) since the champion's data, "
            f"over max_label_shift {limit:g}; biggest moves: {', '.join(moves)}{extra}",
            f"check the data for a broken export or a relabelling, or raise tasks.{name}.max_label_shift "
            "if the shift is expected"))
    return issues


def shift_problems(report: dict[str, Any], thresholds: dict[str, float | None]) -> list[str]:
    """One line per task whose train label shift exceeds its threshold (task name -> the task's
    `max_label_shift`; None or absent: not checked). Raise `DataShiftError(lines)` when any."""
    return [str(issue) for issue in shift_issues(report, thresholds)]
