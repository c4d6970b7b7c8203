r"""The background in the signal region after an anomaly cut, and the significance of an excess.

**Sideband fit.** The masses of the events that pass the cut, in the sidebands only, are fitted by
an extended unbinned maximum likelihood (iminuit's ``ExtendedUnbinnedNLL``) with a falling
exponential :math:`\nu(m) = N\,e^{-m/s} / \int_\mathrm{SB} e^{-m/s}\,dm`; the prediction in the SR is

.. math:: \hat B_\mathrm{SR} = N\,\frac{\int_\mathrm{SR} e^{-m/s}\,dm}{\int_\mathrm{SB} e^{-m/s}\,dm},

with its error propagated from the fit covariance of :math:`(N, s)`. It is unbiased only if the
cut does not sculpt the mass (a decorrelated or m-independent classifier).

**ABCD.** Alternatively :func:`abcd_after_cut`: A = SR and pass, B = SB and pass, C = SR and fail,
D = SB and fail (:func:`~sbilab.anomaly.abcd.abcd_estimate` with the two variables score and
"in the SR"): the cut's efficiency measured in the sidebands transfers to the SR.

**Significance.** :func:`excess_significance` tests :math:`n` observed events against the
prediction :math:`b \pm \sigma_b` with a one-bin pyhf model: background with a Poisson-constrained
``shapesys`` of :math:`\sigma_b` (an auxiliary count :math:`\tau = (b/\sigma_b)^2` — the on/off
problem) and a signal normfactor; :math:`Z = \sqrt{q_0}` (arXiv:1007.1727). For :math:`n = s + b` it
equals the closed form :func:`~sbilab.stats.asymptotic.asimov_significance` ``(s, b, σ_b)``, which is
reported alongside as a cross-check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from iminuit import Minuit
from iminuit.cost import ExtendedUnbinnedNLL

from ..exceptions import ConfigError, RegionError
from ..stats.asymptotic import asimov_significance
from ..stats.binned import PyhfModel, workspace_hypotest
from ..stats.histfactory import build_workspace
from .results import NestedResult
from .abcd import AbcdEstimate, abcd_estimate
from .regions import MassWindow

__all__ = ["SidebandFit", "sideband_fit", "Significance", "excess_significance", "abcd_after_cut"]


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=float).reshape(-1)


@dataclass(frozen=True)
class SidebandFit(NestedResult):
    """Exponential sideband fit: the SR prediction and its error, the fitted slope, the sideband count."""

    predicted: float
    predicted_error: float
    slope: float
    slope_error: float
    sideband_events: int
    valid: bool


def _integral(lo: float, hi: float, s: float, ref: float) -> float:
    """:math:`\\int_{lo}^{hi} e^{-(m - ref)/s}\\,dm`."""
    return s * (math.exp(-(lo - ref) / s) - math.exp(-(hi - ref) / s))


def sideband_fit(m: Any, window: MassWindow, sidebands: tuple[tuple[float, float], tuple[float, float]], *,
                 min_events: int = 10) -> SidebandFit:
    r"""Fit an exponential to the sideband masses ``m`` (events after the cut) and predict the SR count.

    Args:
        m: ``(N,)`` masses of the events that pass the cut (any region; the SR ones are ignored).
        window: The signal region.
        sidebands: The two sideband intervals (:meth:`MassWindow.sideband_limits`).
        min_events: Fewest sideband events for a fit.

    Raises:
        RegionError: fewer than ``min_events`` events in the sidebands.
    """
    values = _np(m)
    (a1, b1), (a2, b2) = sidebands
    in_sb = ((values >= a1) & (values < b1)) | ((values >= a2) & (values < b2))
    sb = values[in_sb]
    if sb.size < min_events:
        raise RegionError(f"sideband_fit: {sb.size} events pass the cut in the sidebands, fewer than {min_events}; "
                          "loosen the anomaly cut or widen the sidebands.")
    ref = window.lo

    def density(x: np.ndarray, n: float, s: float) -> tuple[float, np.ndarray]:
        norm = _integral(a1, b1, s, ref) + _integral(a2, b2, s, ref)
        return n, n * np.exp(-(x - ref) / s) / norm

    cost = ExtendedUnbinnedNLL(sb, density)
    width = (b2 - a1)
    fit = Minuit(cost, n=float(sb.size), s=width)
    fit.limits["n"] = (0.0, None)
    fit.limits["s"] = (1e-3 * width, 1e3 * width)
    fit.migrad()
    fit.hesse()
    n, s = float(fit.values["n"]), float(fit.values["s"])

    def predict(n_: float, s_: float) -> float:
        return n_ * _integral(window.lo, window.hi, s_, ref) / (_integral(a1, b1, s_, ref) + _integral(a2, b2, s_, ref))

    predicted = predict(n, s)
    h = 1e-6 * s
    grad = np.array([predicted / n if n > 0 else 0.0, (predict(n, s + h) - predict(n, s - h)) / (2 * h)])
    cov = np.array(fit.covariance)
    error = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    return SidebandFit(predicted=predicted, predicted_error=error, slope=s, slope_error=float(fit.errors["s"]),
                       sideband_events=int(sb.size), valid=bool(fit.valid))


@dataclass(frozen=True)
class Significance(NestedResult):
    """Discovery significance of ``observed`` over ``background ± background_error`` (pyhf), and the closed-form Asimov value."""

    observed: float
    background: float
    background_error: float
    significance: float
    asimov: float


def excess_significance(observed: float, background: float, background_error: float) -> Significance:
    r"""pyhf discovery significance :math:`\sqrt{q_0}` of ``observed`` events over ``background`` ± ``background_error``.

    Raises:
        ConfigError: ``background`` <= 0, ``background_error`` <= 0, or ``observed`` < 0.
    """
    n, b, sb = float(observed), float(background), float(background_error)
    if not (b > 0 and sb > 0 and n >= 0):
        raise ConfigError(f"excess_significance: need background > 0, background_error > 0 and observed >= 0; got "
                          f"{background}, {background_error}, {observed}.")
    ws = build_workspace(signal={"signal": [max(b, 1.0)]}, backgrounds={"background": [b]}, observed=[n],
                         shapesys={"background": {"background_stat": [sb]}}, poi_bounds=(0.0, 100.0))
    z = workspace_hypotest(PyhfModel(ws, tolerance=1e-6), 0.0, test_statistic="q0").significance
    asimov = asimov_significance(max(n - b, 0.0), b, sb)
    return Significance(observed=n, background=b, background_error=sb, significance=float(z), asimov=asimov)


def abcd_after_cut(score: Any, m: Any, window: MassWindow, sidebands: tuple[tuple[float, float], tuple[float, float]], *,
                   cut: float) -> AbcdEstimate:
    """ABCD with the anomaly score and the mass window: A = SR & score > cut, B = SB & pass, C = SR & fail, D = SB & fail.

    Raises:
        RegionError: B, C or D is empty at this cut.
    """
    s, mm = _np(score), _np(m)
    if s.size != mm.size:
        raise ConfigError(f"abcd_after_cut: score has {s.size} events and m {mm.size}.")
    (a1, b1), (a2, b2) = sidebands
    in_sr = (mm >= window.lo) & (mm < window.hi)
    in_sb = ((mm >= a1) & (mm < b1)) | ((mm >= a2) & (mm < b2))
    use = in_sr | in_sb
    return abcd_estimate(s[use], in_sr[use].astype(float), cut_u=cut, cut_v=0.5)
