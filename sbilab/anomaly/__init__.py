r"""Decorrelated classifiers, ABCD background estimates and weakly supervised anomaly searches.

Built from the core: classifiers are :class:`~sbilab.estimators.Classifier` s trained by
:func:`~sbilab.training.fit` (the DisCo losses and distance correlation live in
:mod:`sbilab.estimators.decorrelation`), statistics go through :mod:`sbilab.stats` and pyhf.

* :mod:`~sbilab.anomaly.abcd` — the ABCD estimate for any two variables, errors, closure;
* :mod:`~sbilab.anomaly.abcd_model` — the ABCD likelihood with signal contamination (pyhf, iminuit);
* :mod:`~sbilab.anomaly.sic` — SIC curves with a background-efficiency floor and errors;
* :mod:`~sbilab.anomaly.sculpting` — mass sculpting (Jensen–Shannon divergence);
* :mod:`~sbilab.anomaly.regions`, :mod:`~sbilab.anomaly.weak` — mass windows; CWoLa, CATHODE,
  idealised and supervised training data;
* :mod:`~sbilab.anomaly.cathode` — CATHODE's background flow q(x | m) trained in the sidebands;
* :mod:`~sbilab.anomaly.background` — sideband fit or ABCD after the anomaly cut, pyhf significance;
* :mod:`~sbilab.anomaly.search` — the bump hunt: train on one half, cut, estimate, test;
* :mod:`~sbilab.anomaly.studies` — the DisCo λ scan and the SIC study of the exact toys;
* :mod:`~sbilab.anomaly.toys`, :mod:`~sbilab.anomaly.references` — exact toys and closed forms.
"""

from ..estimators.decorrelation import ClassifierPair, disco_loss, distance_correlation, double_disco_loss
from .abcd import REGIONS, AbcdCounts, AbcdEstimate, abcd_counts, abcd_estimate, abcd_regions, threshold_at_efficiency
from .abcd_model import AbcdCountingModel, AbcdFit, AbcdInference, abcd_bounds, abcd_inference, abcd_workspace
from .cathode import BackgroundFlow, FlowBackground, fit_background_model
from .background import SidebandFit, Significance, abcd_after_cut, excess_significance, sideband_fit
from .references import (
    AbcdProbabilities,
    OptimalSic,
    bivariate_normal_abcd,
    bivariate_normal_dcor2,
    gaussian_cut_sic,
    gaussian_optimal_sic,
)
from .regions import MassWindow
from .search import BumpHunt, bump_hunt
from .sculpting import js_divergence, js_divergence_floor, mass_sculpting
from .sic import SicCurve, rejection_at, sic_curve
from .studies import DecorrelationPoint, DecorrelationScan, SicStudy, Training, decorrelation_scan, sic_study
from .toys import AnomalyToy, ConditionalGaussianBackground, DecorrelationToy
from .training import classifier_score, labelled_events, train_classifier
from .weak import (
    BackgroundModel,
    cathode_training_data,
    cwola_training_data,
    idealised_training_data,
    sideband_events,
    supervised_training_data,
)

__all__ = [
    # decorrelation (core, re-exported)
    "distance_correlation", "disco_loss", "double_disco_loss", "ClassifierPair",
    # ABCD
    "REGIONS", "abcd_regions", "abcd_counts", "abcd_estimate", "AbcdCounts", "AbcdEstimate", "threshold_at_efficiency",
    "abcd_workspace", "abcd_bounds", "abcd_inference", "AbcdCountingModel", "AbcdFit", "AbcdInference",
    # figures of merit
    "sic_curve", "SicCurve", "rejection_at", "js_divergence", "js_divergence_floor", "mass_sculpting",
    # weak supervision
    "MassWindow", "BackgroundModel", "cwola_training_data", "idealised_training_data", "supervised_training_data",
    "cathode_training_data", "sideband_events", "BackgroundFlow", "FlowBackground", "fit_background_model", "labelled_events", "train_classifier", "classifier_score",
    # background after the cut
    "sideband_fit", "SidebandFit", "excess_significance", "Significance", "abcd_after_cut",
    # the search and the studies of the toys
    "bump_hunt", "BumpHunt", "decorrelation_scan", "DecorrelationScan", "DecorrelationPoint", "sic_study", "SicStudy", "Training",
    # toys and exact references
    "DecorrelationToy", "AnomalyToy", "ConditionalGaussianBackground", "bivariate_normal_dcor2", "bivariate_normal_abcd",
    "AbcdProbabilities", "gaussian_cut_sic", "gaussian_optimal_sic", "OptimalSic",
]
