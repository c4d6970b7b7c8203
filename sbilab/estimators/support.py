r"""The training support of an estimator: the range of its training inputs, and checks against it.

A network is constrained only where it saw training data; beyond that its output is an
extrapolation nothing controls (a ratio trained on :math:`x \in [85, 115]` returns
:math:`\log\hat r = -11520` at :math:`x = 10^6`). Every estimator records the per-feature
minimum and maximum of its training inputs :math:`x` when :meth:`standardize_from` (or
``from_events``) sees the training events, publishes them in its JSON spec, and

* its validated methods (``log_ratio``, ``score``, ``log_prob``, ``logit``, ...) warn with
  :class:`~sbilab.exceptions.ExtrapolationWarning` when events lie outside;
* :class:`~sbilab.stats.UnbinnedLikelihood` computes the (weighted) fraction of observed events
  outside and reports the fit as not valid above a threshold.

An event is *outside* when one of its features (for padded sets: of its real particles) lies
beyond :math:`[\mathrm{lo}_j - m_j, \mathrm{hi}_j + m_j]` with the margin
:math:`m_j = \mathrm{margin}\,(\mathrm{hi}_j - \mathrm{lo}_j)`. The margin keeps a sample drawn
from the training distribution inside: for :math:`N` training and :math:`n` observed events
from the same continuous distribution, :math:`2n/(N+1)` of the latter fall beyond the training
extremes per feature, but for a Gaussian feature and :math:`N = 10^5` only about
:math:`n \cdot 3\times10^{-6}` beyond a 5% margin.

Estimators published before this record existed have no support: their check is *unavailable*
(``training_support(estimator) is None``), which the likelihood says in its result.

Example:
    >>> s = TrainingSupport.from_data(torch.tensor([[0.0], [1.0], [2.0]]))
    >>> s.low, s.high, s.outside(torch.tensor([[1.0], [2.05], [2.5]])).tolist()
    ((0.0,), (2.0,), [False, False, True])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..exceptions import ExtrapolationWarning, PublishError
from ..nets.ensemble import Ensemble

__all__ = ["TrainingSupport", "training_support", "warn_outside"]


@dataclass(frozen=True)
class TrainingSupport:
    """Per-feature range of an estimator's training inputs.

    Attributes:
        low: Minimum of each feature over the training events, ``(F,)``.
        high: Maximum of each feature, ``(F,)``.
        n_events: Number of training events it was computed from.
        margin: Fraction of the range added on both sides before an event counts as outside.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    n_events: int
    margin: float = 0.05

    @classmethod
    @torch.no_grad()
    def from_data(cls, x: Tensor, *, mask: Tensor | None = None, weights: Tensor | None = None,
                  margin: float = 0.05) -> "TrainingSupport":
        """The range of training inputs ``x (N, F)`` or padded sets ``(N, M, F)`` with ``mask (N, M)``.

        Events of zero weight and padded set entries (mask false, or all-NaN rows) are left out.
        """
        flat, keep = _entries(x, mask)
        if weights is not None:
            w = torch.as_tensor(weights).reshape(-1).to(flat.device) != 0
            keep = keep & (w.repeat_interleave(x.shape[1]) if x.dim() == 3 else w)
        flat = flat[keep].double()
        if flat.shape[0] == 0:
            nan = (math.nan,) * x.shape[-1]
            return cls(nan, nan, 0, float(margin))
        return cls(tuple(flat.min(0).values.tolist()), tuple(flat.max(0).values.tolist()), int(x.shape[0]), float(margin))

    # ------------------------------------------------------------------ checks
    def bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper limits including the margin, ``(F,)`` each, on ``like``'s device (float64)."""
        lo = torch.tensor(self.low, dtype=torch.float64, device=like.device)
        hi = torch.tensor(self.high, dtype=torch.float64, device=like.device)
        pad = self.margin * (hi - lo)
        return lo - pad, hi + pad

    @torch.no_grad()
    def outside(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Which events of ``x (N, F)`` (or sets ``(N, M, F)`` with ``mask (N, M)``) lie outside, ``(N,)`` bool.

        NaN features are not judged here (the estimators' input checks refuse them).
        """
        x = torch.as_tensor(x)
        if x.shape[-1] != len(self.low):
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        lo, hi = self.bounds(x)
        xd = x.double()
        bad = (xd < lo) | (xd > hi)
        if x.dim() == 3:
            _, keep = _entries(x, mask)
            bad = bad & keep.reshape(x.shape[:2]).unsqueeze(-1)
            return bad.reshape(x.shape[0], -1).any(1)
        return bad.any(-1)

    def fraction_outside(self, x: Tensor, mask: Tensor | None = None, weights: Tensor | None = None) -> float:
        r"""Fraction of events outside, weighted by :math:`|w|` when ``weights (N,)`` are given."""
        out = self.outside(x, mask).double()
        if weights is None:
            return float(out.mean()) if out.numel() else 0.0
        w = torch.as_tensor(weights).reshape(-1).double().abs().to(out.device)
        total = float(w.sum())
        return float((w * out).sum()) / total if total > 0 else 0.0

    def describe(self, x: Tensor, mask: Tensor | None = None) -> str:
        """Where events of ``x`` leave the range: the first offending feature, its value and the range."""
        x = torch.as_tensor(x)
        outside = self.outside(x, mask)
        if not bool(outside.any()):
            return "all events inside"
        row = int(torch.nonzero(outside)[0, 0])
        lo, hi = self.bounds(x)
        values = x[row].reshape(-1, x.shape[-1]).double()
        entry = (values < lo) | (values > hi)
        j = int(torch.nonzero(entry)[0, 1]) if bool(entry.any()) else 0
        value = float(values[entry.any(-1)][0, j]) if bool(entry.any()) else math.nan
        return (f"{int(outside.sum())} of {x.shape[0]} events, first at row {row}: feature {j} = {value:g} outside the "
                f"training range [{self.low[j]:g}, {self.high[j]:g}]")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the estimator's published spec)."""
        return {"low": list(self.low), "high": list(self.high), "n_events": self.n_events, "margin": self.margin}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "TrainingSupport":
        """Inverse of :meth:`to_dict`.

        Raises:
            PublishError: malformed entries (not equal-length lists of numbers with low <= high).
        """
        try:
            low = tuple(float(v) for v in spec["low"])
            high = tuple(float(v) for v in spec["high"])
            support = cls(low, high, int(spec["n_events"]), float(spec.get("margin", 0.05)))
        except (KeyError, TypeError, ValueError) as err:
            raise PublishError(f"training_support {dict(spec) if isinstance(spec, Mapping) else spec!r} is malformed ({err!r}); "
                               "it needs lists low and high of numbers and an integer n_events.") from None
        if len(low) != len(high) or any(a > b for a, b in zip(low, high)) or not support.margin >= 0:
            raise PublishError(f"training_support has low {list(low)} and high {list(high)}: they need equal lengths and low <= high.")
        return support


def _entries(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Feature rows ``(K, F)`` of ``x`` and which of them are real (sets: mask true and not all-NaN)."""
    flat = x.reshape(-1, x.shape[-1])
    if x.dim() != 3:
        return flat, torch.ones(flat.shape[0], dtype=torch.bool, device=x.device)
    keep = ~torch.isnan(flat).all(-1)
    if mask is not None:
        keep = keep & torch.as_tensor(mask, device=x.device).bool().reshape(-1)
    return flat, keep


def training_support(estimator: Any) -> TrainingSupport | None:
    """The training support of an estimator, of the estimator behind a bound method, or of an ensemble's template.

    Returns ``None`` for plain callables and for estimators that recorded none (published before
    supports were recorded, or never standardised on training events).
    """
    owner = estimator if isinstance(estimator, nn.Module) else getattr(estimator, "__self__", None)
    if not isinstance(owner, nn.Module):
        return None
    for module in owner.modules():
        if isinstance(module, Ensemble):
            module = module.template
        support = getattr(module, "training_support", None)
        if isinstance(support, TrainingSupport):
            return support if support.n_events > 0 else None
    return None


def warn_outside(support: TrainingSupport | None, x: Tensor, mask: Tensor | None, *, owner: str) -> None:
    """Warn with :class:`~sbilab.exceptions.ExtrapolationWarning` when events of ``x`` lie outside ``support``."""
    if support is None or support.n_events == 0 or x.numel() == 0:
        return
    if bool(support.outside(x, mask).any()):
        warnings.warn(
            f"{owner}: {support.describe(x, mask)} (margin {support.margin:g} of the range); the network extrapolates there "
            "and its output is not constrained by training. Train on a sample covering these events, or remove them.",
            ExtrapolationWarning, stacklevel=3)
