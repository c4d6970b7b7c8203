"""sbilab: simulation-based inference for particle physics, centred on likelihood ratios.

The flow of data: a :class:`Simulator` produces :class:`Events` (:class:`PairedEvents` for two
levels of the same events; both stored in a :class:`SimulationStore`), :func:`fit` trains an
estimator (:class:`RatioEstimator`, :class:`ScoreEstimator`, :class:`LikelihoodEstimator`,
:class:`PosteriorEstimator`, :class:`ConditionalDensity`, :class:`Classifier`) with a loss from
:mod:`sbilab.estimators.losses`, :mod:`sbilab.stats` turns it into measurements and limits, and
:mod:`sbilab.publish` saves estimators and results as HDF5 + JSON (no pickle); :mod:`sbilab.io`
reads LHE and ROOT files and writes ROOT, hist and ONNX; :mod:`sbilab.distributed` spreads
simulation and training over processes, GPUs and Dask clusters.
"""

from ._version import __version__
from . import calibration, distributed, exceptions, inference, io, publish, simulators, stats
from .estimators import Classifier, ConditionalDensity, LikelihoodEstimator, PosteriorEstimator, PosteriorMixture, RatioEstimator, ScoreEstimator, get_loss
from .events import Events
from .exceptions import SbilabError
from .nets import Ensemble
from .paired import PairedEvents
from .simulators import ParameterSpace, Simulator, augment, joint_log_ratio, joint_score, ratio_training_data, score_training_data
from .stats import UnbinnedLikelihood
from .store import SimulationStore
from .training import TrainingConfig, TrainingResult, fit


__all__ = [
    "__version__",
    # submodules
    "calibration",
    "distributed",
    "exceptions",
    "inference",
    "io",
    "publish",
    "simulators",
    "stats",
    # data
    "Events",
    "PairedEvents",
    "ParameterSpace",
    "Simulator",
    "SimulationStore",
    "augment",
    "joint_log_ratio",
    "joint_score",
    "ratio_training_data",
    "score_training_data",
    # estimators and training
    "RatioEstimator",
    "ScoreEstimator",
    "LikelihoodEstimator",
    "PosteriorEstimator",
    "PosteriorMixture",
    "Classifier",
    "ConditionalDensity",
    "Ensemble",
    "get_loss",
    "fit",
    "TrainingResult",
    "TrainingConfig",
    # statistics
    "UnbinnedLikelihood",
    "SbilabError",
]
