r"""Posterior diagnostics: SBC, expected coverage, TARP and classifier two-sample tests.

The first three reduce to one check. For a correct posterior a per-observation statistic
:math:`f_i \in [0, 1]` is uniformly distributed over simulations :math:`(\theta_i, x_i)`:

* SBC (Talts et al., arXiv:1804.06788): the rank of :math:`\theta_{i,j}` among posterior
  samples, per parameter :math:`j`.
* Expected coverage (Hermans et al., arXiv:2110.06581, Delaunoy et al. arXiv:2210.04815): the
  credibility of the smallest highest-density region containing :math:`\theta_i`,
  :math:`f_i = P_{\theta\sim q(\cdot|x_i)}[q(\theta|x_i) > q(\theta_i|x_i)]`.
* TARP (Lemos et al., arXiv:2302.03026): the fraction of samples closer to a random reference
  point than :math:`\theta_i`.

Discrete ranks are randomised (:math:`u = (r + U)/(S+1)`), so under the null hypothesis they are
exactly uniform; the test statistic is the largest distance between their empirical CDF and the
diagonal, :math:`D = \sup_c |\hat F(c) - c|` (for coverage, :math:`\hat F(c)` is the empirical
coverage of credibility level :math:`c`). It passes when :math:`D` is below the tolerance, by
default the Dvoretzky–Kiefer–Wolfowitz bound :math:`\sqrt{\ln(2k/\alpha)/(2N)}` at significance
:math:`\alpha = 0.01` (Bonferroni over :math:`k` parameters for SBC).

The classifier two-sample test (C2ST; Lopez-Paz & Oquab, arXiv:1610.06545) follows the sbibm
benchmark (Lueckmann et al., arXiv:2101.04653): both sample sets are z-scored with the first
set's moments, an MLP with two hidden layers of ``10·D`` ReLU units is trained with Adam to tell
them apart, and its held-out accuracy over 5 folds is reported (0.5: indistinguishable, 1:
disjoint); the AUC variant reports the area under the ROC curve instead. It lives in
:mod:`sbilab.stats.two_sample` (:func:`c2st`, and :func:`c2st_batch` for many tests trained as
one batched network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import ShapeMismatchError
from .two_sample import C2STResult, c2st, c2st_batch

__all__ = ["UniformityResult", "C2STResult", "sbc", "expected_coverage", "tarp", "c2st", "c2st_batch", "dkw_tolerance"]


def dkw_tolerance(n: int, *, significance: float = 0.01, tests: int = 1) -> float:
    r"""DKW band half-width :math:`\sqrt{\ln(2k/\alpha)/(2n)}` for ``n`` draws and ``k`` tests.

    Example:
        >>> round(dkw_tolerance(1000), 4)
        0.0515
    """
    return math.sqrt(math.log(2 * tests / significance) / (2 * n))


@dataclass(frozen=True)
class UniformityResult:
    """Outcome of SBC, expected coverage or TARP.

    Attributes:
        name: ``"sbc"``, ``"coverage"`` or ``"tarp"``.
        statistic: Largest deviation :math:`D` of the empirical CDF(s) from the diagonal.
        tolerance: The bound :math:`D` must stay under.
        passed: ``statistic <= tolerance`` (one-sided for conservative coverage).
        values: The uniform-under-the-null statistics, ``(N,)`` or ``(N, P)`` numpy array.
        levels: Credibility levels of :attr:`curve`, ``(L,)``.
        curve: Empirical CDF at ``levels`` (coverage / ECP), ``(L,)`` or ``(L, P)``.
        extra: Further figures (e.g. TARP's ATC, per-parameter deviations).
    """

    name: str
    statistic: float
    tolerance: float
    passed: bool
    values: np.ndarray = field(repr=False)
    levels: np.ndarray = field(repr=False)
    curve: np.ndarray = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def plot(self, path: str | Path, *, labels: list[str] | None = None) -> Path:
        """Draw the CDF(s) against the diagonal with the tolerance band to a PNG file."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 4))
        curve = self.curve.reshape(len(self.levels), -1)
        for j in range(curve.shape[1]):
            label = labels[j] if labels else (f"parameter {j}" if curve.shape[1] > 1 else self.name)
            ax.plot(self.levels, curve[:, j], label=label)
        ax.fill_between(self.levels, np.clip(self.levels - self.tolerance, 0, 1), np.clip(self.levels + self.tolerance, 0, 1),
                        color="grey", alpha=0.3, label="tolerance")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        names = {"sbc": ("normalised rank", "empirical CDF"), "coverage": ("credibility level", "expected coverage"),
                 "tarp": ("credibility level", "expected coverage probability")}
        ax.set_xlabel(names.get(self.name, ("level", "CDF"))[0])
        ax.set_ylabel(names.get(self.name, ("level", "CDF"))[1])
        ax.set_title(f"{self.name}: D={self.statistic:.3f} (tol {self.tolerance:.3f}) {'pass' if self.passed else 'FAIL'}")
        ax.legend(fontsize=7)
        return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------------- uniformity
def _as_samples(samples: Any, theta: Any) -> tuple[Tensor, Tensor]:
    s = torch.as_tensor(samples, dtype=torch.float64)
    t = torch.as_tensor(theta, dtype=torch.float64)
    if t.dim() != 2 or s.dim() != 3 or s.shape[1:] != t.shape:
        raise ShapeMismatchError(
            f"samples must be (S, N, P) and theta (N, P) with matching N, P; got {tuple(s.shape)} and {tuple(t.shape)}."
        )
    return s, t


def _randomised(count_below: Tensor, count_equal: Tensor, s: int, generator: torch.Generator) -> Tensor:
    """Exactly uniform u from a rank among ``s`` draws (ties broken at random)."""
    jitter = torch.rand(count_below.shape, generator=generator, dtype=torch.float64)
    return (count_below + jitter * (count_equal + 1)) / (s + 1)


def _uniformity(name: str, u: Tensor, *, tolerance: float | None, significance: float, one_sided: bool = False,
                extra: dict[str, Any] | None = None) -> UniformityResult:
    u2 = u.reshape(u.shape[0], -1)
    n, k = u2.shape
    levels = torch.linspace(0, 1, 101, dtype=torch.float64)
    curve = (u2.unsqueeze(0) <= levels[:, None, None]).double().mean(1)  # (L, k)
    # exact sup over all c of |F_n(c) - c| (KS statistic), evaluated at the jumps
    srt = u2.sort(0).values
    i = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    above = (i / n - srt).max(0).values  # F_n above the diagonal
    below = (srt - (i - 1) / n).max(0).values  # F_n below the diagonal (over-confident coverage)
    dev = below if one_sided else torch.maximum(above, below)
    tol = dkw_tolerance(n, significance=significance, tests=k) if tolerance is None else float(tolerance)
    stat = float(dev.max())
    info = {"deviation_per_column": dev.tolist(), "n": n, **(extra or {})}
    return UniformityResult(name, stat, tol, stat <= tol, u.numpy(), levels.numpy(), curve.squeeze(-1).numpy() if k == 1 else curve.numpy(), info)


def sbc(samples: Any, theta: Any, *, tolerance: float | None = None, significance: float = 0.01, seed: int = 0) -> UniformityResult:
    r"""Simulation-based calibration (arXiv:1804.06788).

    Args:
        samples: Posterior draws ``(S, N, P)`` for the ``N`` observations ``x_i``.
        theta: The parameters ``(N, P)`` each ``x_i`` was simulated at (drawn from the prior).
        tolerance: Largest allowed deviation; default: DKW bound at ``significance``.
        seed: Seed of the tie-breaking jitter.

    Returns:
        :class:`UniformityResult` with ``values`` the normalised ranks ``(N, P)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.randn(500, 1, generator=g)
        >>> exact = sbc(torch.randn(99, 500, 1, generator=g), theta)   # same distribution: calibrated
        >>> exact.passed, sbc(0.3 * torch.randn(99, 500, 1, generator=g), theta).passed
        (True, False)
    """
    s, t = _as_samples(samples, theta)
    below = (s < t).sum(0).double()
    equal = (s == t).sum(0).double()
    u = _randomised(below, equal, s.shape[0], torch.Generator().manual_seed(seed))
    return _uniformity("sbc", u, tolerance=tolerance, significance=significance)


def expected_coverage(log_prob_samples: Any, log_prob_true: Any, *, tolerance: float | None = None, significance: float = 0.01,
                      conservative_ok: bool = False, seed: int = 0) -> UniformityResult:
    r"""Expected coverage of highest-posterior-density regions (arXiv:2110.06581, 2210.04815).

    Args:
        log_prob_samples: :math:`\log q(\theta_s|x_i)` of ``S`` posterior draws, ``(S, N)``.
        log_prob_true: :math:`\log q(\theta_i|x_i)` at the true parameters, ``(N,)``.
        tolerance: Largest allowed deviation of coverage from credibility.
        conservative_ok: If ``True``, only under-coverage (over-confidence) fails.

    Returns:
        :class:`UniformityResult`; ``curve`` is the expected coverage at ``levels``.
    """
    lq = torch.as_tensor(log_prob_samples, dtype=torch.float64)
    lt = torch.as_tensor(log_prob_true, dtype=torch.float64)
    if lq.dim() != 2 or lt.shape != lq.shape[1:]:
        raise ShapeMismatchError(f"expected_coverage: need (S, N) and (N,), got {tuple(lq.shape)} and {tuple(lt.shape)}.")
    higher = (lq > lt).sum(0).double()
    equal = (lq == lt).sum(0).double()
    u = _randomised(higher, equal, lq.shape[0], torch.Generator().manual_seed(seed))
    return _uniformity("coverage", u, tolerance=tolerance, significance=significance, one_sided=conservative_ok)


def tarp(samples: Any, theta: Any, *, references: Any = None, tolerance: float | None = None, significance: float = 0.01,
         seed: int = 0) -> UniformityResult:
    r"""Tests of Accuracy with Random Points (arXiv:2302.03026).

    Parameters are scaled to the range of ``theta``; reference points are drawn uniformly over
    that box unless given. ``extra["atc"]`` is the area between the ECP curve and the diagonal
    above level 0.5, as in the paper's software.

    Args:
        samples: Posterior draws ``(S, N, P)``.
        theta: True parameters ``(N, P)``.
        references: Reference points ``(N, P)`` (default: uniform in the scaled box, from a
            stream derived from ``seed``). They must not depend on ``theta`` beyond ``x``.
    """
    s, t = _as_samples(samples, theta)
    # offset the stream: references drawn from the seed that also simulated theta would depend on it
    g = torch.Generator().manual_seed(seed + 0x7A4F_5EED)
    lo, hi = t.min(0).values, t.max(0).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    s, t = (s - lo) / scale, (t - lo) / scale
    ref = torch.rand(t.shape, generator=g, dtype=torch.float64) if references is None else (torch.as_tensor(references, dtype=torch.float64) - lo) / scale
    d_samples = (s - ref).norm(dim=-1)  # (S, N)
    d_true = (t - ref).norm(dim=-1)  # (N,)
    u = _randomised((d_samples < d_true).sum(0).double(), (d_samples == d_true).sum(0).double(), s.shape[0], g)
    result = _uniformity("tarp", u, tolerance=tolerance, significance=significance)
    half = result.levels >= 0.5
    atc = float((result.curve[half] - result.levels[half]).sum())
    result.extra["atc"] = atc
    return result
