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

    def __init__(self, issues: list[DataIssue], limit: int = 50, dropped: int = 0) -> None:
        self.issues = issues
        self.dropped = dropped
        total = len(issues) + dropped
        shown = "\n".join(f"  - {issue}" for issue in issues[:limit])
        more = f"\n  ... and {total - min(limit, len(issues))} more" if total > limit else ""
        super().__init__(f"{total} data problem(s):\n{shown}{more}")


class IssueCollector:
    """Collects problems up to a limit so one pass reports them all together."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self.issues: list[DataIssue] = []
        # counted past the limit so the report still says how many problems there are
        self.dropped = 0

    def add(self, file: str, line: int | None, field: str, problem: str, fix: str = "") -> None:
        if len(self.issues) < self.limit:
            self.issues.append(DataIssue(file, line, field, problem, fix))
        else:
            self.dropped += 1

    def extend(self, issues: list[DataIssue]) -> None:
        for issue in issues:
            self.add(issue.file, issue.line, issue.field, issue.problem, issue.fix)

    def raise_if_any(self) -> None:
        if self.issues:
            raise DataValidationError(self.issues, dropped=self.dropped)
