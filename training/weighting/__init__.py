"""Loss weighting: how much each task's loss counts. One registry: `WEIGHTINGS`; one file per
method, its paper in the docstring; the contract is in `training.weighting.base`."""
from __future__ import annotations

from training.weighting.base import Weighting
from training.weighting.dwa import DwaWeighting
from training.weighting.equal import EqualWeighting
from training.weighting.gradnorm import GradNormWeighting
from training.weighting.pcgrad import PCGradWeighting
from training.weighting.static import StaticWeighting
from training.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": EqualWeighting,
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DwaWeighting,
    "gradnorm": GradNormWeighting,
    "pcgrad": PCGradWeighting,
}
