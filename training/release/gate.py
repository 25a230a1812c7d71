"""The promotion gate: may a challenger replace the champion? Pure: numbers in, a decision out.

The flow evaluates the champion and the challenger on the same current dev split in the same
flow run and hands both score sets here (DESIGN principle 11: two models are only compared on the
same data with the same code); the registry writes the report onto the version (registry.py).
Scores are `{task: {metric: value}}`, the shape `evaluate` returns.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from training.task_spec import TaskSpec, exported

# Metrics and tolerances are decimals held as binary floats: 0.8 - 0.1 is 0.7000000000000001, so
# without this slack a challenger exactly at champion - tolerance would be refused by rounding.
GATE_SLACK = 1e-9
GATE_END = "<!-- gate -->"  # what follows it in a version's description is the registration note

Decision = Literal["promoted", "refused", "no champion"]
Scores = dict[str, dict[str, float]]


def primary_metrics(specs: Iterable[TaskSpec]) -> dict[str, str]:
    """What the gate compares: each exported task's primary dev metric (its config's `primary_metric`,
    else its type's default, training/task_spec.py), the one per-task selection on dev also uses."""
    return {s.name: s.primary_metric for s in exported(list(specs))}


def metric_key(task: str, metric: str) -> str:
    """The MLflow metric a dev score is logged as."""
    return f"dev.{task}.{metric}"


def nested(flat: dict[str, float]) -> Scores:
    """`{"dev.<task>.<metric>": v}` (an MLflow run's metrics) as `{task: {metric: v}}`; every
    other metric of the run (training curves, affinity) is left out."""
    out: Scores = {}
    for key, value in flat.items():
        if key.startswith("dev."):
            task, _, metric = key[len("dev."):].rpartition(".")
            if task:
                out.setdefault(task, {})[metric] = value
    return out


def _number(value: float | None) -> float | None:
    """A score that can be compared: a missing or NaN score (a Pearson of constant predictions)
    counts as absent, so a NaN challenger never passes by NaN comparing false."""
    return None if value is None or math.isnan(value) else float(value)


@dataclass
class GateRow:
    task: str
    metric: str
    challenger: float | None  # None: the challenger has no such score
    champion: float | None  # None: no champion, or it has no such score (nothing to compare)
    delta: float | None  # challenger - champion, when both exist
    tolerance: float
    ok: bool


@dataclass
class GateReport:
    rows: list[GateRow]
    decision: Decision
    reasons: list[str]
    champion_version: str | None
    notes: list[str] = field(default_factory=list)
    tolerance: float = 0.0

    @property
    def promoted(self) -> bool:
        """Whether the alias moves: a pass, or a first model with no champion to beat."""
        return self.decision != "refused"

    @property
    def verdict(self) -> str:
        """The `mtl.gate` tag: "passed", or the reasons joined."""
        return "passed" if self.promoted else "; ".join(self.reasons)

    def decision_line(self, alias: str = "champion") -> str:
        if self.decision == "no champion":
            return f"Gate: no {alias} yet, promoted to {alias}"
        against = f"Gate against {alias} v{self.champion_version}, tolerance {self.tolerance}"
        if self.decision == "promoted":
            return f"{against}: passed, promoted to {alias}"
        return f"{against}: refused: {self.verdict}"

    def table(self, alias: str = "champion") -> str:
        """Each task's primary metric. With no champion only this version's column (there is
        nothing to compare); else champion, challenger, delta, tolerance and the row's verdict."""
        if self.decision == "no champion":
            rows = [f"| {r.task} | {r.metric} | {_cell(r.challenger)} |" for r in self.rows]
            return "\n".join(["| task | metric | this version |", "|---|---|---|", *rows])
        head = f"| task | metric | {alias} v{self.champion_version} | challenger | delta | tolerance | ok |"
        rows = [f"| {r.task} | {r.metric} | {_cell(r.champion)} | {_cell(r.challenger)} | "
                f"{_cell(r.delta, signed=True)} | {r.tolerance} | {'yes' if r.ok else 'NO'} |" for r in self.rows]
        return "\n".join([head, "|---|---|---|---|---|---|---|", *rows])

    def markdown(self, title: str | None = None, alias: str = "champion") -> str:
        """The table, then the decision line and the notes (a Prefect artifact, a version's description)."""
        parts = [f"**{title}**" if title else "", self.table(alias), self.decision_line(alias),
                 "\n".join(f"- {note}" for note in self.notes)]
        return "\n\n".join(p for p in parts if p)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (an event payload, a flow result): no NaN, numbers or None."""
        return {"decision": self.decision, "promoted": self.promoted, "champion_version": self.champion_version,
                "tolerance": self.tolerance, "reasons": list(self.reasons), "notes": list(self.notes),
                "rows": [asdict(r) for r in self.rows]}


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _row(task: str, metric: str, challenger: Scores, champion: Scores | None, tolerance: float) -> GateRow:
    mine = _number(challenger.get(task, {}).get(metric))
    held = None if champion is None else _number(champion.get(task, {}).get(metric))
    if held is None:
        return GateRow(task, metric, mine, None, None, tolerance, True)
    ok = mine is not None and mine >= held - tolerance - GATE_SLACK
    return GateRow(task, metric, mine, held, None if mine is None else mine - held, tolerance, ok)


def decide(challenger: Scores, champion: Scores | None, primary: dict[str, str], tolerance: float,
           champion_version: str | None, notes: list[str]) -> GateReport:
    """Promote unless a task's primary metric falls more than `tolerance` below the champion's,
    or the champion has a task the challenger lacks (its users would lose it). `primary`: the
    challenger's tasks -> their primary metric; `champion` None: there is no champion yet."""
    rows = [_row(task, metric, challenger, champion, tolerance) for task, metric in sorted(primary.items())]
    reasons = [f"{r.task} {r.metric} {_cell(r.challenger) if r.challenger is not None else 'nan'} < champion "
               f"{r.champion:.4f} - {tolerance}" for r in rows if not r.ok and r.champion is not None]
    reasons += [f"task {task} of the champion is missing from the challenger"
                for task in sorted(champion or {}) if task not in primary]
    decision: Decision = "no champion" if champion is None else ("refused" if reasons else "promoted")
    return GateReport(rows, decision, reasons, champion_version, list(notes), tolerance)


def gate(challenger: dict[str, float], champion: dict[str, float], primary: dict[str, str],
         tolerance: float) -> list[str]:
    """Reasons the challenger may not replace the champion (empty: it may), on MLflow-style flat
    metrics (`dev.<task>.<metric>`)."""
    return decide(nested(challenger), nested(champion), primary, tolerance, None, []).reasons


def gate_table(mine: dict[str, float], held: dict[str, float] | None, primary: dict[str, str],
               held_name: str | None) -> str:
    """Each task's primary metric, this version's and the champion's (flat metrics), as a markdown table."""
    head = "| task | metric | this version |" + (f" {held_name} |" if held is not None else "")
    rule = "|---|---|---|" + ("---|" if held is not None else "")
    rows = []
    for task, metric in sorted(primary.items()):
        key = metric_key(task, metric)
        cells = [task, metric, f"{mine.get(key, float('nan')):.4f}"]
        if held is not None:
            cells.append(f"{held[key]:.4f}" if key in held else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])
