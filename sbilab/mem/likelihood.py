r"""The MEM per-event log-likelihood, as the callable that :mod:`sbilab.stats` fits.

.. math::
    \log p(x|\theta) = \log \hat I(x;\theta) - \log\hat\sigma_\mathrm{fid}(\theta), \qquad
    \log\hat r(x|\theta) = \log p(x|\theta) - \log p(x|\theta_\mathrm{ref}),

with :math:`\hat I` the importance-sampling estimate of :func:`~sbilab.mem.integrate.integrate`
(its logarithm corrected for the Jensen bias :math:`-\delta^2/2`, see
:func:`~sbilab.mem.integrate.estimate`) and :math:`\hat\sigma_\mathrm{fid}` that of
:class:`~sbilab.mem.fiducial.FiducialCrossSection`.
:class:`MatrixElementLikelihood` is a ``log_ratio(x: (N, D), theta: (N, P)) -> (N,)``, so
:class:`~sbilab.stats.UnbinnedLikelihood` (iminuit, MINOS, profiles, constrained nuisance
parameters of the transfer function) and :func:`~sbilab.stats.fit_toys` take it unchanged.

Common random numbers: every event gets the same proposal samples at every θ (noise keyed by
the event, proposal independent of θ), so :math:`\hat I` is a smooth function of θ, its
gradient and Hessian come from autograd, and the minimiser sees no Monte Carlo jitter. The
α-independent part of the integrand (samples, parton quantities, transfer function when it
has no nuisance) is cached per batch of events.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from ..exceptions import ConfigError, IntegrandError
from ..simulators.space import ParameterSpace
from .coverage import CoverageCheck, compare_integrals
from .fiducial import FiducialCrossSection
from .integrate import Integral, draw, estimate, integrate
from .model import MatrixElement, Prepared
from .noise import CommonNoise, Sequence, event_keys
from .proposals import Proposal
from .transfer import check_normalisation

__all__ = ["MatrixElementLikelihood"]


class MatrixElementLikelihood:
    r"""Per-event MEM log-likelihood and log-ratio, batched over events and parameter points.

    Args:
        model: The :class:`~sbilab.mem.model.MatrixElement`.
        proposal: The importance sampler :math:`q(z|x)` (analytic, adaptive grid or learned);
            must not depend on θ.
        space: Parameter space whose names are exactly ``model.parameter_names`` (any order):
            the process parameters and the transfer function's nuisances.
        fiducial: The normalisation :math:`\sigma_\mathrm{fid}(\theta)`.
        samples: Samples per event ``S``.
        sequence: ``"sobol"`` (randomised QMC, error from ``replicas`` shifts) or ``"random"``.
        replicas: Random shifts per event for ``"sobol"``.
        seed: Seed of the common random numbers; another seed gives an independent estimate
            (see :func:`~sbilab.mem.fitting.integration_noise`).
        reference: :math:`\theta_\mathrm{ref}` of the log-ratio, ``(P,)`` in space order
            (default: the space's reference).
        check_transfer: Check numerically at construction that the transfer function
            normalises at four parton points of the fiducial sample.
        coverage: A broad proposal (covering the whole integrand) to check ``proposal``
            against (:mod:`sbilab.mem.coverage`): the first ``coverage_events`` events the
            likelihood sees are also integrated at the reference with ``coverage_samples``
            samples of it; events where ``proposal`` is significantly low raise a
            :class:`~sbilab.mem.coverage.CoverageWarning` and are listed in
            :attr:`coverage_check`.
        coverage_events, coverage_samples: Size of that check.
        cache_bytes: Memory budget of the per-batch cache.
        chunk_calls: Events are processed in chunks of about this many integrand calls.

    Raises:
        ConfigError: the space's names differ from the model's parameters.
        IntegrandError: the transfer function does not normalise (``check_transfer``).

    Example:
        See ``tests/test_mem_toy1.py``: the fit of 1000 events of the resonance toy with
        ``UnbinnedLikelihood(mem, Events.observed(x), space)``.
    """

    def __init__(
        self,
        model: MatrixElement,
        proposal: Proposal,
        space: ParameterSpace,
        *,
        fiducial: FiducialCrossSection,
        samples: int = 1024,
        sequence: Sequence = "sobol",
        replicas: int = 8,
        seed: int = 0,
        reference: Tensor | None = None,
        check_transfer: bool = True,
        coverage: Proposal | None = None,
        coverage_events: int = 16,
        coverage_samples: int = 16384,
        cache_bytes: int = 2**28,
        chunk_calls: int = 2**20,
    ) -> None:
        if sorted(space.names) != sorted(model.parameter_names):
            raise ConfigError(
                f"space has parameters {space.names} but the model needs exactly {model.parameter_names} "
                "(the process parameters and the transfer function's nuisances)."
            )
        if proposal.dim != model.dim:
            raise ConfigError(f"proposal draws {proposal.dim}-dimensional points; the process integrates over {model.dim}.")
        self.model, self.proposal, self.space, self.fiducial = model, proposal, space, fiducial
        self.replicas = 1 if sequence == "random" else int(replicas)
        self.noise = CommonNoise(proposal.noise_dim, int(samples), sequence, self.replicas, int(seed))
        self._order = torch.tensor([space.names.index(n) for n in model.parameter_names], dtype=torch.long)
        ref = space.reference if reference is None else torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
        space.check(ref.reshape(1, -1), argument="reference")
        self.reference = ref.to(torch.float64)
        self.cache_bytes = int(cache_bytes)
        self.per_chunk = max(1, int(chunk_calls) // int(samples))
        self.coverage, self.coverage_events, self.coverage_samples = coverage, int(coverage_events), int(coverage_samples)
        self._coverage: list[CoverageCheck] = []
        self._cache: OrderedDict[bytes, tuple[Prepared, Tensor, Tensor]] = OrderedDict()
        self._cached_bytes = 0
        if check_transfer:
            y = fiducial.parton_points[::2]
            nuis = fiducial.nuisance.expand(y.shape[0], -1)
            check_normalisation(model.transfer, y, nuis, generator=torch.Generator().manual_seed(int(seed)))

    # ------------------------------------------------------------------ cache of α-independent parts
    def _entry(self, x: Tensor) -> tuple[Prepared, Tensor, Tensor]:
        key = event_keys(x, self.noise.seed).numpy().tobytes() + bytes(str(tuple(x.shape)), "ascii")
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        self.model.check_events(x)
        prep, xr = draw(self.model, self.proposal, x, self.noise)
        ref = self.reference[self._order].expand(xr.shape[0], -1)
        with torch.no_grad():
            log_ref = self._log_integral(prep, xr, ref, x)
            self._check_coverage(prep, xr, x)
        entry = (prep, xr, log_ref)
        size = sum(t.numel() * t.element_size() for t in (prep.z, prep.y, prep.log_q, prep.log_base) if t is not None)
        if size <= self.cache_bytes:
            while self._cache and self._cached_bytes + size > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(t.numel() * t.element_size() for t in (old[0].z, old[0].y, old[0].log_q, old[0].log_base))
            self._cache[key] = entry
            self._cached_bytes += size
        return entry

    def _check_coverage(self, prep: Prepared, xr: Tensor, x: Tensor) -> None:
        """Compare this batch's first events with the broad proposal, while the check's budget lasts."""
        done = sum(len(c.rows) for c in self._coverage)
        if self.coverage is None or done >= self.coverage_events:
            return
        rows = torch.arange(min(self.coverage_events - done, x.shape[0]))
        ref = self.reference[self._order].reshape(1, -1)
        log_w = self.model.log_weights(prep, xr, ref.expand(xr.shape[0], -1)).reshape(x.shape[0], self.replicas, -1)[rows]
        own = Integral(*estimate(log_w), self.noise.samples)
        broad = integrate(self.model, x[rows], ref, self.coverage, samples=self.coverage_samples, seed=self.noise.seed + 7919)
        self._coverage.append(compare_integrals(own, broad, rows + done, warn=True))

    @property
    def coverage_check(self) -> CoverageCheck | None:
        """The coverage checks run so far, merged (rows count events in the order first seen); ``None`` without ``coverage``."""
        return CoverageCheck.merge(self._coverage)

    def _log_integral(self, prep: Prepared, xr: Tensor, theta_rep: Tensor, x: Tensor) -> Tensor:
        log_w = self.model.log_weights(prep, xr, theta_rep)
        log_i, _, _ = estimate(log_w.reshape(x.shape[0], self.replicas, -1), debias=True)
        if not bool(torch.isfinite(log_i).all()):
            bad = torch.nonzero(~torch.isfinite(log_i))[:, 0]
            raise IntegrandError(
                f"the integral is zero (or not finite) for {bad.numel()} events (first: x={x[bad[0]].tolist()}): no proposal "
                "sample reached the region where the integrand is nonzero. The proposal must cover the integrand "
                "(add a channel, widen it) or use more samples."
            )
        return log_i

    def _model_theta(self, theta: Tensor, n: int) -> Tensor:
        theta = torch.as_tensor(theta)
        theta = theta.to(torch.float64).reshape(-1, self.space.dim).expand(n, -1)
        self.space.check(theta.detach(), argument="theta")
        return theta[:, self._order.to(theta.device)]

    def _chunks(self, x: Tensor):
        for s in range(0, x.shape[0], self.per_chunk):
            yield s, x[s:s + self.per_chunk]

    # ------------------------------------------------------------------ public
    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log p(x|\theta)`, ``(N,)`` float64, for ``x (N, D)`` and ``theta (N, P)`` or ``(P,)`` (space order).

        Differentiable in ``theta``.

        Raises:
            OutOfSupportError: events outside the transfer function's support or the cuts.
            IntegrandError: zero integral for an event, zero acceptance at θ, a bad cross section.
        """
        return self._evaluate(x, theta, ratio=False)

    def log_ratio(self, x: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log p(x|\theta) - \log p(x|\theta_\mathrm{ref})`, ``(N,)`` float64; differentiable in ``theta``."""
        return self._evaluate(x, theta, ratio=True)

    __call__ = log_ratio

    def _evaluate(self, x: Tensor, theta: Tensor, *, ratio: bool) -> Tensor:
        x = torch.as_tensor(x).to(torch.float64)
        th = self._model_theta(theta, x.shape[0])
        out = []
        for s, xs in self._chunks(x):
            prep, xr, log_ref = self._entry(xs)
            log_i = self._log_integral(prep, xr, th[s:s + xs.shape[0]].repeat_interleave(self.replicas, 0), xs)
            out.append(log_i - log_ref if ratio else log_i)
        value = torch.cat(out) - self.fiducial(th)
        if ratio:
            value = value + self.fiducial(self.reference[self._order].reshape(1, -1)).squeeze(0)
        return value

    def integral(self, x: Tensor, theta: Tensor) -> Integral:
        r"""The per-event integrals :math:`\hat I(x;\theta)` with their Monte Carlo errors and ESS (no graph)."""
        x = torch.as_tensor(x).to(torch.float64)
        th = self._model_theta(theta, x.shape[0])
        parts = []
        with torch.no_grad():
            for s, xs in self._chunks(x):
                prep, xr, _ = self._entry(xs)
                log_w = self.model.log_weights(prep, xr, th[s:s + xs.shape[0]].repeat_interleave(self.replicas, 0))
                parts.append(estimate(log_w.reshape(xs.shape[0], self.replicas, -1)))
        log_value, rel, ess = (torch.cat(p) for p in zip(*parts))
        return Integral(log_value, rel, ess, self.noise.samples)

    def relative_error(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Monte Carlo error of :math:`p(x|\theta)` per event, relative, ``(N,)``: integral and σ_fid in quadrature."""
        x = torch.as_tensor(x).to(torch.float64)
        th = self._model_theta(theta, x.shape[0]).detach()
        unique, inverse = torch.unique(th, dim=0, return_inverse=True)
        fid = self.fiducial.error(unique)[inverse]
        return torch.sqrt(self.integral(x, theta).rel_error ** 2 + fid**2)

    def fiducial_covariance(self, theta: Tensor) -> Tensor:
        r"""Monte Carlo covariance ``(P, P)`` (space order) of :math:`\nabla_\theta\log\hat\sigma_\mathrm{fid}` at ``theta (P,)`` (space order).

        See :meth:`~sbilab.mem.fiducial.FiducialCrossSection.gradient_covariance`; what it does to a
        fit is :func:`~sbilab.mem.fitting.fiducial_spread`.
        """
        theta = torch.as_tensor(theta, dtype=torch.float64).detach().reshape(1, self.space.dim)
        self.space.check(theta, argument="theta")
        cov = self.fiducial.gradient_covariance(theta[0, self._order])
        back = torch.argsort(self._order)  # model index of each space parameter
        return cov[back][:, back]

    def nll_error(self, x: Tensor, theta: Tensor) -> float:
        r"""Monte Carlo standard error of :math:`-2\log L(\theta) = -2\sum_i\log p(x_i|\theta)`.

        The integrals of different events are independent estimates:
        :math:`2\sqrt{\sum_i \delta_i^2}` with :math:`\delta_i` the relative error of
        :math:`\hat I(x_i)`; σ_fid is shared by all events and enters as :math:`2N\delta_\mathrm{fid}`.
        """
        x = torch.as_tensor(x).to(torch.float64)
        th = self._model_theta(theta, x.shape[0]).detach()
        unique, inverse = torch.unique(th, dim=0, return_inverse=True)
        fid = float((self.fiducial.error(unique)[inverse]).sum())
        integral = float((self.integral(x, theta).rel_error ** 2).sum())
        return 2.0 * (integral + fid**2) ** 0.5
