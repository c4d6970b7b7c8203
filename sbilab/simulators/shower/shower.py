r"""The e⁺e⁻ → qq̄ final-state parton shower as a :class:`~sbilab.simulators.base.Simulator`.

:class:`PartonShower` draws events with the batched veto algorithm of
:mod:`~sbilab.simulators.shower.engine` at per-event :math:`\theta = (D, F, C)` (the quark
kernel of :mod:`~sbilab.simulators.shower.kernels`), stores every trial in ``Events.latent``
(:mod:`~sbilab.simulators.shower.history`), and evaluates the exact history likelihood at any θ
(:meth:`PartonShower.joint_log_prob`), so :func:`~sbilab.simulators.augment.augment` and
:func:`~sbilab.simulators.augment.ratio_training_data` give RASCAL/ALICES/SALLY their joint ratios
and scores (arXiv:1805.00020), and events reweight to any θ (arXiv:1605.08352). The final state
is partonic: **there is no hadronisation**.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ConfigError, OutOfSupportError
from ..base import Simulator
from ..registry import register_toy
from ..space import ParameterSpace
from .detector import Smearing
from .engine import ShowerSettings, ShowerState, run_shower, run_showers
from .history import HISTORY_VERSION, check_history, history_log_prob
from .kernels import Overestimate, RunningCoupling, check_kernel
from .observables import FRAME_FEATURES, OBSERVABLES, event_observables, thrust_frame

__all__ = ["PartonShower", "PARTICLE_FEATURES"]

PARTICLE_FEATURES = ("E", "px", "py", "pz", "pid")
"""Features of the particle set ``x (N, M, 5)`` of ``output="particles"``."""


@register_toy("shower")
class PartonShower(Simulator):
    r"""Final-state dipole shower of e⁺e⁻ → qq̄ with the quark kernel parametrised by (D, F, C).

    Args:
        ecms: Centre-of-mass energy Q in GeV (hard scale :math:`Q^2`).
        t0: Cutoff of the evolution variable :math:`t = k_T^2` in GeV²; must lie between
            :math:`\Lambda^2` and :math:`Q^2/4`.
        alpha_s_mz: :math:`\alpha_s(M_Z^2)` of the one-loop coupling.
        low, high: Bounds of (D, F, C); ``high`` sets the overestimate, which then covers every
            θ with :math:`D \le D_\mathrm{high}`, :math:`F \le F_\mathrm{high}`,
            :math:`C \le C_\mathrm{high}` and a non-negative kernel; ``low`` must give a
            non-negative kernel (:math:`D, F \ge 0`, :math:`F + C \ge 0`).
        reference: Reference point (default the standard kernel D = F = 1, C = 0).
        output: ``"particles"``: ``x`` is the padded set ``(N, M, 5)`` of :data:`PARTICLE_FEATURES`
            with ``mask``; ``"thrust_frame"``: the padded set ``(N, M, 3)`` of every particle in
            the thrust frame (:func:`~sbilab.simulators.shower.observables.thrust_frame`,
            rotation invariant); ``"observables"``: ``x (N, 9)`` of
            :data:`~sbilab.simulators.shower.observables.OBSERVABLES`.
        smearing: Optional Gaussian detector (:class:`~.detector.Smearing`).
        chunk_size: Events showered together (memory is about 3 kB per event and step capacity).
        progress: Show a progress bar over chunks.

    Raises:
        ConfigError: the cutoff is not below :math:`Q^2/4` or not above :math:`\Lambda^2`, or
            an unknown ``output``.
        NegativeKernelError: ``low`` allows a negative kernel.

    Example:
        >>> shower = PartonShower()
        >>> ev = shower.simulate(4, theta=torch.tensor([1.0, 1.0, 0.0]), generator=torch.Generator().manual_seed(0))
        >>> ev.x.shape[0], ev.x.shape[2], ev.latent.shape[2]
        (4, 5, 6)
        >>> bool(torch.allclose(ev.x[..., :4].sum(1).double(), torch.tensor([91.2, 0, 0, 0], dtype=torch.float64), atol=1e-3))
        True
    """

    def __init__(
        self,
        *,
        ecms: float = 91.2,
        t0: float = 1.0,
        alpha_s_mz: float = 0.118,
        low: tuple[float, float, float] = (0.5, 0.5, -0.5),
        high: tuple[float, float, float] = (1.5, 1.5, 1.5),
        reference: tuple[float, float, float] = (1.0, 1.0, 0.0),
        output: Literal["particles", "thrust_frame", "observables"] = "particles",
        smearing: Smearing | None = None,
        chunk_size: int = 20_000,
        progress: bool = False,
    ) -> None:
        coupling = RunningCoupling(alpha_s_mz=float(alpha_s_mz))
        if not t0 < ecms**2 / 4.0:
            raise ConfigError(
                f"PartonShower: cutoff t0 = {t0} GeV^2 is not below the hard scale Q^2/4 = {ecms**2 / 4.0:.6g} GeV^2 "
                f"(ecms = {ecms} GeV), so no emission is possible; use t0 well below Q^2/4, e.g. 1.0."
            )
        if not t0 > coupling.lambda2:
            raise ConfigError(
                f"PartonShower: cutoff t0 = {t0} GeV^2 is not above Lambda^2 = {coupling.lambda2:.4g} GeV^2, where the "
                "one-loop coupling diverges; use t0 >= 0.5 GeV^2."
            )
        if output not in ("particles", "thrust_frame", "observables"):
            raise ConfigError(f"PartonShower: output = {output!r}; choose 'particles', 'thrust_frame' or 'observables'.")
        check_kernel(torch.tensor([low], dtype=torch.float64), argument="PartonShower low bounds")
        self.space = ParameterSpace(("D", "F", "C"), low=low, high=high, reference=reference)
        self.overestimate = Overestimate(*(float(h) for h in high))
        self.settings = ShowerSettings(float(ecms), float(t0), coupling, self.overestimate)
        self.output = output
        self.smearing = smearing
        self.chunk_size = int(chunk_size)
        self.progress = bool(progress)
        self.observable_names = {"particles": PARTICLE_FEATURES, "thrust_frame": FRAME_FEATURES, "observables": OBSERVABLES}[output]

    # ------------------------------------------------------------------ sampling
    def _theta(self, theta: Tensor, argument: str) -> Tensor:
        theta = torch.as_tensor(theta)
        if theta.dim() != 2 or theta.shape[1] != 3:
            raise OutOfSupportError(f"{argument} has shape {tuple(theta.shape)}; expected (N, 3) rows (D, F, C).")
        self.overestimate.check(theta, argument=argument)
        return theta

    def shower(self, theta: Tensor, generator: torch.Generator | None = None) -> ShowerState:
        """Partons and history of one event per row of ``theta (N, 3)`` (no chunking, no smearing)."""
        return run_shower(self._theta(theta, "theta").to(torch.float64), self.settings, generator=generator)

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One event per row of ``theta (N, 3)``: ``x`` (particles with ``mask``, or observables), the history
        in ``latent (N, T, 6)`` float64 (:mod:`~.history` layout) with ``latent_mask (N, T)``.

        Raises:
            NegativeKernelError, OverestimateError: some row of θ is not covered (see the class).
        """
        theta = self._theta(torch.as_tensor(theta, dtype=torch.get_default_dtype()), "theta")
        chunks = (theta[s:s + self.chunk_size].to(torch.float64) for s in range(0, theta.shape[0], self.chunk_size))
        if self.progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="shower", leave=False, total=-(-theta.shape[0] // self.chunk_size))
        return self._events(theta, run_showers(chunks, self.settings, generator=generator), generator)

    def _events(self, theta: Tensor, state: ShowerState, generator: torch.Generator | None) -> Events:
        p = state.momenta
        mask = torch.arange(p.shape[1]).unsqueeze(0) < state.n_particles.unsqueeze(1)
        if self.smearing is not None:
            p = self.smearing.apply(p, mask, generator)
        latent_mask = torch.arange(state.history.shape[1]).unsqueeze(0) < state.n_trials.unsqueeze(1)
        dtype = theta.dtype
        if self.output == "particles":
            x = torch.cat([p, state.pid.to(torch.float64).unsqueeze(-1)], dim=-1).to(dtype)
            return Events(x=x, theta=theta, latent=state.history, latent_mask=latent_mask, mask=mask)
        fn, step = (thrust_frame if self.output == "thrust_frame" else event_observables), self.chunk_size
        x = torch.cat([fn(p[s:s + step], mask[s:s + step]) for s in range(0, p.shape[0], step)]).to(dtype)
        if self.output == "thrust_frame":
            return Events(x=x, theta=theta, latent=state.history, latent_mask=latent_mask, mask=mask)
        return Events(x=x, theta=theta, latent=state.history, latent_mask=latent_mask)

    # ------------------------------------------------------------------ likelihood
    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r"""Exact :math:`\log p(\text{history}|\theta)` up to a θ-independent constant, ``(N,)`` float64.

        :math:`\sum_\text{acc}\log w_\theta + \sum_\text{rej}\log(1-w_\theta)` over the stored
        trials (:func:`~.history.history_log_prob`); differentiable in ``theta (N, 3)``.

        Raises:
            InvalidEventsError: the events carry no history.
            HistoryVersionError: the history comes from another shower version or layout.
            NegativeKernelError, OverestimateError: θ outside the region the overestimate covers.
        """
        check_history(events.latent, events.latent_mask)
        self._theta(theta, "theta")
        return history_log_prob(events.latent, events.latent_mask, theta)

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {**super().config(), "ecms": s.ecms, "t0": s.t0, "alpha_s_mz": s.coupling.alpha_s_mz, "output": self.output,
                "overestimate": list(self.overestimate.upper()), "history_version": HISTORY_VERSION,
                "smearing": None if self.smearing is None else {"energy": self.smearing.energy, "angle": self.smearing.angle}}

