r"""The physics-like case: W → ℓν with an invisible neutrino (six integration dimensions).

Generator (the parton level an event generator would produce, normalised to one):

.. math::
    s = m^2_{\ell\nu} \sim \frac{M\Gamma/\pi}{(s - M^2)^2 + M^2\Gamma^2}\Big|_{[s_\mathrm{lo}, s_\mathrm{hi}]},\quad
    y_W \sim \mathcal N(0, \sigma_y),\quad \vec k_T \sim \mathcal N_2(0, \sigma_k),\quad
    \Omega^* \text{ isotropic in the W rest frame.}

Integration variables ``z = (pT_ℓ, η_ℓ, φ_ℓ, p_x^ν, p_y^ν, p_z^ν)`` (lab frame). With
:math:`d^3p_\ell\, d^3p_\nu = \tfrac{E_\ell E_\nu}{4}\, ds\, dy\, d^2k_T\, d\Omega^*` (massless
two-body phase space, :math:`d^4P = \tfrac12 ds\,dy\,d^2k_T`) and
:math:`d^3p_\ell = p_T^2\cosh\eta\; dp_T\, d\eta\, d\phi`,

.. math::
    \frac{d\sigma}{dz} = \mathrm{BW}(s)\,\mathcal N(y_W)\,\mathcal N_2(\vec k_T)\,\frac{1}{4\pi}\,
        \frac{4\,p_{T,\ell}^2\cosh\eta_\ell}{E_\ell E_\nu}.

Reconstruction: lepton pT smeared by 5 %, η and φ by 0.05, missing transverse momentum
``(MET_x, MET_y)`` = neutrino pT smeared by 10 GeV per component; cuts pT > 25, |η| < 2.5,
MET > 25. ``x = (pT, η, φ, MET_x, MET_y)``; the neutrino's p_z is not measured at all.

The physics-based proposal (MadWeight's block for a leptonic W, arXiv:1010.2263): lepton from
the inverted transfer function, neutrino pT from the missing momentum combined with the recoil
prior (a product of Gaussians), then ``s`` from the Breit–Wigner at the reference and the
neutrino p_z from the W mass constraint — a quadratic with two solutions, each taken half the
time, Jacobian :math:`|ds/dp_z| = 2|E_\ell p_z/E_\nu - p_{z,\ell}|`. A second channel draws p_z
from a Cauchy around the turning point, where that Jacobian vanishes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ConfigError, SamplingError
from ...simulators.base import Simulator
from ...simulators.space import ParameterSpace
from ..mappings import cauchy_log_prob, cauchy_map, normal_log_prob, normal_map, truncated_normal_log_prob, truncated_normal_map
from ..model import HardProcess, MatrixElement
from ..proposals import MultiChannel, Proposal
from ..transfer import GaussianTransfer

__all__ = ["WDecay", "WToLeptonNeutrino", "WGenerator", "WAnchor", "w_model", "w_proposal"]

_LOG_4PI = math.log(4 * math.pi)


class WDecay(HardProcess):
    r""":math:`d\sigma/dz` of the W → ℓν generator in lab variables (see the module).

    Args:
        s_range: :math:`[s_\mathrm{lo}, s_\mathrm{hi}]` of the Breit–Wigner, GeV².
        sigma_y: Width of the W rapidity.
        sigma_k: Width of each component of the W transverse momentum, GeV.
    """

    parameter_names = ("M", "Gamma")
    slot_sizes = (3, 2)

    def __init__(self, *, s_range: tuple[float, float] = (50.0**2, 110.0**2), sigma_y: float = 1.0, sigma_k: float = 5.0) -> None:
        self.s_range = (float(s_range[0]), float(s_range[1]))
        self.sigma_y, self.sigma_k = float(sigma_y), float(sigma_k)
        self.bounds = torch.tensor([[10.0, 100.0], [-3.0, 3.0], [-math.pi, math.pi], [-100.0, 100.0], [-100.0, 100.0], [-600.0, 600.0]],
                                   dtype=torch.float64)

    @staticmethod
    def momenta(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Lepton ``(E, px, py, pz)`` and neutrino ``(E, px, py, pz)`` components from ``z``."""
        pt, eta, phi = z[..., 0], z[..., 1], z[..., 2]
        lx, ly, lz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
        le = pt * torch.cosh(eta)
        nx, ny, nz = z[..., 3], z[..., 4], z[..., 5]
        ne = torch.sqrt(nx**2 + ny**2 + nz**2)
        return le, lx, ly, lz, ne, nx, ny, nz

    def log_bw(self, s: Tensor, alpha: Tensor) -> Tensor:
        """log of the truncated relativistic Breit–Wigner density in s."""
        mass, width = alpha[..., 0], alpha[..., 1]
        scale = mass * width
        lo, hi = self.s_range
        norm = torch.atan((hi - mass**2) / scale) - torch.atan((lo - mass**2) / scale)
        return torch.log(scale) - torch.log(norm) - torch.log((s - mass**2) ** 2 + scale**2)

    def dsigma(self, z: Tensor, alpha: Tensor) -> Tensor:
        le, lx, ly, lz, ne, nx, ny, nz = self.momenta(z)
        e, px, py, pz = le + ne, lx + nx, ly + ny, lz + nz
        s = e**2 - px**2 - py**2 - pz**2
        lo, hi = self.s_range
        ok = (s > lo) & (s < hi) & (ne > 0)
        s_safe = torch.where(ok, s, torch.full_like(s, 0.5 * (lo + hi)))
        y = 0.5 * torch.log((e + pz) / (e - pz).clamp(min=1e-300))
        log_f = (self.log_bw(s_safe, alpha) - 0.5 * (y / self.sigma_y) ** 2 - math.log(self.sigma_y * math.sqrt(2 * math.pi))
                 - 0.5 * (px**2 + py**2) / self.sigma_k**2 - math.log(2 * math.pi * self.sigma_k**2)
                 - _LOG_4PI + math.log(4.0) + 2 * torch.log(z[..., 0]) + torch.log(torch.cosh(z[..., 1]))
                 - torch.log(le) - torch.log(ne.clamp(min=1e-300)))
        return torch.where(ok, torch.exp(log_f), torch.zeros_like(log_f))

    def partons(self, z: Tensor) -> Tensor:
        return z[..., :5]


class WGenerator(Proposal):
    r"""The generator as a map from noise: ``z`` from (s, y, k_T, Ω*), density ``dsigma(z; α)``.

    Independent of x (the fiducial sampler); :meth:`generate` also drives the simulator.
    Points outside the box (rare) are returned as they are and get weight zero.
    """

    def __init__(self, process: WDecay, mass: float, width: float) -> None:
        self.process, self.alpha = process, torch.tensor([float(mass), float(width)], dtype=torch.float64)
        self.dim, self.noise_dim = 6, 6

    def generate(self, u: Tensor, alpha: Tensor) -> Tensor:
        """``z (..., 6)`` from noise ``u (..., 6)`` at ``alpha (..., 2)``."""
        p = self.process
        lo, hi = p.s_range
        s, _ = cauchy_map(u[..., 0], alpha[..., 0] ** 2, alpha[..., 0] * alpha[..., 1], lo, hi)
        y = p.sigma_y * torch.special.ndtri(u[..., 1])
        kx, ky = p.sigma_k * torch.special.ndtri(u[..., 2]), p.sigma_k * torch.special.ndtri(u[..., 3])
        cos_t, phi_r = 2 * u[..., 4] - 1, 2 * math.pi * u[..., 5]
        sin_t = torch.sqrt((1 - cos_t**2).clamp(min=0))
        half = torch.sqrt(s) / 2
        rest = torch.stack([half * sin_t * torch.cos(phi_r), half * sin_t * torch.sin(phi_r), half * cos_t], dim=-1)
        mt = torch.sqrt(s + kx**2 + ky**2)
        energy = mt * torch.cosh(y)
        beta = torch.stack([kx, ky, mt * torch.sinh(y)], dim=-1) / energy.unsqueeze(-1)
        gamma = energy / torch.sqrt(s)
        b2 = (beta**2).sum(-1)

        def boost(p3: Tensor) -> Tensor:
            bp = (beta * p3).sum(-1)
            coef = torch.where(b2 > 1e-30, (gamma - 1) * bp / b2.clamp(min=1e-30), torch.zeros_like(bp)) + gamma * half
            return p3 + coef.unsqueeze(-1) * beta

        lep, nu = boost(rest), boost(-rest)
        pt = torch.sqrt(lep[..., 0] ** 2 + lep[..., 1] ** 2)
        eta = torch.asinh(lep[..., 2] / pt)
        phi = torch.atan2(lep[..., 1], lep[..., 0])
        return torch.stack([pt, eta, phi, nu[..., 0], nu[..., 1], nu[..., 2]], dim=-1)

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        z = self.generate(u, self.alpha.to(u.dtype).expand(*u.shape[:-1], 2))
        return z, self.log_prob(z, x)

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        lo, hi = self.process.bounds.to(z.dtype).unbind(-1)
        zc = torch.minimum(torch.maximum(z, lo), hi)
        f = self.process.dsigma(zc, self.alpha.to(z.dtype))
        inside = ((z >= lo) & (z <= hi)).all(-1)
        return torch.where(inside & (f > 0), torch.log(f.clamp(min=1e-300)), torch.full_like(f, -math.inf))


class _Inverted(Proposal):
    """Lepton and neutrino pT from the observation; p_z from the W mass (two roots) or from a Cauchy at the turning point."""

    def __init__(self, process: WDecay, transfer: GaussianTransfer, mass: float, width: float, *, widen: float, mode: str) -> None:
        self.process, self.mode, self.widen = process, mode, float(widen)
        self.mass, self.width = float(mass), float(width)
        self.rel_pt = float(transfer.relative[0])
        self.abs_angle = (float(transfer.absolute[1]), float(transfer.absolute[2]))
        self.sigma_met = float(transfer.absolute[3])
        self.dim, self.noise_dim = 6, 7
        self.pz_scale = 40.0

    def _neutrino_t(self, lx: Tensor, ly: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean (x, y) and width of the Gaussian for the neutrino pT given the lepton: MET ⊗ recoil prior."""
        wm, wk = 1 / (self.widen * self.sigma_met) ** 2, 1 / self.process.sigma_k**2
        mx = (x[:, 3:4] * wm - lx * wk) / (wm + wk)
        my = (x[:, 4:5] * wm - ly * wk) / (wm + wk)
        return mx, my, torch.full_like(mx, 1 / math.sqrt(wm + wk))

    def _lepton_q(self, x: Tensor) -> tuple[Tensor, ...]:
        pt = x[:, 0:1]
        return pt, self.widen * self.rel_pt * pt, x[:, 1:2], x[:, 2:3]

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        x = x.to(u.dtype)
        b = self.process.bounds.to(u.dtype)
        mu_pt, sd_pt, mu_eta, mu_phi = self._lepton_q(x)
        pt, _ = truncated_normal_map(u[..., 0], mu_pt, sd_pt, b[0, 0], b[0, 1])
        eta, _ = normal_map(u[..., 1], mu_eta, torch.tensor(self.widen * self.abs_angle[0], dtype=u.dtype))
        phi, _ = normal_map(u[..., 2], mu_phi, torch.tensor(self.widen * self.abs_angle[1], dtype=u.dtype))
        lx, ly = pt * torch.cos(phi), pt * torch.sin(phi)
        mx, my, sd = self._neutrino_t(lx, ly, x)
        nx, _ = normal_map(u[..., 3], mx, sd)
        ny, _ = normal_map(u[..., 4], my, sd)
        if self.mode == "turning":
            pz, _ = cauchy_map(u[..., 5], torch.sqrt(nx**2 + ny**2) * torch.sinh(eta), torch.tensor(self.pz_scale, dtype=u.dtype))
        else:
            pz = self._pz_from_mass(u[..., 5], u[..., 6], pt, eta, lx, ly, nx, ny)
        z = torch.stack([pt, eta, phi, nx, ny, pz], dim=-1)
        return z, self.log_prob(z, x)

    def _s_limits(self, pt: Tensor, lx: Tensor, ly: Tensor, nx: Tensor, ny: Tensor) -> tuple[Tensor, Tensor]:
        mt2 = 2 * (pt * torch.sqrt(nx**2 + ny**2) - lx * nx - ly * ny)
        lo, hi = self.process.s_range
        return torch.clamp(mt2, min=lo), torch.full_like(mt2, hi)

    def _pz_from_mass(self, u_s: Tensor, u_branch: Tensor, pt: Tensor, eta: Tensor, lx: Tensor, ly: Tensor, nx: Tensor, ny: Tensor) -> Tensor:
        s_lo, s_hi = self._s_limits(pt, lx, ly, nx, ny)
        feasible = s_lo < s_hi
        s, _ = cauchy_map(u_s, torch.tensor(self.mass**2, dtype=u_s.dtype), torch.tensor(self.mass * self.width, dtype=u_s.dtype),
                          torch.where(feasible, s_lo, s_hi - 1), s_hi)
        lz, le = pt * torch.sinh(eta), pt * torch.cosh(eta)
        a = s / 2 + lx * nx + ly * ny
        disc = torch.sqrt((a**2 - pt**2 * (nx**2 + ny**2)).clamp(min=0))
        sign = torch.where(u_branch < 0.5, 1.0, -1.0).to(u_s.dtype)
        pz = (a * lz + sign * le * disc) / pt**2
        return torch.where(feasible, pz, torch.full_like(pz, 1e6))  # no solution: a point outside the box (weight zero)

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        x = x.to(z.dtype)
        b = self.process.bounds.to(z.dtype)
        pt, eta, phi, nx, ny, pz = z.unbind(-1)
        mu_pt, sd_pt, mu_eta, mu_phi = self._lepton_q(x)
        lx, ly = pt * torch.cos(phi), pt * torch.sin(phi)
        mx, my, sd = self._neutrino_t(lx, ly, x)
        log_q = (truncated_normal_log_prob(pt, mu_pt, sd_pt, b[0, 0], b[0, 1])
                 + normal_log_prob(eta, mu_eta, torch.tensor(self.widen * self.abs_angle[0], dtype=z.dtype))
                 + normal_log_prob(phi, mu_phi, torch.tensor(self.widen * self.abs_angle[1], dtype=z.dtype))
                 + normal_log_prob(nx, mx, sd) + normal_log_prob(ny, my, sd))
        if self.mode == "turning":
            return log_q + cauchy_log_prob(pz, torch.sqrt(nx**2 + ny**2) * torch.sinh(eta), torch.tensor(self.pz_scale, dtype=z.dtype))
        le, lz = pt * torch.cosh(eta), pt * torch.sinh(eta)
        ne = torch.sqrt(nx**2 + ny**2 + pz**2)
        s = 2 * (le * ne - lx * nx - ly * ny - lz * pz)
        s_lo, s_hi = self._s_limits(pt, lx, ly, nx, ny)
        log_s = cauchy_log_prob(s, torch.tensor(self.mass**2, dtype=z.dtype), torch.tensor(self.mass * self.width, dtype=z.dtype), s_lo, s_hi)
        jac = 2 * (le * pz / ne - lz).abs()
        out = log_q + log_s + torch.log(jac) - math.log(2.0)
        return torch.where((s_lo < s_hi) & torch.isfinite(out), out, torch.full_like(out, -math.inf))


def w_model(process: WDecay | None = None, *, pt_resolution: float = 0.05, angle_resolution: float = 0.05, met_resolution: float = 10.0,
            pt_cut: float = 25.0, eta_cut: float = 2.5, met_cut: float = 25.0) -> MatrixElement:
    """The W → ℓν model: Gaussian lepton and missing-momentum response, the cuts of the module."""
    transfer = GaussianTransfer(absolute=(0.0, angle_resolution, angle_resolution, met_resolution, met_resolution),
                                relative=(pt_resolution, 0.0, 0.0, 0.0, 0.0), positive=(True, False, False, False, False))

    def selection(x: Tensor) -> Tensor:
        return (x[..., 0] > pt_cut) & (x[..., 1].abs() < eta_cut) & (torch.sqrt(x[..., 3] ** 2 + x[..., 4] ** 2) > met_cut)

    return MatrixElement(process or WDecay(), transfer, selection=selection)


def w_proposal(model: MatrixElement, *, mass: float = 80.4, width: float = 2.1, widen: float = 1.2, turning_weight: float = 0.2) -> MultiChannel:
    """The W-mass channel (both p_z roots) and the turning-point channel, ``1 - turning_weight`` : ``turning_weight``."""
    process, transfer = model.process, model.transfer
    assert isinstance(process, WDecay) and isinstance(transfer, GaussianTransfer)
    return MultiChannel([_Inverted(process, transfer, mass, width, widen=widen, mode="mass"),
                         _Inverted(process, transfer, mass, width, widen=widen, mode="turning")], [1 - turning_weight, turning_weight])


class WAnchor:
    r"""The frame of a learned W → ℓν proposal (:data:`sbilab.mem.flows.Anchor`): the measurement and the W-mass solutions.

    Shift and scale per integration variable: the lepton at its measured (pT, η, φ) with the
    transfer function's widths, the neutrino pT at the missing momentum with its resolution, and
    :math:`p_z^
u` at the midpoint of the two W-mass solutions
    :math:`p_z = (a\,p_{z,\ell} \pm E_\ell\sqrt{a^2 - p_{T,\ell}^2 E_{T,
u}^2})/p_{T,\ell}^2`,
    :math:`a = M^2/2 + ec p_{T,\ell}\cdotec p_{T,
u}`, scaled by their half distance (at
    least ``pz_floor``; the real part when there is no real solution), so the flow learns
    residuals of order one with two modes near ±1.

    Args:
        model: The W model (its transfer function gives the widths).
        mass: W mass of the solutions.
        pz_floor: Smallest p_z scale, GeV.
    """

    def __init__(self, model: MatrixElement, *, mass: float = 80.4, pz_floor: float = 20.0) -> None:
        transfer = model.transfer
        if not isinstance(transfer, GaussianTransfer):
            raise ConfigError(f"WAnchor: model.transfer must be the W model's GaussianTransfer (its widths set the frame), "
                              f"got {type(transfer).__name__}; build the model with w_model().")
        self.rel_pt = float(transfer.relative[0])
        self.angles = (float(transfer.absolute[1]), float(transfer.absolute[2]))
        self.sigma_met = float(transfer.absolute[3])
        self.mass, self.pz_floor = float(mass), float(pz_floor)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(shift (N, 6), scale (N, 6))`` for events ``x (N, 5)``."""
        pt, eta, phi, mx, my = x.to(torch.float64).unbind(-1)
        lx, ly, lz, le = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta), pt * torch.cosh(eta)
        a = self.mass**2 / 2 + lx * mx + ly * my
        mid = a * lz / pt**2
        half = le * torch.sqrt((a**2 - pt**2 * (mx**2 + my**2)).clamp(min=0)) / pt**2
        shift = torch.stack([pt, eta, phi, mx, my, mid], dim=-1)
        ones = torch.ones_like(pt)
        scale = torch.stack([self.rel_pt * pt, self.angles[0] * ones, self.angles[1] * ones, self.sigma_met * ones,
                             self.sigma_met * ones, half.clamp(min=self.pz_floor)], dim=-1)
        return shift, scale


class WToLeptonNeutrino(Simulator):
    """The W → ℓν case as a simulator: ``x = (pT, η, φ, MET_x, MET_y)``, latent ``z`` (6 lab components).

    Args:
        model: The MEM model whose process, transfer function and cuts generate the events.
        low, high, reference: The parameter space of (M, Γ).
        max_rounds: Bound on redraws of events outside the box or failing the cuts.
    """

    observable_names = ("pT", "eta", "phi", "MET_x", "MET_y")

    def __init__(self, model: MatrixElement | None = None, *, low: tuple[float, float] = (79.0, 1.0), high: tuple[float, float] = (82.0, 4.0),
                 reference: tuple[float, float] = (80.4, 2.1), max_rounds: int = 200) -> None:
        self.model = model or w_model()
        self.space = ParameterSpace(("M", "Gamma"), low=low, high=high, reference=reference)
        self.max_rounds = int(max_rounds)
        self._generator = WGenerator(self.model.process, *reference)

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One event inside the box and the cuts per row of ``theta (N, 2)``.

        Raises:
            SamplingError: rows without an accepted event within ``max_rounds``.
        """
        th = torch.as_tensor(theta, dtype=torch.float64)
        n = th.shape[0]
        x, z = torch.empty(n, 5, dtype=torch.float64), torch.empty(n, 6, dtype=torch.float64)
        lo, hi = self.model.bounds.unbind(-1)
        pending = torch.arange(n)
        for _ in range(self.max_rounds):
            if pending.numel() == 0:
                break
            u = torch.rand(pending.numel(), 6, generator=generator, dtype=torch.float64).clamp(1e-15, 1 - 1e-15)
            zz = self._generator.generate(u, th[pending])
            obs = self.model.transfer.sample(self.model.process.partons(zz), torch.zeros(len(zz), 0, dtype=torch.float64), generator)
            ok = ((zz >= lo) & (zz <= hi)).all(-1) & self.model.selected(obs) & self.model.transfer.support(obs)
            x[pending[ok]], z[pending[ok]] = obs[ok], zz[ok]
            pending = pending[~ok]
        if pending.numel():
            raise SamplingError(f"WToLeptonNeutrino.sample: {pending.numel()} rows got no accepted event in {self.max_rounds} rounds.")
        dtype = torch.as_tensor(theta).dtype if torch.as_tensor(theta).is_floating_point() else torch.get_default_dtype()
        return Events(x=x.to(dtype), theta=torch.as_tensor(theta, dtype=dtype), latent=z.to(dtype))
