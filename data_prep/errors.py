"""Errors for people: every problem names the file, the line, the field and the fix."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataIssue:
    file: str
    line: int | None
    field: str
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = f"{where}: {self.field}: {self.problem}"
        return f"{text} ({self.fix})" if self.fix else text


class DataValidationError(ValueError):
    """Refused input data. Raised once with every problem collected; never worth a retry."""

    def __init__(self, issues: list[DataIssue], limit: int = 50) -> None:
        self.issues = issues
        shown = "\n".join(f"  - {issue}" for issue in issues[:limit])
        more = f"\n  ... and {len(issues) - limit} more" if len(issues) > limit else ""
        super().__init__(f"{len(issues)} data problem(s):\n{shown}{more}")


class IssueCollector:
    """Collects problems up to a limit so one pass reports them all together."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self.issues: list[DataIssue] = []

    def add(self, file: str, line: int | None, field: str, problem: str, fix: str = "") -> None:
        if len(self.issues) < self.limit:
            self.issues.append(DataIssue(file, line, field, problem, fix))

    def raise_if_any(self) -> None:
        if self.issues:
            raise DataValidationError(self.issues)
