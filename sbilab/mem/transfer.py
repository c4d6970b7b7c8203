r"""Transfer functions :math:`W(x | y)`: the detector response from parton level to reconstruction.

The matrix-element integral sees the detector only through :math:`W(x|y;\nu)`, a normalised
density of the reconstructed observables ``x`` given their parton-level counterparts
``y = process.partons(z)`` and nuisance parameters ν (e.g. a jet-energy scale). Anything that
implements :class:`TransferFunction` plugs in: the analytic :class:`GaussianTransfer` below
(MoMEMta's default is a Gaussian in energy with :math:`\sigma = 0.10\,E`), or a learned
conditional density :math:`q(x | y, \nu)` (arXiv:2210.00019) adapted to the same three methods.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..exceptions import ConfigError, IntegrandError, ShapeMismatchError

__all__ = ["TransferFunction", "GaussianTransfer", "check_normalisation"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@runtime_checkable
class TransferFunction(Protocol):
    r"""A normalised detector response :math:`W(x | y; \nu)`.

    Attributes:
        nuisance_names: Names of the nuisance parameters ν it depends on (may be empty); the
            likelihood takes them from the matching columns of ``theta``.
    """

    nuisance_names: tuple[str, ...]

    def log_prob(self, x: Tensor, y: Tensor, nuisance: Tensor) -> Tensor:
        r""":math:`\log W(x|y;\nu)` for ``x (..., D)``, ``y (..., D)`` and ``nuisance (..., K)``
        (broadcastable); ``-inf`` where ``y`` is outside the response's domain. Returns ``(...)``."""
        ...

    def sample(self, y: Tensor, nuisance: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x (M, D)`` from :math:`W(\\cdot|y;\\nu)` for ``y (M, D)`` and ``nuisance (M, K)``."""
        ...

    def support(self, x: Tensor) -> Tensor:
        """Which observed rows ``x (N, D)`` the response can produce at all, ``(N,)`` bool."""
        ...


def _per_column(value: float | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ConfigError(f"GaussianTransfer: {name} must be finite and >= 0 (a number or one per column), got {value}.")
    return t


class GaussianTransfer:
    r"""Independent Gaussian smearing of each column, width absolute plus relative.

    .. math::
        W(x|y;s) = \prod_d \mathcal N\big(x_d;\ \mu_d,\ a_d + b_d|\mu_d|\big), \qquad
        \mu_d = s\,y_d \text{ for scaled columns, } y_d \text{ otherwise},

    with :math:`a_d` = ``absolute``, :math:`b_d` = ``relative``. ``relative=0.10`` on energies is
    MoMEMta's default transfer function; ``scale`` names a multiplicative response (jet-energy
    scale) entering as a nuisance parameter. Widths that vanish (``y = 0`` with no absolute
    part) give ``-inf``: such parton configurations cannot produce any observation.

    Args:
        absolute: :math:`a_d`, a number or one per column.
        relative: :math:`b_d`, a number or one per column.
        positive: Columns whose observed values must be > 0 (energies, transverse momenta):
            ``True`` for all, or one flag per column. Defines :meth:`support`.
        scale: Name of the scale nuisance parameter, or ``None`` (no nuisance).
        scaled_columns: Columns the scale multiplies (default: all).

    Raises:
        ConfigError: negative or non-finite widths, no width at all, or columns out of range.

    Example:
        >>> w = GaussianTransfer(relative=0.10, positive=True)
        >>> x, y = torch.tensor([[50.0]]), torch.tensor([[50.0]])
        >>> round(float(w.log_prob(x, y, torch.zeros(1, 0)).exp()), 6)  # 1 / (5 sqrt(2 pi))
        0.079788
    """

    def __init__(
        self,
        *,
        absolute: float | Sequence[float] = 0.0,
        relative: float | Sequence[float] = 0.0,
        positive: bool | Sequence[bool] = False,
        scale: str | None = None,
        scaled_columns: Sequence[int] | None = None,
    ) -> None:
        self.absolute = _per_column(absolute, "absolute")
        self.relative = _per_column(relative, "relative")
        if self.absolute.numel() > 1 and self.relative.numel() > 1 and self.absolute.numel() != self.relative.numel():
            raise ConfigError(f"GaussianTransfer: {self.absolute.numel()} absolute widths but {self.relative.numel()} relative ones.")
        if not bool(((self.absolute + self.relative) > 0).all()):
            raise ConfigError("GaussianTransfer: every column needs absolute > 0 or relative > 0 (a zero width is a delta function).")
        self.positive = torch.as_tensor(positive, dtype=torch.bool).reshape(-1)
        self.nuisance_names: tuple[str, ...] = () if scale is None else (str(scale),)
        self.scaled_columns = None if scaled_columns is None else tuple(int(c) for c in scaled_columns)
        width = max(self.absolute.numel(), self.relative.numel(), self.positive.numel())
        if self.scaled_columns is not None and width > 1 and any(not 0 <= c < width for c in self.scaled_columns):
            raise ConfigError(f"GaussianTransfer: scaled_columns {self.scaled_columns} out of range for {width} columns.")

    def _scale(self, y: Tensor, nuisance: Tensor) -> Tensor:
        if not self.nuisance_names:
            return y
        s = nuisance[..., :1].to(y.dtype)
        if self.scaled_columns is None:
            return y * s
        mask = torch.zeros(y.shape[-1], dtype=torch.bool, device=y.device)
        mask[list(self.scaled_columns)] = True
        return torch.where(mask, y * s, y)

    def _moments(self, y: Tensor, nuisance: Tensor) -> tuple[Tensor, Tensor]:
        mu = self._scale(y, nuisance)
        a = self.absolute.to(device=y.device, dtype=y.dtype)
        b = self.relative.to(device=y.device, dtype=y.dtype)
        return mu, a + b * mu.abs()

    def log_prob(self, x: Tensor, y: Tensor, nuisance: Tensor) -> Tensor:
        r""":math:`\log W(x|y;s)`; ``x``, ``y``: ``(..., D)``, ``nuisance``: ``(..., K)``; returns ``(...)``."""
        mu, sigma = self._moments(y, nuisance)
        ok = sigma > 0
        safe = torch.where(ok, sigma, torch.ones_like(sigma))
        terms = -0.5 * ((x - mu) / safe) ** 2 - torch.log(safe) - _HALF_LOG_2PI
        terms = torch.where(ok, terms, torch.full_like(terms, -math.inf))
        return terms.sum(-1)

    def sample(self, y: Tensor, nuisance: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x (M, D)`` for ``y (M, D)``, ``nuisance (M, K)``."""
        mu, sigma = self._moments(y, nuisance)
        return mu + sigma * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)

    def support(self, x: Tensor) -> Tensor:
        """Finite rows whose ``positive`` columns are > 0, ``(N,)`` bool."""
        ok = torch.isfinite(x).all(-1)
        pos = self.positive.to(x.device)
        if bool(pos.any()):
            ok = ok & torch.where(pos, x > 0, torch.ones_like(x, dtype=torch.bool)).all(-1)
        return ok


def check_normalisation(
    transfer: TransferFunction,
    y: Tensor,
    nuisance: Tensor | None = None,
    *,
    samples: int = 20_000,
    tolerance: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Check numerically that :math:`\int W(x|y;\nu)\,dx = 1` at a few parton points.

    The integral is estimated by importance sampling from a defensive Gaussian mixture
    :math:`\tfrac34\mathcal N(m, (1.3s)^2) + \tfrac14\mathcal N(m, (5s)^2)` placed with the mean
    ``m`` and standard deviation ``s`` of draws from ``transfer.sample`` (only ``log_prob``
    enters the estimate, so a density that is not normalised is caught even when its sampler
    is right). Heavy tails beyond five widths are barely probed.

    Args:
        transfer: The transfer function.
        y: Parton-level points, ``(K, D)``.
        nuisance: ``(K, n_nuisance)`` (default: none, or ones for a scale).
        samples: Importance samples per point.
        tolerance: Allowed :math:`|\int W - 1|` beyond five Monte Carlo standard errors.

    Returns:
        The integrals, ``(K,)`` float64.

    Raises:
        IntegrandError: the integral differs from one by more than ``tolerance`` (+ 5 σ) at
            some point; the message gives the point and the integral.
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.dim() != 2:
        raise ShapeMismatchError(f"check_normalisation: y must be (K, D), got {tuple(y.shape)}.")
    k, n_nuis = y.shape[0], len(transfer.nuisance_names)
    nuis = torch.ones(k, n_nuis, dtype=torch.float64) if nuisance is None else torch.as_tensor(nuisance, dtype=torch.float64).reshape(k, n_nuis)
    draws = transfer.sample(y.repeat_interleave(512, 0), nuis.repeat_interleave(512, 0), generator).reshape(k, 512, -1)
    m, s = draws.mean(1, keepdim=True), draws.std(1, keepdim=True).clamp(min=1e-12)
    d = draws.shape[-1]
    e = torch.randn(k, samples, d, generator=generator, dtype=torch.float64)
    wide = torch.arange(samples) % 4 == 3  # a quarter of the points from the wide component
    scale = torch.where(wide[None, :, None], 5 * s, 1.3 * s)
    xs = m + scale * e

    def log_normal(width: Tensor) -> Tensor:
        return (-0.5 * ((xs - m) / width) ** 2 - torch.log(width) - _HALF_LOG_2PI).sum(-1)

    log_q = torch.logaddexp(log_normal(1.3 * s) + math.log(0.75), log_normal(5 * s) + math.log(0.25))
    log_w = transfer.log_prob(xs, y[:, None, :].expand_as(xs), nuis[:, None, :].expand(k, samples, n_nuis)) - log_q
    w = torch.exp(log_w.clamp(max=700.0))
    integral = w.mean(1)
    error = w.std(1) / math.sqrt(samples)
    bad = ((integral - 1).abs() > tolerance + 5 * error) | ~torch.isfinite(integral)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise IntegrandError(
            f"transfer function {type(transfer).__name__} does not normalise: the integral of W(x|y) over x is "
            f"{float(integral[i]):.6g} ± {float(error[i]):.2g} at y={y[i].tolist()} (off by {float(integral[i] - 1):+.3g}; "
            f"{int(bad.sum())} of {k} points checked fail). Its log_prob must be a normalised log-density in x."
        )
    return integral
