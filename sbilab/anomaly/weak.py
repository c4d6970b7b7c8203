r"""Weakly supervised anomaly detection: CWoLa hunting, CATHODE, and the idealised and supervised references.

All four train a classifier of the features :math:`x` (never the mass, which is the events'
``spectator``) and differ only in what it separates (label 1 against label 0):

==============  ============================================  ==============================================
method          label 1                                       label 0
==============  ============================================  ==============================================
CWoLa           data in the signal region                     data in the sidebands (arXiv:1708.02949,
                                                              1805.02664)
CATHODE         data in the signal region                     samples of a background model
                                                              :math:`p(x|m)` trained in the sidebands, at
                                                              masses drawn from the SR data (2109.00546)
idealised       data in the signal region                     true background in the signal region
supervised      signal                                        background (both in the signal region)
==============  ============================================  ==============================================

With a signal fraction :math:`f` in the SR the optimal weakly supervised classifier is
:math:`p_\mathrm{data}/p_\mathrm{bkg} = 1 + f\,(p_s/p_b - 1)`, monotone in :math:`p_s/p_b`, so with
infinite data every method reaches the supervised SIC; the sideband classifier (CWoLa) only when
the features do not depend on the mass, and CATHODE only as far as its background model
interpolates into the SR. CATHODE's mass values are resampled from the SR data (the paper smooths
them with a KDE); its background model is any object with ``sample(n, context, generator) -> (n, D)``
and ``log_prob(x, context) -> (n,)`` (the core's conditional flow trained on
:func:`sideband_events`, or a toy's exact :math:`p(x|m)`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, RegionError, ShapeMismatchError
from .regions import MassWindow
from .training import labelled_events

__all__ = ["BackgroundModel", "cwola_training_data", "idealised_training_data", "supervised_training_data",
           "cathode_training_data", "sideband_events"]


@runtime_checkable
class BackgroundModel(Protocol):
    """A conditional density of the features given the mass: CATHODE's background model."""

    def sample(self, n: int, context: Tensor, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor: ...


def cwola_training_data(data: Events, window: MassWindow, *, min_events: int = 100) -> Events:
    """CWoLa: signal-region data (label 1) against sideband data (label 0).

    Raises:
        RegionError: the window lies outside the data's mass range, or SR or sidebands hold fewer than ``min_events``.
    """
    sr, sb = window.split(data, min_events=min_events)
    return labelled_events(sb, sr)


def idealised_training_data(data: Events, background: Events, window: MassWindow, *, min_events: int = 100) -> Events:
    """Idealised anomaly detection: signal-region data (label 1) against true signal-region background (label 0).

    Raises:
        RegionError: either sample has fewer than ``min_events`` events in the signal region.
    """
    sr, _ = window.split(data, min_events=min_events)
    bkg = background[window.in_signal_region(window.mass(background))]
    if len(bkg) < min_events:
        raise RegionError(f"idealised_training_data: the background sample has {len(bkg)} events in the signal region, fewer "
                          f"than {min_events}; simulate more.")
    return labelled_events(bkg, sr)


def supervised_training_data(signal: Events, background: Events) -> Events:
    """The fully supervised reference: signal (label 1) against background (label 0)."""
    return labelled_events(background, signal)


def sideband_events(data: Events, window: MassWindow, *, min_events: int = 1000) -> Events:
    """The sideband events a background model p(x | m) is trained on (x the features, the mass in ``spectator``).

    Raises:
        RegionError: the window lies outside the data, or the sidebands hold fewer than ``min_events``
            (too few to train a density estimator: widen the sidebands or lower ``min_events`` knowingly).
    """
    window.check(data)
    sb = data[window.in_sidebands(window.mass(data))]
    if len(sb) < min_events:
        raise RegionError(f"sideband_events: the sidebands hold {len(sb)} events, fewer than the {min_events} a background "
                          "model needs; widen the sidebands (sideband_width) or use more data.")
    return sb


def cathode_training_data(data: Events, window: MassWindow, background_model: Any, *, oversampling: float = 4.0,
                          generator: torch.Generator | None = None, min_events: int = 100) -> Events:
    r"""CATHODE: signal-region data (label 1) against background-model samples in the signal region (label 0).

    ``oversampling`` x N_SR masses are drawn with replacement from the SR data's masses, features
    from ``background_model.sample(n, context=m, generator)``; the samples are weighted by
    ``1/oversampling`` so that both classes carry the same total weight.

    Raises:
        ConfigError: ``background_model`` lacks ``sample``/``log_prob``, or ``oversampling <= 0``.
        ShapeMismatchError: the model's samples do not have the data's feature shape.
        RegionError: the window lies outside the data, or too few SR events.
    """
    if not isinstance(background_model, BackgroundModel):
        raise ConfigError(f"cathode_training_data: background_model ({type(background_model).__name__}) needs "
                          "sample(n, context, generator) and log_prob(x, context).")
    if not oversampling > 0:
        raise ConfigError(f"cathode_training_data: oversampling = {oversampling} must be > 0.")
    sr, _ = window.split(data, min_events=min_events)
    m_sr = window.mass(sr)
    n = int(round(oversampling * len(sr)))
    index = torch.randint(0, len(sr), (n,), generator=generator)
    m = m_sr[index].reshape(-1, 1)
    x = torch.as_tensor(background_model.sample(n, m, generator))
    if tuple(x.shape) != (n, sr.x.shape[1]):
        raise ShapeMismatchError(f"cathode_training_data: the background model returned {tuple(x.shape)}, expected ({n}, {sr.x.shape[1]}).")
    spectator = sr.spectator[index]
    samples = Events(x=x.to(sr.x.dtype), theta=sr.x.new_zeros(n, 0), spectator=spectator)
    return labelled_events(samples, sr, weights0=torch.full((n,), 1.0 / oversampling), weights1=torch.ones(len(sr)))
