"""Estimators (nn.Modules returning log-quantities) and every training loss."""

from .classifier import Classifier, classifier_training_data
from .decorrelation import (
    ClassifierPair,
    check_spectator_not_input,
    disco_loss,
    distance_correlation,
    distance_covariance,
    double_disco_loss,
)
from .density import ConditionalDensity
from .ensembles import EnsembleMean, ensemble_log_prob, ensemble_log_ratio, ensemble_score, member_spread
from .likelihood import DensityRatio, LikelihoodEstimator
from .losses import (
    LOSSES,
    LossInfo,
    alice_loss,
    alices_loss,
    carl_loss,
    density_loss,
    cascal_loss,
    get_loss,
    loss_info,
    nde_loss,
    npe_loss,
    rascal_loss,
    register_loss,
    rolr_loss,
    sally_loss,
    scandal_loss,
)
from .posterior import FLOWS, PosteriorEstimator, PosteriorMixture
from .ratio import RatioEstimator
from .reweighting import ClassifierWeights, WeightClippingWarning, classifier_weights
from .score import ScoreEstimator

__all__ = [
    "RatioEstimator",
    "ScoreEstimator",
    "LikelihoodEstimator",
    "PosteriorEstimator",
    "PosteriorMixture",
    "Classifier",
    "classifier_training_data",
    "classifier_weights",
    "ClassifierWeights",
    "WeightClippingWarning",
    "FLOWS",
    "ConditionalDensity",
    "carl_loss",
    "rolr_loss",
    "rascal_loss",
    "alice_loss",
    "alices_loss",
    "cascal_loss",
    "sally_loss",
    "nde_loss",
    "scandal_loss",
    "npe_loss",
    "density_loss",
    "disco_loss",
    "double_disco_loss",
    "distance_correlation",
    "distance_covariance",
    "check_spectator_not_input",
    "ClassifierPair",
    "get_loss",
    "LOSSES",
    "LossInfo",
    "loss_info",
    "register_loss",
    "ensemble_log_ratio",
    "ensemble_score",
    "ensemble_log_prob",
    "member_spread",
    "EnsembleMean",
    "DensityRatio",
]
