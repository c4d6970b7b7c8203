r"""The fiducial cross section :math:`\sigma_\mathrm{fid}(\alpha,\nu)` that normalises the MEM likelihood.

.. math::
    \sigma_\mathrm{fid}(\alpha,\nu) = \int dz\,\frac{d\sigma}{dz}(z;\alpha)\,\epsilon(z)
        \int_\mathrm{cuts} dx\, W(x|y(z);\nu).

It is estimated once, on one fixed sample :math:`z_j \sim q(z)`, :math:`x_j \sim W(\cdot|y(z_j);\nu_0)`,
and reweighted to every point (common random numbers, so it is smooth and differentiable in
α and ν):

.. math::
    \hat\sigma_\mathrm{fid}(\alpha,\nu) = \frac1n\sum_j \frac{d\sigma(z_j;\alpha)\,\epsilon(z_j)}{q(z_j)}\,
        \mathbb 1[x_j \in \mathrm{cuts}]\,\frac{W(x_j|y_j;\nu)}{W(x_j|y_j;\nu_0)}.

When the process knows its total cross section on the box in closed form
(``process.total(alpha)``, e.g. a normalised line shape), the estimator uses it as a control
variate and samples only what the cuts remove:
:math:`\hat\sigma_\mathrm{fid} = \sigma_\mathrm{tot}(\alpha) - \frac1n\sum_j \frac{d\sigma\,\epsilon}{q}\,\mathbb 1[x_j \notin \mathrm{cuts}]\,\frac{W_\nu}{W_{\nu_0}}`,
whose error scales with the rejected fraction instead of the whole.

Values are cached per point. When :math:`d\sigma` is a polynomial in α (EFT couplings), a
:class:`~sbilab.simulators.MorphingBasis` gives :math:`\hat\sigma(\alpha) = \sum_b c_b(\alpha)\,\hat\sigma(\alpha_b)`
from the benchmark points alone (exact on the same sample).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..exceptions import ConfigError, ExtrapolationWarning, IntegrandError
from ..simulators.weighted import MorphingBasis
from .model import MatrixElement
from .noise import CommonNoise, Sequence
from .proposals import Proposal

__all__ = ["FiducialCrossSection"]


class FiducialCrossSection:
    r"""Monte Carlo estimate of :math:`\sigma_\mathrm{fid}(\alpha,\nu)` on a fixed sample.

    Args:
        model: The matrix-element model (its selection defines the cuts).
        sampler: An unconditional proposal for ``z`` (``transform(u, None)``), ideally close
            to :math:`d\sigma\,\epsilon` near the parameters of interest (e.g. Breit–Wigner
            mapped at the reference); :class:`~sbilab.mem.proposals.BoxProposal` works too.
        samples: Size ``n`` of the sample.
        nuisance: Nuisance point :math:`\nu_0` the x are drawn at (default: ones, the nominal
            scale), ``(K,)``.
        morphing: A :class:`~sbilab.simulators.MorphingBasis` in the process parameters α with
            benchmarks set, when :math:`d\sigma` is a polynomial in α of its degree.
        sequence, seed: Noise of the sample (``"sobol"``: randomised QMC in z, eight shifted
            replicas whose spread gives the error; ``samples`` must be a multiple of 8).
        draws: Observations drawn per point; their pass fraction replaces the 0/1 of one draw
            (less noise from the cuts at no cost per evaluation when W has no nuisance).
        chunk: Samples per evaluation batch (bounds memory).
        support_tolerance: Largest neglected fraction (:meth:`neglected`) accepted in silence.

    A learned transfer function (:class:`~sbilab.mem.learned.LearnedTransfer`) is not drawn
    from at parton points outside the range it was trained on (its ``covers``): it would
    extrapolate there. Those points count as failing the cuts; what they could have added,
    :math:`\frac1n\sum_{j\,\mathrm{untrained}} d\sigma\,\epsilon/q` (an upper bound, the pass
    probability being at most one), is :meth:`neglected`. With a learned acceptance it is
    about zero (no accepted training pair came from there) and nothing is said; a point where it
    exceeds ``support_tolerance`` of :math:`\sigma_\mathrm{fid}` gets one
    :class:`~sbilab.exceptions.ExtrapolationWarning` per instance (train the transfer function
    on partons covering the sampler's range, or narrow the sampler).

    Raises:
        ConfigError: the selection is not invariant under the model's permutations, or the
            morphing basis does not reproduce :math:`d\sigma` (not polynomial of that degree).
    """

    def __init__(
        self,
        model: MatrixElement,
        sampler: Proposal,
        *,
        samples: int = 200_000,
        nuisance: Tensor | None = None,
        morphing: MorphingBasis | None = None,
        sequence: Sequence = "random",
        seed: int = 0,
        draws: int = 1,
        chunk: int = 2**18,
        support_tolerance: float = 1e-3,
    ) -> None:
        self.model = model
        self.samples = int(samples)
        self.draws = int(draws)
        self.chunk = int(chunk)
        if self.draws < 1:
            raise ConfigError(f"FiducialCrossSection: draws must be >= 1, got {draws}.")
        k = len(model.transfer.nuisance_names)
        self.nuisance = torch.ones(k, dtype=torch.float64) if nuisance is None else torch.as_tensor(nuisance, dtype=torch.float64).reshape(k)
        self.replicas = 1 if sequence == "random" else 8
        noise = CommonNoise(sampler.noise_dim, self.samples, sequence, self.replicas, seed)
        u = noise(torch.zeros(1, 1, dtype=torch.float64)).reshape(1, self.samples, -1)
        z, log_q = sampler.transform(u, None)
        prep = model.prepare(z.to(torch.float64), log_q.to(torch.float64), torch.zeros(1, model.width, dtype=torch.float64))
        z, y = prep.z[0], prep.y[0]
        inside = torch.isfinite(prep.log_base[0])  # rejected draws (outside the box) have log_base = -inf
        log_static = prep.log_base[0] - log_q[0].to(torch.float64)
        if not bool(torch.isfinite(log_static[inside]).all()):
            raise IntegrandError(f"{type(sampler).__name__} returned a non-finite log q at some of its own samples inside the box.")
        # a learned transfer function is only drawn from where it was trained; the rest counts as failing the cuts
        covers = getattr(model.transfer, "covers", None)
        trained = torch.ones_like(inside) if covers is None else torch.as_tensor(covers(y), dtype=torch.bool)
        untrained = inside & ~trained
        self.support_tolerance = float(support_tolerance)
        self._out_point = torch.nonzero(untrained)[:, 0]
        self._out_z, self._out_log_static = z[untrained], log_static[untrained]
        self._support_warned = False
        gen = torch.Generator().manual_seed(int(seed) + 1)
        rows = trained.repeat_interleave(self.draws, 0)
        y_rep = y.repeat_interleave(self.draws, 0)
        x = torch.full_like(y_rep, math.nan)
        if bool(rows.any()):
            x[rows] = model.transfer.sample(y_rep[rows], self.nuisance.expand(int(rows.sum()), k), gen).to(x.dtype)
        passed = model.selected(x) & rows
        for perm_x in model.permuted(x[rows]).unbind(1)[1:]:
            if not bool((model.selected(perm_x) == passed[rows]).all()):
                raise ConfigError("the selection depends on the order of objects that the permutations exchange; "
                                  "make the cuts symmetric under the permutations (e.g. cut on sorted objects).")
        passed = passed.reshape(self.samples, self.draws)
        inside = inside & trained  # the untrained points are kept apart (_out_*): see neglected()
        # with a known total, the (small) failing part is estimated and subtracted: a control variate
        self._subtract = getattr(model.process, "total", lambda alpha: None)(torch.zeros(1, model.n_alpha, dtype=torch.float64) + 1) is not None
        counted = ~passed if self._subtract else passed
        if k == 0:  # pass fraction per point: the draws only smooth the indicator
            frac = counted.to(torch.float64).mean(1)
            rows = torch.nonzero(inside & (frac > 0))[:, 0]
            self._point, self._x, self._log_w0 = rows, None, None
            self._log_static = log_static[rows] + torch.log(frac[rows])
        else:  # every counted draw kept: its transfer-function weight is reweighted in the nuisances
            pairs = torch.nonzero(inside[:, None] & counted)
            self._point = pairs[:, 0]
            self._x = x.reshape(self.samples, self.draws, -1)[pairs[:, 0], pairs[:, 1]]
            self._log_static = log_static[self._point] - math.log(self.draws)
            self._log_w0 = model.transfer.log_prob(self._x, y[self._point], self.nuisance.expand(len(self._point), k))
        self._z, self._y = z[self._point], y[self._point]
        self.parton_points = y[inside][:: max(1, int(inside.sum()) // 8)][:8]  # a few y(z) inside the box, for checks
        self._cache: dict[bytes, tuple[float, float]] = {}
        self.morphing = morphing
        self._bench_terms: Tensor | None = None
        if morphing is not None:
            self._setup_morphing(morphing)

    # ------------------------------------------------------------------ per-sample terms
    def _terms(self, alpha: Tensor, nuisance: Tensor) -> Tensor:
        """Contributions of the kept rows ``(U, rows)`` at ``alpha (U, P_α)``, ``nuisance (U, K)``."""
        out = []
        for s in range(0, len(self._point), self.chunk):
            f = self.model.dsigma(self._z[s:s + self.chunk].unsqueeze(0), alpha.unsqueeze(1))  # (U, c)
            log_t = self._log_static[s:s + self.chunk] + self._log_reweight(slice(s, s + self.chunk), nuisance)
            out.append(f * torch.exp(log_t))
        return torch.cat(out, dim=1) if out else torch.zeros(alpha.shape[0], 0, dtype=torch.float64)

    def _log_reweight(self, rows: slice, nuisance: Tensor) -> Tensor:
        if self._log_w0 is None:
            return torch.zeros(1, 1, dtype=torch.float64)
        x, y = self._x[rows], self._y[rows]
        log_w = self.model.transfer.log_prob(x.unsqueeze(0), y.unsqueeze(0), nuisance[:, None, :].expand(nuisance.shape[0], x.shape[0], -1))
        return log_w - self._log_w0[rows]

    def _setup_morphing(self, basis: MorphingBasis) -> None:
        if basis.benchmarks is None or basis.n_parameters != self.model.n_alpha:
            raise ConfigError(f"morphing: need a MorphingBasis in the {self.model.n_alpha} process parameters with benchmarks set.")
        bench = basis.benchmarks.to(torch.float64)
        nuis = self.nuisance.expand(bench.shape[0], -1)
        with torch.no_grad():
            self._bench_terms = self._terms(bench, nuis)  # (B, n_kept)
            probe = (bench.mean(0) + 0.37 * (bench.max(0).values - bench.min(0).values)).reshape(1, -1)
            direct = self._terms(probe, self.nuisance.reshape(1, -1)).sum(1)
            morphed = (basis.coefficients(probe) @ self._bench_terms).sum(1)
        if not bool(torch.allclose(direct, morphed, rtol=1e-6, atol=1e-300)):
            raise ConfigError(
                f"morphing: the basis does not reproduce dsigma at alpha={probe[0].tolist()} (direct {float(direct[0]):.6g}, "
                f"morphed {float(morphed[0]):.6g}); dsigma is not a polynomial of degree {basis.max_total_power} in alpha."
            )

    def _kept_terms(self, alpha: Tensor, nuisance: Tensor) -> Tensor:
        """:meth:`_terms`, through the morphing basis when there is one."""
        if self._bench_terms is None:
            return self._terms(alpha, nuisance)
        coeff = self.morphing.coefficients(alpha)  # type: ignore[union-attr]
        if nuisance.shape[1]:
            return torch.stack([coeff[i] @ (self._bench_terms * torch.exp(self._log_reweight(slice(None), nuisance[i:i + 1])))
                                for i in range(alpha.shape[0])])
        return coeff @ self._bench_terms

    def _out_terms(self, alpha: Tensor) -> Tensor:
        """Contributions ``(U, n_out)`` the untrained points would make if all of them passed the cuts."""
        if not len(self._out_z):
            return torch.zeros(alpha.shape[0], 0, dtype=torch.float64)
        return self.model.dsigma(self._out_z.unsqueeze(0), alpha.unsqueeze(1)) * torch.exp(self._out_log_static)

    def neglected(self, theta: Tensor) -> Tensor:
        r"""Upper bound on what the points outside the transfer function's training range add, relative to
        :math:`\hat\sigma_\mathrm{fid}`, at ``theta (U, P)``: ``(U,)`` (zeros for a transfer function without a range)."""
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(self.model.parameter_names))
        with torch.no_grad():
            value, _ = self.evaluate(theta)
            return self._out_terms(self.model.split(theta)[0]).sum(1) / self.samples / value

    def _check_support(self, theta: Tensor, out: Tensor, value: Tensor) -> None:
        if self._support_warned or not len(self._out_z):
            return
        frac = out / value.clamp(min=1e-300)
        if bool((frac > self.support_tolerance).any()):
            i = int(frac.argmax())
            self._support_warned = True
            warnings.warn(
                f"FiducialCrossSection: {len(self._out_z)} of {self.samples} sampled parton points lie outside the range the "
                f"transfer function was trained on; they are counted as failing the cuts, which may leave out up to "
                f"{float(frac[i]):.3g} of sigma_fid at theta={theta[i].tolist()} (tolerance {self.support_tolerance:g}). Train the "
                "transfer function on partons covering the sampler's range (or narrow the sampler).",
                ExtrapolationWarning, stacklevel=4)

    # ------------------------------------------------------------------ values
    def evaluate(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\hat\sigma_\mathrm{fid}` and its Monte Carlo error at ``theta (U, P)`` (model order).

        Returns ``(value (U,), error (U,))``; ``value`` is differentiable in ``theta``.

        Raises:
            IntegrandError: zero estimated acceptance at some point.
        """
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(self.model.parameter_names))
        alpha, nuisance = self.model.split(theta)
        terms = self._kept_terms(alpha, nuisance)
        counted = terms.sum(1) / self.samples
        out_terms = self._out_terms(alpha)
        if self._subtract:  # the untrained points fail the cuts: subtracted from the total with the rest
            counted = counted + out_terms.sum(1) / self.samples
        value = self.model.process.total(alpha).to(torch.float64) - counted if self._subtract else counted  # type: ignore[attr-defined]
        with torch.no_grad():
            per_point = torch.zeros(terms.shape[0], self.samples, dtype=torch.float64).index_add_(1, self._point, terms.detach())
            if self._subtract:
                per_point.index_add_(1, self._out_point, out_terms.detach())
            self._check_support(theta, out_terms.detach().sum(1) / self.samples, value.detach())
            if self.replicas == 1:
                var = (per_point**2).mean(1) - counted.detach() ** 2
                error = torch.sqrt(var.clamp(min=0) / self.samples)
            else:  # randomised QMC: spread of the independently shifted replicas
                error = per_point.reshape(terms.shape[0], self.replicas, -1).mean(2).std(1) / self.replicas**0.5
        if bool((value.detach() <= 0).any()):
            i = int(torch.nonzero(value.detach() <= 0)[0, 0])
            raise IntegrandError(
                f"zero fiducial acceptance at theta={theta[i].tolist()} ({self.model.parameter_names}): none of the "
                f"{self.samples} sampled events passes the cuts with nonzero weight, so p(x|theta) is undefined there. "
                "Restrict the fit to parameters with acceptance (limits=...), or sample z where the process lives."
            )
        return value, error

    def __call__(self, theta: Tensor) -> Tensor:
        r""":math:`\log\hat\sigma_\mathrm{fid}` per row of ``theta (N, P)``, ``(N,)``; unique rows computed once.

        Values are cached per point when no gradient is needed. With a gradient, each distinct
        point :math:`c` is evaluated once with its gradient :math:`g` and Hessian :math:`H`, and
        every row gets :math:`F(c) + g\cdot(\theta - c) + \tfrac12(\theta - c)^T H(\theta - c)`
        with :math:`c` detached: the value is exact (:math:`\theta = c`) and so are the first and
        second derivatives *of each row*, even when rows of different toys share a point."""
        theta = torch.as_tensor(theta, dtype=torch.float64)
        unique, inverse = torch.unique(theta.detach(), dim=0, return_inverse=True)
        if not torch.is_grad_enabled() or not theta.requires_grad:
            keys = [row.numpy().tobytes() for row in unique.cpu()]
            missing = [i for i, key in enumerate(keys) if key not in self._cache]
            if missing:
                with torch.no_grad():
                    v, e = self.evaluate(unique[missing])
                for i, vi, ei in zip(missing, v.tolist(), e.tolist()):
                    self._cache[keys[i]] = (vi, ei)
            values = torch.tensor([self._cache[key][0] for key in keys], dtype=torch.float64, device=theta.device)
            return torch.log(values)[inverse]
        centre = unique.clone().requires_grad_(True)
        log_v = torch.log(self.evaluate(centre)[0])
        (grad,) = torch.autograd.grad(log_v.sum(), centre, create_graph=True)
        rows = []
        for k in range(theta.shape[1]):
            h = torch.autograd.grad(grad[:, k].sum(), centre, retain_graph=True, allow_unused=True)[0] if grad.requires_grad else None
            rows.append(torch.zeros_like(centre) if h is None else h.detach())
        hess = torch.stack(rows, dim=1)
        d = theta - unique[inverse]
        return (log_v.detach()[inverse] + (grad.detach()[inverse] * d).sum(1)
                + 0.5 * torch.einsum("np,npq,nq->n", d, hess[inverse], d))

    def error(self, theta: Tensor) -> Tensor:
        """Relative Monte Carlo error of :math:`\\hat\\sigma_\\mathrm{fid}` at ``theta (U, P)``, ``(U,)``."""
        with torch.no_grad():
            v, e = self.evaluate(theta)
        return e / v

    def gradient_covariance(self, theta: Tensor) -> Tensor:
        r"""Monte Carlo covariance of :math:`\nabla_\theta\log\hat\sigma_\mathrm{fid}` at one point ``theta (P,)`` (model order), ``(P, P)``.

        This is the part of the sample's error that moves a fit: a relative error of
        :math:`\hat\sigma_\mathrm{fid}` that is the same at every θ cancels in the normalised
        likelihood; its gradient :math:`\nabla\eta` shifts the best fit of N events by
        :math:`-N\,V\nabla\eta` (:func:`~sbilab.mem.fitting.fiducial_spread`). With
        :math:`\hat\sigma = A + s\frac1n\sum_j t_j` (:math:`A` the known total and :math:`s=-1`
        with the control variate, else :math:`A=0`, :math:`s=1`) the delta method gives per point
        :math:`u_j = s\,(\nabla t_j - t_j\nabla\log\hat\sigma)/\hat\sigma` and the covariance
        :math:`\mathrm{cov}_j(u)/n` (``"random"``) or the spread of the replicas' means of :math:`u`
        over their number (``"sobol"``: eight replicas, so the estimate itself is good to ~30 %).
        The per-point gradients :math:`\nabla t_j` come from double backward (one pass per parameter).
        """
        theta = torch.as_tensor(theta, dtype=torch.float64).detach().reshape(1, len(self.model.parameter_names)).clone().requires_grad_(True)
        p = theta.shape[1]
        with torch.enable_grad():
            alpha, nuisance = self.model.split(theta)
            point = torch.zeros(1, self.samples, dtype=torch.float64).index_add(1, self._point, self._kept_terms(alpha, nuisance))
            if self._subtract:
                point = point.index_add(1, self._out_point, self._out_terms(alpha))
            point = point[0]
            sign, base = (-1.0, self.model.process.total(alpha).to(torch.float64).sum()) if self._subtract else (1.0, None)  # type: ignore[attr-defined]
            probe = torch.zeros_like(point, requires_grad=True)
            jac = torch.zeros(p, self.samples, dtype=torch.float64)
            if point.requires_grad:
                (mixed,) = torch.autograd.grad(point, theta, probe, create_graph=True)  # sum_j probe_j grad t_j, linear in probe
                for k in range(p):
                    if mixed[0, k].requires_grad:
                        (row,) = torch.autograd.grad(mixed[0, k], probe, retain_graph=True, allow_unused=True)
                        jac[k] = 0.0 if row is None else row.detach()
            grad_base = torch.zeros(p, dtype=torch.float64)
            if base is not None and base.requires_grad:
                grad_base = torch.autograd.grad(base, theta, allow_unused=True)[0][0].detach()
        point = point.detach()
        value = (0.0 if base is None else float(base.detach())) + sign * float(point.mean())
        grad_log = (grad_base + sign * jac.mean(1)) / value
        u = sign * (jac - grad_log[:, None] * point[None, :]) / value  # (P, n)
        if self.replicas == 1:
            centred = u - u.mean(1, keepdim=True)
            return centred @ centred.T / self.samples**2
        means = u.reshape(p, self.replicas, -1).mean(2)
        centred = means - means.mean(1, keepdim=True)
        return centred @ centred.T / (self.replicas - 1) / self.replicas

    @property
    def kept_fraction(self) -> float:
        """Fraction of the points with at least one draw passing the cuts (diagnostic)."""
        return len(torch.unique(self._point)) / self.samples
