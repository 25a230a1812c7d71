"""Loss weighting: how much each task's loss counts. One registry: `WEIGHTINGS`; one file per
method, its paper in the docstring; the contract is in `training.trainer.weighting.base`."""
from __future__ import annotations

from training.trainer.weighting.base import Weighting
from training.trainer.weighting.dwa import DwaWeighting
from training.trainer.weighting.equal import EqualWeighting
from training.trainer.weighting.gradnorm import GradNormWeighting
from training.trainer.weighting.pcgrad import PCGradWeighting
from training.trainer.weighting.static import StaticWeighting
from training.trainer.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": EqualWeighting,
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DwaWeighting,
    "gradnorm": GradNormWeighting,
    "pcgrad": PCGradWeighting,
}
