r"""Splitting kernels, their θ-independent overestimates and the running coupling of the shower.

The quark kernel is parametrised by :math:`\theta = (D, F, C)` (Bieringer et al., arXiv:2012.09873):

.. math::
    P_{qq}(z, y) = C_F\Big[D\,\frac{2z(1-y)}{1-z(1-y)} + F\,(1-z) + C\,y\,z(1-z)\Big],

which at :math:`D = F = 1, C = 0` is the Catani–Seymour kernel :math:`C_F[2/(1-z(1-y)) - (1+z)]` of
Höche's tutorial shower (arXiv:1411.4085). It is linear in θ: :math:`P_{qq} = \theta\cdot g(z, y)`
with :func:`qq_coefficients` :math:`g`. The gluon kernels keep their standard form,
:math:`P_{gg} = \tfrac{C_A}{2}[2/(1-z(1-y)) - 2 + z(1-z)]` per colour dipole and
:math:`P_{gq} = n_f\tfrac{T_R}{2}[1 - 2z(1-z)]` summed over the :math:`n_f = 5` massless flavours.

:math:`P_{qq} \ge 0` on the whole of :math:`0 < z < 1, 0 \le y < 1` if and only if
:math:`D \ge 0`, :math:`F \ge 0` and :math:`F + C \ge 0` (near :math:`z \to 1` the soft term
dominates, near :math:`z \to 0` the F term, near :math:`y \to 1, z \to 1` the sum
:math:`(1-z)(F + C)`). Since :math:`2w/(1-w) \le 2/(1-z)` for :math:`w = z(1-y) \le z`,
:math:`1 - z \le 1` and :math:`y z (1-z) \le 1/4`, the overestimate

.. math:: \hat P_{qq}(z) = C_F\Big[\frac{2\hat D}{1-z} + \hat F + \frac{\max(\hat C, 0)}{4}\Big]

bounds :math:`P_{qq}` for every θ with :math:`D \le \hat D`, :math:`F \le \hat F`,
:math:`C \le \hat C` (:class:`Overestimate`). The gluon kernels use :math:`C_A/(1-z)` and
:math:`n_f T_R/2`.

The coupling runs at one loop with :math:`n_f = 5`,
:math:`\alpha_s(t) = 1/(b_0 \ln(t/\Lambda^2))`, :math:`b_0 = (33 - 2n_f)/(12\pi)`, with
:math:`\Lambda` fixed by :math:`\alpha_s(M_Z^2) = 0.118` (:math:`\Lambda \approx 88` MeV). Trial
scales are drawn with this exact coupling (:meth:`RunningCoupling.next_scale`), so no coupling
veto is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...exceptions import NegativeKernelError, OverestimateError

__all__ = [
    "CF", "CA", "TR", "NF", "KERNEL_QQ", "KERNEL_GG", "KERNEL_GQ",
    "qq_coefficients", "p_gg", "p_gq", "RunningCoupling", "Overestimate", "check_kernel",
]

CF, CA, TR, NF = 4.0 / 3.0, 3.0, 0.5, 5
KERNEL_QQ, KERNEL_GG, KERNEL_GQ = 0, 1, 2
"""Kernel codes stored in the history: q → qg (and q̄ → q̄g), g → gg, g → qq̄."""

PARAMETERS = ("D", "F", "C")


def qq_coefficients(z: Tensor, y: Tensor) -> Tensor:
    r"""Coefficients :math:`g(z, y)` with :math:`P_{qq}(z, y; \theta) = \theta \cdot g`, ``(..., 3)``.

    :math:`g = C_F\,(2z(1-y)/(1-z(1-y)),\ 1-z,\ y z (1-z))`. ``z``, ``y``: any shape, same shape.

    Example:
        >>> g = qq_coefficients(torch.tensor([0.5]), torch.tensor([0.0]))
        >>> round(float(g[0] @ torch.tensor([1.0, 1.0, 0.0])), 6)  # C_F (2/(1-z) - (1+z)) at y = 0: 4/3 * 2.5
        3.333333
    """
    omz = 1.0 - z
    soft = 2.0 * z * (1.0 - y) / (omz + z * y)
    return CF * torch.stack([soft, omz, y * z * omz], dim=-1)


def p_gg(z: Tensor, y: Tensor) -> Tensor:
    r""":math:`P_{gg}(z, y) = \tfrac{C_A}{2}\,[2/(1-z(1-y)) - 2 + z(1-z)]` per colour dipole."""
    return 0.5 * CA * (2.0 / (1.0 - z + z * y) - 2.0 + z * (1.0 - z))


def p_gq(z: Tensor) -> Tensor:
    r""":math:`P_{gq}(z) = n_f\,\tfrac{T_R}{2}\,[1 - 2z(1-z)]`, summed over the massless flavours."""
    return NF * 0.5 * TR * (1.0 - 2.0 * z * (1.0 - z))


@dataclass(frozen=True)
class RunningCoupling:
    r"""One-loop :math:`\alpha_s(t) = 1/(b_0 \ln(t/\Lambda^2))` with :math:`n_f` flavours.

    Args:
        alpha_s_mz: :math:`\alpha_s(M_Z^2)`.
        mz: :math:`M_Z` in GeV.
        nf: Active flavours in :math:`b_0 = (33 - 2 n_f)/(12\pi)`.

    Example:
        >>> a = RunningCoupling()
        >>> round(a(91.1876 ** 2), 6), round(math.sqrt(a.lambda2), 4)
        (0.118, 0.0878)
    """

    alpha_s_mz: float = 0.118
    mz: float = 91.1876
    nf: int = NF

    @property
    def b0(self) -> float:
        return (33.0 - 2.0 * self.nf) / (12.0 * math.pi)

    @property
    def lambda2(self) -> float:
        r""":math:`\Lambda^2` in GeV², from :math:`\alpha_s(M_Z^2)`."""
        return self.mz**2 * math.exp(-1.0 / (self.b0 * self.alpha_s_mz))

    def __call__(self, t: float | Tensor) -> float | Tensor:
        if isinstance(t, Tensor):
            return 1.0 / (self.b0 * torch.log(t / self.lambda2))
        return 1.0 / (self.b0 * math.log(t / self.lambda2))

    def next_scale(self, t: Tensor, rate: Tensor, u: Tensor) -> Tensor:
        r"""Next trial scale below ``t``: solves :math:`\Delta(t, t') = u` for the Sudakov factor

        .. math:: \Delta(t, t') = \exp\Big(-\int_{t'}^{t} \frac{\alpha_s(s)}{2\pi}\,\frac{ds}{s}\,R\Big)
            = \Big(\frac{\ln(t'/\Lambda^2)}{\ln(t/\Lambda^2)}\Big)^{R/(2\pi b_0)},

        i.e. :math:`\ln(t'/\Lambda^2) = \ln(t/\Lambda^2)\,u^{2\pi b_0/R}`, with :math:`R` the total
        z-integrated overestimate of all candidate splittings. ``t``, ``rate``, ``u``: ``(B,)``.
        """
        log_t = torch.log(t / self.lambda2)
        return self.lambda2 * torch.exp(log_t * u.pow(2.0 * math.pi * self.b0 / rate))


@dataclass(frozen=True)
class Overestimate:
    r"""The θ-independent overestimate :math:`\hat P_{qq}(z) = C_F[2\hat D/(1-z) + \hat F + \max(\hat C,0)/4]`.

    Valid for every θ with :math:`0 \le D \le \hat D`, :math:`0 \le F \le \hat F`,
    :math:`-F \le C \le \hat C` (:meth:`check`).

    Args:
        d, f, c: The largest D, F, C the overestimate covers.
    """

    d: float
    f: float
    c: float

    @property
    def soft(self) -> float:
        r"""Coefficient :math:`2 C_F \hat D` of :math:`1/(1-z)`."""
        return 2.0 * CF * self.d

    @property
    def flat(self) -> float:
        r"""Constant part :math:`C_F(\hat F + \max(\hat C, 0)/4)`."""
        return CF * (self.f + max(self.c, 0.0) / 4.0)

    def upper(self) -> tuple[float, float, float]:
        return (self.d, self.f, self.c)

    def check(self, theta: Tensor, *, argument: str = "theta") -> None:
        """Raise unless every row of ``theta (N, 3)`` = (D, F, C) is covered and gives a non-negative kernel.

        Raises:
            NegativeKernelError: D < 0, F < 0 or F + C < 0 in some row (P_qq < 0 somewhere).
            OverestimateError: D, F or C above the largest value the overestimate covers.
        """
        check_kernel(theta, argument=argument)
        th = torch.as_tensor(theta).detach().to(torch.float64).reshape(-1, 3)
        for j, (name, top) in enumerate(zip(PARAMETERS, self.upper())):
            bad = th[:, j] > top * (1 + 1e-12) + 1e-12
            if bool(bad.any()):
                row = int(torch.nonzero(bad)[0, 0])
                raise OverestimateError(
                    f"{argument}: {int(bad.sum())} of {th.shape[0]} rows have {name} above {top}, the largest value the "
                    f"shower's overestimate covers (first row {row}: {name} = {th[row, j].item():.6g}; the overestimate "
                    f"holds for D in [0, {self.d}], F in [0, {self.f}], C in [-F, {self.c}]). Build the shower with a larger "
                    f"upper bound of {name} (its parameter space's `high`) to reach this point."
                )


def check_kernel(theta: Tensor, *, argument: str = "theta") -> None:
    r"""Raise :class:`NegativeKernelError` unless :math:`P_{qq}(z, y; \theta) \ge 0` on all of phase space.

    That holds iff :math:`D \ge 0`, :math:`F \ge 0` and :math:`F + C \ge 0` (module docstring).

    Args:
        theta: ``(N, 3)`` rows (D, F, C).
    """
    th = torch.as_tensor(theta).detach().to(torch.float64).reshape(-1, 3)
    conditions = (
        (th[:, 0] < 0, "D < 0", "the soft term D 2z(1-y)/(1-z(1-y)) makes P_qq negative near z -> 1"),
        (th[:, 1] < 0, "F < 0", "P_qq -> C_F F < 0 for z -> 0"),
        (th[:, 1] + th[:, 2] < 0, "F + C < 0", "P_qq -> C_F (1-z)(F + C) < 0 for y -> 1, z -> 1"),
    )
    for bad, what, why in conditions:
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise NegativeKernelError(
                f"{argument}: {int(bad.sum())} of {th.shape[0]} rows have {what} (first row {row}: "
                f"{dict(zip(PARAMETERS, th[row].tolist()))}); {why}, and a negative splitting kernel is no probability. "
                "Use D >= 0, F >= 0 and C >= -F."
            )
