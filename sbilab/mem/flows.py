r"""Learned importance samplers :math:`q(z|x)`: a conditional flow as a :class:`~sbilab.mem.proposals.Proposal`.

:class:`FlowProposal` wraps a :class:`~sbilab.estimators.ConditionalDensity` of the
integration variables given the event. Two ways to train it, both with the one trainer
:func:`~sbilab.training.fit`:

* :func:`fit_proposal` — **by maximum likelihood on simulation** (ML-MEM, arXiv:2210.00019,
  arXiv:2310.07752): the density of the parton level ``z`` given the reconstructed ``x`` of
  simulated events, :math:`-\mathbb E\log q(z|x)`. At the generating parameters the optimum is
  the posterior :math:`p(z|x,\alpha) = g(z;x,\alpha)/I(x;\alpha)`, the zero-variance proposal.
  Trained once; every event then takes a few hundred samples, no per-event training.
* :func:`fit_sampler` — **on the integrand's variance** (MadNIS, arXiv:2212.06172,
  arXiv:2311.01548): :func:`~sbilab.estimators.losses.integrand_variance_loss` on events
  ``x`` at parameters θ, starting from a proposal (e.g. the one above); it needs no parton
  level, only the integrand, and so corrects what simulation-based training misses.

The flow draws through the map of the :class:`~sbilab.mem.proposals.Proposal` contract:
uniform noise ``u`` → standard normal :math:`e = \Phi^{-1}(u)` → :math:`v = T^{-1}(e; x)`
(:meth:`~sbilab.estimators.ConditionalDensity.sample_from_noise`), deterministic in ``u`` and
independent of θ, so common random numbers keep the likelihood smooth.

**Anchors.** A flow that must place a narrow peak at an event-dependent position (a lepton
measured to 5 %) learns it faster relative to a physics guess: with an :data:`Anchor`
``x -> (shift, scale)`` the density models :math:`v = (z - \mathrm{shift}(x))/\mathrm{scale}(x)`,
and :math:`\log q(z|x) = \log q_v(v|x) - \sum_d \log\mathrm{scale}_d(x)`. Anchored samples may
fall outside the process's box (weight zero, allowed by the contract).

**Tails.** A learned proposal is trusted only where it was trained: mix it with a defensive
component that covers the whole integrand (Hesterberg, Technometrics 37 (1995) 185), e.g.
``MultiChannel([flow, process_at_reference], [0.9, 0.1])``; with the process itself as the
defensive density the weights are bounded by :math:`W/0.1`. :func:`sbilab.mem.check_coverage`
compares with a broad proposal on a subset of events.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor

from ..estimators import ConditionalDensity, get_loss
from ..events import Events
from ..exceptions import ConfigError, MissingAugmentedDataError, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..training import TrainingConfig, fit
from .model import MatrixElement
from .proposals import Proposal

__all__ = ["Anchor", "FlowProposal", "fit_proposal", "fit_sampler", "PROPOSAL_TRAINING", "SAMPLER_TRAINING"]

Anchor = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``anchor(x: (N, Dx) float64) -> (shift (N, D), scale (N, D) > 0)``: the frame :math:`z = \\mathrm{shift} + \\mathrm{scale}\\,v`."""

PROPOSAL_TRAINING = TrainingConfig(epochs=30, batch_size=512, learning_rate=2e-3, schedule="cosine", final_lr_fraction=0.01,
                                   plateau_factor=0.3, plateau_patience=2, weight_decay=0.0, clip_norm=5.0, validation_fraction=0.1,
                                   patience=8, smoothing=0.5, keep="best", min_delta=0.0, ensemble=1, amp=False, seed=0)
"""Maximum-likelihood training of :func:`fit_proposal` (every option explicit)."""
SAMPLER_TRAINING = TrainingConfig(epochs=10, batch_size=128, learning_rate=3e-4, schedule="cosine", final_lr_fraction=0.05,
                                  plateau_factor=0.3, plateau_patience=2, weight_decay=0.0, clip_norm=1.0, validation_fraction=0.1,
                                  patience=None, smoothing=0.5, keep="best", min_delta=0.0, ensemble=1, amp=False, seed=0)
"""Variance training of :func:`fit_sampler`: a low learning rate, as a refinement of a covering proposal."""


class FlowProposal(Proposal):
    r"""A :class:`~sbilab.estimators.ConditionalDensity` :math:`q(v|x)` as an importance sampler of ``z``.

    Args:
        density: Over ``v`` (``features = dim``) given the event ``x`` (vector context).
        anchor: The frame ``z = shift(x) + scale(x) v`` (default: ``v = z``).
        chunk: Points pushed through the flow at once (bounds memory).

    Raises:
        ConfigError: a density of set contexts.
    """

    def __init__(self, density: ConditionalDensity, *, anchor: Anchor | None = None, chunk: int = 2**16) -> None:
        if not isinstance(density, ConditionalDensity) or density.is_set:
            raise ConfigError("FlowProposal: needs a ConditionalDensity with a vector context (the event x).")
        self.density, self.anchor, self.chunk = density, anchor, int(chunk)
        self.dim = self.noise_dim = density.features

    def frame(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(shift (N, D), scale (N, D))`` of the anchor at ``x (N, Dx)``, float64, or ``None``.

        Raises:
            ShapeMismatchError: the anchor returns the wrong shapes or a non-positive scale.
        """
        return None if self.anchor is None else _frame(self.anchor, x, self.dim)

    def _log_q_v(self, v: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q_v` of ``v (S, N, D)`` (any float dtype; ``-inf`` outside the bounds), ``(S, N)`` float64."""
        lo, hi = (b.to(v.device, v.dtype) for b in self.density.bounds)
        inside = (torch.isfinite(v) & (v >= lo) & (v <= hi)).all(-1)
        safe = torch.where(inside[..., None], v, torch.minimum(torch.maximum(torch.nan_to_num(v), lo), hi)).to(self.density.low.dtype)
        log_q = self.density(safe, x.to(self.density.low.dtype)).to(torch.float64)
        return torch.where(inside, log_q, torch.full_like(log_q, -math.inf))

    @torch.no_grad()
    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        if x is None:
            raise ConfigError("FlowProposal is conditional: transform needs the events x (N, D).")
        n, s, _ = u.shape
        step = max(1, self.chunk // max(n, 1))
        frame = self.frame(x)
        xd = x.to(self.density.low.dtype)
        zs, logs = [], []
        for a in range(0, s, step):
            e = torch.special.ndtri(u[:, a:a + step, : self.dim]).transpose(0, 1).to(self.density.low.dtype)  # (s', N, D)
            v = self.density.sample_from_noise(e, xd)
            zs.append(v.to(torch.float64).transpose(0, 1))
            logs.append(self._log_q_v(v, x).transpose(0, 1))
        v, log_q = torch.cat(zs, 1), torch.cat(logs, 1)
        if frame is None:
            return v, log_q
        shift, scale = frame
        return shift[:, None, :] + scale[:, None, :] * v, log_q - torch.log(scale).sum(-1, keepdim=True)

    @torch.no_grad()
    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        if x is None:
            raise ConfigError("FlowProposal is conditional: log_prob needs the events x (N, D).")
        frame = self.frame(x)
        z = z.to(torch.float64)
        v = z if frame is None else (z - frame[0][:, None, :]) / frame[1][:, None, :]
        step = max(1, self.chunk // max(z.shape[0], 1))
        out = torch.cat([self._log_q_v(v[:, a:a + step].transpose(0, 1), x).transpose(0, 1) for a in range(0, z.shape[1], step)], 1)
        return out if frame is None else out - torch.log(frame[1]).sum(-1, keepdim=True)

    def integrand(self, model: MatrixElement) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        r"""The log integrand in the density's coordinates, :math:`\log g(z(v); x, \theta) + \log|\partial z/\partial v|`.

        ``(v (B, S, D), x (B, Dx), theta (B, P)) -> (B, S)`` with ``theta`` in
        ``model.parameter_names`` order: what
        :func:`~sbilab.estimators.losses.integrand_variance_loss` takes.
        """

        def log_g(v: Tensor, x: Tensor, theta: Tensor) -> Tensor:
            frame = self.frame(x)
            if frame is None:
                return model.log_integrand(v, x, theta)
            shift, scale = frame
            return model.log_integrand(shift[:, None, :] + scale[:, None, :] * v, x, theta) + torch.log(scale).sum(-1, keepdim=True)

        return log_g


def _frame(anchor: Anchor, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    shift, scale = (torch.as_tensor(t, dtype=torch.float64) for t in anchor(x.to(torch.float64)))
    want = (x.shape[0], dim)
    if tuple(shift.shape) != want or tuple(scale.shape) != want or not bool((scale > 0).all()):
        raise ShapeMismatchError(f"FlowProposal: the anchor must return shift and scale of shape {want} with scale > 0, got "
                                 f"{tuple(shift.shape)} and {tuple(scale.shape)}.")
    return shift, scale


def _target(events: Events, anchor: Anchor | None) -> Tensor:
    z = events.latent.to(torch.float64)
    if anchor is None:
        return z
    shift, scale = _frame(anchor, events.x, z.shape[-1])
    return (z - shift) / scale


def fit_proposal(
    events: Events,
    *,
    bounds: Tensor | None = None,
    anchor: Anchor | None = None,
    flow: FlowSpec = FlowSpec("nsf_coupling", transforms=6, hidden=(64, 64)),
    training: TrainingConfig = PROPOSAL_TRAINING,
    device: str = "cpu",
    progress: bool = False,
) -> FlowProposal:
    r"""Train :math:`q(z|x)` by maximum likelihood on simulated events (``x`` reconstructed as the MEM sees it, ``latent = z``).

    Args:
        events: ``x (N, Dx)`` and the integration variables ``latent (N, dim)`` of the same
            events (e.g. a toy simulator's output, or :meth:`PairedEvents.conditional` with
            ``target="gen"``); ``theta`` is not an input.
        bounds: The process's box ``(dim, 2)``: the density's bounds when there is no anchor
            (every draw inside the box).
        anchor: A frame for the target (then the density is unbounded).
        flow: Architecture (coupling flows draw in one pass).
        training: Options of :func:`~sbilab.training.fit` (all explicit; ``ensemble = 1``).
        device: Training device; the proposal returned lives on the CPU.
        progress: Show progress bars.

    Raises:
        ConfigError: ``training.ensemble != 1``.
        MissingAugmentedDataError: the events carry no ``latent``.
    """
    if training.ensemble != 1:
        raise ConfigError(f"fit_proposal: training.ensemble must be 1, got {training.ensemble}.")
    if events.latent is None:
        raise MissingAugmentedDataError("fit_proposal: events need the integration variables as latent (N, dim).")
    v = _target(events, anchor)
    data = Events(x=events.x, theta=events.theta, latent=v, weights=events.weights).to(dtype=torch.get_default_dtype())
    lo = hi = None
    if anchor is None and bounds is not None:
        b = torch.as_tensor(bounds, dtype=torch.float64)
        lo, hi = b[:, 0].tolist(), b[:, 1].tolist()
    with torch.random.fork_rng():
        torch.manual_seed(training.seed)
        density = ConditionalDensity.from_events(data, target="latent", flow=flow, low=lo, high=hi)
    result = fit(density, get_loss("density", target="latent"), data, **training.to_dict(), device=device, progress=progress)
    return FlowProposal(result.model.to("cpu").eval(), anchor=anchor)


def check_sampler_training(owner: str, model: MatrixElement, events: Events, training: TrainingConfig) -> None:
    """What every learned sampler's training needs: one member, ``theta`` in the model's parameters, events the model accepts.

    Raises:
        ConfigError: ``training.ensemble != 1`` or ``theta`` of the wrong width.
        OutOfSupportError: events outside the transfer function's support or the cuts.
    """
    if training.ensemble != 1:
        raise ConfigError(f"{owner}: training.ensemble must be 1, got {training.ensemble}.")
    if events.theta.shape[-1] != len(model.parameter_names):
        raise ConfigError(f"{owner}: events.theta has {events.theta.shape[-1]} columns; the model needs {model.parameter_names}.")
    model.check_events(events.x.to(torch.float64))


def fit_sampler(
    proposal: FlowProposal,
    model: MatrixElement,
    events: Events,
    *,
    samples: int = 64,
    training: TrainingConfig = SAMPLER_TRAINING,
    device: str = "cpu",
    progress: bool = False,
) -> FlowProposal:
    r"""Refine a flow proposal on the integrand's variance (a copy; ``proposal`` is left as it is).

    Minimises :math:`\mathbb E_x[\mathrm{Var}_q(g/q)/I^2]` over the events
    (:func:`~sbilab.estimators.losses.integrand_variance_loss`); the training history's
    losses are the relative variance per sample, i.e. calls for 1 % over 10⁴.

    Args:
        proposal: The starting sampler (its flow must cover the integrand).
        model: The matrix-element model.
        events: ``x (N, Dx)`` (reconstructed events, passing the model's cuts) and ``theta (N, P)``
            in ``model.parameter_names`` order: where the sampler is to be good.
        samples: Draws per event per step.
        training: Options of :func:`~sbilab.training.fit` (all explicit; ``ensemble = 1``).
        device: Training device (the integrand runs there too); the result lives on the CPU.
        progress: Show progress bars.

    Raises:
        ConfigError: ``training.ensemble != 1`` or ``theta`` of the wrong width.
        OutOfSupportError: events outside the transfer function's support or the cuts.
    """
    check_sampler_training("fit_sampler", model, events, training)
    density = copy.deepcopy(proposal.density).train()
    loss = get_loss("integrand_variance", integrand=proposal.integrand(model), samples=int(samples))
    data = Events(x=events.x, theta=events.theta).to(dtype=torch.get_default_dtype())
    result = fit(density, loss, data, **training.to_dict(), device=device, progress=progress)
    return FlowProposal(result.model.to("cpu").eval(), anchor=proposal.anchor, chunk=proposal.chunk)
