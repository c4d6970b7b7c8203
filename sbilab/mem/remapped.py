r"""Flows in the noise space of physics channels: the multi-channel flow sampler of MadNIS.

A physics channel :math:`c` (a :class:`~sbilab.mem.proposals.Proposal`: Breit–Wigner mapping,
inverted transfer function, one permutation) maps uniform noise :math:`u \in [0,1]^{k_c}` to
``z`` with density :math:`q_c(z)`. Its share of the integral is fixed by analytic channel
weights :math:`\alpha_c(z) = w_c q_c(z)/\sum_k w_k q_k(z)` (:math:`\sum_c \alpha_c = 1`), and the
channel's integral is one over its noise cube (Heimel et al., MadNIS, arXiv:2212.06172, sec. 3;
arXiv:2311.01548):

.. math::
    I = \sum_c I_c, \qquad I_c = \int_{[0,1]^{k_c}} du\, h_c(u),\qquad
    h_c(u) = \frac{\alpha_c(z)\, g(z)}{q_c(z)}\Big|_{z = T_c(u)}.

A normalising flow :math:`\tilde q_c(u|x)` on the cube, conditional on the event, remaps the
noise so that :math:`h_c/\tilde q_c` is flat; it is mixed with the uniform density,
:math:`\bar q_c = \lambda + (1-\lambda)\tilde q_c`, so the physics channel itself is the
defensive component (the weights stay bounded by :math:`h_c/\lambda`). No inverse of the
channel map is needed (nor injectivity): importance sampling happens in the noise space. With
:math:`n_c` of the :math:`S` samples in channel :math:`c`,

.. math::
    \hat I = \sum_c \frac{1}{n_c}\sum_{j \in c} \frac{h_c(u_j)}{\bar q_c(u_j)}
           = \frac1S \sum_j \frac{g(z_j)}{Q_j}, \qquad
    Q_j = \frac{q_c(z_j)\,\bar q_c(u_j)\, n_c}{S\,\alpha_c(z_j)},

so :class:`RemappedChannels` reports :math:`\log Q_j` as its "log q" and every integrator of
:mod:`sbilab.mem` works unchanged. With untrained flows (or :math:`\lambda = 1`) it is exactly
the stratified :class:`~sbilab.mem.proposals.MultiChannel` of its channels. The flows are
:class:`~sbilab.estimators.ConditionalDensity` objects trained by :func:`~sbilab.training.fit`
on the variance of :math:`h_c` (:func:`fit_channel_flows`,
:func:`~sbilab.estimators.losses.integrand_variance_loss`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..estimators import ConditionalDensity, get_loss
from ..events import Events
from ..exceptions import ConfigError
from ..nets.flows import FlowSpec
from ..training import TrainingConfig, fit
from .flows import SAMPLER_TRAINING, check_sampler_training
from .model import MatrixElement
from .proposals import Proposal, stratified_counts

__all__ = ["RemappedChannels", "fit_channel_flows", "uniform_flow"]


def uniform_flow(dim: int, context: Tensor, *, flow: FlowSpec = FlowSpec("nsf_coupling", transforms=4, hidden=(64, 64)),
                 seed: int = 0) -> ConditionalDensity:
    """An untrained flow on the cube ``[0, 1]^dim`` given events ``context (N, Dx)``, standardised on uniform noise.

    For ``dim = 1`` the kind must be autoregressive (``"nsf"``, ``"maf"``)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(context.shape[0], dim, generator=gen).clamp(1e-4, 1 - 1e-4)
    data = Events(x=context.to(torch.get_default_dtype()), theta=context.new_zeros(context.shape[0], 0).to(torch.get_default_dtype()),
                  latent=u.to(torch.get_default_dtype()))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ConditionalDensity.from_events(data, target="latent", flow=flow, low=[0.0] * dim, high=[1.0] * dim)


class RemappedChannels(Proposal):
    r"""Physics channels whose noise is remapped by conditional flows (see the module).

    Args:
        channels: The channels' proposals (same ``dim``).
        flows: One per channel: a :class:`~sbilab.estimators.ConditionalDensity` over
            ``[0, 1]^{noise_dim}`` given the event, or ``None`` (the channel as it is).
        weights: Nominal channel shares :math:`w_c` (default: equal).
        defensive: λ, the share of uniform noise in each channel (the channel itself), in (0, 1].
        chunk: Points pushed through a flow at once.

    Raises:
        ConfigError: mismatched lengths, a flow on the wrong cube or bounds, λ outside (0, 1].
    """

    def __init__(self, channels: Sequence[Proposal], flows: Sequence[ConditionalDensity | None], *, weights: Sequence[float] | None = None,
                 defensive: float = 0.1, chunk: int = 2**16) -> None:
        self.channels, self.flows = list(channels), list(flows)
        if not self.channels or len(self.flows) != len(self.channels):
            raise ConfigError(f"RemappedChannels: {len(self.channels)} channels but {len(self.flows)} flows; give one flow (or None) per channel.")
        if len({int(c.dim) for c in self.channels}) != 1:
            raise ConfigError("RemappedChannels: the channels have different dimensions.")
        w = [1.0] * len(self.channels) if weights is None else [float(v) for v in weights]
        if len(w) != len(self.channels) or min(w) <= 0:
            raise ConfigError(f"RemappedChannels: need {len(self.channels)} positive weights, got {weights}.")
        self.weights = [v / sum(w) for v in w]
        if not 0.0 < float(defensive) <= 1.0:
            raise ConfigError(f"RemappedChannels: defensive must be in (0, 1], got {defensive}.")
        self.defensive, self.chunk = float(defensive), int(chunk)
        for channel, flow in zip(self.channels, self.flows):
            if flow is None:
                continue
            lo, hi = flow.bounds
            if flow.features != channel.noise_dim or bool((lo != 0).any()) or bool((hi != 1).any()):
                raise ConfigError(f"RemappedChannels: a flow must live on [0, 1]^{channel.noise_dim} (its channel's noise), "
                                  f"got {flow.features} features with bounds {lo.tolist()}, {hi.tolist()} (see uniform_flow).")
        self.dim = int(self.channels[0].dim)
        self.noise_dim = max(int(c.noise_dim) for c in self.channels)

    def log_alpha(self, c: int, z: Tensor, x: Tensor | None, shares: Sequence[float] | None = None) -> Tensor:
        r""":math:`\log\alpha_c(z)` of channel ``c`` at ``z (N, S, dim)``, ``(N, S)``."""
        shares = self.weights if shares is None else shares
        terms = torch.stack([math.log(w) + ch.log_prob(z, x) for ch, w in zip(self.channels, shares) if w > 0])
        own = math.log(shares[c]) + self.channels[c].log_prob(z, x)
        return torch.where(torch.isfinite(own), own - torch.logsumexp(terms, dim=0), torch.full_like(own, -math.inf))

    @torch.no_grad()
    def remap(self, c: int, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Noise ``u (N, n, k_c)`` of channel ``c`` → remapped noise and :math:`\log\bar q_c` at it, ``(N, n)``.

        The first ``round(λ n)`` samples keep their uniform noise, the others go through the flow."""
        flow, n = self.flows[c], u.shape[1]
        if flow is None:
            return u, torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device)
        keep = int(round(self.defensive * n))
        parts = [u[:, :keep]]
        xd = x.to(flow.low.dtype)
        step = max(1, self.chunk // max(u.shape[0], 1))
        for a in range(keep, n, step):
            e = torch.special.ndtri(u[:, a:min(a + step, n)]).transpose(0, 1).to(flow.low.dtype)
            parts.append(flow.sample_from_noise(e, xd).transpose(0, 1).to(u.dtype).clamp(1e-12, 1 - 1e-12))
        v = torch.cat(parts, 1)
        log_flow = torch.cat([flow(v[:, a:a + step].transpose(0, 1).to(flow.low.dtype), xd).transpose(0, 1).to(u.dtype)
                              for a in range(0, n, step)], 1)
        return v, torch.logaddexp(torch.full_like(log_flow, math.log(self.defensive)), math.log1p(-self.defensive) + log_flow) \
            if self.defensive < 1 else torch.zeros_like(log_flow)

    @torch.no_grad()
    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        if x is None:
            raise ConfigError("RemappedChannels is conditional: transform needs the events x (N, D).")
        s = u.shape[1]
        counts = stratified_counts(self.weights, s)
        shares = [n / s for n in counts]
        zs, logs, start = [], [], 0
        for c, (channel, n) in enumerate(zip(self.channels, counts)):
            if n == 0:
                continue
            v, log_bar = self.remap(c, u[:, start:start + n, : channel.noise_dim], x)
            z, log_qc = channel.transform(v, x)
            zs.append(z)
            logs.append(log_qc + log_bar + math.log(shares[c]) - self.log_alpha(c, z, x, shares))
            start += n
        return torch.cat(zs, 1), torch.cat(logs, 1)

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        """Not defined: the estimate is importance sampling in the channels' noise spaces, with no density at arbitrary ``z``.

        Raises:
            ConfigError: always; use this proposal on its own (``integrate``, the likelihood,
                :func:`~sbilab.mem.check_coverage`), not inside a mixture or as ``variance_calls``'s ``evaluated``.
        """
        raise ConfigError("RemappedChannels has no density at arbitrary points (it samples in its channels' noise spaces); "
                          "use it on its own, not inside MultiChannel or as variance_calls(evaluated=...).")

    def channel_integrand(self, c: int, model: MatrixElement) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        r""":math:`\log h_c(u) = \log[\alpha_c g/q_c](T_c(u))` for ``u (B, S, k_c)``, ``x (B, Dx)``, ``theta (B, P)`` (model order) → ``(B, S)``.

        What :func:`~sbilab.estimators.losses.integrand_variance_loss` trains the flow of channel ``c`` on."""
        channel = self.channels[c]

        def log_h(u: Tensor, x: Tensor, theta: Tensor) -> Tensor:
            z, log_qc = channel.transform(u.clamp(1e-12, 1 - 1e-12), x)
            log_g = model.log_integrand(z, x, theta)
            ok = torch.isfinite(log_g) & torch.isfinite(log_qc)
            return torch.where(ok, log_g + self.log_alpha(c, z, x) - log_qc, torch.full_like(log_g, -math.inf))

        return log_h


def fit_channel_flows(
    channels: Sequence[Proposal],
    model: MatrixElement,
    events: Events,
    *,
    weights: Sequence[float] | None = None,
    defensive: float = 0.1,
    flow: FlowSpec = FlowSpec("nsf_coupling", transforms=4, hidden=(64, 64)),
    samples: int = 32,
    training: TrainingConfig = SAMPLER_TRAINING,
    device: str = "cpu",
    progress: bool = False,
) -> RemappedChannels:
    r"""Train one flow per channel on the variance of :math:`h_c` (MadNIS), with :func:`~sbilab.training.fit`.

    Args:
        channels: The physics channels (e.g. ``w_proposal(model).channels``).
        model: The matrix-element model.
        events: ``x (N, Dx)`` (reconstructed, passing the cuts) and ``theta (N, P)`` in
            ``model.parameter_names`` order: where the sampler is to be good.
        weights: Channel shares (default: equal).
        defensive: λ of :class:`RemappedChannels`.
        flow: Architecture of each flow (over the channel's noise cube).
        samples: Draws per event per training step.
        training: Options of :func:`~sbilab.training.fit` (all explicit; ``ensemble = 1``).
        device: Training device; the flows are returned on the CPU.
        progress: Show progress bars.

    Raises:
        ConfigError: ``training.ensemble != 1`` or ``theta`` of the wrong width.
        OutOfSupportError: events outside the transfer function's support or the cuts.
    """
    check_sampler_training("fit_channel_flows", model, events, training)
    untrained = RemappedChannels(channels, [None] * len(channels), weights=weights, defensive=defensive)
    data = Events(x=events.x, theta=events.theta).to(dtype=torch.get_default_dtype())
    flows = []
    for c, channel in enumerate(untrained.channels):
        density = uniform_flow(int(channel.noise_dim), events.x, flow=flow, seed=training.seed + c)
        loss = get_loss("integrand_variance", integrand=untrained.channel_integrand(c, model), samples=int(samples))
        result = fit(density, loss, data, **{**training.to_dict(), "seed": training.seed + c}, device=device, progress=progress)
        flows.append(result.model.to("cpu").eval())
    return RemappedChannels(channels, flows, weights=weights, defensive=defensive)
