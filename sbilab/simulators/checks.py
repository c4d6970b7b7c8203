r"""Identity checks of augmented data: the joint score has mean zero, the joint ratio mean one.

For every simulator, every θ and every reference point,

.. math::
    E_{x,z\sim p(\cdot|\theta)}\big[t(x,z|\theta)\big] = \int \nabla_\theta\, p(x,z|\theta)\,dx\,dz = 0,
    \qquad
    E_{x,z\sim p(\cdot|\theta_\mathrm{ref})}\big[r(x,z|\theta,\theta_\mathrm{ref})\big]
        = E_{x,z\sim p(\cdot|\theta)}\big[1/r(x,z|\theta,\theta_\mathrm{ref})\big] = 1.

A ``joint_log_prob`` that misses a θ-dependent normalisation :math:`c(\theta)` (an acceptance
:math:`A(\theta)` of a cut, a cross section) samples correctly but gives
:math:`E[t] = \nabla_\theta\log c` and :math:`E_\mathrm{ref}[r] = c(\theta)/c(\theta_\mathrm{ref})`;
estimators trained on such data learn a mis-normalised ratio and fits are biased, silently.
These checks catch it from the augmented data alone, at the cost of a few sums.

The statistics. Since the identities hold *conditionally on θ* and θ varies from row to row
(training data draw it from a proposal), rows are grouped: all rows, and, for every parameter
whose values vary, ``bins`` groups of equal size by that parameter's quantiles (a missing
normalisation whose effect changes sign across θ would cancel in the overall mean, not within
the groups).

*Joint score* (:func:`joint_score_check`), on events drawn at their own θ: in each group G
and for each parameter j, with event weights :math:`w_i` and :math:`y_i = t_j(x_i,z_i|\theta_i)`,

.. math::
    \bar y_G = \frac{\sum_{i\in G} w_i y_i}{\sum_{i\in G} w_i}, \qquad
    \sigma_G = \frac{\sqrt{\sum_{i\in G} w_i^2 (y_i - \bar y_G)^2}}{\sum_{i\in G} w_i}, \qquad
    \text{pull}_G = \bar y_G / \sigma_G.

A score can have a tail so heavy that its variance is infinite; then :math:`\sigma_G`
underestimates the spread and the pull is not Gaussian. Each group therefore also reports the
Hill estimate of the tail index of :math:`v_i = |w_i(y_i - \bar y_G)|`,
:math:`\hat k = \frac1M\sum_{m=1}^{M}\log\frac{v_{(m)}}{v_{(M+1)}}` over the
:math:`M = \min(N/5, 3\sqrt N)` largest values (Hill 1975; the tail size of PSIS, Vehtari et al.,
arXiv:1507.02646); a tail :math:`P(v > u) \propto u^{-1/k}` has a finite variance only for
k < 1/2 and a finite mean only for k < 1. Groups with :math:`\hat k \ge` ``max_tail_index``
(default 0.7, PSIS's limit of reliable estimates) are reported but not judged, and the message
says so. Measured on the Morphing (one and two couplings, 15 seeds of 2·10⁴ pairs and of 2·10⁴
events at the reference) and ResonanceBackground toys (6 seeds of 10⁴), every group judged: no
score pull beyond 3σ in 642 groups, 134 of them with :math:`0.5 \le \hat k < 1`.

*Joint ratio* (:func:`joint_ratio_check`): the plain mean of r over events drawn at the
reference is *not* used for the verdict. Joint ratios are often so heavy-tailed that a sample
misses the rare events that carry the mean, and no error computed from that sample can know
it (measured on the Morphing toy: groups with mean 0.77 ± 0.007 and a harmless-looking tail
index 0.35, a −34σ false alarm). The check uses the bridge estimate of :func:`bridge_test`
instead, which combines the events drawn at the reference with those drawn at θ through
bounded averages, so its error is reliable whatever the tails of r.

A judged group fails when its pull exceeds ``threshold`` (default 5) in absolute value. The
per-group false-alarm probability is then about :math:`6\times10^{-7}` for a Gaussian mean, so
with the ≤ 100 groups of a check a false alarm has a probability below about :math:`10^{-4}`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, IdentityCheckError, IdentityCheckWarning, InvalidEventsError, ShapeMismatchError

__all__ = ["CheckMode", "MeanTest", "IdentityCheck", "mean_test", "bridge_test", "tail_index", "joint_score_check", "joint_ratio_check",
           "check_augmented", "enforce"]

CheckMode = Literal["raise", "warn", "off"]
"""What a failed check does: raise :class:`~sbilab.exceptions.IdentityCheckError`, warn with
:class:`~sbilab.exceptions.IdentityCheckWarning`, or nothing (the check is not even run)."""

_MODES = ("raise", "warn", "off")
_HINT = "does joint_log_prob include every θ-dependent normalisation, e.g. an acceptance?"


def tail_index(values: Tensor) -> float:
    r"""Hill estimate :math:`\hat k` of the upper tail of ``|values| (N,)``; NaN when fewer than 50 values.

    :math:`\hat k \ge 1/2` suggests an infinite variance (see the module docs).

    Example:
        >>> u = torch.rand(100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> round(tail_index(u ** -0.8), 1)  # a Pareto tail with k = 0.8
        0.8
    """
    v = values.detach().abs().to(torch.float64).reshape(-1)
    n = v.numel()
    if n < 50:
        return math.nan
    m = max(10, min(n // 5, int(3 * math.sqrt(n))))
    top = torch.topk(v, m + 1).values
    if not float(top[-1]) > 0:
        return math.nan
    return float(torch.log(top[:-1] / top[-1]).mean())


@dataclass(frozen=True)
class MeanTest:
    """A weighted mean tested against its expectation in one group of events.

    Attributes:
        quantity: What was averaged, e.g. ``"mean joint score for tau"``.
        group: Which events, e.g. ``"all events"`` or ``"tau in [0.5, 0.87]"``.
        n: Number of events.
        mean: Weighted mean.
        expected: Its expectation under a correct simulator.
        error: Statistical error of the mean (see the module docs).
        pull: ``(mean - expected) / error``.
        tail_index: Hill estimate of the tail (NaN for small groups).
        judged: Whether the pull is trusted (tail index below the limit).
    """

    quantity: str
    group: str
    n: int
    mean: float
    expected: float
    error: float
    pull: float
    tail_index: float
    judged: bool

    def describe(self) -> str:
        value = f"{self.mean:+.4g}" if self.expected == 0 else f"{self.mean:.4g}"
        return (f"{self.quantity} is {value} ± {self.error:.2g} ({abs(self.pull):.1f}σ from "
                f"{self.expected:g}) over {self.n} events ({self.group})")

    def to_dict(self) -> dict[str, float | int | str | bool]:
        return dict(self.__dict__)


def mean_test(values: Tensor, *, expected: float, weights: Tensor | None = None, quantity: str = "value",
              group: str = "all events", max_tail_index: float = 0.5) -> MeanTest:
    r"""Weighted mean of ``values (N,)`` with its error, pull against ``expected`` and tail index.

    Args:
        values: One value per event, ``(N,)``.
        expected: The mean a correct simulator or estimator gives.
        weights: Event weights, ``(N,)`` (default ones).
        max_tail_index: Groups whose Hill tail index reaches it are not judged.
    """
    y = values.detach().to(torch.float64).reshape(-1)
    w = torch.ones_like(y) if weights is None else weights.detach().to(torch.float64).reshape(-1)
    total = float(w.sum())
    if not total != 0:  # no events (or weights summing to zero): nothing to judge
        return MeanTest(quantity, group, int(y.numel()), math.nan, float(expected), math.nan, math.nan, math.nan, False)
    mean = float((w * y).sum()) / total
    spread = w * (y - mean)
    error = math.sqrt(float((spread**2).sum())) / abs(total)
    diff = mean - expected
    if error > 0:
        pull = diff / error
    else:  # constant values: exact agreement or an infinitely significant disagreement
        pull = 0.0 if abs(diff) <= 1e-9 * max(1.0, abs(expected)) else math.copysign(math.inf, diff)
    k = tail_index(spread)
    return MeanTest(quantity, group, int(y.numel()), mean, float(expected), error, pull, k, not k >= max_tail_index)


@dataclass(frozen=True)
class IdentityCheck:
    """The outcome of one identity check (several :class:`MeanTest` groups).

    Attributes:
        name: ``"joint score"``, ``"joint ratio"`` or ``"learned ratio normalisation"``.
        tests: One test per quantity and group.
        threshold: Pull above which a judged test fails.
    """

    name: str
    tests: tuple[MeanTest, ...]
    threshold: float

    @property
    def failed(self) -> tuple[MeanTest, ...]:
        """The judged tests whose pull exceeds the threshold, worst first."""
        bad = [t for t in self.tests if t.judged and abs(t.pull) > self.threshold]
        return tuple(sorted(bad, key=lambda t: -abs(t.pull)))

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def unjudged(self) -> tuple[MeanTest, ...]:
        """Tests left out of the verdict because of a heavy tail."""
        return tuple(t for t in self.tests if not t.judged)

    def message(self) -> str:
        """One paragraph: the worst failure with the likely cause, or that the check passed."""
        skipped = self.unjudged
        tails = [t.tail_index for t in skipped if not math.isnan(t.tail_index)]
        why = f"heavy tail, Hill index ≥ {min(tails):.2f}, the error of their mean is unreliable" if tails else "no events"
        note = f" ({len(skipped)} of {len(self.tests)} groups not judged: {why})" if skipped else ""
        if self.passed:
            worst = max((t for t in self.tests if t.judged), key=lambda t: abs(t.pull), default=None)
            tail = f"; largest pull {worst.pull:+.1f}σ ({worst.quantity}, {worst.group})" if worst else ""
            return f"{self.name} check passed{tail}{note}."
        first, rest = self.failed[0], len(self.failed) - 1
        more = f"; {rest} more group(s) beyond {self.threshold:g}σ" if rest else ""
        return f"{first.describe()}{more}: {_HINT}{note}"

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "threshold": self.threshold, "message": self.message(),
                "tests": [t.to_dict() for t in self.tests]}


def _options(threshold: float, bins: int, max_tail_index: float) -> None:
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"threshold = {threshold}: the pull beyond which a check fails must be a positive number, e.g. 5.")
    if not (isinstance(bins, int) and bins >= 1):
        raise ConfigError(f"bins = {bins!r}: the number of θ groups per parameter must be an integer >= 1, e.g. 4.")
    if not max_tail_index > 0:
        raise ConfigError(f"max_tail_index = {max_tail_index}: must be > 0, e.g. 0.7 (0.5: finite variance).")


def _groups(theta: Tensor, names: Sequence[str], bins: int, min_events: int, *, smallest: int | None = None) -> list[tuple[str, Tensor]]:
    """``(description, row mask)``: all rows, then ``bins`` quantile groups of every varying parameter.

    ``smallest`` (default: all rows) is the size of the smallest kind of events the groups will be
    split into; groups hold about ``min_events`` of it at least.
    """
    n = theta.shape[0]
    smallest = n if smallest is None else smallest
    groups = [("all events", torch.ones(n, dtype=torch.bool))]
    if bins < 2 or smallest < 2 * min_events:
        return groups
    k = min(bins, smallest // min_events)
    for j, name in enumerate(names):
        col = theta[:, j].to(torch.float64)
        if float(col.max() - col.min()) <= 1e-12 * max(1.0, float(col.abs().max())):
            continue
        order = torch.argsort(col, stable=True)
        for chunk in torch.tensor_split(order, k):
            mask = torch.zeros(n, dtype=torch.bool)
            mask[chunk] = True
            groups.append((f"{name} in [{float(col[chunk].min()):.4g}, {float(col[chunk].max()):.4g}]", mask))
    return groups


def _check_rows(values: Tensor, theta: Tensor, weights: Tensor | None, what: str) -> tuple[Tensor, Tensor, Tensor | None]:
    theta = torch.as_tensor(theta).detach()
    if theta.dim() != 2 or theta.shape[0] != values.shape[0]:
        raise ShapeMismatchError(f"{what}: theta has shape {tuple(theta.shape)}; it must be (N, P) with N = {values.shape[0]}, one row per event.")
    if weights is not None:
        weights = torch.as_tensor(weights).detach().reshape(-1)
        if weights.shape[0] != values.shape[0]:
            raise ShapeMismatchError(f"{what}: weights has {weights.shape[0]} values for {values.shape[0]} events.")
    return values, theta, weights


def _names(names: Sequence[str] | None, p: int) -> tuple[str, ...]:
    names = tuple(f"theta_{j}" for j in range(p)) if names is None else tuple(names)
    if len(names) != p:
        raise ShapeMismatchError(f"names has {len(names)} entries for {p} parameters; give one name per column of theta.")
    return names


def joint_score_check(score: Tensor, theta: Tensor, *, names: Sequence[str] | None = None, weights: Tensor | None = None,
                      threshold: float = 5.0, bins: int = 4, min_events: int = 200, max_tail_index: float = 0.7) -> IdentityCheck:
    r"""Test :math:`E[t_j(x,z|\theta)\,|\,\theta] = 0` on events drawn at their own θ.

    Args:
        score: Joint scores at each event's θ, ``(N, P)``.
        theta: The θ each event was drawn at, ``(N, P)``.
        names: Parameter names (default ``theta_0, ...``).
        weights: Event weights, ``(N,)``.
        threshold: Pull beyond which a judged group fails.
        bins: Quantile groups per varying parameter (1: only all events).
        min_events: Smallest group size (fewer groups for small samples).
        max_tail_index: Groups with a heavier tail are not judged.

    Returns:
        :class:`IdentityCheck` with a :class:`MeanTest` per parameter and group.

    Example:
        >>> from sbilab.simulators import GaussianLatent, joint_score
        >>> sim = GaussianLatent()
        >>> ev = sim.simulate(10_000, generator=torch.Generator().manual_seed(0))
        >>> joint_score_check(joint_score(sim, ev), ev.theta, names=sim.space.names).passed
        True
    """
    _options(threshold, bins, max_tail_index)
    score = torch.as_tensor(score).detach()
    if score.dim() != 2:
        raise ShapeMismatchError(f"joint_score_check: score has shape {tuple(score.shape)}; it must be (N, P).")
    score, theta, weights = _check_rows(score, theta, weights, "joint_score_check")
    names = _names(names, score.shape[1])
    tests = []
    for group, mask in _groups(theta, names, bins, min_events):
        w = None if weights is None else weights[mask]
        for j, name in enumerate(names):
            tests.append(mean_test(score[mask, j], expected=0.0, weights=w, quantity=f"mean joint score for {name}", group=group,
                                   max_tail_index=max_tail_index))
    return IdentityCheck("joint score", tuple(tests), float(threshold))


def bridge_test(log_r_reference: Tensor, log_r_theta: Tensor, *, weights_reference: Tensor | None = None,
                weights_theta: Tensor | None = None, quantity: str = "ratio normalisation E_ref[r] (bridge estimate)",
                group: str = "all events") -> MeanTest:
    r"""Bridge estimate of :math:`c = E_\mathrm{ref}[r]` from both samples, with its error and pull against 1.

    .. math::
        \hat c = \frac{\langle s \rangle_\mathrm{ref}}{\langle 1 - s \rangle_\theta}, \qquad s = \frac{r}{1 + r},

    weighted means over events drawn at the reference and at θ. For :math:`r = c\,p_\theta/p_\mathrm{ref}`
    with a constant c, :math:`E_\mathrm{ref}[s] = c\,E_\theta[1 - s]` exactly (bridge sampling with
    Bennett's bridge :math:`1/(1 + r)`; Meng & Wong 1996, Statistica Sinica 6, 831), so :math:`\hat c`
    estimates the normalisation with both averages bounded in [0, 1]: its error (delta method,
    :math:`\sigma_{\hat c} = \hat c\,[(\sigma_a/a)^2 + (\sigma_b/b)^2]^{1/2}`) is reliable whatever the
    tails of r, unlike that of the plain mean of r over one sample, which misses the rare events
    where r is large.

    Args:
        log_r_reference: :math:`\log r` of events drawn at the reference, ``(N0,)``.
        log_r_theta: :math:`\log r` of events drawn at θ, ``(N1,)``.
        weights_reference, weights_theta: Event weights, ``(N0,)`` and ``(N1,)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x0, x1 = torch.randn(20_000, generator=g), 1.0 + torch.randn(20_000, generator=g)
        >>> test = bridge_test(x0 - 0.5 + math.log(1.1), x1 - 0.5 + math.log(1.1))  # r off by 10%
        >>> round(test.mean, 1), round(test.error, 2), test.pull > 5
        (1.1, 0.01, True)
    """
    s0 = torch.sigmoid(log_r_reference.detach().to(torch.float64).reshape(-1))
    s1 = torch.sigmoid(-log_r_theta.detach().to(torch.float64).reshape(-1))
    a = mean_test(s0, expected=0.0, weights=weights_reference, max_tail_index=math.inf)  # bounded: no tail to fear
    b = mean_test(s1, expected=0.0, weights=weights_theta, max_tail_index=math.inf)
    if not (a.judged and b.judged):  # an empty sample
        return MeanTest(quantity, group, a.n + b.n, math.nan, 1.0, math.nan, math.nan, math.nan, False)
    c = a.mean / b.mean if b.mean > 0 else math.inf
    error = abs(c) * math.hypot(a.error / a.mean, b.error / b.mean) if a.mean > 0 and b.mean > 0 else math.inf
    pull = (c - 1.0) / error if error > 0 and math.isfinite(error) else (0.0 if c == 1.0 else math.copysign(math.inf, c - 1.0))
    return MeanTest(quantity, group, a.n + b.n, c, 1.0, error, pull, math.nan, True)


def joint_ratio_check(log_r: Tensor, theta: Tensor, *, at_reference: Tensor, names: Sequence[str] | None = None,
                      weights: Tensor | None = None, threshold: float = 5.0, bins: int = 4, min_events: int = 200) -> IdentityCheck:
    r"""Test :math:`E_\mathrm{ref}[r(x,z|\theta,\theta_\mathrm{ref})\,|\,\theta] = 1` with the bridge estimate of :func:`bridge_test`.

    Needs events drawn at the reference and events drawn at θ, with θ drawn from the same
    distribution in both (as in :func:`~sbilab.simulators.ratio_training_data`); groups of θ
    have common boundaries (quantiles of all rows).

    Args:
        log_r: :math:`\log r(x,z|\theta,\theta_\mathrm{ref})` of each event, ``(N,)``.
        theta: The θ of the numerator, ``(N, P)``.
        at_reference: Which events were drawn at the reference (the others at their θ), ``(N,)`` bool.
        names, weights, threshold, bins, min_events: As in :func:`joint_score_check`.

    Returns:
        :class:`IdentityCheck` with a :class:`MeanTest` per group.

    Raises:
        InvalidEventsError: events of one kind only.
    """
    _options(threshold, bins, 0.5)
    log_r = torch.as_tensor(log_r).detach().to(torch.float64).reshape(-1)
    log_r, theta, weights = _check_rows(log_r, theta, weights, "joint_ratio_check")
    names = _names(names, theta.shape[1])
    at_ref = torch.as_tensor(at_reference, dtype=torch.bool).reshape(-1)
    n_ref = int(at_ref.sum())
    if at_ref.shape[0] != log_r.shape[0] or not 0 < n_ref < log_r.shape[0]:
        raise InvalidEventsError(
            f"joint_ratio_check: at_reference must flag, for each of the {log_r.shape[0]} events, whether it was drawn at "
            f"the reference, and both kinds must be present (got {n_ref} at the reference); the bridge estimate needs both samples."
        )
    tests = []
    for group, mask in _groups(theta, names, bins, min_events, smallest=min(n_ref, log_r.shape[0] - n_ref)):
        ref, own = mask & at_ref, mask & ~at_ref
        tests.append(bridge_test(log_r[ref], log_r[own], weights_reference=None if weights is None else weights[ref],
                                 weights_theta=None if weights is None else weights[own],
                                 quantity="joint-ratio normalisation E_ref[r(x,z|θ,θ_ref)] (bridge estimate)", group=group))
    return IdentityCheck("joint ratio", tuple(tests), float(threshold))


def check_augmented(events: Events, names: Sequence[str] | None = None, *, threshold: float = 5.0, bins: int = 4,
                    min_events: int = 200, max_tail_index: float = 0.7) -> tuple[IdentityCheck, ...]:
    r"""Both identity checks on augmented events, following the :class:`~sbilab.events.Events` conventions.

    Events with ``label = 0`` were drawn at the reference (``theta`` is the hypothesis of their
    ``log_r_joint``); all others (``label = 1`` or no label) at their own ``theta``. The joint
    score is tested on the latter, the joint ratio on both (:func:`joint_ratio_check`); a field
    the events lack is skipped. Event weights are used.
    """
    at_ref = torch.zeros(len(events), dtype=torch.bool) if events.label is None else events.label.detach().cpu() < 0.5
    theta = events.theta.detach().cpu()
    weights = None if events.weights is None else events.weights.detach().cpu()
    opts = dict(threshold=threshold, bins=bins, min_events=min_events, max_tail_index=max_tail_index)
    checks = []
    own = ~at_ref
    if events.score_joint is not None and bool(own.any()):
        checks.append(joint_score_check(events.score_joint.detach().cpu()[own], theta[own], names=names,
                                        weights=None if weights is None else weights[own], **opts))
    if events.log_r_joint is not None and bool(own.any()) and bool(at_ref.any()):
        opts.pop("max_tail_index")
        checks.append(joint_ratio_check(events.log_r_joint.detach().cpu(), theta, at_reference=at_ref, names=names,
                                        weights=weights, **opts))
    return tuple(checks)


def enforce(checks: Sequence[IdentityCheck], on_failure: CheckMode, *, where: str) -> None:
    """Raise :class:`~sbilab.exceptions.IdentityCheckError` or warn (:class:`~sbilab.exceptions.IdentityCheckWarning`) for failed checks.

    Args:
        checks: Outcomes of :func:`joint_score_check`, :func:`joint_ratio_check`, ...
        on_failure: ``"raise"``, ``"warn"`` or ``"off"`` (nothing).
        where: The caller, named first in the message (e.g. ``"augment(Lifetime)"``).
    """
    if on_failure not in _MODES:
        raise ConfigError(f"{where}: check = {on_failure!r}; choose one of {list(_MODES)}.")
    failed = [c for c in checks if not c.passed]
    if not failed or on_failure == "off":
        return
    text = f"{where}: " + " Also: ".join(c.message() for c in failed) + (
        " (To proceed anyway, pass check='warn' or check='off'.)" if on_failure == "raise" else "")
    if on_failure == "raise":
        raise IdentityCheckError(text)
    warnings.warn(text, IdentityCheckWarning, stacklevel=3)
