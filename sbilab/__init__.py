"""sbilab: simulation-based inference for particle physics, centred on likelihood ratios."""

from . import exceptions
from .events import Events
from .simulators import ParameterSpace, Simulator, augment, joint_log_ratio, joint_score, ratio_training_data

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "exceptions",
    "Events",
    "ParameterSpace",
    "Simulator",
    "augment",
    "joint_log_ratio",
    "joint_score",
    "ratio_training_data",
]
