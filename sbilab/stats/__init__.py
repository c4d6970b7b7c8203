"""Statistics on trained estimators: unbinned fits, asymptotics, Neyman, Fisher, pyhf.

Stats take trained estimators (or exact toy likelihoods) and events; estimators know nothing
of stats. Every function needs only ``log_ratio(x: (N, D), theta: (N, P)) -> (N,)`` (for padded
sets also given ``mask=``) or ``score(x: (N, D)) -> (N, P)`` callables. The unbinned likelihood
is one object, :class:`UnbinnedModel`, fitted to data by :class:`UnbinnedLikelihood` and to
toys by :func:`fit_toys`; every interval comes from :func:`profile_intervals`.
"""

from .asymptotic import (
    ProfileModel,
    asimov_significance,
    expected_cls,
    hypotest,
    p_values,
    q0,
    qmu,
    qtilde_mu,
    unbinned_asimov,
    upper_limit,
)
from .binned import (
    Channel,
    PyhfModel,
    Sample,
    apply_patch,
    build_workspace,
    load_workspace,
    numpy_minuit,
    to_json,
    workspace_hypotest,
    workspace_upper_limit,
)
from .diagnostics import C2STResult, UniformityResult, c2st, c2st_batch, dkw_tolerance, expected_coverage, sbc, tarp
from .fisher import (
    FisherTable,
    counts_fisher,
    cramer_rao,
    exact_fisher,
    fisher_from_scores,
    fisher_table,
    histogram_fisher,
    rate_fisher,
    sally_fisher,
)
from .intervals import ONE_SIGMA, Interval, profile_intervals
from .model import UnbinnedModel
from .neyman import NeymanConstruction
from .normalisation import NormalisationCheck, ratio_normalisation
from .results import FitResult, HypotestResult, Profile2DResult, ProfileResult, UpperLimitResult
from .templates import MorphedHistogram, histogram, quantile_edges
from .toys import fit_toys, profile_likelihood_ratio, toy_log_likelihood
from .unbinned import UnbinnedLikelihood

__all__ = [
    # results
    "FitResult",
    "ProfileResult",
    "Profile2DResult",
    "HypotestResult",
    "UpperLimitResult",
    "Interval",
    # unbinned
    "UnbinnedModel",
    "UnbinnedLikelihood",
    "profile_intervals",
    "ONE_SIGMA",
    "fit_toys",
    "profile_likelihood_ratio",
    "toy_log_likelihood",
    # asymptotics
    "ProfileModel",
    "q0",
    "qmu",
    "qtilde_mu",
    "p_values",
    "expected_cls",
    "asimov_significance",
    "unbinned_asimov",
    "hypotest",
    "upper_limit",
    # Neyman
    "NeymanConstruction",
    # normalisation of a learned ratio
    "ratio_normalisation",
    "NormalisationCheck",
    # Fisher
    "fisher_from_scores",
    "exact_fisher",
    "sally_fisher",
    "histogram_fisher",
    "counts_fisher",
    "rate_fisher",
    "cramer_rao",
    "FisherTable",
    "fisher_table",
    # histogram templates and binning
    "quantile_edges",
    "histogram",
    "MorphedHistogram",
    # binned (pyhf)
    "PyhfModel",
    "Channel",
    "Sample",
    "build_workspace",
    "workspace_hypotest",
    "workspace_upper_limit",
    "load_workspace",
    "apply_patch",
    "to_json",
    "numpy_minuit",
    # diagnostics of posteriors
    "sbc",
    "expected_coverage",
    "tarp",
    "c2st",
    "c2st_batch",
    "dkw_tolerance",
    "UniformityResult",
    "C2STResult",
]
