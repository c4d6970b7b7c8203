r"""Validation of a surrogate against its original on held-out events: :func:`validate` and its parts.

Three views of the same question, "can the surrogate stand in for the original?":

* **Classifier two-sample test** (:func:`two_sample_auc`): a fresh core
  :class:`~sbilab.estimators.Classifier` is trained to separate surrogate from original events
  on half of them, and its AUC on the other half is 0.5 for identical distributions
  (:func:`sbilab.calibration.closure_test`, which reweights the surrogate by its event weights
  when it is refined). The statistical error is the bootstrap spread of the held-out AUC; it
  cannot be smaller than the Hanley–McNeil value at AUC = 0.5,
  :math:`\sigma_\mathrm{AUC} \approx \sqrt{(n_0 + n_1 + 1)/(12\,n_0 n_1)}` (Radiology 143 (1982) 29),
  so a test on too few events (:math:`\sigma_\mathrm{AUC}` above the requested ``resolution``)
  is refused with :class:`~sbilab.exceptions.InsufficientEventsError`. Regions of θ (or of
  any column) get their own test.
* **Histograms** (:func:`compare_histograms`): normalised per-observable histograms with their
  ratio and :math:`\chi^2 = \sum_b (f^\mathrm{sur}_b - f^\mathrm{orig}_b)^2/(\sigma^2_{\mathrm{sur},b} + \sigma^2_{\mathrm{orig},b})`,
  :math:`f_b = \sum_{i\in b} w_i/W`, :math:`\sigma^2_b = \sum_{i\in b} w_i^2/W^2`, over the bins with
  entries, ``ndf`` = those bins − 1.
* **Moments** (:func:`compare_moments`): means with errors :math:`s/\sqrt{N_\mathrm{eff}}`,
  standard deviations (error :math:`s/\sqrt{2N_\mathrm{eff}}`, Gaussian approximation), and the
  correlation matrices.

Inference with the surrogate against the original (best fits, widths, coverage) is
:func:`sbilab.surrogates.inference.compare_inference`; :func:`validate` attaches it to the
:class:`ValidationReport`, which writes JSON and plots (matplotlib, optional) in one call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..calibration import closure_test
from ..events import Events
from ..exceptions import ConfigError, InsufficientEventsError, ShapeMismatchError

__all__ = ["AucResult", "HistogramComparison", "ValidationReport", "auc_error_estimate", "two_sample_auc",
           "compare_histograms", "compare_moments", "validate"]


def auc_error_estimate(n0: float, n1: float) -> float:
    r"""Hanley–McNeil standard error of an AUC of 0.5 from ``n0`` and ``n1`` test events: :math:`\sqrt{(n_0+n_1+1)/(12 n_0 n_1)}`."""
    if n0 <= 0 or n1 <= 0:
        return math.inf
    return math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def _kish(w: Tensor) -> float:
    return float(w.sum() ** 2 / (w**2).sum()) if w.numel() else 0.0


def _matrix(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value)
    t = t.reshape(-1, 1) if t.dim() == 1 else t
    if t.dim() != 2:
        raise ShapeMismatchError(f"{name} must be (N, F); got shape {tuple(t.shape)}.")
    return t.to(torch.float64)


def _weights(value: Any, n: int, name: str) -> Tensor:
    if value is None:
        return torch.ones(n, dtype=torch.float64)
    w = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if w.numel() != n:
        raise ShapeMismatchError(f"{name} has {w.numel()} entries for {n} events.")
    return w


@dataclass(frozen=True)
class AucResult:
    """A classifier two-sample test: held-out AUC of surrogate vs original with its bootstrap error.

    Attributes:
        label: What was compared (``"all"`` or a region such as ``"M in [95, 98.3)"``).
        auc: Held-out AUC (0.5: indistinguishable; above 0.5: the classifier finds differences).
        error: Bootstrap standard error of ``auc``.
        n_surrogate, n_original: Events of each sample (both halves).
        effective_surrogate: Kish effective size of the (weighted) surrogate sample.
    """

    label: str
    auc: float
    error: float
    n_surrogate: int
    n_original: int
    effective_surrogate: float

    @property
    def pull(self) -> float:
        """:math:`(AUC - 0.5)/\\sigma`."""
        return (self.auc - 0.5) / self.error if self.error > 0 else math.inf

    def consistent(self, sigmas: float = 2.0) -> bool:
        """``|AUC - 0.5| <= sigmas * error``."""
        return abs(self.auc - 0.5) <= sigmas * self.error

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "auc": self.auc, "error": self.error, "pull": self.pull, "n_surrogate": self.n_surrogate,
                "n_original": self.n_original, "effective_surrogate": self.effective_surrogate, "consistent_2sigma": self.consistent()}


def two_sample_auc(
    surrogate: Any,
    original: Any,
    *,
    weights_surrogate: Any = None,
    weights_original: Any = None,
    label: str = "all",
    resolution: float = 0.01,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 30,
    test_fraction: float = 0.5,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> AucResult:
    r"""Held-out AUC of a fresh classifier between surrogate ``(N0, F)`` and original ``(N1, F)`` rows.

    Args:
        weights_surrogate: Weights of the surrogate events (e.g. refinement weights), ``(N0,)``.
        resolution: The largest acceptable statistical error of the AUC; fewer events are refused.
        test_fraction: Share of each sample held out to measure the AUC.

    Raises:
        InsufficientEventsError: the expected error :func:`auc_error_estimate` of the held-out
            (effective) sizes exceeds ``resolution``; the message gives the events needed.
        ShapeMismatchError: samples of different widths or weights of the wrong length.
    """
    x0, x1 = _matrix(surrogate, "surrogate"), _matrix(original, "original")
    if x0.shape[1] != x1.shape[1]:
        raise ShapeMismatchError(f"two_sample_auc: surrogate has {x0.shape[1]} columns, original {x1.shape[1]}; compare the same features.")
    w0, w1 = _weights(weights_surrogate, x0.shape[0], "weights_surrogate"), _weights(weights_original, x1.shape[0], "weights_original")
    n0, n1 = _kish(w0) * test_fraction, _kish(w1) * test_fraction
    expected = auc_error_estimate(n0, n1)
    if expected > resolution:
        need = math.ceil((1 + math.sqrt(1 + 12 * resolution**2)) / (12 * resolution**2 * test_fraction))  # n0 = n1 = n solves σ = resolution
        raise InsufficientEventsError(
            f"two_sample_auc ({label}): {x0.shape[0]} surrogate (effective {n0 / test_fraction:.0f}) and {x1.shape[0]} original events "
            f"give an AUC error of about {expected:.4f} on the held-out {test_fraction:.0%}, above the resolution {resolution}; "
            f"give at least {need} effective events per sample, or a larger resolution.")
    result = closure_test(x0.float(), x1.float(), torch.zeros(x0.shape[0], dtype=torch.float64), weights_reference=w0,
                          weights_target=w1, hidden=tuple(hidden), epochs=epochs, test_fraction=test_fraction,
                          n_bootstrap=n_bootstrap, seed=seed)
    return AucResult(label, float(result.auc), float(result.auc_error), x0.shape[0], x1.shape[0], _kish(w0))


@dataclass(frozen=True)
class HistogramComparison:
    """Normalised histograms of one observable, surrogate vs original (see the module docs for χ²).

    Attributes:
        name: The observable.
        edges: Bin edges, ``B + 1``.
        surrogate, original: Weighted fractions per bin (of each sample's total weight), ``B``.
        surrogate_error, original_error: Their standard errors, ``B``.
        chi2: χ² of the difference over bins with entries.
        ndf: Those bins minus one.
    """

    name: str
    edges: tuple[float, ...]
    surrogate: tuple[float, ...]
    original: tuple[float, ...]
    surrogate_error: tuple[float, ...]
    original_error: tuple[float, ...]
    chi2: float
    ndf: int

    @property
    def chi2_per_ndf(self) -> float:
        return self.chi2 / self.ndf if self.ndf > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "edges": list(self.edges), "surrogate": list(self.surrogate), "original": list(self.original),
                "surrogate_error": list(self.surrogate_error), "original_error": list(self.original_error),
                "chi2": self.chi2, "ndf": self.ndf, "chi2_per_ndf": self.chi2_per_ndf}


def compare_histograms(surrogate: Any, original: Any, *, bins: int | Sequence[float] = 40, weights_surrogate: Any = None,
                       weights_original: Any = None, name: str = "x") -> HistogramComparison:
    r"""Histograms of one observable, ``(N0,)`` vs ``(N1,)``, normalised to each sample's total weight, with χ²/ndf.

    Args:
        bins: Number of bins between the original's 0.1 % and 99.9 % quantiles, or the edges.
    """
    s, o = _matrix(surrogate, "surrogate")[:, 0].numpy(), _matrix(original, "original")[:, 0].numpy()
    ws = _weights(weights_surrogate, len(s), "weights_surrogate").numpy()
    wo = _weights(weights_original, len(o), "weights_original").numpy()
    if isinstance(bins, int):
        if bins < 2:
            raise ConfigError(f"compare_histograms: bins must be at least 2, got {bins}.")
        lo, hi = np.quantile(o, [0.001, 0.999])
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, bins + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    hs, _ = np.histogram(s, edges, weights=ws)
    hs2, _ = np.histogram(s, edges, weights=ws**2)
    ho, _ = np.histogram(o, edges, weights=wo)
    ho2, _ = np.histogram(o, edges, weights=wo**2)
    fs, fo = hs / ws.sum(), ho / wo.sum()
    vs, vo = hs2 / ws.sum() ** 2, ho2 / wo.sum() ** 2
    used = (vs + vo) > 0
    chi2 = float(np.sum((fs[used] - fo[used]) ** 2 / (vs[used] + vo[used])))
    as_tuple = lambda a: tuple(float(v) for v in a)  # noqa: E731
    return HistogramComparison(name, as_tuple(edges), as_tuple(fs), as_tuple(fo), as_tuple(np.sqrt(vs)), as_tuple(np.sqrt(vo)),
                               chi2, int(used.sum()) - 1)


def compare_moments(surrogate: Any, original: Any, *, names: Sequence[str] | None = None, weights_surrogate: Any = None,
                    weights_original: Any = None) -> dict[str, Any]:
    r"""Weighted means, standard deviations (with errors and pulls) and correlation matrices of ``(N0, F)`` vs ``(N1, F)``."""
    xs, xo = _matrix(surrogate, "surrogate"), _matrix(original, "original")
    names = list(names) if names is not None else [f"f{i}" for i in range(xs.shape[1])]
    out: dict[str, Any] = {"columns": {}}
    stats = []
    for x, w in ((xs, _weights(weights_surrogate, xs.shape[0], "weights_surrogate")),
                 (xo, _weights(weights_original, xo.shape[0], "weights_original"))):
        p = w / w.sum()
        mean = (p[:, None] * x).sum(0)
        cov = ((x - mean) * p[:, None]).T @ (x - mean)
        std = cov.diagonal().clamp_min(0).sqrt()
        corr = cov / torch.outer(std, std).clamp_min(1e-300)
        stats.append((mean, std, corr, _kish(w)))
    (ms, ss, cs, ns), (mo, so, co, no) = stats
    for i, name in enumerate(names):
        mean_err = math.sqrt(float(ss[i]) ** 2 / ns + float(so[i]) ** 2 / no)
        std_err = math.sqrt(float(ss[i]) ** 2 / (2 * ns) + float(so[i]) ** 2 / (2 * no))
        out["columns"][name] = {"mean_surrogate": float(ms[i]), "mean_original": float(mo[i]),
                                "mean_pull": float(ms[i] - mo[i]) / mean_err if mean_err > 0 else math.nan,
                                "std_surrogate": float(ss[i]), "std_original": float(so[i]),
                                "std_pull": float(ss[i] - so[i]) / std_err if std_err > 0 else math.nan}
    out["correlation_surrogate"] = cs.tolist()
    out["correlation_original"] = co.tolist()
    off = ~torch.eye(len(names), dtype=torch.bool)
    out["max_correlation_difference"] = float((cs - co).abs()[off].max()) if len(names) > 1 else 0.0
    return out


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`validate` measured; :meth:`to_dict` is JSON-able, :meth:`write` adds the plots.

    Attributes:
        auc: The overall two-sample test.
        regions: One test per region.
        histograms: One comparison per observable.
        moments: :func:`compare_moments` of all columns.
        inference: A :class:`~sbilab.surrogates.inference.InferenceComparison`, if given.
        extra: Any further JSON-able figures (e.g. the refinement's ESS).
    """

    auc: AucResult
    regions: tuple[AucResult, ...]
    histograms: tuple[HistogramComparison, ...]
    moments: dict[str, Any]
    inference: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"auc": self.auc.to_dict(), "regions": [r.to_dict() for r in self.regions],
                "histograms": [h.to_dict() for h in self.histograms], "moments": self.moments,
                "inference": None if self.inference is None else self.inference.to_dict(), **self.extra}

    def write(self, out: str | Path, *, name: str = "validation", plots: bool = True) -> list[Path]:
        """Write ``<name>.json`` and, with matplotlib, ``<name>_histograms.png`` and ``<name>_auc.png`` into ``out``; return the paths."""
        from .plots import plot_aucs, plot_histograms

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=float))
        written = [path]
        if plots:
            for target, fn, arg in ((out / f"{name}_histograms.png", plot_histograms, self.histograms),
                                    (out / f"{name}_auc.png", plot_aucs, (self.auc, *self.regions))):
                if fn(target, arg):
                    written.append(target)
        return written


def _features(events: Events) -> tuple[Tensor, list[str]]:
    parts, names = [], []
    if events.n_parameters:
        parts.append(events.theta)
        names += [f"theta{i}" for i in range(events.n_parameters)]
    if events.latent is not None:
        parts.append(events.latent)
        names += [f"z{i}" for i in range(events.latent.shape[1])]
    parts.append(events.x)
    names += [f"x{i}" for i in range(events.n_observables)]
    return torch.cat([p.to(torch.float64) for p in parts], 1), names


def validate(
    surrogate: Events,
    original: Events,
    *,
    names: Sequence[str] | None = None,
    regions: Mapping[str, int | Sequence[float]] | None = None,
    bins: int = 40,
    resolution: float = 0.01,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 30,
    n_bootstrap: int = 200,
    seed: int = 0,
    inference: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> ValidationReport:
    r"""Compare held-out surrogate events with original ones: AUC overall and per region, histograms, moments.

    The compared columns are ``[theta, latent, x]`` (those present in both); the surrogate's
    ``weights`` (refinement) are applied throughout.

    Args:
        surrogate: Surrogate events (e.g. ``Composition.sample``), with weights if refined.
        original: Original events drawn at the same θ distribution.
        names: Names of the compared columns (default ``theta0.., z0.., x0..``).
        regions: ``{column name: number of quantile bins | edges}``: one AUC per bin of that
            column (e.g. ``{"M": 3}`` for three θ regions).
        bins: Histogram bins per column.
        resolution: Largest acceptable AUC error (overall and per region).
        hidden, epochs, n_bootstrap, seed: Options of the two-sample classifiers (:func:`two_sample_auc`).
        inference: A precomputed :class:`~sbilab.surrogates.inference.InferenceComparison` to include.
        extra: Further JSON-able figures to include.

    Raises:
        InsufficientEventsError: too few events (overall or in a region) for ``resolution``.
        ShapeMismatchError: the two samples have different columns.
        ConfigError: a region names an unknown column.
    """
    xs, default_names = _features(surrogate)
    xo, other = _features(original)
    if default_names != other:
        raise ShapeMismatchError(f"validate: the surrogate has columns {default_names}, the original {other}; compare like with like.")
    names = list(names) if names is not None else default_names
    if len(names) != xs.shape[1]:
        raise ConfigError(f"validate: {len(names)} names for {xs.shape[1]} columns {default_names}.")
    ws = surrogate.weights_or_ones().double()
    wo = original.weights_or_ones().double()
    options = dict(resolution=resolution, hidden=hidden, epochs=epochs, n_bootstrap=n_bootstrap, seed=seed)
    overall = two_sample_auc(xs, xo, weights_surrogate=ws, weights_original=wo, **options)
    tests = []
    for column, spec in (regions or {}).items():
        if column not in names:
            raise ConfigError(f"validate: region column {column!r} is not one of {names}.")
        i = names.index(column)
        edges = (np.quantile(xo[:, i].numpy(), np.linspace(0, 1, int(spec) + 1)) if isinstance(spec, int)
                 else np.asarray(spec, dtype=np.float64))
        for a, b in zip(edges[:-1], edges[1:]):
            last = b == edges[-1]
            ins = (xs[:, i] >= a) & ((xs[:, i] <= b) if last else (xs[:, i] < b))
            ino = (xo[:, i] >= a) & ((xo[:, i] <= b) if last else (xo[:, i] < b))
            label = f"{column} in [{a:.4g}, {b:.4g}{']' if last else ')'}"
            tests.append(two_sample_auc(xs[ins], xo[ino], weights_surrogate=ws[ins], weights_original=wo[ino], label=label, **options))
    # columns the two samples share row by row (the θ both were drawn at) need no histogram
    histograms = tuple(compare_histograms(xs[:, i], xo[:, i], bins=bins, weights_surrogate=ws, weights_original=wo, name=n)
                       for i, n in enumerate(names) if float(xo[:, i].std()) > 0 and not torch.equal(xs[:, i], xo[:, i]))
    moments = compare_moments(xs, xo, names=names, weights_surrogate=ws, weights_original=wo)
    return ValidationReport(overall, tuple(tests), histograms, moments, inference, dict(extra or {}))
