r"""The stored shower history and its exact log-likelihood.

A history is the list of every trial emission of the veto algorithm that reached the accept/reject
step (trials vetoed by the phase-space limit :math:`y \ge 1` have probability 0 at every θ and are
not stored). It is kept as a padded tensor ``latent (N, T, K)`` with ``latent_mask (N, T)``, one
row per trial, with the columns of :data:`COLUMNS`:

=============  ==============================================================================
column         meaning
=============  ==============================================================================
``t``          evolution variable :math:`t = k_T^2` of the trial (GeV²)
``z``          momentum fraction of the emitter
``y``          Catani–Seymour recoil variable :math:`y = t/(m^2_{ik}\,z(1-z))`
``phi``        azimuth of the transverse momentum
``p_hat``      the overestimate :math:`\hat P(z)` the trial was drawn from
``code``       the trial's integer fields, packed exactly into one float64 (:func:`encode`)
=============  ==============================================================================

The integer fields (:data:`FIELDS`, read with :func:`decode` or :func:`field`) are

=============  ==============================================================================
field          meaning
=============  ==============================================================================
``accepted``   1 if the trial was accepted, 0 if vetoed
``kernel``     0: q → qg (θ-dependent), 1: g → gg, 2: g → qq̄ (:data:`~.kernels.KERNEL_QQ` ...)
``emitter``    slot of the emitter in the particle list at that step
``spectator``  slot of the colour-connected spectator
``flavour``    PDG id of the emitter before the splitting
``emitted``    PDG id of the emitted parton j (21, or the antiquark of g → qq̄)
``version``    :data:`HISTORY_VERSION` of the shower that wrote it
=============  ==============================================================================

``code`` = Σ (field + offset) · 2^shift with the offsets and bit widths of :data:`FIELDS` (43 bits
in all, below the 53 bits a float64 holds exactly). Version 1 stored the seven fields as separate
float64 columns (12 in all); packing halves the memory of a history, which dominates the
shower's memory (about 2 kB per event at 10⁵ events instead of 4 kB).

Every trial is accepted with probability :math:`w_\theta = (1-y)\,P_\theta(z, y)/\hat P(z)`,
and the trial sequence itself (scales, z, φ, which dipole) is drawn from θ-independent
overestimates, so

.. math::
    \log p(\text{history}|\theta) = \sum_\text{accepted} \log w_\theta
        + \sum_\text{rejected} \log(1 - w_\theta) + \text{const},

the constant being the θ-independent density of the trial sequence (and of the hard process,
the colour and flavour choices and any detector smearing). :func:`history_log_prob` returns the
sum, which is exact for joint log-ratios and joint scores (arXiv:1805.00020) and for shower
reweighting (arXiv:1605.08352). For q → qg, :math:`w_\theta = \theta\cdot(1-y)\,g(z, y)/\hat P(z)`
is linear in θ (:func:`~.kernels.qq_coefficients`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...exceptions import HistoryVersionError, InvalidEventsError, OverestimateError
from .kernels import KERNEL_GG, KERNEL_GQ, KERNEL_QQ, p_gg, p_gq, qq_coefficients

__all__ = ["COLUMNS", "FIELDS", "HISTORY_VERSION", "column", "encode", "decode", "field", "check_history", "acceptance",
           "history_log_prob"]

COLUMNS = ("t", "z", "y", "phi", "p_hat", "code")
HISTORY_VERSION = 2
"""Version of the shower algorithm and history layout; histories of another version are refused."""

FIELDS = {"accepted": (0, 1, 0), "kernel": (1, 2, 0), "emitter": (3, 10, 0), "spectator": (13, 10, 0),
          "flavour": (23, 6, 32), "emitted": (29, 6, 32), "version": (35, 8, 0)}
"""Integer fields packed into ``code``: name → (shift, bits, offset); stored value = field + offset."""

_INDEX = {name: i for i, name in enumerate(COLUMNS)}


def column(name: str) -> int:
    """Index of history column ``name`` (one of :data:`COLUMNS`) in the last axis of ``latent``."""
    return _INDEX[name]


def encode(*, check: bool = True, **values: Tensor) -> Tensor:
    """The ``code`` column, float64, from the integer fields of :data:`FIELDS` (all required; tensors of one shape).

    Exact: every field is an integer of at most 10 bits and the sum stays below 2^53. With ``check``,
    fields outside their range raise :class:`ValueError` (a shower bug, never user input); the batched
    shower, whose fields are in range by construction, skips the check.

    Example:
        >>> c = encode(accepted=torch.tensor([1]), kernel=torch.tensor([0]), emitter=torch.tensor([0]),
        ...            spectator=torch.tensor([1]), flavour=torch.tensor([-3]), emitted=torch.tensor([21]),
        ...            version=torch.tensor([HISTORY_VERSION]))
        >>> {k: int(v) for k, v in decode(torch.stack([c] * 6, -1)).items()}["flavour"]
        -3
    """
    out = None
    for name, (shift, bits, offset) in FIELDS.items():
        v = torch.as_tensor(values[name]).to(torch.float64) + offset
        if check and bool(((v < 0) | (v >= 2**bits)).any()):
            raise ValueError(f"history field {name} out of its {bits}-bit range (offset {offset}): {v.min()}..{v.max()}")
        out = v * float(2**shift) if out is None else out.add_(v * float(2**shift))
    return out


def field(latent: Tensor, name: str) -> Tensor:
    """Integer field ``name`` of :data:`FIELDS` of every stored trial, ``(N, T)`` int64 (padding decodes as -offset)."""
    shift, bits, offset = FIELDS[name]
    code = latent[..., _INDEX["code"]].to(torch.float64).round().long()
    return ((code >> shift) & (2**bits - 1)) - offset


def decode(latent: Tensor) -> dict[str, Tensor]:
    """Every column and field of a history by name: the float64 columns of :data:`COLUMNS` (but ``code``) and the
    int64 fields of :data:`FIELDS`, each ``(N, T)``."""
    out = {name: latent[..., i] for i, name in enumerate(COLUMNS) if name != "code"}
    out.update({name: field(latent, name) for name in FIELDS})
    return out


def check_history(latent: Tensor | None, latent_mask: Tensor | None) -> None:
    """Raise unless ``latent (N, T, K)`` and ``latent_mask (N, T)`` are histories of this shower version.

    Raises:
        InvalidEventsError: no history, or no mask.
        HistoryVersionError: another number of columns, or a version column other than
            :data:`HISTORY_VERSION` in some real step.
    """
    if latent is None or latent.dim() != 3 or latent_mask is None:
        raise InvalidEventsError(
            "The shower's joint_log_prob needs Events.latent (N, T, K) with latent_mask (N, T): the trial history that "
            "PartonShower.sample stores. Events without it (e.g. observed data) have no joint likelihood."
        )
    if latent.shape[-1] != len(COLUMNS):
        raise HistoryVersionError(
            f"Events.latent has {latent.shape[-1]} columns per step but shower histories of version {HISTORY_VERSION} "
            f"have {len(COLUMNS)} {COLUMNS}; these histories come from another simulator or shower version. Regenerate them."
        )
    versions = field(latent, "version")[latent_mask]
    if versions.numel() and not bool((versions == HISTORY_VERSION).all()):
        found = sorted({int(v) for v in versions.unique()[:5]})
        raise HistoryVersionError(
            f"Events.latent holds histories of shower version(s) {found}, but this shower is version {HISTORY_VERSION}; "
            "the accept probabilities of another version differ. Regenerate the events with this version."
        )


def _safe(latent: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """z, y, p_hat, kernel code, accepted (float64, (N, T)) with harmless values in the padding."""
    h = latent.to(torch.float64)
    pad = ~mask
    z = h[..., _INDEX["z"]].masked_fill(pad, 0.5)
    y = h[..., _INDEX["y"]].masked_fill(pad, 0.5)
    p_hat = h[..., _INDEX["p_hat"]].masked_fill(pad, 1.0)
    kernel = field(h, "kernel").masked_fill(pad, KERNEL_GQ)
    accepted = (field(h, "accepted") > 0) & mask
    return z, y, p_hat, kernel, accepted


def acceptance(latent: Tensor, latent_mask: Tensor, theta: Tensor) -> Tensor:
    r"""Accept probability :math:`w_\theta = (1-y)\,P_\theta(z,y)/\hat P(z)` of every stored trial, ``(N, T)``.

    Args:
        latent: ``(N, T, K)`` histories; latent_mask: ``(N, T)``; theta: ``(N, 3)`` (differentiable).

    Padding entries hold 0.5.
    """
    z, y, p_hat, kernel, _ = _safe(latent, latent_mask)
    th = theta.to(torch.float64)
    w_qq = torch.einsum("ntk,nk->nt", qq_coefficients(z, y), th)
    w_other = torch.where(kernel == KERNEL_GG, p_gg(z, y), p_gq(z))
    w = (1.0 - y) * torch.where(kernel == KERNEL_QQ, w_qq, w_other) / p_hat
    return torch.where(latent_mask, w, torch.full_like(w, 0.5))


def history_log_prob(latent: Tensor, latent_mask: Tensor, theta: Tensor) -> Tensor:
    r""":math:`\sum_\text{acc}\log w_\theta + \sum_\text{rej}\log(1 - w_\theta)` per event, ``(N,)`` float64.

    Differentiable in ``theta (N, 3)``; gradients are finite (both branches are evaluated on
    safe values, so no ``inf * 0``).

    Raises:
        OverestimateError: at ``theta`` some stored trial has :math:`w_\theta \ge 1` while rejected
            or :math:`w_\theta \le 0` while accepted: the history was drawn from an overestimate
            that does not cover this θ.
    """
    w = acceptance(latent, latent_mask, theta)
    accepted = (field(latent, "accepted") > 0) & latent_mask
    rejected = latent_mask & ~accepted
    with torch.no_grad():
        bad = (rejected & (w >= 1.0)) | (accepted & (w <= 0.0))
        if bool(bad.any()):
            row = int(torch.nonzero(bad.any(dim=1))[0, 0])
            raise OverestimateError(
                f"theta: {int(bad.any(dim=1).sum())} of {w.shape[0]} events have trials whose accept probability at theta "
                f"leaves (0, 1) (first event {row}, theta {theta[row].tolist()}): their histories were generated with an "
                "overestimate that does not cover this theta. Evaluate inside the region of the shower that generated them."
            )
    w_acc = torch.where(accepted, w, torch.full_like(w, 0.5))
    w_rej = torch.where(rejected, w, torch.full_like(w, 0.5))
    terms = torch.where(accepted, torch.log(w_acc), torch.where(rejected, torch.log1p(-w_rej), torch.zeros_like(w)))
    return terms.sum(dim=1)
