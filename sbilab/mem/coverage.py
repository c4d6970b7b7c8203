r"""Does the proposal cover the integrand? A check against a broad proposal, made loud.

Importance sampling is unbiased only where the proposal has support. A proposal that misses a
region where the integrand is small but not zero (a tail, a second permutation, the other
root of a quadratic) never samples it: the estimate is low by that region's share and its
stated error, computed from the samples it did draw, is small. Nothing in the samples
themselves reveals it. :func:`check_coverage` estimates the same integrals with a broad
proposal (plain Monte Carlo over the box, the process at a reference point, a defensive
mixture) on a subset of events and flags those where the proposal is significantly low:

.. math::
    d_i = 1 - \hat I^{q}_i / \hat I^{b}_i, \qquad
    t_i = \frac{\hat I^{b}_i - \hat I^{q}_i}{\sqrt{(\delta^q_i\hat I^q_i)^2 + (\delta^b_i\hat I^b_i)^2}},

flagged when :math:`t_i >` ``threshold`` and :math:`d_i >` ``tolerance``. A flagged check
raises a :class:`CoverageWarning`; :class:`~sbilab.mem.likelihood.MatrixElementLikelihood`
runs it on the first events it sees when given ``coverage=``. The broad estimate is itself
noisy, so the check finds misses larger than a few of its standard errors; a proposal that
is *high* against the broad one is not flagged (the broad one missed).

**Bias over many events.** Per-event pulls :math:`(\log\hat I^q - \log\hat I^b)/\delta` are the
wrong test of unbiasedness for importance sampling: a weight distribution with a long upper
tail makes the estimate and its stated error from the same samples correlate (a draw that
missed the rare large weights is low *and* has a small error), so the mean pull is negative
for an unbiased estimator (toy 2, learned proposal at 2048 samples, 50 events × 40 seeds
against quadrature: mean pull −0.20, mean of :math:`\hat I^q/I - 1` :math:`(+4.9 \pm 6.6)\times10^{-4}`). :func:`check_agreement` tests the raw relative
differences instead: their mean over events against its standard error from their spread.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..stats.results import ResultBase
from .integrate import Integral, integrate
from .model import MatrixElement
from .proposals import Proposal

__all__ = ["CoverageCheck", "CoverageWarning", "check_coverage", "compare_integrals", "AgreementCheck", "check_agreement"]


class CoverageWarning(UserWarning):
    """A proposal's per-event integrals are significantly below a broad proposal's: it misses part of the integrand."""


@dataclass(frozen=True)
class CoverageCheck(ResultBase):
    """Per-event comparison of a proposal with a broad reference proposal.

    Attributes:
        rows: Rows of the events checked (in the caller's batch).
        ratio: :math:`\\hat I^q/\\hat I^b` per checked event.
        pull: :math:`t_i` per checked event (positive: the proposal is low).
        flagged: Rows whose proposal estimate is low by more than ``threshold`` standard
            errors and ``tolerance`` relative.
        threshold, tolerance: The criteria used.
    """

    rows: tuple[int, ...]
    ratio: tuple[float, ...]
    pull: tuple[float, ...]
    flagged: tuple[int, ...]
    threshold: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """No event flagged."""
        return not self.flagged

    def message(self) -> str:
        """One line: what was checked and, if flagged, the worst event."""
        if self.passed:
            return f"coverage check passed on {len(self.rows)} events (largest pull {max(self.pull, default=0.0):.2f})."
        worst = max(range(len(self.rows)), key=lambda i: self.pull[i])
        return (f"the proposal misses part of the integrand on {len(self.flagged)} of {len(self.rows)} events checked: "
                f"worst row {self.rows[worst]} is low by {1 - self.ratio[worst]:.1%} ({self.pull[worst]:.1f} standard errors) "
                "against the broad proposal, while its own stated error is small. Add a defensive component "
                "(MultiChannel([proposal, broad], [0.9, 0.1])), widen the proposal, or retrain it where the integrand lives.")

    @staticmethod
    def merge(checks: "list[CoverageCheck]") -> "CoverageCheck | None":
        """One check from several (rows concatenated as given), or ``None`` for none."""
        if not checks:
            return None
        return CoverageCheck(sum((c.rows for c in checks), ()), sum((c.ratio for c in checks), ()), sum((c.pull for c in checks), ()),
                             sum((c.flagged for c in checks), ()), checks[0].threshold, checks[0].tolerance)


def compare_integrals(own: Integral, broad: Integral, rows: Tensor, *, threshold: float = 4.0, tolerance: float = 0.01,
                      warn: bool = True) -> CoverageCheck:
    """The :class:`CoverageCheck` of two estimates of the same events (``rows (n,)`` their row numbers).

    Warns with :class:`CoverageWarning` (``warn=True``) when an event is flagged. Events where the
    broad estimate is zero cannot be judged and are not flagged.
    """
    log_ratio = own.log_value.to(torch.float64) - broad.log_value.to(torch.float64)
    ratio = torch.exp(torch.where(torch.isfinite(broad.log_value), log_ratio, torch.zeros_like(log_ratio)))
    sigma = torch.sqrt((own.rel_error * ratio) ** 2 + broad.rel_error**2)  # in units of the broad value
    pull = torch.where(torch.isfinite(broad.log_value), (1 - ratio) / sigma.clamp(min=1e-300), torch.zeros_like(ratio))
    bad = (pull > threshold) & (1 - ratio > tolerance)
    check = CoverageCheck(tuple(int(r) for r in rows), tuple(float(v) for v in ratio), tuple(float(v) for v in pull),
                          tuple(int(r) for r in rows[bad]), float(threshold), float(tolerance))
    if warn and not check.passed:
        warnings.warn(check.message(), CoverageWarning, stacklevel=3)
    return check


def check_coverage(
    model: MatrixElement,
    x: Tensor,
    theta: Tensor,
    proposal: Proposal,
    broad: Proposal,
    *,
    events: int | None = 16,
    samples: int = 1024,
    broad_samples: int = 16384,
    threshold: float = 4.0,
    tolerance: float = 0.01,
    seed: int = 0,
    warn: bool = True,
) -> CoverageCheck:
    r"""Compare ``proposal`` with a ``broad`` one on (a subset of) the events; warn when it is significantly low.

    Args:
        model: The matrix-element model.
        x: Events, ``(N, D)``.
        theta: ``(P,)`` or ``(N, P)`` in ``model.parameter_names`` order.
        proposal: The proposal under test, at the sample count it is used with.
        broad: A proposal covering the whole integrand (its estimate is the reference).
        events: How many events to check, evenly spread over the batch (``None``: all).
        samples, broad_samples: Samples per event of each estimate.
        threshold, tolerance: Flag when low by more than ``threshold`` standard errors and ``tolerance`` relative.
        seed: Noise of both estimates (independent streams).
        warn: Warn with :class:`CoverageWarning` when flagged.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(model.parameter_names)).expand(x.shape[0], -1)
    n = x.shape[0]
    k = n if events is None else min(int(events), n)
    rows = torch.unique(torch.linspace(0, n - 1, k).round().long()) if k < n else torch.arange(n)
    own = integrate(model, x[rows], theta[rows], proposal, samples=samples, seed=seed)
    ref = integrate(model, x[rows], theta[rows], broad, samples=broad_samples, seed=seed + 7919)
    return compare_integrals(own, ref, rows, threshold=threshold, tolerance=tolerance, warn=warn)


@dataclass(frozen=True)
class AgreementCheck(ResultBase):
    r"""Whether two estimators of the same per-event integrals agree on average (unbiasedness).

    With :math:`d_i = \hat I^q_i/\hat I^r_i - 1` over the ``events`` events:

    Attributes:
        events: Number of events with both estimates positive.
        mean_difference: :math:`\bar d`, the mean relative difference.
        standard_error: :math:`\mathrm{sd}(d)/\sqrt n`: from the spread of the differences, not
            from the stated errors (which correlate with the estimates).
        t: ``mean_difference / standard_error``.
        mean_pull, sd_pull: Mean and standard deviation of the per-event pulls
            :math:`(\log\hat I^q - \log\hat I^r)/\sqrt{\delta_q^2 + \delta_r^2}` (for information:
            biased negative for heavy-tailed weights, see the module text).
        threshold: ``|t|`` above which :attr:`passed` is false.
    """

    events: int
    mean_difference: float
    standard_error: float
    t: float
    mean_pull: float
    sd_pull: float
    threshold: float

    @property
    def passed(self) -> bool:
        """The mean relative difference is within ``threshold`` standard errors of zero."""
        return abs(self.t) <= self.threshold


def check_agreement(own: Integral, reference: Integral, *, threshold: float = 3.0) -> AgreementCheck:
    r"""Test that ``own`` estimates the same integrals as ``reference`` on average over the events.

    Both are :class:`~sbilab.mem.integrate.Integral` of the same events with independent
    noise. The test statistic is the mean of :math:`d_i = \hat I^q_i/\hat I^r_i - 1` over its
    standard error from the spread of the :math:`d_i` (events independent), so an unbiased
    estimator with heavy-tailed weights passes and one low by a fixed fraction fails once that
    fraction exceeds a few :math:`\mathrm{sd}(d)/\sqrt n`. The reference's own noise biases
    :math:`\bar d` by about :math:`+\overline{\delta_r^2}` (Jensen), negligible when the
    reference is the more precise of the two.
    """
    a, b = own.log_value.to(torch.float64), reference.log_value.to(torch.float64)
    ok = torch.isfinite(a) & torch.isfinite(b)
    n = int(ok.sum())
    d = torch.exp(a[ok] - b[ok]) - 1
    pull = (a[ok] - b[ok]) / torch.sqrt(own.rel_error[ok].double() ** 2 + reference.rel_error[ok].double() ** 2)
    mean = float(d.mean()) if n else float("nan")
    se = float(d.std() / n**0.5) if n > 1 else float("nan")
    t = mean / se if n > 1 and se > 0 else (0.0 if n > 1 and mean == 0 else float("nan"))
    return AgreementCheck(n, mean, se, t, float(pull.mean()) if n else float("nan"), float(pull.std()) if n > 1 else float("nan"),
                          float(threshold))
