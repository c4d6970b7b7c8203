r"""The ABCD likelihood with signal contamination: a four-channel pyhf model, and the same in iminuit.

Observed counts :math:`n_R` in the regions R = A, B, C, D are Poisson with means

.. math:: \nu_A = \mu s_A + \mu_b\,\kappa^{\alpha}, \quad \nu_B = \mu s_B + \mu_b \tau_B, \quad
          \nu_C = \mu s_C + \mu_b \tau_C, \quad \nu_D = \mu s_D + \mu_b \tau_B \tau_C,

with the signal strength μ (the POI), signal yields :math:`s_R` in any region (contamination of
the control regions included), the free background parameters :math:`\mu_b, \tau_B, \tau_C`, and
an optional background-shape (non-closure) uncertainty: a ``normsys`` :math:`\kappa^\alpha` on the
background in A with :math:`\kappa = 1 \pm \delta` and a unit-Gaussian constraint on α (pyhf's default
code-4 interpolation: :math:`(1+\delta)^\alpha` for α ≥ 1, :math:`(1-\delta)^{-\alpha}` for α ≤ -1, a
sixth-order polynomial in between).
This is the model of the abcd-pyhf package, built with the core's
:func:`~sbilab.stats.histfactory.build_workspace` and tested with
:func:`~sbilab.stats.binned.workspace_upper_limit` /
:func:`~sbilab.stats.binned.workspace_hypotest` (asymptotic CLs, :math:`\tilde q_\mu`,
arXiv:1007.1727). :class:`AbcdCountingModel` writes the same likelihood for iminuit as a
:class:`~sbilab.stats.asymptotic.ProfileModel`, so the identical hypothesis tests run through
:func:`sbilab.stats.hypotest`/:func:`sbilab.stats.upper_limit` as an independent cross-check.

Default bounds follow abcd-pyhf: :math:`\mu_b \in [0, \hat\mu_b + 5\sqrt{\hat\mu_b}]`,
:math:`\tau \in [0, 5\hat\tau]` from the background-only estimates
:math:`\hat\mu_b = n_B n_C/n_D`, :math:`\hat\tau_B = n_D/n_C`, :math:`\hat\tau_C = n_D/n_B`, and
:math:`\mu \in [0, \lceil \min_R (n_R + 5\sqrt{n_R})/s_R \rceil]` over regions with signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyhf
from iminuit import Minuit
from scipy.special import gammaln

from ..exceptions import FitError, RegionError
from ..stats import asymptotic
from ..stats.binned import PyhfModel, workspace_hypotest, workspace_upper_limit
from ..stats.histfactory import Channel, Sample, build_workspace, numpy_minuit
from ..stats.results import HypotestResult, UpperLimitResult
from .results import NestedResult
from .abcd import REGIONS

__all__ = ["abcd_workspace", "abcd_bounds", "AbcdCountingModel", "AbcdFit", "AbcdInference", "abcd_inference"]

_BACKGROUND = {"A": (), "B": ("tau_B",), "C": ("tau_C",), "D": ("tau_B", "tau_C")}
NONCLOSURE = "abcd_nonclosure"


def _four(values: Any, name: str, *, positive_sum: bool) -> tuple[float, float, float, float]:
    if isinstance(values, Mapping):
        missing = sorted(set(REGIONS) - set(values))
        if missing:
            raise RegionError(f"{name} lacks region(s) {missing}; give counts for A, B, C and D.")
        values = [values[r] for r in REGIONS]
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size != 4 or not np.isfinite(array).all() or (array < 0).any():
        raise RegionError(f"{name} = {np.asarray(values).tolist()} must be four finite counts >= 0 for regions A, B, C, D.")
    if positive_sum and not array.sum() > 0:
        raise RegionError(f"{name} = {array.tolist()} is all zero; some region must hold signal.")
    return tuple(float(v) for v in array)  # type: ignore[return-value]


def _check_observed(observed: tuple[float, ...]) -> None:
    empty = [r for r, n in zip(REGIONS, observed) if r != "A" and not n > 0]
    if empty:
        raise RegionError(f"observed counts {dict(zip(REGIONS, observed))}: control region(s) {empty} are empty; the "
                          "background parameters mu_b, tau_B, tau_C are then unconstrained. Loosen the cuts or use more data.")


def abcd_bounds(observed: Any, signal: Any) -> dict[str, tuple[float, float]]:
    """abcd-pyhf's default bounds of ``mu`` (the POI), ``mu_b``, ``tau_B``, ``tau_C`` from the observed counts (see the module docstring)."""
    n = _four(observed, "observed", positive_sum=False)
    s = _four(signal, "signal", positive_sum=True)
    _check_observed(n)
    mu_b, tau_b, tau_c = n[1] * n[2] / n[3], n[3] / n[2], n[3] / n[1]
    poi_hi = math.ceil(min((nr + 5 * math.sqrt(nr)) / sr for nr, sr in zip(n, s) if sr > 0))
    return {"mu": (0.0, float(max(poi_hi, 1))), "mu_b": (0.0, mu_b + 5 * math.sqrt(mu_b)),
            "tau_B": (0.0, 5 * tau_b), "tau_C": (0.0, 5 * tau_c)}


def _check_delta(delta: float | None) -> float | None:
    if delta is not None and not 0.0 < float(delta) < 1.0:
        raise FitError(f"background_uncertainty = {delta} must be a relative uncertainty in (0, 1), e.g. 0.1, or None.")
    return None if delta is None else float(delta)


def abcd_workspace(observed: Any, signal: Any = (1.0, 0.0, 0.0, 0.0), *, background_uncertainty: float | None = None,
                   bounds: Mapping[str, tuple[float, float]] | None = None) -> pyhf.Workspace:
    r"""The four-channel ABCD HistFactory workspace (channels ``A``–``D``, POI ``mu``).

    Args:
        observed: Counts :math:`n_A, n_B, n_C, n_D` (a sequence, or a mapping by region name).
        signal: Signal yields :math:`s_R` at μ = 1, in any regions.
        background_uncertainty: Relative background-shape (non-closure) uncertainty δ on region A
            (a ``normsys`` named ``abcd_nonclosure``), or ``None``.
        bounds: Overrides of :func:`abcd_bounds` (keys ``mu``, ``mu_b``, ``tau_B``, ``tau_C``).

    Raises:
        RegionError: counts not four finite non-negative numbers, an empty control region, or no signal.
        FitError: ``background_uncertainty`` outside (0, 1).
    """
    n = _four(observed, "observed", positive_sum=False)
    s = _four(signal, "signal", positive_sum=True)
    delta = _check_delta(background_uncertainty)
    limits = {**abcd_bounds(n, s), **dict(bounds or {})}
    channels = []
    for region, count, sig in zip(REGIONS, n, s):
        normsys = {NONCLOSURE: (1.0 - delta, 1.0 + delta)} if delta is not None and region == "A" else {}
        channels.append(Channel(region, [count], [Sample("background", [1.0], normfactors=("mu_b", *_BACKGROUND[region]), normsys=normsys),
                                                  Sample("signal", [sig], normfactors=("mu",))]))
    return build_workspace(channels, poi_bounds=limits["mu"], bounds={k: v for k, v in limits.items() if k != "mu"})


# pyhf's code-4 interpolation (alpha_0 = 1): the polynomial coefficients a = A^-1 b
_CODE4 = np.array([
    [15 / 16, -15 / 16, -7 / 16, -7 / 16, 1 / 16, -1 / 16],
    [3 / 2, 3 / 2, -9 / 16, 9 / 16, 1 / 16, 1 / 16],
    [-5 / 8, 5 / 8, 5 / 8, 5 / 8, -1 / 8, 1 / 8],
    [-3 / 2, -3 / 2, 7 / 8, -7 / 8, -1 / 8, -1 / 8],
    [3 / 16, -3 / 16, -3 / 16, -3 / 16, 1 / 16, -1 / 16],
    [1 / 2, 1 / 2, -5 / 16, 5 / 16, 1 / 16, 1 / 16],
])


def _code4(alpha: float, hi: float, lo: float) -> float:
    r"""HistFactory's normsys factor with code-4 interpolation (pyhf's default): :math:`\kappa_\pm^{|\alpha|}` beyond
    :math:`|\alpha| = 1`, a sixth-order polynomial with matching value, slope and curvature inside."""
    if alpha >= 1.0:
        return hi**alpha
    if alpha <= -1.0:
        return lo ** (-alpha)
    lh, ll = math.log(hi), math.log(lo)
    b = np.array([hi - 1.0, lo - 1.0, lh * hi, -ll * lo, lh * lh * hi, ll * ll * lo])
    coefficients = _CODE4 @ b
    return 1.0 + float(sum(c * alpha ** (i + 1) for i, c in enumerate(coefficients)))


class AbcdCountingModel:
    r"""The ABCD likelihood in iminuit, a :class:`~sbilab.stats.asymptotic.ProfileModel` (cross-check of the pyhf model).

    Parameters, in order: ``mu`` (POI, index 0), ``mu_b``, ``tau_B``, ``tau_C`` and, with a
    background uncertainty, ``alpha``. Data are the four counts, followed by the auxiliary
    measurement of α (nominally 0) when there is one — the layout of pyhf's data. ``fit``
    minimises :math:`-2\log L` (Poisson terms with :math:`\log\Gamma(n+1)`, the unit Gaussian
    constraint of α) with MIGRAD inside the same bounds as :func:`abcd_workspace`.
    """

    def __init__(self, observed: Any, signal: Any = (1.0, 0.0, 0.0, 0.0), *, background_uncertainty: float | None = None,
                 bounds: Mapping[str, tuple[float, float]] | None = None, tolerance: float = 1e-6) -> None:
        self.counts = np.array(_four(observed, "observed", positive_sum=False))
        self.signal = np.array(_four(signal, "signal", positive_sum=True))
        self.delta = _check_delta(background_uncertainty)
        self.bounds = {**abcd_bounds(self.counts, self.signal), **dict(bounds or {})}
        self.names = ("mu", "mu_b", "tau_B", "tau_C") + (("alpha",) if self.delta is not None else ())
        self.poi_index = 0
        self.tolerance = tolerance
        n = self.counts
        self._start = np.array([0.0, n[1] * n[2] / n[3], n[3] / n[2], n[3] / n[1]] + ([0.0] if self.delta is not None else []))
        self.observed = np.concatenate([n, [0.0]]) if self.delta is not None else n.copy()

    def expected(self, pars: np.ndarray) -> np.ndarray:
        """Expected counts ``(4,)`` at ``pars``."""
        mu, mu_b, tau_b, tau_c = pars[:4]
        factor = 1.0 if self.delta is None else _code4(float(pars[4]), 1.0 + self.delta, 1.0 - self.delta)
        return mu * self.signal + mu_b * np.array([factor, tau_b, tau_c, tau_b * tau_c])

    def twice_nll(self, pars: np.ndarray, data: np.ndarray) -> float:
        """:math:`-2\\log L(\\text{pars} \\mid \\text{data})`."""
        nu = np.maximum(self.expected(pars), 1e-300)
        n = data[:4]
        value = -2.0 * float(np.sum(n * np.log(nu) - nu - gammaln(n + 1.0)))
        if self.delta is not None:
            value += (pars[4] - data[4]) ** 2 + math.log(2 * math.pi)
        return value

    def fit(self, data: Any, poi: float | None = None) -> tuple[float, np.ndarray, bool]:
        """``(-2 log L_min, parameters, converged)`` with ``mu`` free (``None``) or fixed to ``poi``."""
        values = np.asarray(data, dtype=float)
        start = self._start.copy()
        if poi is not None:
            start[0] = poi
        m = self._minuit(values, start, poi)
        return float(m.fval), np.array(m.values), bool(m.valid)

    def _minuit(self, data: np.ndarray, start: np.ndarray, poi: float | None) -> Minuit:
        m = Minuit(lambda p: self.twice_nll(np.asarray(p), data), start, name=self.names)
        m.errordef = Minuit.LEAST_SQUARES  # -2 log L: one unit per standard deviation
        m.tol = self.tolerance
        for name in ("mu", "mu_b", "tau_B", "tau_C"):
            m.limits[name] = self.bounds[name]
        if self.delta is not None:
            m.limits["alpha"] = (-5.0, 5.0)
        if poi is not None:
            m.values["mu"] = poi
            m.fixed["mu"] = True
        m.migrad()
        if not m.valid:
            m.migrad()
        return m

    def asimov(self, parameters: np.ndarray) -> np.ndarray:
        """Expected counts (and α's auxiliary datum set to the fitted α, as pyhf does) at ``parameters``."""
        pars = np.asarray(parameters, dtype=float)
        expected = self.expected(pars)
        return np.concatenate([expected, [pars[4]]]) if self.delta is not None else expected

    def background_only_fit(self) -> tuple[dict[str, float], dict[str, float]]:
        """Best fit and HESSE errors of every parameter at μ = 0 on the observed data."""
        start = self._start.copy()
        m = self._minuit(self.observed, start, 0.0)
        m.hesse()
        return dict(zip(self.names, map(float, m.values))), dict(zip(self.names, map(float, m.errors)))


@dataclass(frozen=True)
class AbcdFit(NestedResult):
    """Background-only fit: best values and errors of ``mu_b``, ``tau_B``, ``tau_C`` (and ``alpha``)."""

    best: dict[str, float]
    errors: dict[str, float]


@dataclass(frozen=True)
class AbcdInference(NestedResult):
    r"""Limits and significance of an ABCD model, from pyhf and (cross-check) from iminuit.

    Attributes:
        limit: CLs upper limit on μ (observed and expected band, pyhf).
        significance: Discovery :math:`\sqrt{q_0}` of the observed data (pyhf).
        background_fit: Background-only fit (pyhf, minuit errors).
        limit_iminuit, significance_iminuit, background_fit_iminuit: The same from :class:`AbcdCountingModel`.
        hypotest_at_one: CLs test of μ = 1 (pyhf).
    """

    limit: UpperLimitResult
    significance: float
    background_fit: AbcdFit
    limit_iminuit: UpperLimitResult
    significance_iminuit: float
    background_fit_iminuit: AbcdFit
    hypotest_at_one: HypotestResult
    observed: tuple[float, ...] = field(default=())
    signal: tuple[float, ...] = field(default=())


def _pyhf_background_fit(model: PyhfModel) -> AbcdFit:
    with numpy_minuit(tolerance=1e-6):
        pars, errors = pyhf.infer.mle.fixed_poi_fit(0.0, model.observed, model.model, return_uncertainties=True).T
    names = [n for n in ("mu_b", "tau_B", "tau_C", NONCLOSURE) if n in model.model.config.parameters]
    index = {n: model.model.config.par_slice(n).start for n in names}
    return AbcdFit(best={n: float(pars[i]) for n, i in index.items()}, errors={n: float(errors[i]) for n, i in index.items()})


def abcd_inference(observed: Any, signal: Any = (1.0, 0.0, 0.0, 0.0), *, background_uncertainty: float | None = None,
                   bounds: Mapping[str, tuple[float, float]] | None = None, scan: Sequence[float] | None = None,
                   alpha: float = 0.05, tolerance: float = 1e-4) -> AbcdInference:
    r"""CLs limit (observed, expected band), discovery significance and background-only fit of the ABCD model, pyhf and iminuit.

    Args:
        observed, signal, background_uncertainty, bounds: As :func:`abcd_workspace`.
        scan: μ values of the CLs scan (linear interpolation, as pyhf and abcd-pyhf); default
            ``0, 1, ..., mu_max`` with ``mu_max`` the POI's upper bound.
        alpha: Test size (0.05: 95 % CL).
        tolerance: Minuit tolerance of the pyhf fits.

    Example (the reference of abcd-pyhf 0.0.7: observed limit 7.962507)::

        res = abcd_inference((10, 100, 100, 1000), (1, 0, 0, 0))
        res.limit.observed, res.limit_iminuit.observed    # 7.9625, 7.9625
    """
    ws = abcd_workspace(observed, signal, background_uncertainty=background_uncertainty, bounds=bounds)
    model = PyhfModel(ws, tolerance=tolerance)
    counting = AbcdCountingModel(observed, signal, background_uncertainty=background_uncertainty, bounds=bounds)
    if scan is None:
        hi = counting.bounds["mu"][1]
        scan = np.linspace(0.0, hi, int(round(hi)) + 1) if float(hi).is_integer() and hi <= 200 else np.linspace(0.0, hi, 51)
    limit = workspace_upper_limit(model, scan=scan, alpha=alpha)
    limit_iminuit = asymptotic.upper_limit(counting, counting.observed, scan=scan, alpha=alpha)
    q0 = workspace_hypotest(model, 0.0, test_statistic="q0")
    q0_iminuit = asymptotic.hypotest(counting, counting.observed, 0.0, test_statistic="q0")
    best, errors = counting.background_only_fit()
    return AbcdInference(
        limit=limit, significance=q0.significance, background_fit=_pyhf_background_fit(model), limit_iminuit=limit_iminuit,
        significance_iminuit=q0_iminuit.significance,
        background_fit_iminuit=AbcdFit(best={k: v for k, v in best.items() if k != "mu"}, errors={k: v for k, v in errors.items() if k != "mu"}),
        hypotest_at_one=workspace_hypotest(model, 1.0), observed=tuple(counting.counts.tolist()), signal=tuple(counting.signal.tolist()),
    )
