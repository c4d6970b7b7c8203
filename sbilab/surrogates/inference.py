r"""Inference with a surrogate against inference with its original: :func:`compare_inference`.

The figure that decides whether a surrogate may replace its simulator in an analysis: the same
observed data and the same toy datasets are fitted with each likelihood (the original's and the
surrogate's, optionally the refined surrogate's), and compared by

* the best fit and HESSE errors on the observed data (:class:`~sbilab.stats.UnbinnedLikelihood`);
* the mean per-toy width :math:`\bar\sigma_p` (square root of the inverse Hessian at each toy's
  maximum, :func:`~sbilab.stats.fit_toys`), and its ratio to the reference likelihood's;
* the coverage of the likelihood-ratio region: the fraction of toys with
  :math:`-2\log\lambda(\theta_\mathrm{true}) \le \chi^2_P(\mathrm{CL})` (joint, all :math:`P` parameters)
  and, per parameter, of the profile-likelihood interval
  (:math:`-2\log\lambda_p \le \chi^2_1(\mathrm{CL})`, the others re-fitted), with the binomial error;
* the mean shift of the best fits, :math:`\overline{\hat\theta_\mathrm{sur} - \hat\theta_\mathrm{ref}}`
  over the same toys, in units of the mean width (a bias the surrogate brings).

A likelihood is a :class:`LikelihoodModel`: a log-density ``log_prob(F, θ)`` of per-event
features ``F`` (the observables themselves, or :meth:`Composition.likelihood_features
<sbilab.surrogates.stages.Composition.likelihood_features>` computed once per dataset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..simulators.space import ParameterSpace
from ..stats import UnbinnedLikelihood, fit_toys, profile_likelihood_ratio

__all__ = ["LikelihoodModel", "InferenceComparison", "compare_inference"]


@dataclass(frozen=True)
class LikelihoodModel:
    """A per-event log-likelihood for fits: ``log_prob(features (M, F), theta (M, P)) -> (M,)``.

    Attributes:
        log_prob: Differentiable in θ (a toy's exact ``log_prob``, a surrogate's ``log_prob``).
        features: Optional map from observables ``(N, D)`` to the features ``(N, F)`` that
            ``log_prob`` reads (computed once per dataset); ``None`` means the observables themselves.
    """

    log_prob: Callable[[Tensor, Tensor], Tensor]
    features: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def of_composition(cls, composition: Any, *, table: tuple[float, float, int] | None = None) -> "LikelihoodModel":
        """The marginal likelihood of a :class:`~sbilab.surrogates.stages.Composition` on its grid features.

        Args:
            table: ``(low, high, points)``: tabulate the features of a one-observable composition
                on that range once and interpolate (:class:`~sbilab.surrogates.grid.FeatureTable`);
                ``None`` evaluates them exactly for every event.
        """
        features = composition.likelihood_features if table is None else composition.feature_table(*table)
        return cls(composition.feature_log_prob, features)

    def featurize(self, x: Tensor) -> Tensor:
        """``x (N, D)`` -> the features ``log_prob`` reads."""
        return x if self.features is None else self.features(x)


@dataclass(frozen=True)
class InferenceComparison:
    """Fits of the same data with several likelihoods (see the module docs).

    Attributes:
        parameters: Parameter names.
        truth: The true point of the toys.
        levels: Confidence levels of the coverage.
        n_toys, n_events: Toy datasets and events per toy.
        reference: The model the others are compared to.
        observed: ``{model: {"best": {p: v}, "errors": {p: e}, "valid": bool, "reason": str, "at_bound": [p]}}``
            (if observed data were given; ``reason`` is empty for a valid fit).
        widths: ``{model: {p: mean width}}``.
        coverage: ``{model: {level: fraction of toys whose joint region covers the truth}}``.
        coverage_by_parameter: ``{model: {p: {level: fraction whose profile interval of p covers it}}}``.
        shift: ``{model: {p: mean (θ̂ - θ̂_ref) / mean width_ref}}`` over the same toys.
        shift_error: Its standard error (spread of the per-toy differences over √T).
        converged: ``{model: fraction of toy fits that converged}``.
    """

    parameters: tuple[str, ...]
    truth: tuple[float, ...]
    levels: tuple[float, ...]
    n_toys: int
    n_events: int
    reference: str
    observed: dict[str, Any]
    widths: dict[str, dict[str, float]]
    coverage: dict[str, dict[float, float]]
    coverage_by_parameter: dict[str, dict[str, dict[float, float]]]
    shift: dict[str, dict[str, float]]
    shift_error: dict[str, dict[str, float]]
    converged: dict[str, float]

    def coverage_error(self, level: float) -> float:
        """Binomial standard error of a coverage at ``level`` over the toys."""
        return math.sqrt(level * (1 - level) / self.n_toys)

    def width_ratio(self, model: str) -> dict[str, float]:
        """``{p: mean width of model / mean width of the reference}``."""
        ref = self.widths[self.reference]
        return {p: self.widths[model][p] / ref[p] for p in self.parameters}

    def to_dict(self) -> dict[str, Any]:
        models = list(self.widths)
        return {"parameters": list(self.parameters), "truth": list(self.truth), "levels": list(self.levels), "n_toys": self.n_toys,
                "n_events": self.n_events, "reference": self.reference, "observed": self.observed, "widths": self.widths,
                "width_ratio": {m: self.width_ratio(m) for m in models},
                "coverage": {m: {str(k): v for k, v in c.items()} for m, c in self.coverage.items()},
                "coverage_by_parameter": {m: {p: {str(k): v for k, v in c.items()} for p, c in cp.items()}
                                          for m, cp in self.coverage_by_parameter.items()},
                "coverage_error": {str(level): self.coverage_error(level) for level in self.levels},
                "shift": self.shift, "shift_error": self.shift_error, "converged": self.converged}


def _fit_block(model: LikelihoodModel, x: Tensor, space: ParameterSpace, truth: Tensor, chunk_events: int
               ) -> tuple[Tensor, ...]:
    """Per toy: best fit, joint -2 log λ(truth), converged, covariance, and per parameter the profile -2 log λ_p."""
    feats = torch.stack([model.featurize(t) for t in x])
    opts = dict(chunk_events=chunk_events, block_events=chunk_events)
    theta_hat, nll_hat, converged, cov = fit_toys(model.log_prob, feats, space, start=truth, return_covariance=True, **opts)
    joint = profile_likelihood_ratio(model.log_prob, feats, space, truth, best=(theta_hat, nll_hat), **opts)
    profiles = [profile_likelihood_ratio(model.log_prob, feats, space, truth, parameter=name, best=(theta_hat, nll_hat), **opts)
                for name in space.names]
    return theta_hat, joint, converged, cov, torch.stack(profiles, 1)


def compare_inference(
    models: Mapping[str, LikelihoodModel],
    toys: Tensor,
    space: ParameterSpace,
    truth: Any,
    *,
    observed: Tensor | None = None,
    levels: Sequence[float] = (0.683, 0.95),
    reference: str | None = None,
    block_toys: int = 50,
    chunk_events: int = 16384,
    progress: bool = False,
) -> InferenceComparison:
    r"""Fit the same toys (and observed data) with every likelihood in ``models``.

    Args:
        models: ``{name: LikelihoodModel}``, e.g. ``{"original": ..., "surrogate": ...}``.
        toys: Toy datasets drawn at ``truth`` from the original, ``(T, N, D)``.
        space: Parameter space (bounds of the fits).
        truth: The true point, ``(P,)``.
        observed: Observed events ``(N, D)`` to fit once with each model (HESSE errors).
        levels: Confidence levels of the coverage.
        reference: The model others are compared to (default: the first).
        block_toys: Toys fitted together (bounds the memory of the features).
        chunk_events: Events per likelihood call in :func:`~sbilab.stats.fit_toys`.

    Raises:
        ConfigError: no models, an unknown reference, or levels outside (0, 1).
        ShapeMismatchError: ``toys`` is not ``(T, N, D)``.
    """
    from scipy.stats import chi2

    if not models:
        raise ConfigError("compare_inference: give at least one likelihood model.")
    reference = reference or next(iter(models))
    if reference not in models:
        raise ConfigError(f"compare_inference: reference {reference!r} is not one of {list(models)}.")
    if not all(0 < level < 1 for level in levels):
        raise ConfigError(f"compare_inference: levels must lie in (0, 1), got {list(levels)}.")
    if toys.dim() != 3:
        raise ShapeMismatchError(f"compare_inference: toys must be (T, N, D), got {tuple(toys.shape)}.")
    truth_t = torch.as_tensor(truth, dtype=torch.float64).reshape(-1)
    space.check(truth_t.reshape(1, -1), argument="compare_inference truth")
    names = tuple(space.names)
    thresholds = {float(level): float(chi2.ppf(level, len(names))) for level in levels}
    thresholds_1 = {float(level): float(chi2.ppf(level, 1)) for level in levels}
    per_model: dict[str, tuple[Tensor, ...]] = {}
    observed_fits: dict[str, Any] = {}
    for label, model in models.items():
        parts = []
        starts = range(0, toys.shape[0], block_toys)
        for s in tqdm(starts, desc=f"toys ({label})", disable=not progress):
            parts.append(_fit_block(model, toys[s:s + block_toys], space, truth_t, chunk_events))
        per_model[label] = tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[assignment]
        if observed is not None:
            fit = UnbinnedLikelihood(model.log_prob, Events.observed(model.featurize(observed)), space,
                                     start=dict(zip(names, truth_t.tolist()))).fit()
            observed_fits[label] = {"best": fit.best, "errors": fit.errors, "valid": fit.valid, "reason": fit.reason,
                                    "at_bound": list(fit.at_bound)}
    widths, coverage, by_parameter, shift, shift_error, converged = {}, {}, {}, {}, {}, {}
    for label, (theta_hat, t, conv, cov, t_p) in per_model.items():
        sigma = cov.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
        ok = conv if bool(conv.any()) else torch.ones_like(conv)
        widths[label] = {p: float(sigma[ok, i].mean()) for i, p in enumerate(names)}
        coverage[label] = {level: float((t <= thr).double().mean()) for level, thr in thresholds.items()}
        by_parameter[label] = {p: {level: float((t_p[:, i] <= thr).double().mean()) for level, thr in thresholds_1.items()}
                               for i, p in enumerate(names)}
        converged[label] = float(conv.double().mean())
    ref_hat = per_model[reference][0]
    t = toys.shape[0]
    for label, (theta_hat, *_rest) in per_model.items():
        diff = (theta_hat - ref_hat) / torch.tensor([widths[reference][p] for p in names], dtype=torch.float64)
        shift[label] = {p: float(diff[:, i].mean()) for i, p in enumerate(names)}
        shift_error[label] = {p: float(diff[:, i].std()) / math.sqrt(t) if t > 1 else math.nan for i, p in enumerate(names)}
    return InferenceComparison(names, tuple(truth_t.tolist()), tuple(float(v) for v in levels), int(t), int(toys.shape[1]),
                               reference, observed_fits, widths, coverage, by_parameter, shift, shift_error, converged)
