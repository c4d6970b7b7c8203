r"""The published unbinned unfolding result: generator-level events with weight columns.

The layout follows ATLAS's published per-event result (Z+jets, arXiv:2405.20041): the
generator-level events (``N`` rows, ``D`` observables with names and units) and one weight
column per variation,

=====================================  =====================================================
column                                 meaning
=====================================  =====================================================
``weights_nominal``                    the unfolded result
``weights_ensemble_0..E-1``            members of the ensemble of trainings (model spread)
``weights_bootstrap_mc_0..B-1``        bootstrap replicas of the simulation (MC statistics)
``weights_bootstrap_data_0..B-1``      bootstrap replicas of the data (data statistics)
``weights_<name>``                     one column per systematic variation
=====================================  =====================================================

saved with :func:`sbilab.publish.save_results` (HDF5 + JSON spec, SHA-256 of every array, no
pickle) with the observables, units, iteration count and method settings in the spec.

A third party reloads it and gets any histogram with its uncertainty band in one call
(:meth:`UnfoldedResult.histogram`): all weight columns are histogrammed at once, and

* bootstrap replicas give covariances (sample covariance of the replica histograms),
* the ensemble gives the spread of its members (their sample covariance),
* each systematic gives a shift :math:`\delta = h_\text{syst} - h_\text{nominal}`, fully
  correlated across bins (covariance :math:`\delta\delta^T`).

Example:
    >>> import tempfile
    >>> g = torch.Generator().manual_seed(0)
    >>> events = torch.randn(1000, 2, generator=g)
    >>> res = UnfoldedResult(events, ("pt", "eta"), ("GeV", ""), torch.ones(1000),
    ...                      weights_bootstrap_data=torch.rand(10, 1000, generator=g) * 2, iterations=4)
    >>> loaded = UnfoldedResult.load(res.save(tempfile.mkdtemp() + "/unfolded.h5"))
    >>> band = loaded.histogram("pt", [-1.0, 0.0, 1.0])
    >>> band.nominal.tolist(), band.error.shape
    ([357.0, 327.0], torch.Size([2]))
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError, InvalidEventsError, PublishError, ShapeMismatchError
from ..publish import load_results, save_results
from .binning import as_edges, flat_bin_index, bin_sums

__all__ = ["UnfoldedResult", "HistogramBand", "RESULT_KIND"]

RESULT_KIND = "unfolded_events"
_FORMAT_VERSION = 1
_REPLICAS = ("ensemble", "bootstrap_mc", "bootstrap_data")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def _sample_covariance(h: Tensor) -> Tensor:
    """Covariance over replicas of flattened histograms ``(R, ...)`` -> ``(nb, nb)``; zeros if ``R < 2``."""
    flat = h.flatten(1)
    if flat.shape[0] < 2:
        return torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    centred = flat - flat.mean(0)
    return centred.T @ centred / (flat.shape[0] - 1)


@dataclass(frozen=True)
class HistogramBand:
    """A histogram of the unfolded events with every variation and the derived uncertainties.

    Attributes:
        observables: The observables histogrammed (one per axis).
        edges: Bin edges per axis.
        nominal: ``(n_1, ..., n_d)``.
        ensemble: Histograms of the ensemble members ``(E, n_1, ..., n_d)``.
        bootstrap_mc: Of the simulation bootstrap replicas ``(B_mc, ...)``.
        bootstrap_data: Of the data bootstrap replicas ``(B_data, ...)``.
        systematics: Of each systematic variation, by name.
    """

    observables: tuple[str, ...]
    edges: tuple[Tensor, ...]
    nominal: Tensor
    ensemble: Tensor
    bootstrap_mc: Tensor
    bootstrap_data: Tensor
    systematics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def covariance_data(self) -> Tensor:
        """Data-statistical covariance over the flattened bins ``(nb, nb)`` (data bootstrap)."""
        return _sample_covariance(self.bootstrap_data)

    @property
    def covariance_mc(self) -> Tensor:
        """Simulation-statistical covariance ``(nb, nb)`` (simulation bootstrap)."""
        return _sample_covariance(self.bootstrap_mc)

    @property
    def covariance_ensemble(self) -> Tensor:
        """Covariance of the ensemble members ``(nb, nb)`` (the spread of single trainings)."""
        return _sample_covariance(self.ensemble)

    @property
    def shifts(self) -> dict[str, Tensor]:
        """Systematic shifts ``h_syst - h_nominal`` by name, each ``(n_1, ..., n_d)``."""
        return {k: v - self.nominal for k, v in self.systematics.items()}

    @property
    def covariance_systematics(self) -> Tensor:
        r""":math:`\sum_s \delta_s\delta_s^T` over the systematic shifts ``(nb, nb)``."""
        nb = self.nominal.numel()
        out = torch.zeros(nb, nb, dtype=torch.float64)
        for s in self.shifts.values():
            out += s.reshape(-1, 1) @ s.reshape(1, -1)
        return out

    @property
    def covariance(self) -> Tensor:
        """Total covariance ``(nb, nb)``: data + simulation bootstrap + ensemble + systematics."""
        return self.covariance_data + self.covariance_mc + self.covariance_ensemble + self.covariance_systematics

    @property
    def error(self) -> Tensor:
        """Total uncertainty per bin, ``(n_1, ..., n_d)``."""
        return self.covariance.diagonal().clamp_min(0).sqrt().reshape(self.nominal.shape)


def _as_float(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value)
    return t if t.is_floating_point() else t.to(torch.float64)


@dataclass(frozen=True)
class UnfoldedResult:
    """Unfolded generator-level events with all weight columns (ATLAS layout), publishable.

    Args:
        events: Generator-level observables ``(N, D)``.
        observables: ``D`` names.
        units: ``D`` units (``""`` for dimensionless).
        weights_nominal: ``(N,)``.
        weights_ensemble: ``(E, N)`` or ``None``.
        weights_bootstrap_mc: ``(B, N)`` or ``None``.
        weights_bootstrap_data: ``(B, N)`` or ``None``.
        weights_systematics: ``{name: (N,)}``.
        iterations: Iterations of the unfolding that produced the weights.
        settings: JSON-able method settings (classifier, epochs, binning, ...).

    Raises:
        ShapeMismatchError: names/units do not match ``D``, a weight column does not have ``N`` entries.
        InvalidEventsError: NaN/inf in events or weights, a weight column with a non-positive sum.
        ConfigError: a replica set with 0 replicas (give ``None`` instead), a bad or reserved name.
    """

    events: Tensor
    observables: tuple[str, ...]
    units: tuple[str, ...]
    weights_nominal: Tensor
    weights_ensemble: Tensor | None = None
    weights_bootstrap_mc: Tensor | None = None
    weights_bootstrap_data: Tensor | None = None
    weights_systematics: Mapping[str, Tensor] = field(default_factory=dict)
    iterations: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ev = _as_float(self.events, "events")
        ev = ev[:, None] if ev.dim() == 1 else ev
        if ev.dim() != 2:
            raise ShapeMismatchError(f"events must be (N, D); got shape {tuple(ev.shape)}.")
        n, d = ev.shape
        bad = ~torch.isfinite(ev).all(1)
        if bool(bad.any()):
            raise InvalidEventsError(f"events hold NaN/inf in {int(bad.sum())} rows (first row {int(bad.nonzero()[0, 0])}).")
        obs, units = tuple(self.observables), tuple(self.units)
        if len(obs) != d or len(units) != d:
            raise ShapeMismatchError(f"events have {d} observables but {len(obs)} names and {len(units)} units were given.")
        if len(set(obs)) != d or not all(isinstance(o, str) and o for o in obs):
            raise ConfigError(f"observable names must be distinct non-empty strings; got {obs}.")
        object.__setattr__(self, "events", ev)
        object.__setattr__(self, "observables", obs)
        object.__setattr__(self, "units", tuple(str(u) for u in units))
        object.__setattr__(self, "weights_nominal", self._column(self.weights_nominal, "weights_nominal", n))
        for kind in _REPLICAS:
            value = getattr(self, f"weights_{kind}")
            if value is None:
                continue
            w = _as_float(value, f"weights_{kind}")
            w = w[None] if w.dim() == 1 else w
            if w.dim() != 2 or w.shape[0] == 0:
                raise ConfigError(f"weights_{kind} must be (replicas >= 1, {n}); got shape {tuple(w.shape)}. "
                                  "Pass None when there are no replicas.")
            for i in range(w.shape[0]):
                self._column(w[i], f"weights_{kind}_{i}", n)
            object.__setattr__(self, f"weights_{kind}", w)
        systs = {}
        for name, w in dict(self.weights_systematics).items():
            if not isinstance(name, str) or not _NAME.match(name) or name == "nominal" or name.startswith(tuple(f"{k}_" for k in _REPLICAS)):
                raise ConfigError(f"systematic name {name!r} is invalid or reserved; use letters, digits and _.+- "
                                  "and avoid 'nominal', 'ensemble_*', 'bootstrap_mc_*', 'bootstrap_data_*'.")
            systs[name] = self._column(w, f"weights_{name}", n)
        object.__setattr__(self, "weights_systematics", systs)
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(f"iterations must be a non-negative integer; got {self.iterations!r}.")

    @staticmethod
    def _column(value: Any, name: str, n: int) -> Tensor:
        w = _as_float(value, name)
        if w.shape != (n,):
            raise ShapeMismatchError(f"weight column {name} has shape {tuple(w.shape)} but there are {n} events; one weight per event.")
        if not bool(torch.isfinite(w).all()):
            raise InvalidEventsError(f"weight column {name} holds {int((~torch.isfinite(w)).sum())} NaN/inf values.")
        if float(w.sum()) <= 0:
            raise InvalidEventsError(f"weight column {name} sums to {float(w.sum())}; weights must have a positive sum "
                                     "(all-zero or negative-sum weights describe no distribution).")
        return w

    def __len__(self) -> int:
        return self.events.shape[0]

    def replicas(self, kind: str) -> int:
        """Number of replicas of ``kind`` (``"ensemble"``, ``"bootstrap_mc"``, ``"bootstrap_data"``)."""
        if kind not in _REPLICAS:
            raise ConfigError(f"replica kind must be one of {_REPLICAS}; got {kind!r}.")
        w = getattr(self, f"weights_{kind}")
        return 0 if w is None else w.shape[0]

    def columns(self) -> dict[str, Tensor]:
        """Every weight column under its ATLAS name, in order: nominal, ensemble, bootstraps, systematics."""
        out = {"weights_nominal": self.weights_nominal}
        for kind in _REPLICAS:
            for i in range(self.replicas(kind)):
                out[f"weights_{kind}_{i}"] = getattr(self, f"weights_{kind}")[i]
        out.update({f"weights_{k}": v for k, v in self.weights_systematics.items()})
        return out

    @classmethod
    def from_columns(cls, events: Tensor, observables: Sequence[str], units: Sequence[str], columns: Mapping[str, Tensor], *,
                     iterations: int = 0, settings: Mapping[str, Any] | None = None) -> "UnfoldedResult":
        """Build from ATLAS-named weight columns (``weights_nominal``, ``weights_ensemble_<i>``, ...).

        Raises:
            ConfigError: ``weights_nominal`` is missing, replica indices are not ``0..R-1``, a
                column does not start with ``weights_``.
        """
        if "weights_nominal" not in columns:
            raise ConfigError(f"columns lack 'weights_nominal'; got {sorted(columns)[:8]}.")
        replicas: dict[str, dict[int, Tensor]] = {k: {} for k in _REPLICAS}
        systs = {}
        for name, value in columns.items():
            if not name.startswith("weights_"):
                raise ConfigError(f"column {name!r} is not a weight column (names start with 'weights_').")
            match = re.match(r"^weights_(ensemble|bootstrap_mc|bootstrap_data)_(\d+)$", name)
            if match:
                replicas[match.group(1)][int(match.group(2))] = torch.as_tensor(value)
            elif name != "weights_nominal":
                systs[name.removeprefix("weights_")] = value
        stacked = {}
        for kind, found in replicas.items():
            if found and sorted(found) != list(range(len(found))):
                raise ConfigError(f"weights_{kind}_<i> columns must be numbered 0..{len(found) - 1}; got {sorted(found)[:10]}.")
            stacked[f"weights_{kind}"] = torch.stack([found[i] for i in range(len(found))]) if found else None
        return cls(events, tuple(observables), tuple(units), columns["weights_nominal"], weights_systematics=systs,
                   iterations=iterations, settings=dict(settings or {}), **stacked)

    def spec(self) -> dict[str, Any]:
        """The JSON description saved beside the arrays."""
        return {"format": RESULT_KIND, "format_version": _FORMAT_VERSION, "observables": list(self.observables),
                "units": list(self.units), "events": len(self), "iterations": self.iterations, "settings": dict(self.settings),
                **{kind: self.replicas(kind) for kind in _REPLICAS}, "systematics": list(self.weights_systematics)}

    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
        """Publish with :func:`sbilab.publish.save_results` (kind ``"unfolded_events"``)."""
        return save_results(path, {"events": self.events, **self.columns()}, self.spec(), kind=RESULT_KIND,
                            metadata=metadata, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UnfoldedResult":
        """Load a published result, checking checksums and that every weight column matches the events.

        Raises:
            PublishError: not a published unfolded result, checksum failure, or weight columns
                that are missing, extra, or of a different length than the events.
        """
        pub = load_results(path, expected_kind=RESULT_KIND)
        spec = pub.spec
        try:
            n, names = int(spec["events"]), list(spec["observables"])
            expected = ["weights_nominal"] + [f"weights_{k}_{i}" for k in _REPLICAS for i in range(int(spec[k]))]
            expected += [f"weights_{s}" for s in spec["systematics"]]
        except (KeyError, TypeError, ValueError) as err:
            raise PublishError(f"{path}: the spec is not an unfolded-result spec ({err!r}).") from err
        present = set(pub.arrays) - {"events"}
        if "events" not in pub.arrays or present != set(expected):
            raise PublishError(f"{path}: weight columns do not match the spec: missing {sorted(set(expected) - present)[:5]}, "
                               f"unexpected {sorted(present - set(expected))[:5]}.")
        if pub.arrays["events"].shape[0] != n:
            raise PublishError(f"{path}: the spec lists {n} events but the events array has {pub.arrays['events'].shape[0]} rows.")
        for name in expected:
            if pub.arrays[name].shape != (n,):
                raise PublishError(f"{path}: weight column {name} has shape {pub.arrays[name].shape}, the file has {n} events.")
        cols = {k: torch.from_numpy(pub.arrays[k]) for k in expected}
        return cls.from_columns(torch.from_numpy(pub.arrays["events"]).reshape(n, len(names)), names, spec["units"], cols,
                                iterations=int(spec["iterations"]), settings=spec["settings"])

    def histogram(self, observables: str | Sequence[str], bins: int | Sequence[float] | Sequence[Any] = 20, *,
                  ranges: Sequence[tuple[float, float]] | None = None, density: bool = False) -> HistogramBand:
        """Histogram of any observables (1-D, 2-D, ...) with every weight column, in one pass.

        Args:
            observables: One name or a sequence of names (one axis each).
            bins: For each axis: a number of equal-width bins or a sequence of edges. A single
                int applies to every axis; for one observable a sequence of numbers is its edges.
            ranges: ``(low, high)`` per axis for integer ``bins`` (default: the events' min and max).
            density: Normalise every histogram to unit integral inside the bins (shape only).

        Returns:
            :class:`HistogramBand` with nominal, replica and systematic histograms and covariances.

        Raises:
            ConfigError: unknown observable, bins or range of the wrong length, bad edges.
        """
        names = (observables,) if isinstance(observables, str) else tuple(observables)
        unknown = [o for o in names if o not in self.observables]
        if not names or unknown:
            raise ConfigError(f"unknown observables {unknown or names}; this result has {self.observables}.")
        cols = [self.events[:, self.observables.index(o)].to(torch.float64) for o in names]
        if isinstance(bins, int):
            per_axis: list[Any] = [bins] * len(names)
        elif len(names) == 1 and all(isinstance(b, (int, float)) for b in bins) or isinstance(bins, Tensor) and bins.dim() == 1:
            per_axis = [bins]
        else:
            per_axis = list(bins)
        if len(per_axis) != len(names) or (ranges is not None and len(ranges) != len(names)):
            raise ConfigError(f"bins and ranges need one entry per observable ({len(names)}).")
        edges = []
        for i, (b, v) in enumerate(zip(per_axis, cols)):
            if isinstance(b, int):
                lo, hi = (float(v.min()), float(v.max())) if ranges is None else map(float, ranges[i])
                edges.append(as_edges(torch.linspace(lo, hi, b + 1, dtype=torch.float64), f"bins of {names[i]}"))
            else:
                edges.append(as_edges(b, f"bins of {names[i]}"))
        shape = tuple(e.numel() - 1 for e in edges)
        index = flat_bin_index(cols, edges)
        columns = self.columns()
        hists = bin_sums(index, torch.stack([c.to(torch.float64) for c in columns.values()]), int(torch.tensor(shape).prod()))
        if density:
            volume = edges[0].diff()
            for e in edges[1:]:  # row-major bin volumes, the order of flat_bin_index
                volume = torch.outer(volume, e.diff()).reshape(-1)
            hists = hists / (hists.sum(-1, keepdim=True) * volume)
        hists = hists.reshape(len(columns), *shape)
        pos = {name: i for i, name in enumerate(columns)}
        pick = {k: hists[[pos[f"weights_{k}_{i}"] for i in range(self.replicas(k))]] for k in _REPLICAS}
        return HistogramBand(names, tuple(edges), hists[0], pick["ensemble"], pick["bootstrap_mc"], pick["bootstrap_data"],
                             {s: hists[pos[f"weights_{s}"]] for s in self.weights_systematics})
