r"""Significance improvement characteristic (SIC) curves with their statistical uncertainty.

A cut on a score :math:`s(x) > c` keeps the signal efficiency :math:`\epsilon_s(c)` (true-positive
rate) and the background efficiency :math:`\epsilon_b(c)` (false-positive rate); the significance
:math:`S/\sqrt B` of a counting experiment improves by the factor

.. math:: \mathrm{SIC}(c) = \frac{\epsilon_s(c)}{\sqrt{\epsilon_b(c)}}

(Gallicchio et al., arXiv:1010.3698; the figure of merit of CWoLa hunting and CATHODE,
arXiv:1805.02664, 2109.00546). Where :math:`\epsilon_b` rests on a handful of background events
the curve is noise, so every curve has a floor: points with :math:`\epsilon_b` below
``min_background_efficiency`` are dropped (default: 10 effective background events,
:math:`10/N_{b,\mathrm{eff}}`). The uncertainty is binomial in each efficiency with Kish's
effective sample sizes :math:`N_\mathrm{eff} = (\sum w)^2/\sum w^2`,

.. math:: \frac{\sigma_\mathrm{SIC}^2}{\mathrm{SIC}^2} = \frac{\epsilon_s(1-\epsilon_s)}{N_{s,\mathrm{eff}}\,\epsilon_s^2}
          + \frac14\,\frac{\epsilon_b(1-\epsilon_b)}{N_{b,\mathrm{eff}}\,\epsilon_b^2}

(the two test samples are independent). The efficiencies use weighted sums, ties counted together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..exceptions import ConfigError, ShapeMismatchError
from .results import NestedResult

__all__ = ["SicCurve", "sic_curve", "rejection_at"]


def _np(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=float).reshape(-1) if np.ndim(value) <= 1 or np.shape(value)[-1] == 1 else None
    if array is None:
        raise ShapeMismatchError(f"{name} must be a score per event, (N,), got shape {np.shape(value)}.")
    if array.size == 0:
        raise ShapeMismatchError(f"{name} is empty; a SIC curve needs signal and background test events.")
    if not np.isfinite(array).all():
        raise ShapeMismatchError(f"{name} has {int((~np.isfinite(array)).sum())} non-finite values; fix the scores first.")
    return array


def _kish(w: np.ndarray) -> float:
    return float(w.sum() ** 2 / (w**2).sum())


@dataclass(frozen=True)
class SicCurve(NestedResult):
    r"""A SIC curve above its background-efficiency floor.

    Attributes:
        signal_efficiency: :math:`\epsilon_s` at each threshold, ``(T,)`` (decreasing thresholds).
        background_efficiency: :math:`\epsilon_b`, ``(T,)``, all :math:`\ge` the floor.
        sic: :math:`\epsilon_s/\sqrt{\epsilon_b}`, ``(T,)``.
        sic_error: Its statistical error, ``(T,)``.
        threshold: The score thresholds, ``(T,)``.
        min_background_efficiency: The floor.
    """

    signal_efficiency: np.ndarray
    background_efficiency: np.ndarray
    sic: np.ndarray
    sic_error: np.ndarray
    threshold: np.ndarray
    min_background_efficiency: float

    def max(self) -> tuple[float, float, float]:
        """``(max SIC, its error, the background efficiency where it is reached)``."""
        i = int(np.argmax(self.sic))
        return float(self.sic[i]), float(self.sic_error[i]), float(self.background_efficiency[i])

    def at(self, background_efficiency: float) -> tuple[float, float]:
        r"""``(SIC, error)`` at a background efficiency, interpolated linearly in :math:`\log\epsilon_b`.

        Raises:
            ConfigError: the efficiency lies below the floor or outside the curve.
        """
        eb = float(background_efficiency)
        lo, hi = float(self.background_efficiency.min()), float(self.background_efficiency.max())
        if not lo <= eb <= hi:
            raise ConfigError(f"SicCurve.at: background efficiency {eb:g} outside the curve's range [{lo:g}, {hi:g}] "
                              f"(floor {self.min_background_efficiency:g}); use more background test events or a larger efficiency.")
        order = np.argsort(self.background_efficiency, kind="stable")
        x = np.log(self.background_efficiency[order])
        return (float(np.interp(math.log(eb), x, self.sic[order])), float(np.interp(math.log(eb), x, self.sic_error[order])))


def sic_curve(score_signal: Any, score_background: Any, *, weights_signal: Any = None, weights_background: Any = None,
              min_background_efficiency: float | None = None) -> SicCurve:
    r"""The SIC curve of a score on signal and background test events (higher score = more signal-like).

    Args:
        score_signal: ``(Ns,)`` scores of signal events.
        score_background: ``(Nb,)`` scores of background events.
        weights_signal, weights_background: Event weights (default ones).
        min_background_efficiency: The floor on :math:`\epsilon_b` (default :math:`10/N_{b,\mathrm{eff}}`).

    Raises:
        ShapeMismatchError: empty or non-finite scores, or weights of the wrong length.
        ConfigError: a floor outside (0, 1), or negative weights.

    Example:
        >>> g = np.random.default_rng(1)
        >>> curve = sic_curve(g.normal(1.0, 1.0, 400_000), g.normal(0.0, 1.0, 400_000))
        >>> round(curve.max()[0], 2)   # exact: 1.258729 at background efficiency 0.2
        1.26
    """
    s1, s0 = _np(score_signal, "score_signal"), _np(score_background, "score_background")
    w1 = np.ones_like(s1) if weights_signal is None else _np(weights_signal, "weights_signal")
    w0 = np.ones_like(s0) if weights_background is None else _np(weights_background, "weights_background")
    if w1.size != s1.size or w0.size != s0.size:
        raise ShapeMismatchError("sic_curve: give one weight per event (weights_signal (Ns,), weights_background (Nb,)).")
    if (w1 < 0).any() or (w0 < 0).any() or not (w1.sum() > 0 and w0.sum() > 0):
        raise ConfigError("sic_curve: weights must be >= 0 with a positive total in each sample.")
    n_b = _kish(w0)
    floor = 10.0 / n_b if min_background_efficiency is None else float(min_background_efficiency)
    if not 0.0 < floor < 1.0:
        raise ConfigError(f"sic_curve: min_background_efficiency = {floor:g} must lie in (0, 1).")
    thresholds = np.unique(np.concatenate([s1, s0]))[::-1]  # decreasing
    def above(s: np.ndarray, w: np.ndarray) -> np.ndarray:  # weight of the events with score >= each threshold
        order = np.argsort(s, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(w[order])])
        return cum[-1] - cum[np.searchsorted(s[order], thresholds, side="left")]
    eps_s = above(s1, w1) / w1.sum()
    eps_b = above(s0, w0) / w0.sum()
    keep = eps_b >= floor
    if not keep.any():
        raise ConfigError(f"sic_curve: no threshold keeps a background efficiency >= {floor:g}; lower the floor.")
    eps_s, eps_b, thresholds = eps_s[keep], eps_b[keep], thresholds[keep]
    sic = eps_s / np.sqrt(eps_b)
    n_s = _kish(w1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel2 = np.where(eps_s > 0, (1 - eps_s) / (n_s * eps_s), 0.0) + 0.25 * (1 - eps_b) / (n_b * eps_b)
    return SicCurve(signal_efficiency=eps_s, background_efficiency=eps_b, sic=sic, sic_error=sic * np.sqrt(rel2),
                    threshold=thresholds, min_background_efficiency=floor)


def rejection_at(score_signal: Any, score_background: Any, signal_efficiency: float, *, weights_signal: Any = None,
                 weights_background: Any = None) -> float:
    r"""Background rejection :math:`1/\epsilon_b` at the threshold that keeps ``signal_efficiency`` of the signal.

    Raises:
        ConfigError: ``signal_efficiency`` not in (0, 1), or no background event passes (rejection unmeasurable).
    """
    if not 0.0 < float(signal_efficiency) < 1.0:
        raise ConfigError(f"rejection_at: signal_efficiency = {signal_efficiency} must lie in (0, 1).")
    s1, s0 = _np(score_signal, "score_signal"), _np(score_background, "score_background")
    w1 = np.ones_like(s1) if weights_signal is None else _np(weights_signal, "weights_signal")
    w0 = np.ones_like(s0) if weights_background is None else _np(weights_background, "weights_background")
    order = np.argsort(-s1, kind="stable")
    cum = np.cumsum(w1[order]) / w1.sum()
    k = min(int(np.searchsorted(cum, signal_efficiency, side="left")), s1.size - 1)
    cut = s1[order][k]
    passed = float(w0[s0 >= cut].sum()) / float(w0.sum())
    if not passed > 0:
        raise ConfigError(f"rejection_at: no background test event passes the cut at signal efficiency {signal_efficiency}; "
                          "use more background events.")
    return 1.0 / passed
