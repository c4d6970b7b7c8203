r"""The matrix-element model: hard process, transfer function, acceptance, permutations.

The matrix-element method (Kondo, J. Phys. Soc. Jpn. 57 (1988) 4126; D0, Nature 429 (2004) 638;
MadWeight arXiv:1010.2263; MoMEMta arXiv:1805.08555) writes the likelihood of a reconstructed
event :math:`x` as

.. math::
    p(x|\alpha,\nu) = \frac{1}{\sigma_\mathrm{fid}(\alpha,\nu)} \int dz\;
        \frac{d\sigma}{dz}(z;\alpha)\, \epsilon(z) \sum_{\pi} W\big(x_\pi \,\big|\, y(z); \nu\big),

with :math:`d\sigma/dz` the differential cross section in the integration variables ``z``
(matrix element, phase space and every Jacobian), :math:`\epsilon(z)` a parton-level
efficiency, :math:`y(z)` the parton-level counterparts of the reconstructed objects, and the sum
over the assignments :math:`\pi` of reconstructed objects to partons (each physically distinct
assignment once). :class:`MatrixElement` evaluates the logarithm of the integrand for many
events, samples and parameter points at once; integrators and the likelihood build on it.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError, IntegrandError, OutOfSupportError, ShapeMismatchError
from .transfer import TransferFunction

__all__ = ["HardProcess", "MatrixElement", "Prepared"]

Selection = Callable[[Tensor], Tensor]
"""``selection(x: (N, D)) -> (N,)`` bool: the reconstruction-level cuts an event passed."""


class HardProcess(abc.ABC):
    r"""The parton-level model: :math:`d\sigma/dz(z;\alpha)` on a box of integration variables.

    Subclasses set the attributes and implement :meth:`dsigma` and :meth:`partons`.

    Attributes:
        parameter_names: Names of the physics parameters α, in the order of ``alpha``'s columns.
        bounds: Integration domain, ``(dim, 2)`` float64 (low, high) per variable. Plain Monte
            Carlo and the adaptive grid sample it uniformly; every integrator integrates over it
            (the integrand is zero outside).
        slot_sizes: Number of columns of each parton slot in :meth:`partons` (and of the
            reconstructed object assigned to it), e.g. ``(1, 1)`` for two energies.
    """

    parameter_names: tuple[str, ...]
    bounds: Tensor
    slot_sizes: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Number of integration variables."""
        return int(self.bounds.shape[0])

    @abc.abstractmethod
    def dsigma(self, z: Tensor, alpha: Tensor) -> Tensor:
        r""":math:`d\sigma/dz \ge 0` for ``z (..., dim)`` and ``alpha (..., P)`` (broadcastable); ``(...)``.

        Must be differentiable in α for gradient-based fits; zero outside the physical region."""

    @abc.abstractmethod
    def partons(self, z: Tensor) -> Tensor:
        """Parton-level counterparts ``y (..., sum(slot_sizes))`` of the reconstructed objects, slot by slot."""

    def acceptance(self, z: Tensor) -> Tensor:
        r"""Parton-level efficiency :math:`\epsilon(z) \in [0, 1]`, ``(...)`` (default: one)."""
        return torch.ones(z.shape[:-1], dtype=z.dtype, device=z.device)

    def total(self, alpha: Tensor) -> Tensor | None:
        r""":math:`\int_\mathrm{box} d\sigma\,\epsilon\,dz` in closed form, ``(U,)`` for ``alpha (U, P)``, or ``None``
        (default). When given, :class:`~sbilab.mem.fiducial.FiducialCrossSection` uses it as a
        control variate; it must be differentiable in α and exact."""
        return None


@dataclass
class Prepared:
    """The α-independent part of the integrand at given samples (cached across α by the likelihood).

    Attributes:
        z: Samples clamped to the box, ``(N, S, dim)`` (points outside have ``log_base = -inf``).
        log_q: Proposal log-density, ``(N, S)``.
        y: Parton-level counterparts, ``(N, S, Dy)``.
        log_base: :math:`\\log\\epsilon(z)` (``-inf`` outside the box), ``(N, S)``.
        log_transfer: :math:`\\log\\sum_\\pi W(x_\\pi|y)` when W has no nuisance, else ``None``.
    """

    z: Tensor
    log_q: Tensor
    y: Tensor
    log_base: Tensor
    log_transfer: Tensor | None


class MatrixElement:
    r"""A hard process, a transfer function and the permutations to sum over.

    Args:
        process: The :class:`HardProcess`.
        transfer: The :class:`~sbilab.mem.transfer.TransferFunction`.
        permutations: Assignments of reconstructed objects to parton slots: ``perm[k]`` is the
            object assigned to slot ``k``. Default: the identity only.
        selection: Reconstruction-level cuts ``selection(x: (N, D)) -> (N,)`` bool (default:
            none); they must not depend on the order of the permuted objects.

    Attributes:
        parameter_names: ``process.parameter_names + transfer.nuisance_names`` — the columns of
            ``theta`` every method takes.

    Raises:
        ConfigError: permutations that are not permutations of the slots, repeat an assignment,
            or swap objects of different sizes; parameter names that clash.
    """

    def __init__(
        self,
        process: HardProcess,
        transfer: TransferFunction,
        *,
        permutations: Sequence[Sequence[int]] | None = None,
        selection: Selection | None = None,
    ) -> None:
        self.process = process
        self.transfer = transfer
        self.selection = selection
        sizes = tuple(int(s) for s in process.slot_sizes)
        n_slots = len(sizes)
        perms = [tuple(range(n_slots))] if permutations is None else [tuple(int(i) for i in p) for p in permutations]
        if not perms:
            raise ConfigError("permutations is empty; give at least one assignment of objects to parton slots (e.g. the identity).")
        for p in perms:
            if sorted(p) != list(range(n_slots)):
                raise ConfigError(
                    f"permutation {p} does not match the event's objects: the process has {n_slots} parton slots of sizes {sizes}, "
                    f"so each permutation must list every object index 0..{n_slots - 1} exactly once."
                )
            if any(sizes[p[k]] != sizes[k] for k in range(n_slots)):
                raise ConfigError(f"permutation {p} assigns an object to a parton slot of a different size (slot sizes {sizes}).")
        if len(set(perms)) != len(perms):
            raise ConfigError(f"permutations {perms} repeat an assignment; each physically distinct assignment must appear once.")
        self.permutations = tuple(perms)
        self.slot_sizes = sizes
        self.width = sum(sizes)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self._columns = torch.tensor(
            [[c for k in range(n_slots) for c in range(offsets[p[k]], offsets[p[k]] + sizes[k])] for p in perms], dtype=torch.long
        )
        names = tuple(process.parameter_names) + tuple(transfer.nuisance_names)
        if len(set(names)) != len(names):
            raise ConfigError(f"process parameters {process.parameter_names} and transfer nuisances {transfer.nuisance_names} share a name.")
        self.parameter_names = names
        self.n_alpha = len(process.parameter_names)
        self.bounds = torch.as_tensor(process.bounds, dtype=torch.float64)
        if self.bounds.dim() != 2 or self.bounds.shape[1] != 2 or not bool((self.bounds[:, 0] < self.bounds[:, 1]).all()):
            raise ConfigError(f"process.bounds must be (dim, 2) with low < high per variable, got {self.bounds.tolist()}.")

    @property
    def dim(self) -> int:
        return self.process.dim

    # ------------------------------------------------------------------ events
    def permuted(self, x: Tensor) -> Tensor:
        """The objects of ``x (N, D)`` in slot order under each permutation, ``(N, Π, D)``."""
        return x[:, self._columns.to(x.device)]

    def check_events(self, x: Tensor) -> None:
        """Refuse events of the wrong width, outside the transfer function's support or the selection.

        Raises:
            ShapeMismatchError: ``x`` is not ``(N, sum(slot_sizes))``.
            OutOfSupportError: rows the transfer function cannot produce, or that fail the cuts.
        """
        if x.dim() != 2 or x.shape[1] != self.width:
            raise ShapeMismatchError(
                f"events x have shape {tuple(x.shape)}; this process expects (N, {self.width}): objects of sizes {self.slot_sizes}."
            )
        for label, ok in (("outside the transfer function's support", self.transfer.support(x)),
                          ("failing the selection cuts", self.selected(x))):
            if not bool(ok.all()):
                bad = torch.nonzero(~ok)[:, 0]
                raise OutOfSupportError(
                    f"{bad.numel()} of {x.shape[0]} events are {label} (first: row {int(bad[0])}, x={x[bad[0]].tolist()}); "
                    "the MEM likelihood of such events is zero. Remove them (apply the same cuts and object definitions "
                    "as the model) rather than letting them drop silently."
                )

    def selected(self, x: Tensor) -> Tensor:
        """Which rows of ``x (..., D)`` pass the selection, ``(...)`` bool."""
        if self.selection is None:
            return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        return torch.as_tensor(self.selection(x), dtype=torch.bool)

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``theta (..., P)`` in :attr:`parameter_names` order → ``(alpha (..., P_α), nuisance (..., K))``."""
        if theta.shape[-1] != len(self.parameter_names):
            raise ShapeMismatchError(f"theta has {theta.shape[-1]} columns; expected {len(self.parameter_names)}: {self.parameter_names}.")
        return theta[..., : self.n_alpha], theta[..., self.n_alpha:]

    # ------------------------------------------------------------------ integrand
    def dsigma(self, z: Tensor, alpha: Tensor) -> Tensor:
        r""":math:`d\sigma/dz`, checked: ``(...)``.

        Raises:
            IntegrandError: negative, NaN or infinite values (count and first offending point).
        """
        value = self.process.dsigma(z, alpha)
        bad = ~(torch.isfinite(value) & (value >= 0))
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            zz = z.expand(*value.shape, z.shape[-1])[idx] if z.dim() > 1 else z
            aa = alpha.expand(*value.shape, alpha.shape[-1])[idx]
            raise IntegrandError(
                f"{type(self.process).__name__}.dsigma returned {int(bad.sum())} negative, NaN or infinite values "
                f"(first: {float(value[idx])!r} at z={zz.tolist()}, alpha={aa.tolist()}); a differential cross section "
                "must be finite and >= 0 everywhere in the box (return 0 outside the physical region)."
            )
        return value

    def prepare(self, z: Tensor, log_q: Tensor, x: Tensor) -> Prepared:
        """The α-independent parts of the integrand for samples ``z (N, S, dim)`` of events ``x (N, D)``."""
        lo, hi = self.bounds.to(z.device, z.dtype).unbind(-1)
        inside = ((z >= lo) & (z <= hi)).all(-1)
        z = torch.minimum(torch.maximum(z, lo), hi)  # the process is only ever called inside its box
        eps = self.process.acceptance(z)
        log_base = torch.where(inside & (eps > 0), torch.log(eps.clamp(min=1e-300)), torch.full_like(eps, -math.inf))
        y = self.process.partons(z)
        log_w = None if self.transfer.nuisance_names else self._log_transfer(x, y, torch.zeros(x.shape[0], 0, dtype=z.dtype, device=z.device))
        return Prepared(z=z, log_q=log_q, y=y, log_base=log_base, log_transfer=log_w)

    def _log_transfer(self, x: Tensor, y: Tensor, nuisance: Tensor) -> Tensor:
        xp = self.permuted(x).to(y.dtype)  # (N, Π, D)
        n, s = y.shape[0], y.shape[1]
        per = self.transfer.log_prob(xp[:, :, None, :], y[:, None, :, :], nuisance[:, None, None, :].expand(n, 1, 1, nuisance.shape[-1]))
        return torch.logsumexp(per, dim=1) if per.shape[1] > 1 else per[:, 0]

    def log_weights(self, prepared: Prepared, x: Tensor, theta: Tensor) -> Tensor:
        r"""Importance weights :math:`\log[d\sigma\,\epsilon\,\sum_\pi W / q]` at the prepared samples, ``(N, S)``.

        Args:
            prepared: From :meth:`prepare` for the same events.
            x: Events, ``(N, D)``.
            theta: ``(N, P)`` in :attr:`parameter_names` order; differentiable.
        """
        alpha, nuisance = self.split(theta.to(prepared.z.dtype))
        log_w = prepared.log_transfer if prepared.log_transfer is not None else self._log_transfer(x, prepared.y, nuisance)
        f = self.dsigma(prepared.z, alpha[:, None, :])
        log_f = torch.where(f > 0, torch.log(f.clamp(min=1e-300)), torch.full_like(f, -math.inf))
        return log_f + prepared.log_base + log_w - prepared.log_q

    def log_integrand(self, z: Tensor, x: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log[d\sigma(z;\alpha)\,\epsilon(z)\sum_\pi W(x_\pi|y(z);\nu)]`, ``(N, S)`` for ``z (N, S, dim)``."""
        zero = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        return self.log_weights(self.prepare(z, zero, x), x, theta)
