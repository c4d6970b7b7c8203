r"""Integration noise in MEM fits: how much the Monte Carlo integrals move the fitted parameters.

The MEM likelihood is an estimate. With common random numbers it is a smooth function of θ
for one seed, so the fit converges, but a different seed gives a slightly different function
and a slightly different best fit. :func:`integration_noise` refits the same data with
independent seeds and reports the spread of the best-fit values next to their statistical
errors: a spread far below the statistical error shows the integration noise is negligible;
otherwise it is an extra uncertainty to add in quadrature (or a reason to raise ``samples``).

The spread has two independent parts. The per-event integrals :math:`\hat I(x_i;\theta)` have
independent errors, so their effect on the fit does not grow with the number of events N. The
fiducial cross section :math:`\hat\sigma_\mathrm{fid}(\theta)` is one sample shared by all events:
:math:`-\log L` contains :math:`N\log\hat\sigma_\mathrm{fid}(\theta)`, so an error
:math:`\eta(\theta) = \log\hat\sigma_\mathrm{fid} - \log\sigma_\mathrm{fid}` shifts the best fit by

.. math::
    \delta\hat\theta = -N\,V\,\nabla\eta \qquad (V \text{ the fit's covariance, to first order}),

which in units of the statistical error grows like :math:`\sqrt N` (:math:`V \propto 1/N`) and
falls like :math:`1/\sqrt n` with the sample size n. Only the gradient of η matters: a relative
error that is the same at every θ cancels in the normalised likelihood. :func:`fiducial_noise`
predicts this part from the sample itself (no refits) and warns when it is too large;
``integration_noise(..., split=True)`` measures both parts by refitting with one seed varied at a time.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..events import Events
from ..exceptions import FitError, IntegrationNoiseWarning
from ..simulators.space import ParameterSpace
from ..stats.results import FitResult, ResultBase
from ..stats.unbinned import LogRatio, UnbinnedLikelihood

__all__ = ["IntegrationNoise", "integration_noise", "fiducial_noise"]

Spread = dict[str, float]


@dataclass(frozen=True)
class IntegrationNoise(ResultBase):
    """Refits of one dataset with independent integration seeds.

    Attributes:
        names: Parameter names.
        seeds: The seeds used.
        best: Best fit per seed (both seeds varied together), ``{name: (value per seed)}``.
        errors: HESSE errors of the first seed's fit, ``{name: error}``.
        spread: Standard deviation of the best fits over seeds, ``{name: sd}``: the total noise.
        relative_spread: ``spread / errors`` per free parameter: the integration noise in units
            of the statistical error.
        valid: Whether every fit was valid.
        events: Number of events N (sum of weights).
        best_fiducial, best_event: With ``split``: best fits with only the σ_fid seed varied (the
            per-event seed held at ``seeds[0]``), and with only the per-event seed varied; ``None`` without.
        fiducial_spread, event_spread: Their standard deviations: the σ_fid part and the per-event
            part of ``spread`` (independent, so they add in quadrature); ``None`` without ``split``.
        relative_fiducial_spread, relative_event_spread: The same in units of ``errors``.
        predicted_fiducial: The σ_fid part predicted from the first seed's σ_fid sample
            (:func:`fiducial_noise`), in units of ``errors``; ``None`` when the likelihood is not a
            :class:`~sbilab.mem.likelihood.MatrixElementLikelihood`.
        fiducial_tolerance: The fraction above which ``predicted_fiducial`` warned.
    """

    names: tuple[str, ...]
    seeds: tuple[int, ...]
    best: dict[str, tuple[float, ...]]
    errors: dict[str, float]
    spread: dict[str, float]
    relative_spread: dict[str, float]
    valid: bool
    events: float = math.nan
    best_fiducial: dict[str, tuple[float, ...]] | None = None
    best_event: dict[str, tuple[float, ...]] | None = None
    fiducial_spread: dict[str, float] | None = None
    event_spread: dict[str, float] | None = None
    relative_fiducial_spread: dict[str, float] | None = None
    relative_event_spread: dict[str, float] | None = None
    predicted_fiducial: dict[str, float] | None = None
    fiducial_tolerance: float = math.nan

    def summary(self) -> str:
        """A table of the noise per free parameter in units of its statistical error: total, σ_fid part, per-event part, prediction."""

        def cell(values: dict[str, float] | None, name: str) -> str:
            return "—" if values is None or name not in values else f"{values[name]:.3f}"

        head = (f"integration noise: {self.events:g} events, seeds {self.seeds}, {'all fits valid' if self.valid else 'NOT all fits valid'}\n"
                "| parameter | HESSE error | total spread / error | σ_fid part | per-event part | σ_fid predicted |\n|---|---:|---:|---:|---:|---:|")
        rows = [f"| {n} | {self.errors[n]:.4g} | {cell(self.relative_spread, n)} | {cell(self.relative_fiducial_spread, n)} | "
                f"{cell(self.relative_event_spread, n)} | {cell(self.predicted_fiducial, n)} |" for n in self.names if n in self.relative_spread]
        return "\n".join([head, *rows])

    def __str__(self) -> str:
        return self.summary()


def _events(events: Events | float) -> float:
    return float(events.weights_or_ones().sum()) if isinstance(events, Events) else float(events)


def fiducial_noise(likelihood: Any, fit: FitResult, events: Events | float, *, tolerance: float = 0.1, warn: bool = True) -> Spread:
    r"""The spread of the best fit that the σ_fid sample causes, predicted, in units of the statistical errors.

    With :math:`V` the fit's covariance of the free parameters and :math:`C` the Monte Carlo
    covariance of :math:`\nabla\log\hat\sigma_\mathrm{fid}` at the best fit
    (:meth:`~sbilab.mem.likelihood.MatrixElementLikelihood.fiducial_covariance`), the shift
    :math:`-NV\nabla\eta` has covariance :math:`N^2 VCV`, and per free parameter k

    .. math::
        r_k = N\sqrt{(VCV)_{kk} / V_{kk}}.

    **Criterion.** The σ_fid sample is too small for these N events when some :math:`r_k` exceeds
    ``tolerance`` (default 0.1: added in quadrature it then enlarges the error by at most 0.5 %);
    an :class:`~sbilab.exceptions.IntegrationNoiseWarning` says so (``warn``). As
    :math:`r \propto \sqrt{N/n}` (plain Monte Carlo; randomised QMC falls faster in n), the sample
    needs :math:`n \ge n_\mathrm{now}(r/\mathrm{tolerance})^2` points, i.e. it must grow in
    proportion to N. The prediction is first order in the shift and uses the sample's own error
    estimate (eight replicas for ``"sobol"``: good to ~30 %). The check runs here, after a fit, and
    not when the likelihood is built: construction sees neither N (one likelihood serves datasets of
    any size, e.g. in ``fit_toys``) nor the statistical covariance, and σ_fid's relative error alone
    does not say how far the fit moves (only its θ-gradient does).

    Args:
        likelihood: The :class:`~sbilab.mem.likelihood.MatrixElementLikelihood` that was fitted.
        fit: Its fit to the data.
        events: The data (``Events``; N is the sum of weights) or N.
        tolerance: Largest accepted :math:`r_k`.
        warn: Warn when the criterion fails.

    Returns:
        ``{name: r}`` for the free parameters.

    Raises:
        FitError: the likelihood has no σ_fid sample, or the fit's parameters are not its space's.
    """
    covariance_of = getattr(likelihood, "fiducial_covariance", None)
    if covariance_of is None:
        raise FitError(f"fiducial_noise needs a MatrixElementLikelihood (with fiducial_covariance), got {type(likelihood).__name__}.")
    names = tuple(likelihood.space.names)
    if sorted(fit.names) != sorted(names):
        raise FitError(f"fit has parameters {fit.names} but the likelihood's space has {names}; pass the fit of this likelihood.")
    n = _events(events)
    theta = torch.tensor([fit.best[k] for k in names], dtype=torch.float64)
    c_all = covariance_of(theta)
    free = [k for k in fit.names if k not in fit.fixed and fit.errors[k] > 0]
    f_idx = [fit.names.index(k) for k in free]
    v = torch.tensor(fit.covariance, dtype=torch.float64)[f_idx][:, f_idx]
    s_idx = [names.index(k) for k in free]
    c = c_all[s_idx][:, s_idx]
    shift = n**2 * torch.diagonal(v @ c @ v)
    r = {k: float(torch.sqrt(shift[i].clamp(min=0) / v[i, i])) for i, k in enumerate(free)}
    worst = max(r, key=r.get, default=None)  # type: ignore[arg-type]
    if warn and worst is not None and r[worst] > tolerance:
        samples = getattr(getattr(likelihood, "fiducial", None), "samples", None)
        need = "" if samples is None else f" (now {samples}; about {math.ceil(samples * (r[worst] / tolerance) ** 2)} for {n:g} events)"
        warnings.warn(
            f"the sigma_fid sample moves the best fit of {n:g} events by an estimated {r[worst]:.3g} of the statistical error of "
            f"{worst!r} (tolerance {tolerance:g}; {', '.join(f'{k} {x:.3g}' for k, x in r.items())}). Its part grows like sqrt(N/n): "
            f"enlarge the FiducialCrossSection sample{need}, or add this noise in quadrature.",
            IntegrationNoiseWarning, stacklevel=2)
    return r


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def integration_noise(
    likelihood_for_seed: Callable[..., LogRatio],
    observed: Events,
    space: ParameterSpace,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    split: bool = False,
    fiducial_tolerance: float = 0.1,
    fit_options: dict[str, Any] | None = None,
    **likelihood_options: Any,
) -> IntegrationNoise:
    """Fit ``observed`` once per seed and report the spread of the best fits.

    Args:
        likelihood_for_seed: Builds the MEM log-ratio for a seed, e.g.
            ``lambda s: MatrixElementLikelihood(model, proposal, space, fiducial=..., seed=s)``
            (the fiducial sample may take the seed too). With ``split`` it takes two seeds,
            ``(event_seed, fiducial_seed)``: the per-event one for the likelihood's ``seed`` and
            the σ_fid one for the :class:`~sbilab.mem.fiducial.FiducialCrossSection` (cache those:
            a sample serves many refits).
        observed: The data.
        space: Parameter space.
        seeds: At least two seeds.
        split: Also measure the σ_fid part (only the σ_fid seed varied, the per-event seed held
            at ``seeds[0]``) and the per-event part (the other way round): ``3 len(seeds) - 2``
            fits instead of ``len(seeds)``.
        fiducial_tolerance: When the likelihood is a
            :class:`~sbilab.mem.likelihood.MatrixElementLikelihood`, the σ_fid part is also
            predicted from the first seed's sample (:func:`fiducial_noise`) and an
            :class:`~sbilab.exceptions.IntegrationNoiseWarning` is raised when it exceeds this
            fraction of a statistical error (the criterion is stated there).
        fit_options: Passed to :meth:`UnbinnedLikelihood.fit` (``minos``, ``fixed``, ...).
        likelihood_options: Passed to :class:`UnbinnedLikelihood` (``constraints``, ``limits``, ...).

    Raises:
        FitError: fewer than two seeds, or ``split`` with a factory that does not take two seeds.
    """
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise FitError(f"integration_noise needs at least two seeds to measure a spread, got {seeds}.")
    names = tuple(space.names)
    n_events = _events(observed)

    def fit(log_ratio: LogRatio) -> FitResult:
        return UnbinnedLikelihood(log_ratio, observed, space, **likelihood_options).fit(**(fit_options or {}))

    if split:
        try:
            inspect.signature(likelihood_for_seed).bind(0, 0)
        except TypeError:
            raise FitError(
                "integration_noise(split=True): likelihood_for_seed must take two seeds (event_seed, fiducial_seed) — the "
                "per-event one for the likelihood's seed and the sigma_fid one for its FiducialCrossSection — but it does not "
                "accept two positional arguments. Pass a two-seed factory, or split=False."
            ) from None
        except ValueError:  # no signature (some builtins): let the call decide
            pass

    def build(event_seed: int, fiducial_seed: int) -> LogRatio:
        return likelihood_for_seed(event_seed, fiducial_seed) if split else likelihood_for_seed(event_seed)

    first = build(seeds[0], seeds[0])
    fits = [fit(first)]
    predicted = None
    if getattr(first, "fiducial_covariance", None) is not None:
        predicted = fiducial_noise(first, fits[0], n_events, tolerance=fiducial_tolerance)
    del first  # its per-event cache can be large
    fits += [fit(build(s, s)) for s in seeds[1:]]
    errors = {n: fits[0].errors[n] for n in names}

    def collect(group: list[FitResult]) -> tuple[dict[str, tuple[float, ...]], Spread, Spread]:
        best = {n: tuple(f.best[n] for f in group) for n in names}
        spread = {n: _sd(best[n]) for n in names}
        return best, spread, {n: spread[n] / errors[n] for n in names if errors[n] > 0}  # fixed parameters have no error

    best, spread, rel = collect(fits)
    parts: dict[str, Any] = {}
    valid = all(f.valid for f in fits)
    if split:
        by_fid = fits[:1] + [fit(build(seeds[0], s)) for s in seeds[1:]]
        by_event = fits[:1] + [fit(build(s, seeds[0])) for s in seeds[1:]]
        valid = valid and all(f.valid for f in by_fid + by_event)
        for key, group in (("fiducial", by_fid), ("event", by_event)):
            parts[f"best_{key}"], parts[f"{key}_spread"], parts[f"relative_{key}_spread"] = collect(group)
    return IntegrationNoise(names, seeds, best, errors, spread, rel, valid, events=n_events, predicted_fiducial=predicted,
                            fiducial_tolerance=float(fiducial_tolerance), **parts)
