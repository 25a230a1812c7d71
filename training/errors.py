"""Refusals that `training/` raises and the flow must not retry: the input is wrong, and a retry
would meet the same input. Kept free of heavy imports, so the flow's config module can name them."""
from __future__ import annotations


class WarmStartError(ValueError):
    """A warm start that cannot go ahead; the message lists every problem, each with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class RegistryRefusal(ValueError):
    """A registry request that cannot succeed as asked (no such version, nothing to roll back to,
    no reason given): said in one line, never retried."""
