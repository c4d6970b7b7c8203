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
from .ensembles import ensemble_log_prob, ensemble_log_ratio, ensemble_score, member_spread
from .likelihood import LikelihoodEstimator
from .losses import (
    LOSSES,
    alice_loss,
    alices_loss,
    carl_loss,
    cascal_loss,
    get_loss,
    nde_loss,
    npe_loss,
    rascal_loss,
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
    "disco_loss",
    "double_disco_loss",
    "distance_correlation",
    "distance_covariance",
    "check_spectator_not_input",
    "ClassifierPair",
    "get_loss",
    "LOSSES",
    "ensemble_log_ratio",
    "ensemble_score",
    "ensemble_log_prob",
    "member_spread",
]
