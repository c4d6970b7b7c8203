r"""Neyman construction with a (learned) test statistic: confidence sets that cover by construction.

For a test statistic :math:`\tau(x;\theta)` (large = data incompatible with θ), the critical value
:math:`k_\alpha(\theta)` is the :math:`1-\alpha` quantile of :math:`\tau` under toys drawn at θ,
and the confidence set is :math:`\{\theta: \tau(x_\mathrm{obs};\theta) \le k_\alpha(\theta)\}`.
Its coverage is :math:`1-\alpha` whatever :math:`\tau` is — a learned likelihood ratio that is
imperfect only costs power (wider sets), not validity. This is the ACORE/LF2I idea
(Dalmasso, Izbicki, Lee, arXiv:2002.10399; Dalmasso, Masserano, Zhao, Izbicki, Lee,
arXiv:2107.03920): :math:`k_\alpha(\theta)` is either taken per grid point from toys, or learned
by quantile regression of :math:`\tau` on θ from toys at many θ, which gives a smooth
:math:`k_\alpha` anywhere in the space. ATLAS used the construction with a neural likelihood
ratio in arXiv:2412.01600.

Toys are batched: ``simulate_toys(theta, n_toys, generator)`` returns all ``n_toys`` datasets at
one point as a ``(T, N, D)`` tensor and the statistic is evaluated on all of them at once. Toys of
padded particle sets come as a pair ``(x (T, N, M, F), mask (T, N, M))``; the statistic then
receives the mask as ``statistic(x, theta, mask=mask)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..exceptions import FitError, ShapeMismatchError

__all__ = ["NeymanConstruction", "TestStatistic", "ToySimulator"]

TestStatistic = Callable[..., Tensor]
"""``statistic(x: (T, N, D), theta: (P,)) -> (T,)`` (for sets also given ``mask=(T, N, M)``); large values disfavour ``theta``."""

ToySimulator = Callable[[Tensor, int, "torch.Generator | None"], "Tensor | tuple[Tensor, Tensor]"]
"""``simulate_toys(theta: (P,), n_toys, generator) -> x (n_toys, N, D)`` or, for sets, ``(x (n_toys, N, M, F), mask (n_toys, N, M))``."""


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


class NeymanConstruction:
    r"""Critical values of a test statistic on a θ grid from batched toys, and the confidence sets.

    Args:
        test_statistic: ``statistic(x: (T, N, D), theta: (P,)) -> (T,)``.
        simulate_toys: ``simulate_toys(theta: (P,), n_toys, generator) -> (n_toys, N, D)``
            (through the simulator, or a trained surrogate).
        grid: Parameter points, ``(G, P)`` (or ``(G,)`` for one parameter).

    Example:
        >>> def stat(x, th):  # exact -2 log lambda of N(theta, 1) data
        ...     return x.shape[1] * (x.mean(dim=(1, 2)) - th[0]) ** 2
        >>> def toys(th, n, gen):
        ...     return th[0] + torch.randn(n, 20, 1, generator=gen, dtype=torch.float64)
        >>> neyman = NeymanConstruction(stat, toys, torch.linspace(-1, 1, 21))
        >>> _ = neyman.calibrate(4000, generator=torch.Generator().manual_seed(0), progress=False)
        >>> round(float(neyman.critical_values(0.683).mean()), 1)  # chi2_1 quantile: 1.0
        1.0
    """

    def __init__(self, test_statistic: TestStatistic, simulate_toys: ToySimulator, grid: Tensor) -> None:
        grid = torch.as_tensor(grid, dtype=torch.float64)
        grid = grid.reshape(-1, 1) if grid.dim() == 1 else grid
        if grid.dim() != 2 or grid.shape[0] == 0:
            raise ShapeMismatchError(f"grid must be (G, P) with G > 0, got shape {tuple(grid.shape)}.")
        self.test_statistic = test_statistic
        self.simulate_toys = simulate_toys
        self.grid = grid
        self.toy_statistics: Tensor | None = None
        self._regression: dict[float, Callable[[Tensor], Tensor]] = {}

    # ------------------------------------------------------------------ calibration
    def statistics_at(self, theta: Tensor, n_toys: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Statistic of ``n_toys`` toys simulated at ``theta (P,)``, ``(n_toys,)``."""
        toys = self.simulate_toys(theta, n_toys, generator)
        x, mask = toys if isinstance(toys, tuple) else (toys, None)
        return self._statistic(x, theta, mask)

    def _statistic(self, x: Tensor, theta: Tensor, mask: Tensor | None) -> Tensor:
        out = self.test_statistic(x, theta) if mask is None else self.test_statistic(x, theta, mask=mask)
        return torch.as_tensor(out, dtype=torch.float64).reshape(-1)

    def calibrate(self, n_toys: int, *, generator: torch.Generator | None = None, progress: bool = True) -> "NeymanConstruction":
        """Simulate ``n_toys`` toys at every grid point and store their statistics, ``(G, n_toys)``."""
        if n_toys < 10:
            raise FitError(f"n_toys={n_toys} is too few to estimate a quantile; use at least 100.")
        rows = [self.statistics_at(th, n_toys, generator=generator) for th in _progress(self.grid, len(self.grid), progress, "Neyman toys")]
        self.toy_statistics = torch.stack(rows)
        self._regression.clear()
        return self

    def critical_values(self, cl: float) -> Tensor:
        r""":math:`k_\alpha(\theta_g)`: the ``cl`` quantile of the toy statistics at each grid point, ``(G,)``."""
        if self.toy_statistics is None:
            raise FitError("call calibrate(n_toys) before asking for critical values.")
        if not 0 < cl < 1:
            raise FitError(f"cl must be in (0, 1), got {cl}.")
        return torch.quantile(self.toy_statistics, cl, dim=1)

    def fit_quantile_regression(self, cl: float, *, degree: int = 2, iterations: int = 100) -> Callable[[Tensor], Tensor]:
        r"""Learn :math:`k_\alpha(\theta)` by quantile regression over all calibration toys (ACORE/LF2I).

        A polynomial of ``degree`` in the standardised θ (plus the cross term for two
        parameters) is fitted to every (θ, τ) toy pair by minimising the pinball loss of level
        ``cl``, by iteratively reweighted least squares; it smooths the per-point quantiles
        and can be evaluated between grid points.

        Returns:
            ``k(theta: (M, P)) -> (M,)``.
        """
        if self.toy_statistics is None:
            raise FitError("call calibrate(n_toys) before fit_quantile_regression.")
        if not 0 < cl < 1:
            raise FitError(f"cl must be in (0, 1), got {cl}.")
        mean, std = self.grid.mean(0), self.grid.std(0).nan_to_num(1.0).clamp_min(1e-12)

        def features(theta: Tensor) -> Tensor:
            z = (torch.as_tensor(theta, dtype=torch.float64).reshape(-1, self.grid.shape[1]) - mean) / std
            cols = [torch.ones(z.shape[0], dtype=torch.float64)]
            for d in range(1, degree + 1):
                cols += [z[:, j] ** d for j in range(z.shape[1])]
            if z.shape[1] == 2 and degree >= 2:
                cols.append(z[:, 0] * z[:, 1])
            return torch.stack(cols, dim=1)

        n_toys = self.toy_statistics.shape[1]
        feats = features(self.grid).repeat_interleave(n_toys, dim=0)  # (G*T, F)
        target = self.toy_statistics.reshape(-1)
        eps = 1e-6 * (float(target.std()) or 1.0)
        coef = torch.linalg.lstsq(feats, target.unsqueeze(1)).solution.squeeze(1)
        for _ in range(iterations):  # IRLS for the pinball loss
            residual = target - feats @ coef
            w = torch.where(residual > 0, cl, 1 - cl) / residual.abs().clamp_min(eps)
            normal = feats.T @ (w[:, None] * feats)
            new = torch.linalg.solve(normal, feats.T @ (w * target))
            if float((new - coef).abs().max()) < 1e-9 * (1 + float(coef.abs().max())):
                coef = new
                break
            coef = new

        def k(theta: Tensor) -> Tensor:
            return features(theta) @ coef

        self._regression[float(cl)] = k
        return k

    # ------------------------------------------------------------------ confidence sets
    def observed_statistics(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """Statistic of observed dataset(s) ``x: (N, D)`` or ``(T, N, D)`` at every grid point, ``(G,)`` or ``(T, G)``.

        Padded sets ``(N, M, F)`` / ``(T, N, M, F)`` come with ``mask`` ``(N, M)`` / ``(T, N, M)``.
        """
        single = x.dim() == 2 if mask is None else mask.dim() == 2
        xs = x.unsqueeze(0) if single else x
        ms = None if mask is None else (mask.unsqueeze(0) if single else mask)
        stats = torch.stack([self._statistic(xs, th, ms) for th in self.grid], dim=1)
        return stats[0] if single else stats

    def confidence_set(self, x: Tensor, cl: float = 0.6826894921370859, *, method: str = "grid", mask: Tensor | None = None) -> Tensor:
        r"""Grid points accepted at confidence level ``cl``: :math:`\tau(x;\theta_g) \le k_\alpha(\theta_g)`.

        Args:
            x: Observed data ``(N, D)``, or several datasets ``(T, N, D)`` (padded sets with ``mask``).
            method: ``"grid"`` (per-point toy quantiles) or ``"regression"`` (quantile regression).

        Returns:
            Boolean ``(G,)`` or ``(T, G)``.
        """
        if method == "grid":
            k = self.critical_values(cl)
        elif method == "regression":
            k = (self._regression.get(float(cl)) or self.fit_quantile_regression(cl))(self.grid)
        else:
            raise FitError(f"method must be 'grid' or 'regression', got {method!r}.")
        return self.observed_statistics(x, mask=mask) <= k
