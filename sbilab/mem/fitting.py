r"""Integration noise in MEM fits: how much the Monte Carlo integrals move the fitted parameters.

The MEM likelihood is an estimate. With common random numbers it is a smooth function of θ
for one seed, so the fit converges, but a different seed gives a slightly different function
and a slightly different best fit. :func:`integration_noise` refits the same data with
independent seeds and reports the spread of the best-fit values next to their statistical
errors: a spread far below the statistical error shows the integration noise is negligible;
otherwise it is an extra uncertainty to add in quadrature (or a reason to raise ``samples``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..events import Events
from ..exceptions import FitError
from ..simulators.space import ParameterSpace
from ..stats.results import FitResult, ResultBase
from ..stats.unbinned import LogRatio, UnbinnedLikelihood

__all__ = ["IntegrationNoise", "integration_noise"]


@dataclass(frozen=True)
class IntegrationNoise(ResultBase):
    """Refits of one dataset with independent integration seeds.

    Attributes:
        names: Parameter names.
        seeds: The seeds used.
        best: Best fit per seed, ``{name: (value per seed)}``.
        errors: HESSE errors of the first seed's fit, ``{name: error}``.
        spread: Standard deviation of the best fits over seeds, ``{name: sd}``.
        relative_spread: ``spread / errors`` per free parameter: the integration noise in units
            of the statistical error.
        valid: Whether every fit was valid.
    """

    names: tuple[str, ...]
    seeds: tuple[int, ...]
    best: dict[str, tuple[float, ...]]
    errors: dict[str, float]
    spread: dict[str, float]
    relative_spread: dict[str, float]
    valid: bool


def integration_noise(
    likelihood_for_seed: Callable[[int], LogRatio],
    observed: Events,
    space: ParameterSpace,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    fit_options: dict[str, Any] | None = None,
    **likelihood_options: Any,
) -> IntegrationNoise:
    """Fit ``observed`` once per seed and report the spread of the best fits.

    Args:
        likelihood_for_seed: Builds the MEM log-ratio for a seed, e.g.
            ``lambda s: MatrixElementLikelihood(model, proposal, space, fiducial=..., seed=s)``
            (the fiducial sample may take the seed too).
        observed: The data.
        space: Parameter space.
        seeds: At least two seeds.
        fit_options: Passed to :meth:`UnbinnedLikelihood.fit` (``minos``, ``fixed``, ...).
        likelihood_options: Passed to :class:`UnbinnedLikelihood` (``constraints``, ``limits``, ...).

    Raises:
        FitError: fewer than two seeds.
    """
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise FitError(f"integration_noise needs at least two seeds to measure a spread, got {seeds}.")
    fits: list[FitResult] = [UnbinnedLikelihood(likelihood_for_seed(s), observed, space, **likelihood_options).fit(**(fit_options or {}))
                             for s in seeds]
    names = tuple(space.names)
    best = {n: tuple(f.best[n] for f in fits) for n in names}
    spread = {}
    for n in names:
        mean = sum(best[n]) / len(seeds)
        spread[n] = math.sqrt(sum((v - mean) ** 2 for v in best[n]) / (len(seeds) - 1))
    errors = {n: fits[0].errors[n] for n in names}
    rel = {n: spread[n] / errors[n] for n in names if errors[n] > 0}  # fixed parameters have no error
    return IntegrationNoise(names, seeds, best, errors, spread, rel, all(f.valid for f in fits))
