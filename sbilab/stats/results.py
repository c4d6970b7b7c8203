r"""Small frozen result types of the statistics layer.

Every result is a frozen dataclass of plain Python numbers and tuples (no tensors, no
Minuit objects), so it can be compared, logged and written to JSON with ``to_dict()``.
A fit that did not converge is reported through ``valid=False`` and a ``message``, never
as a silent number.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FitResult", "ProfileResult", "Profile2DResult", "HypotestResult", "UpperLimitResult", "ResultBase"]


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and dicts to JSON-able Python objects (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class ResultBase:
    """Mixin: ``to_dict()`` for JSON."""

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable Python objects (NaN becomes ``None``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class FitResult(ResultBase):
    r"""Result of a maximum-likelihood fit.

    Attributes:
        names: Parameter names, in order.
        best: Best-fit values by name.
        errors: Parabolic (HESSE) errors by name; 0 for fixed parameters.
        covariance: Covariance matrix as nested tuples, in the order of ``names``.
        minos: MINOS intervals ``{name: (lo, hi)}`` as absolute bounds (empty if not run).
        nll_min: Minimum of :math:`-2\log L` (up to the constant of the reference).
        valid: Whether the result is a measurement: MIGRAD reported a valid minimum and HESSE an
            accurate covariance, no free parameter sits at a bound of its range, no observed
            weight is negative, and at most the allowed fraction of observed events lies
            outside the estimator's training support (:mod:`sbilab.stats.quality`).
        converged: Whether MIGRAD converged (EDM below tolerance, no call limit).
        fixed: Names of parameters held fixed.
        n_calls: Number of function calls.
        message: Why the fit is not valid (empty when valid); also :attr:`reason`.
        at_bound: Free parameters whose optimum lies at a bound of their range.
        outside_support: Weighted fraction of observed events outside the estimator's training
            support (NaN when the estimator recorded none).
        notes: What a user should know that does not make the fit invalid (e.g. that the
            training-support check was unavailable).
    """

    names: tuple[str, ...]
    best: dict[str, float]
    errors: dict[str, float]
    covariance: tuple[tuple[float, ...], ...]
    minos: dict[str, tuple[float, float]]
    nll_min: float
    valid: bool
    converged: bool
    fixed: tuple[str, ...] = ()
    n_calls: int = 0
    message: str = ""
    at_bound: tuple[str, ...] = ()
    outside_support: float = math.nan
    notes: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """Why the fit is not valid (empty when valid); the same as ``message``."""
        return self.message

    def correlation(self) -> np.ndarray:
        """Correlation matrix, ``(P, P)``."""
        cov = np.asarray(self.covariance, dtype=float)
        sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
        return cov / np.outer(sd, sd)

    def values(self) -> np.ndarray:
        """Best-fit values in the order of ``names``, ``(P,)``."""
        return np.array([self.best[n] for n in self.names])


@dataclass(frozen=True)
class ProfileResult(ResultBase):
    r"""A 1-D profile :math:`-2\Delta\log L(\theta_j)` with the nuisances re-minimised.

    Attributes:
        name: The scanned parameter.
        values: Scan points.
        delta_nll: :math:`-2\Delta\log L` at each point relative to the global minimum.
        valid: Per-point validity of the conditional fits.
        best: Global best-fit value of ``name``.
        nll_min: Global minimum of :math:`-2\log L`.
    """

    name: str
    values: tuple[float, ...]
    delta_nll: tuple[float, ...]
    valid: tuple[bool, ...]
    best: float
    nll_min: float

    def interval(self, cl: float = 0.6826894921370859) -> tuple[float, float]:
        r"""Interval where :math:`-2\Delta\log L` lies below the :math:`\chi^2_1` quantile of ``cl``.

        The crossings are found by linear interpolation between scan points; an end that
        does not cross within the scan is returned as ``nan``.
        """
        from scipy.stats import chi2

        level = float(chi2.ppf(cl, 1))
        x = np.asarray(self.values)
        y = np.asarray(self.delta_nll)
        i_min = int(np.nanargmin(y))
        lo = hi = math.nan
        for i in range(i_min, 0, -1):
            if y[i - 1] >= level > y[i] or (y[i - 1] >= level and y[i] <= level):
                lo = float(x[i] + (level - y[i]) * (x[i - 1] - x[i]) / (y[i - 1] - y[i]))
                break
        for i in range(i_min, len(x) - 1):
            if y[i + 1] >= level and y[i] <= level:
                hi = float(x[i] + (level - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))
                break
        return lo, hi


@dataclass(frozen=True)
class Profile2DResult(ResultBase):
    r"""A 2-D profile on a grid: ``delta_nll[i][j]`` at ``(x_values[i], y_values[j])``."""

    names: tuple[str, str]
    x_values: tuple[float, ...]
    y_values: tuple[float, ...]
    delta_nll: tuple[tuple[float, ...], ...]
    valid: tuple[tuple[bool, ...], ...]
    nll_min: float

    def contains(self, cl: float = 0.6826894921370859) -> np.ndarray:
        r"""Boolean grid of points inside the joint region (:math:`\chi^2_2` quantile of ``cl``)."""
        from scipy.stats import chi2

        return np.asarray(self.delta_nll) <= chi2.ppf(cl, 2)


@dataclass(frozen=True)
class HypotestResult(ResultBase):
    r"""Result of an asymptotic hypothesis test at one value of the parameter of interest.

    Attributes:
        poi: Tested value :math:`\mu`.
        test_statistic: Kind: ``"q0"``, ``"qmu"`` or ``"qtilde"``.
        q_obs: Observed test statistic.
        q_asimov: Test statistic on the Asimov dataset (:math:`q_{\mu,A}`).
        cls_obs, clsb_obs, clb_obs: Observed :math:`\mathrm{CL}_s`, :math:`\mathrm{CL}_{s+b}`,
            :math:`\mathrm{CL}_b` (for ``q0``: ``clsb_obs`` is the discovery p-value).
        cls_expected: Expected :math:`\mathrm{CL}_s` at :math:`(+2, +1, 0, -1, -2)\sigma`
            of the background-only test statistic (pyhf's order).
        significance: :math:`Z = \Phi^{-1}(1-p)` of the observed p-value (``q0``) or ``nan``.
        valid: Whether all underlying fits converged.
    """

    poi: float
    test_statistic: str
    q_obs: float
    q_asimov: float
    cls_obs: float
    clsb_obs: float
    clb_obs: float
    cls_expected: tuple[float, ...]
    significance: float
    valid: bool


@dataclass(frozen=True)
class UpperLimitResult(ResultBase):
    r"""CLs upper limit on the parameter of interest.

    Attributes:
        observed: Observed upper limit at confidence level ``1 - alpha``.
        expected: Expected limits at :math:`(+2, +1, 0, -1, -2)\sigma` (pyhf's order: the
            first is the *lower* edge of the ±2σ band in μ).
        alpha: Test size (0.05 for 95% CL).
        scan: Scanned POI values (empty when root finding was used).
        cls_obs: Observed CLs at ``scan``.
    """

    observed: float
    expected: tuple[float, ...]
    alpha: float
    scan: tuple[float, ...] = ()
    cls_obs: tuple[float, ...] = ()
