r"""Asymptotic formulae for likelihood-based tests (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727).

With :math:`t_\mu = -2\log\lambda(\mu) = -2\log[L(\mu,\hat{\hat\theta})/L(\hat\mu,\hat\theta)]`:

* discovery, :math:`q_0 = t_0` if :math:`\hat\mu \ge 0` else 0; :math:`p_0 = 1-\Phi(\sqrt{q_0})`,
  :math:`Z = \sqrt{q_0}`;
* upper limits, :math:`q_\mu = t_\mu` if :math:`\hat\mu \le \mu` else 0;
* :math:`\tilde q_\mu` as :math:`q_\mu` but with :math:`L(0,\hat{\hat\theta}(0))` in the
  denominator when :math:`\hat\mu < 0`;
* the Asimov dataset (expected data at :math:`\mu'`, nuisances profiled on the observed data)
  gives :math:`q_{\mu,A} = (\mu-\mu')^2/\sigma^2`, hence the p-values
  :math:`\mathrm{CL}_{s+b} = 1-\Phi(\sqrt{q_\mu})`,
  :math:`\mathrm{CL}_b = 1-\Phi(\sqrt{q_\mu}-\sqrt{q_{\mu,A}})` (for :math:`\tilde q_\mu` beyond
  :math:`q_{\mu,A}` the variable becomes :math:`(q+q_A)/(2\sqrt{q_A})`), and
  :math:`\mathrm{CL}_s = \mathrm{CL}_{s+b}/\mathrm{CL}_b`, with the expected bands from the
  background-only distribution at :math:`(+2,+1,0,-1,-2)\sigma` (the convention of pyhf and ROOT).

The formulas work on any :math:`-2\log\Lambda`: the hypothesis test runs on a
:class:`ProfileModel`, anything that can fit a dataset with the parameter of interest free or
fixed and produce Asimov data (the binned pyhf adapter in :mod:`sbilab.stats.binned` is one).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from ..exceptions import FitError, WorkspaceError
from .results import HypotestResult, UpperLimitResult

__all__ = [
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
]

TEST_STATISTICS = ("q0", "qmu", "qtilde")
N_SIGMA = (2.0, 1.0, 0.0, -1.0, -2.0)


@runtime_checkable
class ProfileModel(Protocol):
    """What :func:`hypotest` needs of a statistical model.

    ``fit(data, poi=None)`` returns ``(twice_nll, parameters, converged)``: the minimum of
    :math:`-2\\log L` with the parameter of interest free (``poi=None``, within the model's
    bounds) or fixed to ``poi``, the fitted parameter vector, and whether the fit converged.
    ``asimov(parameters)`` returns the expected dataset at those parameters;
    ``poi_index`` is the position of the parameter of interest in the parameter vector.
    """

    poi_index: int

    def fit(self, data: Any, poi: float | None = None) -> tuple[float, np.ndarray, bool]: ...

    def asimov(self, parameters: np.ndarray) -> Any: ...


def q0(t0: float, mu_hat: float) -> float:
    r"""Discovery statistic :math:`q_0 = t_0` for :math:`\hat\mu \ge 0`, else 0 (eq. 12 of 1007.1727)."""
    return max(float(t0), 0.0) if mu_hat >= 0 else 0.0


def qmu(t_mu: float, mu_hat: float, mu: float) -> float:
    r"""Upper-limit statistic :math:`q_\mu = t_\mu` for :math:`\hat\mu \le \mu`, else 0 (eq. 14)."""
    return max(float(t_mu), 0.0) if mu_hat <= mu else 0.0


def qtilde_mu(twice_nll_mu: float, twice_nll_free: float, twice_nll_zero: float, mu_hat: float, mu: float) -> float:
    r""":math:`\tilde q_\mu` (eq. 16): the denominator is :math:`L(0,\hat{\hat\theta}(0))` when :math:`\hat\mu<0`.

    Args:
        twice_nll_mu: :math:`-2\log L(\mu, \hat{\hat\theta}(\mu))`.
        twice_nll_free: :math:`-2\log L(\hat\mu, \hat\theta)` (unconstrained :math:`\hat\mu`).
        twice_nll_zero: :math:`-2\log L(0, \hat{\hat\theta}(0))` (only used if :math:`\hat\mu<0`).
    """
    if mu_hat > mu:
        return 0.0
    denominator = twice_nll_zero if mu_hat < 0 else twice_nll_free
    return max(float(twice_nll_mu - denominator), 0.0)


def _variable(q: float, q_asimov: float, kind: str) -> float:
    """Test statistic in the space of :math:`-\\hat\\mu/\\sigma` (pyhf's convention)."""
    sq, sqa = math.sqrt(max(q, 0.0)), math.sqrt(max(q_asimov, 0.0))
    if kind == "qtilde" and sq > sqa:
        return (q - q_asimov) / (2 * sqa)
    return sq - sqa


def p_values(q: float, q_asimov: float, *, kind: str = "qtilde") -> tuple[float, float, float]:
    r""":math:`(\mathrm{CL}_{s+b}, \mathrm{CL}_b, \mathrm{CL}_s)` from the observed and Asimov statistics.

    For ``kind="q0"`` the first entry is the discovery p-value :math:`p_0 = 1-\Phi(\sqrt{q_0})`.
    """
    _check_kind(kind)
    sqa = math.sqrt(max(q_asimov, 0.0))
    if kind == "qtilde" and sqa == 0.0 and q > 0.0:
        # no sensitivity (Asimov statistic exactly 0) but q > 0: both tails vanish; CLs keeps its
        # limit exp(-q/2) as sqrt(q_A) -> 0 instead of 0/0
        return 0.0, 0.0, math.exp(-q / 2)
    value = _variable(q, q_asimov, kind)
    log_clsb, log_clb = float(norm.logcdf(-(value + sqa))), float(norm.logcdf(-value))
    return math.exp(log_clsb), math.exp(log_clb), math.exp(log_clsb - log_clb)


def expected_cls(q_asimov: float) -> tuple[float, ...]:
    r"""Expected :math:`\mathrm{CL}_s` at :math:`(+2,+1,0,-1,-2)\sigma` of the background-only hypothesis.

    .. math:: \mathrm{CL}_s^{(n)} = \Phi(-(n + \sqrt{q_{\mu,A}}))/\Phi(-n).

    Example:
        >>> [round(v, 5) for v in expected_cls(4.0)]
        [0.00139, 0.00851, 0.0455, 0.18857, 0.51164]
    """
    sqa = math.sqrt(max(q_asimov, 0.0))
    return tuple(float(norm.cdf(-(n + sqa)) / norm.cdf(-n)) for n in N_SIGMA)


def asimov_significance(s: float, b: float, sigma_b: float = 0.0) -> float:
    r"""Median discovery significance of a counting experiment (eqs. 97 of 1007.1727 and its extension).

    .. math:: Z_A = \sqrt{2[(s+b)\ln(1+s/b) - s]}

    and with a background uncertainty :math:`\sigma_b`,
    :math:`Z_A = \sqrt{2[(s+b)\ln\frac{(s+b)(b+\sigma_b^2)}{b^2+(s+b)\sigma_b^2}
    - \frac{b^2}{\sigma_b^2}\ln(1+\frac{\sigma_b^2 s}{b(b+\sigma_b^2)})]}`.

    Example:
        >>> round(asimov_significance(10.0, 100.0), 4)
        0.984
    """
    if s < 0 or b <= 0 or sigma_b < 0:
        raise FitError(f"asimov_significance needs s >= 0, b > 0, sigma_b >= 0; got s={s}, b={b}, sigma_b={sigma_b}.")
    if sigma_b == 0:
        return math.sqrt(2 * ((s + b) * math.log1p(s / b) - s))
    v = sigma_b**2
    term1 = (s + b) * math.log((s + b) * (b + v) / (b * b + (s + b) * v))
    term2 = b * b / v * math.log1p(v * s / (b * (b + v)))
    return math.sqrt(2 * (term1 - term2))


def _check_model(model: Any, function: str) -> None:
    """Refuse what is not a :class:`ProfileModel`, pointing pyhf workspaces to the workspace-level function."""
    if isinstance(model, ProfileModel):
        return
    if type(model).__module__.split(".")[0] == "pyhf":
        raise WorkspaceError(
            f"sbilab.stats.{function} takes a profile model and a dataset, got a {type(model).__module__}.{type(model).__name__}; "
            f"for a pyhf workspace call sbilab.stats.binned.workspace_{function}(workspace, ...), or pass "
            "PyhfModel(workspace) and its .observed data."
        )
    raise FitError(f"sbilab.stats.{function}: model must be a ProfileModel (fit(data, poi), asimov(parameters), poi_index); "
                   f"got {type(model).__name__}.")


def unbinned_asimov(signal_density: np.ndarray, background_density: np.ndarray, dx: float, signal: float, background: float,
                    *, cl: float = 0.95) -> tuple[float, float]:
    r"""Statistics-only *unbinned* Asimov discovery significance and median expected CLs limit of a signal strength μ.

    For expected events :math:`\nu(x) = \mu S p_s(x) + B p_b(x)` with known shapes, the Asimov
    discovery statistic at μ = 1 and the statistic of background-only Asimov data tested at μ are

    .. math::
        q_0^A = 2\int \bigl[(Bp_b + Sp_s)\ln(1 + Sp_s/Bp_b) - Sp_s\bigr]\,dx, \qquad
        q_\mu^A = 2\int \bigl[\mu S p_s - Bp_b \ln(1 + \mu S p_s/Bp_b)\bigr]\,dx

    (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727). The significance is :math:`\sqrt{q_0^A}`;
    the median expected limit solves :math:`\sqrt{q_\mu^A} = \Phi^{-1}(1 - (1 - \mathrm{cl})/2)`
    (median :math:`\mathrm{CL}_s = 2\Phi(-\sqrt{q_\mu^A}) = 1 - \mathrm{cl}`). By the log-sum
    inequality no binning of x reaches above these; profiled systematics only lower them.

    Args:
        signal_density: :math:`p_s` on a uniform grid of spacing ``dx``, ``(K,)`` (Riemann sum).
        background_density: :math:`p_b` on the same grid, ``(K,)``, positive.
        dx: Grid spacing.
        signal: Expected signal events S at μ = 1.
        background: Expected background events B.
        cl: Confidence level of the limit.

    Returns:
        ``(significance, expected_limit)``.

    Example:
        >>> x = np.linspace(0.0, 1.0, 1001)[:-1] + 0.0005  # uniform s and b: a counting experiment
        >>> z, _ = unbinned_asimov(np.ones_like(x), np.ones_like(x), 0.001, 10.0, 100.0)
        >>> round(z, 6) == round(asimov_significance(10.0, 100.0), 6)
        True
    """
    ps, pb, s, b = np.asarray(signal_density), np.asarray(background_density), float(signal), float(background)

    def q_limit(mu: float) -> float:  # Asimov background-only data tested at mu
        return 2 * float(np.sum(mu * s * ps - b * pb * np.log1p(mu * s * ps / (b * pb))) * dx)

    q_discovery = 2 * float(np.sum((b * pb + s * ps) * np.log1p(s * ps / (b * pb)) - s * ps) * dx)
    target = float(norm.ppf(1 - (1 - cl) / 2)) ** 2
    return math.sqrt(q_discovery), float(brentq(lambda mu: q_limit(mu) - target, 1e-6, 1e3))


def _check_kind(kind: str) -> None:
    if kind not in TEST_STATISTICS:
        raise FitError(f"test_statistic must be one of {TEST_STATISTICS}, got {kind!r}.")


def _statistic(model: ProfileModel, data: Any, mu: float, kind: str) -> tuple[float, bool]:
    free_nll, free_pars, ok_free = model.fit(data, None)
    mu_hat = float(free_pars[model.poi_index])
    fixed_nll, _, ok_fixed = model.fit(data, 0.0 if kind == "q0" else mu)
    ok = ok_free and ok_fixed
    t = fixed_nll - free_nll
    if kind == "q0":
        return q0(t, mu_hat), ok
    if kind == "qmu":
        return qmu(t, mu_hat, mu), ok
    zero_nll = free_nll
    if mu_hat < 0:
        zero_nll, _, ok_zero = model.fit(data, 0.0)
        ok = ok and ok_zero
    return qtilde_mu(fixed_nll, free_nll, zero_nll, mu_hat, mu), ok


def hypotest(model: ProfileModel, data: Any, poi: float, *, test_statistic: str = "qtilde") -> HypotestResult:
    r"""Asymptotic test of :math:`\mu` = ``poi`` (or of :math:`\mu=0` for ``q0``) on ``data``.

    The Asimov dataset is the model's expectation at :math:`\mu'=0` (``qmu``, ``qtilde``) or
    :math:`\mu'=1` (``q0``) with the nuisance parameters fitted to ``data`` at that
    :math:`\mu'` (as in pyhf and ROOT).

    For a pyhf workspace use :func:`sbilab.stats.binned.workspace_hypotest`.

    Returns:
        A :class:`HypotestResult`; ``valid=False`` if any of the fits did not converge.

    Raises:
        WorkspaceError: ``model`` is a pyhf object (the message names the workspace-level function).
        FitError: ``model`` is not a :class:`ProfileModel`, or an unknown ``test_statistic``.
    """
    _check_model(model, "hypotest")
    _check_kind(test_statistic)
    mu = float(poi)
    q_obs, ok_obs = _statistic(model, data, mu, test_statistic)
    mu_prime = 1.0 if test_statistic == "q0" else 0.0
    _, asimov_pars, ok_asimov_pars = model.fit(data, mu_prime)
    q_asimov, ok_asimov = _statistic(model, model.asimov(asimov_pars), mu, test_statistic)
    clsb, clb, cls = p_values(q_obs, q_asimov, kind=test_statistic)
    return HypotestResult(
        poi=mu,
        test_statistic=test_statistic,
        q_obs=q_obs,
        q_asimov=q_asimov,
        cls_obs=cls,
        clsb_obs=clsb,
        clb_obs=clb,
        cls_expected=expected_cls(q_asimov),
        significance=math.sqrt(q_obs) if test_statistic == "q0" else math.nan,
        valid=bool(ok_obs and ok_asimov_pars and ok_asimov),
    )


def _crossing(xs: np.ndarray, ys: np.ndarray, level: float) -> float:
    """First crossing of ``ys`` down through ``level`` by linear interpolation; nan if none."""
    for i in range(len(xs) - 1):
        if ys[i] >= level > ys[i + 1]:
            return float(xs[i] + (level - ys[i]) * (xs[i + 1] - xs[i]) / (ys[i + 1] - ys[i]))
    return math.nan


def upper_limit(
    model: ProfileModel,
    data: Any,
    *,
    alpha: float = 0.05,
    scan: Sequence[float] | None = None,
    bracket: tuple[float, float] = (0.0, 10.0),
    test_statistic: str = "qtilde",
) -> UpperLimitResult:
    r"""CLs upper limit: the :math:`\mu` where :math:`\mathrm{CL}_s = \alpha`, observed and expected band.

    Args:
        alpha: Test size; 0.05 gives the 95% CL limit.
        scan: POI values to scan; the limits are linear interpolations of CLs between scan points
            (like pyhf's ``upper_limit`` with a scan). Without a scan, Brent root finding in ``bracket``.
        bracket: Search interval for root finding.

    For a pyhf workspace use :func:`sbilab.stats.binned.workspace_upper_limit`.

    Raises:
        WorkspaceError: ``model`` is a pyhf object (the message names the workspace-level function).
        FitError: ``model`` is not a :class:`ProfileModel`, ``alpha`` not in (0, 1), or CLs does
            not cross ``alpha`` inside the bracket.
    """
    _check_model(model, "upper_limit")
    if not 0 < alpha < 1:
        raise FitError(f"alpha must be in (0, 1), got {alpha}.")
    if scan is not None:
        xs = np.asarray(scan, dtype=float)
        results = [hypotest(model, data, float(mu), test_statistic=test_statistic) for mu in xs]
        obs = np.array([r.cls_obs for r in results])
        exp = np.array([r.cls_expected for r in results])
        return UpperLimitResult(
            observed=_crossing(xs, obs, alpha),
            expected=tuple(_crossing(xs, exp[:, k], alpha) for k in range(5)),
            alpha=alpha,
            scan=tuple(xs.tolist()),
            cls_obs=tuple(obs.tolist()),
        )
    lo, hi = bracket

    def root(index: int | None) -> float:
        def f(mu: float) -> float:
            r = hypotest(model, data, mu, test_statistic=test_statistic)
            return (r.cls_obs if index is None else r.cls_expected[index]) - alpha

        a = max(lo, 1e-6 * (hi - lo))
        if f(a) * f(hi) > 0:
            raise FitError(f"CLs - alpha does not change sign on bracket ({a}, {hi}); widen `bracket` or give a `scan`.")
        return float(brentq(f, a, hi, xtol=1e-6 * (hi - lo)))

    return UpperLimitResult(observed=root(None), expected=tuple(root(k) for k in range(5)), alpha=alpha)
