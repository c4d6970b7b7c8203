r"""Unfolding: iterative Bayesian unfolding, metrics, ideal iterations, toys and the published result.

* :mod:`~sbilab.unfolding.response` / :mod:`~sbilab.unfolding.ibu`: D'Agostini's iterative
  Bayesian unfolding with efficiency, fakes, background and full (Adye) error propagation, batched.
* :mod:`~sbilab.unfolding.metrics`: triangular discriminator, Wasserstein-1, χ²/ndf, classifier AUC.
* :mod:`~sbilab.unfolding.toys`, :mod:`~sbilab.unfolding.multi_toy`: Gaussian toys with paired
  generator/detector events; a six-observable toy with a nonlinear detector.
* :mod:`~sbilab.unfolding.ideal`: the ideal (infinite-statistics) iterations by quadrature.
* :mod:`~sbilab.unfolding.baseline`: binned IBU per observable with its metrics.
* :mod:`~sbilab.unfolding.result`, :mod:`~sbilab.unfolding.pandas_table`: the published
  per-event result (ATLAS weight-column layout) and any histogram with its uncertainty band.
* :mod:`~sbilab.unfolding.omnifold`: OmniFold/MultiFold with efficiency, fakes and background,
  every iteration's weights and weight diagnostics (:mod:`~sbilab.unfolding.diagnostics`), each
  step a classifier of :mod:`~sbilab.unfolding.steps`.
* :mod:`~sbilab.unfolding.replicas`: ensembles, bootstraps of data and simulation and systematics,
  all trained as one batched ensemble.
* :mod:`~sbilab.unfolding.generative`: cINN unfolding q(gen | reco) and its iterated (IcINN) variant.
"""

from .baseline import ObservableUnfolding, compare_to_truth, unfold_each_observable
from .diagnostics import StepDiagnostics
from .generative import GenerativeResult, GenerativeSettings, generative_unfold
from .ibu import IBUResult, iterative_unfold
from .ideal import IdealIterations, gaussian_ideal_moments, ideal_iterations, ideal_stat_error
from .metrics import (
    Chi2Result,
    chi2_ndf,
    classifier_auc,
    distances_to_truth,
    triangular_discriminator,
    triangular_discriminator_binned,
    wasserstein_1d,
    wasserstein_1d_cdf,
    weighted_moments,
)
from .multi_toy import MultiObservableToy
from .omnifold import OmniFoldResult, OmniFoldSettings, omnifold
from .pandas_table import read_pandas_table
from .replicas import ReplicaLayout, Replicas
from .response import Response
from .result import HistogramBand, UnfoldedResult
from .steps import ClassifierSettings
from .toys import GaussianUnfoldingToy, ToyData, full_toy, minimal_toy

__all__ = [
    "Response",
    "IBUResult",
    "iterative_unfold",
    "triangular_discriminator",
    "triangular_discriminator_binned",
    "wasserstein_1d",
    "wasserstein_1d_cdf",
    "Chi2Result",
    "chi2_ndf",
    "classifier_auc",
    "ToyData",
    "GaussianUnfoldingToy",
    "minimal_toy",
    "full_toy",
    "MultiObservableToy",
    "IdealIterations",
    "ideal_iterations",
    "gaussian_ideal_moments",
    "ideal_stat_error",
    "ObservableUnfolding",
    "unfold_each_observable",
    "compare_to_truth",
    "UnfoldedResult",
    "HistogramBand",
    "read_pandas_table",
    "weighted_moments",
    "distances_to_truth",
    "omnifold",
    "OmniFoldSettings",
    "OmniFoldResult",
    "ClassifierSettings",
    "StepDiagnostics",
    "Replicas",
    "ReplicaLayout",
    "generative_unfold",
    "GenerativeSettings",
    "GenerativeResult",
]
