r"""LHE weight sets as nuisance parameters: binned (pyhf ``histosys``) and unbinned (:class:`WeightedEvents`).

A :class:`~sbilab.io.lhe_weights.WeightSet` (scale envelope, PDF replicas or Hessian set) becomes
one nuisance parameter ν with down/up templates at ν = ∓1:

- **binned**: :func:`binned_systematics` histograms the nominal and every member with weights in
  pb (times ``luminosity``), combines the members *bin by bin*
  (:func:`~sbilab.io.lhe_weights.combine_variations`) and returns the down/up histograms in the
  form :func:`sbilab.stats.build_workspace` takes as ``histosys``, with the nominal and the
  MC statistical uncertainty (``staterror``);
- **unbinned**: :func:`nuisance_weighted_events` builds :class:`~sbilab.simulators.WeightedEvents`
  with benchmarks ν = −1, 0, +1 and per-event weights (down, nominal, up), so that the weights at
  any ν follow by quadratic interpolation,
  :math:`w(\nu) = w_0 + \tfrac{\nu}{2}(w_+ - w_-) + \tfrac{\nu^2}{2}(w_+ + w_- - 2w_0)`, which is
  exact at the three points and gives the joint ratio and score in ν. Per-event down/up weights
  come from :func:`event_systematics`; combining per event is conservative for an envelope
  (each event takes its own extreme member).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..exceptions import InvalidEventsError
from ..simulators.space import ParameterSpace
from ..simulators.weighted import WeightedEvents
from .lhe import LHEData
from .lhe_weights import Normalisation, WeightSet, combine_variations, weight_sets

__all__ = ["BinnedSystematics", "binned_systematics", "event_systematics", "nuisance_weighted_events"]


@dataclass(frozen=True)
class BinnedSystematics:
    """Nominal histogram and one down/up pair per weight set.

    Attributes:
        edges: Bin edges ``(B + 1,)``.
        nominal: Nominal yields ``(B,)`` (pb times the luminosity).
        sumw2: Sum of squared nominal weights per bin ``(B,)`` (the MC statistical variance).
        variations: Weight-set name -> (down ``(B,)``, up ``(B,)``).
        kinds: Weight-set name -> how its members were combined.
    """

    edges: np.ndarray
    nominal: np.ndarray
    sumw2: np.ndarray
    variations: dict[str, tuple[np.ndarray, np.ndarray]]
    kinds: dict[str, str] = field(default_factory=dict)

    def histosys(self) -> dict[str, tuple[list[float], list[float]]]:
        """``{name: (down, up)}`` for one sample of :func:`sbilab.stats.build_workspace` ``histosys``."""
        return {name: (down.tolist(), up.tolist()) for name, (down, up) in self.variations.items()}

    def staterror(self) -> list[float]:
        """Absolute MC statistical uncertainty per bin, :math:`\\sqrt{\\sum w^2}`, for ``staterror``."""
        return np.sqrt(self.sumw2).tolist()


def event_systematics(data: LHEData, weight_set: WeightSet, *, norm: Normalisation | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-event weights in pb of a weight set: nominal ``(N,)`` and members ``(K, N)``.

    The nominal is the set's nominal member, or the event weight when the set has none.
    """
    norm = data.normalisation() if norm is None else norm
    nominal = data.cross_section_weights(norm) if weight_set.nominal is None else data.weights_for([weight_set.nominal], norm, normalise=True)[:, 0]
    return nominal, data.weights_for(list(weight_set.members), norm, normalise=True).T


def _bins(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.searchsorted(edges, values, side="right") - 1
    index = np.where(values == edges[-1], len(edges) - 2, index)  # the last bin is closed, as in numpy
    inside = (index >= 0) & (index < len(edges) - 1)
    return index, inside


def binned_systematics(
    data: LHEData,
    observable: Any,
    edges: Any,
    *,
    sets: Sequence[WeightSet] | None = None,
    norm: Normalisation | None = None,
    luminosity: float = 1.0,
) -> BinnedSystematics:
    """Histograms of ``observable (N,)`` in ``edges (B + 1,)`` with every weight set's down/up variation.

    Args:
        data: The events (the whole sample, or pass the whole file's ``norm``).
        observable: One value per event, ``(N,)``; events outside the edges are dropped.
        edges: Increasing bin edges, ``(B + 1,)`` (±inf allowed for open outer bins).
        sets: Weight sets to use (default: :func:`~sbilab.io.lhe_weights.weight_sets` of the header).
        norm: IDWTUP normalisation (default: from ``data``).
        luminosity: Multiplies every yield (pb⁻¹ for expected event counts).

    Raises:
        InvalidEventsError: ``observable`` does not have one finite value per event, or bad edges.
    """
    values = np.asarray(observable, dtype=float).reshape(-1)
    edges = np.asarray(edges, dtype=float).reshape(-1)
    if values.shape[0] != len(data) or not np.isfinite(values).all():
        raise InvalidEventsError(f"observable needs one finite value per event: got shape {values.shape} for {len(data)} events.")
    if edges.size < 2 or not (np.diff(edges) > 0).all():
        raise InvalidEventsError(f"edges must be increasing with at least 2 entries, got {edges.tolist()[:10]}.")
    index, inside = _bins(values, edges)
    n_bins = edges.size - 1
    norm = data.normalisation() if norm is None else norm

    def hist(w: np.ndarray) -> np.ndarray:
        return np.bincount(index[inside], weights=w[inside], minlength=n_bins) * luminosity

    base = data.cross_section_weights(norm)
    nominal = hist(base)
    sumw2 = np.bincount(index[inside], weights=base[inside] ** 2, minlength=n_bins) * luminosity**2
    variations, kinds = {}, {}
    for ws in weight_sets(data.header) if sets is None else sets:
        w0, members = event_systematics(data, ws, norm=norm)
        down, up = combine_variations(hist(w0), np.stack([hist(m) for m in members]), ws.kind)
        variations[ws.name], kinds[ws.name] = (down, up), ws.kind
    return BinnedSystematics(edges, nominal, sumw2, variations, kinds)


def nuisance_weighted_events(x: Any, nominal: Any, down: Any, up: Any, *, name: str = "nu", bound: float = 3.0,
                             mask: Any = None, observable_names: Sequence[str] | None = None) -> WeightedEvents:
    """:class:`WeightedEvents` in one nuisance parameter ``name`` with weights ``down``, ``nominal``, ``up`` ``(N,)`` at ν = −1, 0, +1.

    The parameter space is ``[-bound, bound]`` with reference 0; ``event_norm="sum"``, so
    :meth:`WeightedEvents.cross_section` at ν = 0, ±1 is the sum of the corresponding weights.

    Example:
        >>> ev = nuisance_weighted_events(np.zeros((2, 1)), [1.0, 2.0], [0.5, 1.5], [1.5, 3.0])
        >>> ev.weights_at(np.array([1.0])).tolist(), float(ev.cross_section(np.array([-1.0]))[0])
        ([1.5, 3.0], 2.0)
    """
    weights = np.stack([np.asarray(a, dtype=float).reshape(-1) for a in (down, nominal, up)], axis=1)
    space = ParameterSpace((name,), (-float(bound),), (float(bound),), reference=(0.0,))
    return WeightedEvents.from_arrays(x, weights, [[-1.0], [0.0], [1.0]], max_power=2, space=space, event_norm="sum",
                                      mask=mask, observable_names=observable_names)
