r"""Whole data sets as observations: training data of amortised posteriors :math:`q(\theta|\{x_e\})`.

A measurement observes a data set of K events drawn at one θ. A posterior estimator of
:math:`p(\theta|x_1, \dots, x_K)` (a cINN, arXiv:2012.09873) is trained on pairs of θ from the
proposal and a data set of K events simulated there. :func:`simulate_datasets` lays each data
set out as one padded-set observation of the estimators (``x (S, L, F)`` with ``mask (S, L)``):

* vector events ``(N, D)``: the K events are the set, ``x (S, K, D)``;
* events that are themselves padded sets of particles ``(N, M, F)``: each event occupies a
  block of ``block`` slots (its particles, then mask-False padding), ``x (S, K·block, F)`` —
  the layout of :class:`~sbilab.nets.sets.NestedDeepSets` (deep sets over each event's
  particles, then over the events).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from .base import Simulator, checked_sample

__all__ = ["simulate_datasets", "datasets_from_events"]


def datasets_from_events(events: Events, set_size: int, *, theta: Tensor | None = None, block: int | None = None) -> Events:
    r"""Group consecutive events into data sets of ``set_size`` events (see the module docstring).

    Args:
        events: ``N = S·K`` events; consecutive groups of ``set_size`` = K form a data set.
        set_size: Events per data set K.
        theta: ``(S, P)`` parameters of the data sets (default: the first event's of each group).
        block: Slots per event for set events (default: the events' set length M); events with
            more particles than ``block`` raise.

    Returns:
        Events with ``x (S, K, D)`` or ``(S, K·block, F)``, ``mask``, ``theta (S, P)``; an
        event's weight is not carried (data sets are unweighted).

    Raises:
        ShapeMismatchError: N is not a multiple of ``set_size``, or an event has more particles than ``block``.

    Example:
        >>> ev = Events(x=torch.arange(12.0).reshape(6, 2), theta=torch.zeros(6, 1))
        >>> datasets_from_events(ev, 3).x.shape
        torch.Size([2, 3, 2])
    """
    n = len(events)
    if set_size < 1 or n % set_size:
        raise ShapeMismatchError(f"datasets_from_events: {n} events do not split into data sets of set_size = {set_size}.")
    s = n // set_size
    theta = events.theta[::set_size] if theta is None else theta
    if not events.is_set:
        return Events(x=events.x.reshape(s, set_size, -1), theta=theta, mask=torch.ones(s, set_size, dtype=torch.bool))
    m = events.x.shape[1]
    block = m if block is None else int(block)
    longest = int(events.mask.sum(1).max()) if n else 0
    if longest > block:
        raise ShapeMismatchError(
            f"datasets_from_events: an event has {longest} particles but block = {block} slots; pass a larger block."
        )
    keep = min(m, block)
    x = events.x.new_zeros(n, block, events.x.shape[2])
    mask = torch.zeros(n, block, dtype=torch.bool)
    order = torch.argsort((~events.mask).to(torch.int8), dim=1, stable=True)[:, :keep]  # real particles first, wherever they sit
    x[:, :keep] = torch.gather(events.x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    mask[:, :keep] = torch.gather(events.mask, 1, order)
    return Events(x=x.reshape(s, set_size * block, -1), theta=theta, mask=mask.reshape(s, set_size * block))


def simulate_datasets(simulator: Simulator, n_sets: int, set_size: int, *, generator: torch.Generator | None = None,
                      theta: Tensor | None = None, block: int | None = None) -> Events:
    r""":math:`\theta_s` from the proposal (or ``theta (S, P)``), ``set_size`` events simulated at each, as data sets.

    Raises:
        ConfigError: ``n_sets`` or ``set_size`` is not positive.
        ShapeMismatchError: see :func:`datasets_from_events`.
    """
    if n_sets < 1 or set_size < 1:
        raise ConfigError(f"simulate_datasets: n_sets = {n_sets} and set_size = {set_size} must be positive.")
    theta = simulator.space.sample(n_sets, generator=generator) if theta is None else torch.as_tensor(theta)
    events = checked_sample(simulator, theta.repeat_interleave(set_size, dim=0), generator=generator)
    return datasets_from_events(events, set_size, theta=theta, block=block)
