r"""The normalisation of a learned likelihood ratio: :math:`E_{x\sim\theta_\mathrm{ref}}[\hat r(x|\theta)] = 1`.

A ratio :math:`r(x|\theta) = p(x|\theta)/p(x|\theta_\mathrm{ref})` integrates to one against the
reference density for every θ. A learned :math:`\hat r` that does not — trained on augmented
data whose ``joint_log_prob`` misses an acceptance (:mod:`sbilab.simulators.checks`), or badly
converged — puts a spurious term :math:`N\log c(\theta)` into every unbinned likelihood of N
events and biases the fit, while shape tests such as the reweighting closure test
(:func:`sbilab.calibration.closure_test`, which rescales to the target's total) cannot see it.

:func:`ratio_normalisation` estimates, for each θ of a set,

* the plain mean :math:`\bar r = \sum_i w_i \hat r(x_i|\theta)/\sum_i w_i` over a sample drawn at the
  reference, with its error :math:`\sqrt{\sum_i w_i^2(\hat r_i - \bar r)^2}/\sum_i w_i` and the Hill
  tail index of the terms (:func:`~sbilab.simulators.checks.mean_test`); and, when a sample drawn
  at θ is given as well,
* the bridge estimate :math:`\hat c = \langle \hat s\rangle_\mathrm{ref}/\langle 1 - \hat s\rangle_\theta`,
  :math:`\hat s = \hat r/(1 + \hat r)` (:func:`~sbilab.simulators.checks.bridge_test`; Meng & Wong
  1996), equal to c for :math:`\hat r = c\,r`, whose error is reliable however heavy the tail of
  :math:`\hat r`: a sample at the reference alone misses the rare events where :math:`\hat r` is
  large, and then the plain mean is low with a falsely small error.

The verdict uses the bridge estimate when samples at θ are given, else the plain mean (not
judged where its tail index reaches ``max_tail_index``): θ fails when
:math:`|\hat c - 1| >` ``threshold`` :math:`\cdot\,\sigma_{\hat c}\, +` ``tolerance`` (a learned
ratio is never exact; the tolerance is the systematic allowance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..simulators.checks import bridge_test, mean_test

__all__ = ["NormalisationCheck", "ratio_normalisation"]


@dataclass(frozen=True)
class NormalisationCheck:
    r"""Normalisation of a learned ratio at a set of points.

    Attributes:
        names: Parameter names.
        theta: The K points, ``K`` tuples of ``P`` values.
        normalisation: The estimate the verdict uses at each point (bridge or plain mean).
        error: Its statistical error.
        pull: ``(normalisation - 1) / error``.
        mean: The plain mean :math:`E_\mathrm{ref}[\hat r]` over the reference sample.
        mean_error: Its error.
        tail_index: Hill tail index of the plain mean's terms.
        judged: Whether each point enters the verdict.
        method: ``"bridge"`` (samples at θ given) or ``"mean"``.
        threshold: Pulls allowed.
        tolerance: Systematic allowance on :math:`|\hat c - 1|`.
        n_reference: Events of the reference sample.
    """

    names: tuple[str, ...]
    theta: tuple[tuple[float, ...], ...]
    normalisation: tuple[float, ...]
    error: tuple[float, ...]
    pull: tuple[float, ...]
    mean: tuple[float, ...]
    mean_error: tuple[float, ...]
    tail_index: tuple[float, ...]
    judged: tuple[bool, ...]
    method: str
    threshold: float
    tolerance: float
    n_reference: int

    def _bad(self, k: int) -> bool:
        return self.judged[k] and not abs(self.normalisation[k] - 1.0) <= self.threshold * self.error[k] + self.tolerance

    @property
    def failed(self) -> tuple[int, ...]:
        """Indices of the failed points, worst pull first."""
        return tuple(sorted((k for k in range(len(self.theta)) if self._bad(k)), key=lambda k: -abs(self.pull[k])))

    @property
    def passed(self) -> bool:
        return not self.failed

    def _point(self, k: int) -> str:
        return ", ".join(f"{n} = {v:.4g}" for n, v in zip(self.names, self.theta[k]))

    def message(self) -> str:
        """One line: the worst point and the likely causes, or that the check passed."""
        what = "bridge estimate" if self.method == "bridge" else "mean over the reference sample"
        if self.passed:
            judged = [k for k in range(len(self.theta)) if self.judged[k]]
            if not judged:
                return f"learned-ratio normalisation not judged at any of {len(self.theta)} points (heavy tails)."
            k = max(judged, key=lambda j: abs(self.normalisation[j] - 1.0))
            return (f"learned-ratio normalisation E_ref[r̂(x|θ)] = 1 holds at {len(judged)} points ({what}); farthest "
                    f"{self.normalisation[k]:.4f} ± {self.error[k]:.2g} at {self._point(k)}.")
        k, rest = self.failed[0], len(self.failed) - 1
        return (f"learned-ratio normalisation E_ref[r̂(x|θ)] is {self.normalisation[k]:.4f} ± {self.error[k]:.2g} at "
                f"{self._point(k)} ({abs(self.pull[k]):.1f}σ from 1, beyond {self.threshold:g}σ + {self.tolerance:g}; {what})"
                + (f", and {rest} more point(s) fail" if rest else "")
                + ": the estimator is mis-normalised, so unbinned fits with it are biased. Was it trained on augmented data "
                "whose joint_log_prob misses a θ-dependent normalisation (sbilab.simulators.checks), or not converged?")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "message": self.message(), "method": self.method, "threshold": self.threshold,
                "tolerance": self.tolerance, "n_reference": self.n_reference, "names": list(self.names),
                "theta": [list(t) for t in self.theta], "normalisation": list(self.normalisation), "error": list(self.error),
                "pull": list(self.pull), "mean": list(self.mean), "mean_error": list(self.mean_error),
                "tail_index": list(self.tail_index), "judged": list(self.judged)}


def _dtype(log_ratio: Callable) -> torch.dtype:
    module = log_ratio if isinstance(log_ratio, nn.Module) else getattr(log_ratio, "__self__", None)
    if isinstance(module, nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float64


def _evaluate(log_ratio: Callable, x: Tensor, point: Tensor, batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            out.append(torch.as_tensor(log_ratio(chunk, point.to(chunk.dtype).expand(chunk.shape[0], -1))).reshape(-1).to(torch.float64))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _sample(value: Any, dtype: torch.dtype, name: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(value, Events):
        x, w = value.x, value.weights
    else:
        x, w = torch.as_tensor(value), None
    if x.is_complex() or not x.is_floating_point():
        raise ShapeMismatchError(f"ratio_normalisation: {name} must hold real observables, got dtype {x.dtype}.")
    x = x.reshape(-1, 1) if x.dim() == 1 else x
    if x.shape[0] < 2:
        raise ShapeMismatchError(f"ratio_normalisation: {name} has {x.shape[0]} events; draw a sample of thousands.")
    return x.to(dtype), None if w is None else w.detach().to(torch.float64)


def ratio_normalisation(
    log_ratio: Callable[[Tensor, Tensor], Tensor],
    reference: Tensor | Events,
    theta: Any,
    *,
    samples: Sequence[Tensor | Events] | None = None,
    names: Sequence[str] | None = None,
    threshold: float = 5.0,
    tolerance: float = 0.02,
    max_tail_index: float = 0.5,
    batch_size: int = 65536,
) -> NormalisationCheck:
    r"""Check :math:`E_{x\sim\theta_\mathrm{ref}}[\hat r(x|\theta)] = 1` at each point of ``theta``.

    Args:
        log_ratio: ``log_ratio(x: (N, D), theta: (N, P)) -> (N,)`` against the reference (a
            trained estimator or :class:`~sbilab.estimators.EnsembleMean`, or an exact toy ratio).
        reference: Events drawn at the reference, ``(N, D)`` or :class:`~sbilab.events.Events`
            (their weights are used).
        theta: The points, ``(K, P)`` (or ``(P,)`` for one).
        samples: Optional events drawn at each point, K entries of ``(N_k, D)`` or Events; with
            them the verdict uses the bridge estimate (robust to heavy tails).
        names: Parameter names (default ``theta_0, ...``).
        threshold: Pulls allowed.
        tolerance: Systematic allowance on :math:`|\hat c - 1|` (learned ratios are never exact).
        max_tail_index: Points whose plain mean has a heavier tail are not judged (without samples).
        batch_size: Events per call of ``log_ratio``.

    Returns:
        :class:`NormalisationCheck`.

    Raises:
        ShapeMismatchError: ``theta`` not ``(K, P)``, ``samples`` not one per point, samples
            that are not real observables.
        ConfigError: a non-positive threshold or a negative tolerance.

    Example:
        >>> from sbilab.simulators import GaussianLatent
        >>> sim = GaussianLatent()
        >>> g = torch.Generator().manual_seed(0)
        >>> x_ref = sim.simulate(20_000, theta=torch.zeros(1), generator=g).x
        >>> exact = lambda x, th: sim.log_prob(x, th) - sim.log_prob(x, torch.zeros(1))
        >>> ratio_normalisation(exact, x_ref, torch.tensor([[-1.0], [1.0]])).passed
        True
        >>> ratio_normalisation(lambda x, th: exact(x, th) + 0.1 * th[:, 0], x_ref, torch.tensor([[-1.0], [1.0]])).passed
        False
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"ratio_normalisation: threshold = {threshold}; give a positive number of standard deviations, e.g. 5.")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"ratio_normalisation: tolerance = {tolerance}; give a non-negative allowance, e.g. 0.02.")
    dtype = _dtype(log_ratio)
    x_ref, w_ref = _sample(reference, dtype, "reference")
    points = torch.as_tensor(theta, dtype=torch.float64)
    points = points.reshape(1, -1) if points.dim() == 1 else points
    if points.dim() != 2 or points.shape[0] == 0:
        raise ShapeMismatchError(f"ratio_normalisation: theta has shape {tuple(points.shape)}; give the points as (K, P).")
    names = tuple(f"theta_{j}" for j in range(points.shape[1])) if names is None else tuple(names)
    if len(names) != points.shape[1]:
        raise ShapeMismatchError(f"ratio_normalisation: {len(names)} names for {points.shape[1]} parameters.")
    if samples is not None and len(samples) != points.shape[0]:
        raise ShapeMismatchError(f"ratio_normalisation: {len(samples)} samples for {points.shape[0]} points; give one sample drawn at each point.")
    rows: dict[str, list] = {k: [] for k in ("norm", "err", "pull", "mean", "mean_err", "tail", "judged")}
    for k, point in enumerate(points):
        log_r = _evaluate(log_ratio, x_ref, point, batch_size)
        plain = mean_test(torch.exp(log_r), expected=1.0, weights=w_ref, max_tail_index=max_tail_index)
        verdict = plain
        if samples is not None:
            x_k, w_k = _sample(samples[k], dtype, f"samples[{k}]")
            verdict = bridge_test(log_r, _evaluate(log_ratio, x_k, point, batch_size), weights_reference=w_ref, weights_theta=w_k)
        for key, value in (("norm", verdict.mean), ("err", verdict.error), ("pull", verdict.pull), ("mean", plain.mean),
                           ("mean_err", plain.error), ("tail", plain.tail_index), ("judged", verdict.judged)):
            rows[key].append(value)
    return NormalisationCheck(
        names=names, theta=tuple(tuple(float(v) for v in p) for p in points), normalisation=tuple(rows["norm"]),
        error=tuple(rows["err"]), pull=tuple(rows["pull"]), mean=tuple(rows["mean"]), mean_error=tuple(rows["mean_err"]),
        tail_index=tuple(rows["tail"]), judged=tuple(rows["judged"]), method="mean" if samples is None else "bridge",
        threshold=float(threshold), tolerance=float(tolerance), n_reference=int(x_ref.shape[0]),
    )
