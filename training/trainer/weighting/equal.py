"""`equal`: every task's loss counts once (the plain sum of task losses)."""
from __future__ import annotations

from training.trainer.weighting.base import Weighting


class EqualWeighting(Weighting):
    """Defaults only: weight 1 for every task in every step."""
