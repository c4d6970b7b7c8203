r"""A mass window: the signal region and its sidebands, checked against the data.

A bump hunt (CWoLa hunting, arXiv:1805.02664; CATHODE, arXiv:2109.00546) scans a window of the
resonance mass :math:`m`: the signal region (SR) :math:`[m_\mathrm{lo}, m_\mathrm{hi})` and the
sidebands (SB) :math:`[m_\mathrm{lo} - w, m_\mathrm{lo}) \cup [m_\mathrm{hi}, m_\mathrm{hi} + w)` of
width :math:`w` on each side (``sideband_width=None``: everything outside the SR). The events
carry :math:`m` as their ``spectator`` (column ``mass_column``), never as a classifier input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, RegionError

__all__ = ["MassWindow"]


@dataclass(frozen=True)
class MassWindow:
    """The signal region ``[lo, hi)`` and sidebands of width ``sideband_width`` on each side (``None``: all the rest).

    Raises:
        ConfigError: ``lo >= hi`` or a non-positive sideband width.
    """

    lo: float
    hi: float
    sideband_width: float | None = None
    mass_column: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ConfigError(f"MassWindow: need finite lo < hi, got lo = {self.lo}, hi = {self.hi}.")
        if self.sideband_width is not None and not self.sideband_width > 0:
            raise ConfigError(f"MassWindow: sideband_width = {self.sideband_width} must be > 0, or None for everything outside the SR.")

    def mass(self, events: Events) -> Tensor:
        """The mass of every event, ``(N,)``: the events' spectator column ``mass_column``.

        Raises:
            InvalidEventsError: the events carry no spectator, or too few columns.
        """
        if events.spectator is None:
            raise InvalidEventsError("MassWindow: the events have no spectator; put the mass in Events.spectator (N, S), "
                                     "not among the classifier inputs x.")
        if not 0 <= self.mass_column < events.spectator.shape[1]:
            raise InvalidEventsError(f"MassWindow: mass_column = {self.mass_column} but the spectator has {events.spectator.shape[1]} columns.")
        return events.spectator[:, self.mass_column]

    def check(self, events: Events) -> None:
        """Refuse a window that does not lie inside the data's mass range.

        Raises:
            RegionError: the SR (or a sideband) reaches outside ``[min m, max m]`` of the events.
        """
        m = self.mass(events)
        if m.numel() == 0:
            raise RegionError("MassWindow: no events given.")
        m_min, m_max = float(m.min()), float(m.max())
        lo = self.lo - (self.sideband_width or 0.0)
        hi = self.hi + (self.sideband_width or 0.0)
        if lo < m_min or hi > m_max:
            raise RegionError(f"MassWindow: the window [{lo:g}, {hi:g}] (signal region [{self.lo:g}, {self.hi:g}) with its sidebands) "
                              f"reaches outside the data's mass range [{m_min:g}, {m_max:g}]; move the window or narrow the sidebands.")

    def in_signal_region(self, m: Tensor) -> Tensor:
        """Boolean ``(N,)``: :math:`m_\\mathrm{lo} \\le m < m_\\mathrm{hi}`."""
        return (m >= self.lo) & (m < self.hi)

    def in_sidebands(self, m: Tensor) -> Tensor:
        """Boolean ``(N,)``: inside a sideband."""
        outside = ~self.in_signal_region(m)
        if self.sideband_width is None:
            return outside
        return outside & (m >= self.lo - self.sideband_width) & (m < self.hi + self.sideband_width)

    def split(self, events: Events, *, min_events: int = 1) -> tuple[Events, Events]:
        """``(signal-region events, sideband events)`` after :meth:`check`.

        Raises:
            RegionError: the window lies outside the data, or either part holds fewer than ``min_events``.
        """
        self.check(events)
        m = self.mass(events)
        sr, sb = self.in_signal_region(m), self.in_sidebands(m)
        for name, mask in (("signal region", sr), ("sidebands", sb)):
            if int(mask.sum()) < min_events:
                raise RegionError(f"MassWindow: the {name} hold {int(mask.sum())} events, fewer than the {min_events} needed; "
                                  "widen the window or use more data.")
        return events[sr], events[sb]

    def sideband_limits(self, events: Events) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two sideband intervals ``((lo_1, hi_1), (lo_2, hi_2))`` (to the data's range when ``sideband_width`` is None)."""
        m = self.mass(events)
        if self.sideband_width is None:
            return (float(m.min()), self.lo), (self.hi, float(torch.nextafter(m.max(), m.max() + 1)))
        return (self.lo - self.sideband_width, self.lo), (self.hi, self.hi + self.sideband_width)
