r"""Weight-quality diagnostics of every reweighting step of an unfolding.

Each step turns a classifier into per-event weights (:func:`~sbilab.estimators.classifier_weights`).
What can go wrong is recorded per ensemble member, never repaired silently:

* **non-finite weights** raise :class:`~sbilab.exceptions.NonFiniteOutputError` at once;
* **clipping**: how many ratios fell below ``w_min`` or above ``w_max``;
* **effective sample size** (Kish) :math:`N_\mathrm{eff} = (\sum_i w_i)^2/\sum_i w_i^2` of the
  reweighted sample (a collapse to few events means the weights are unusable);
* **normalisation** :math:`\sum_i b_i r_i / \sum_i b_i` of the learned ratio on the events it
  reweights, 1 for a calibrated classifier, with its statistical error;
* **change** between iterations, :math:`\sum_i b_i |\nu^{k}_i - \nu^{k-1}_i| / \sum_i b_i \nu^{k-1}_i`
  (relative :math:`L_1` change of the weights; small when the iteration has converged).

Example:
    >>> from sbilab.estimators import classifier_weights
    >>> cw = [classifier_weights(torch.zeros(4), base_weights=torch.ones(4))]
    >>> d = StepDiagnostics.from_weights(1, "1", cw, change=torch.tensor([0.5]))
    >>> d.to_dict()["effective_sample_size"], d.to_dict()["change"]
    ([4.0], [0.5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..estimators.reweighting import ClassifierWeights
from ..exceptions import NonFiniteOutputError

__all__ = ["StepDiagnostics", "relative_change", "check_finite_weights"]


@dataclass(frozen=True)
class StepDiagnostics:
    """Weight quality of one step of one iteration, per ensemble member (``(K,)`` each).

    Attributes:
        iteration: Iteration ``1..I``.
        step: ``"1"`` (detector level, pull), ``"1b"`` (generator level, events not detected) or
            ``"2"`` (generator level, push); other methods name theirs.
        n_events: Events reweighted in this step.
        effective_sample_size: Kish's ESS of the reweighted sample.
        n_clipped_low, n_clipped_high: Ratios clipped up to ``w_min`` / down to ``w_max``.
        normalisation, normalisation_error: Mean normalised ratio :math:`E_0[r]` on the classifier's
            class-0 training sample (1 if calibrated).
        max_ratio: Largest ratio.
        change: Relative L1 change against the previous iteration's weights, or ``None``.
    """

    iteration: int
    step: str
    n_events: int
    effective_sample_size: Tensor
    n_clipped_low: Tensor
    n_clipped_high: Tensor
    normalisation: Tensor
    normalisation_error: Tensor
    max_ratio: Tensor
    change: Tensor | None = None

    @classmethod
    def from_weights(cls, iteration: int, step: str, members: Sequence[ClassifierWeights], *,
                     change: Tensor | None = None) -> "StepDiagnostics":
        """Collect the :class:`~sbilab.estimators.ClassifierWeights` of the ``K`` members of a step."""
        def stack(name: str, dtype: torch.dtype = torch.float64) -> Tensor:
            return torch.tensor([getattr(m, name) for m in members], dtype=dtype)

        return cls(iteration=iteration, step=step, n_events=int(members[0].weights.numel()),
                   effective_sample_size=stack("effective_sample_size"), n_clipped_low=stack("n_clipped_low", torch.long),
                   n_clipped_high=stack("n_clipped_high", torch.long), normalisation=stack("normalisation"),
                   normalisation_error=stack("normalisation_error"),
                   max_ratio=torch.tensor([float(m.ratio.max()) if m.ratio.numel() else 0.0 for m in members], dtype=torch.float64),
                   change=None if change is None else change.to(torch.float64))

    @property
    def n_clipped(self) -> Tensor:
        """Clipped ratios per member, ``(K,)``."""
        return self.n_clipped_low + self.n_clipped_high

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (lists over members)."""
        out: dict[str, Any] = {"iteration": self.iteration, "step": self.step, "n_events": self.n_events}
        for name in ("effective_sample_size", "n_clipped_low", "n_clipped_high", "normalisation", "normalisation_error", "max_ratio"):
            out[name] = getattr(self, name).tolist()
        out["change"] = None if self.change is None else self.change.tolist()
        return out


def relative_change(new: Tensor, old: Tensor, base: Tensor) -> Tensor:
    r""":math:`\sum_i b_i|n_i - o_i| / \sum_i b_i o_i` per member: ``new``, ``old``, ``base`` ``(K, N)`` -> ``(K,)``."""
    den = (base * old).sum(-1)
    return torch.where(den != 0, (base * (new - old).abs()).sum(-1) / den.where(den != 0, torch.ones_like(den)), torch.zeros_like(den))


def check_finite_weights(weights: Tensor, where: str) -> Tensor:
    """Return ``weights`` if every entry is finite, else raise.

    Raises:
        NonFiniteOutputError: naming ``where``, the member and the first event.
    """
    bad = ~torch.isfinite(weights)
    if bool(bad.any()):
        index = torch.nonzero(bad)[0].tolist()
        raise NonFiniteOutputError(f"{where}: {int(bad.sum())} weights are NaN/inf (first at member/event {index}); "
                                   "the classifier diverged or the weights overflowed. Nothing was replaced: fix the training "
                                   "(learning rate, clipping range w_min/w_max) and rerun.")
    return weights
