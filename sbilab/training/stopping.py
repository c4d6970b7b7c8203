r"""Early stopping on an exponentially smoothed validation loss, per ensemble member.

For member k with validation losses :math:`v_1, v_2, \dots` the watched quantity is
:math:`s_t = \beta s_{t-1} + (1-\beta) v_t` (``smoothing`` :math:`\beta`, :math:`s_1 = v_1`),
which ignores the epoch-to-epoch jitter of stochastic optimisation. Patience counts the epochs
since :math:`s` last improved by more than ``min_delta`` (relative); training stops when every
member has run out of patience. The weights kept are, per member, those of the lowest *raw*
validation loss (``keep="best"``), of the lowest smoothed one (``"smoothed"``), of the last
epoch (``"last"``), or (``"auto"``) of the last epoch unless its validation loss lies more than
``OVERFIT_SIGMAS`` standard errors :math:`\sigma_\mathrm{last}` above the lowest one, then of the
lowest: :math:`v_\mathrm{last} - \min_e v_e > 3\,\sigma_\mathrm{last}` means the network fits the
noise of its training events; a smaller difference is the noise of the validation estimate,
and choosing by it would pick an epoch at random (for nearly flat losses, an early one, trained at
a high learning rate). ``best_loss``/``best_epoch`` record the raw loss and index of the kept epoch.
The ``"plateau"`` schedule reduces the learning rate when the members' mean of :math:`s` stalls
for ``plateau_patience`` epochs.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from .config import TrainingConfig

__all__ = ["EarlyStopping", "OverfittingWarning", "warn_if_overfitting", "OVERFIT_SIGMAS"]

OVERFIT_SIGMAS = 3.0
"""How many standard errors above its minimum the last epoch's validation loss may lie before ``keep="auto"``
returns the minimum's weights instead, and before ``fit`` warns that the kept weights overfit."""


class OverfittingWarning(UserWarning):
    """The weights ``fit`` kept have a validation loss significantly above the run's minimum."""


class EarlyStopping:
    """Book-keeping of best losses, smoothed losses, patience and plateau reductions for K members."""

    def __init__(self, k: int, config: TrainingConfig) -> None:
        self.config = config
        self.best_loss = [math.inf] * k
        self.best_epoch = [0] * k
        self.smoothed: list[float | None] = [None] * k
        self.best_smoothed = [math.inf] * k
        self.kept_smoothed = [math.inf] * k
        self.bad_epochs = [0] * k
        self.plateau_best = math.inf
        self.plateau_bad = 0
        self.reductions = 0
        self.last_epoch = 0
        self.last_loss = [math.nan] * k
        self.last_error = [math.nan] * k

    def _improves(self, value: float, best: float) -> bool:
        return value < best - self.config.min_delta * abs(best) if math.isfinite(best) else True

    def update(self, epoch: int, losses: list[float], errors: list[float] | None = None) -> list[int]:
        """Record the validation ``losses`` (one per member) of ``epoch`` and their standard ``errors``.

        Returns:
            The members whose kept weights change (for ``"auto"``: the running minimum's, as
            ``"best"``; :meth:`finish` decides at the end).
        """
        beta, keep = self.config.smoothing, self.config.keep
        self.last_epoch, self.last_loss = epoch, list(losses)
        self.last_error = list(errors) if errors is not None else [math.nan] * len(losses)
        improved = []
        for i, loss in enumerate(losses):
            prev = self.smoothed[i]
            s = loss if prev is None else beta * prev + (1.0 - beta) * loss
            self.smoothed[i] = s
            lowest = keep in ("best", "auto") and loss < self.best_loss[i]
            if keep == "last" or lowest or (keep == "smoothed" and s < self.kept_smoothed[i]):
                self.best_loss[i], self.best_epoch[i], self.kept_smoothed[i] = loss, epoch, s
                improved.append(i)
            if self._improves(s, self.best_smoothed[i]):
                self.best_smoothed[i], self.bad_epochs[i] = s, 0
            else:
                self.bad_epochs[i] += 1
        mean = sum(s for s in self.smoothed if s is not None) / len(self.smoothed)
        if self._improves(mean, self.plateau_best):
            self.plateau_best, self.plateau_bad = mean, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad >= self.config.plateau_patience:
                self.reductions, self.plateau_bad = self.reductions + 1, 0
        return improved

    def finish(self) -> list[int]:
        """For ``keep="auto"``: the members whose last weights are kept (their last loss is within
        ``OVERFIT_SIGMAS`` standard errors of their minimum); their ``best_*`` now describe the last
        epoch. Empty for the other rules (their choice is made epoch by epoch)."""
        if self.config.keep != "auto" or not self.last_epoch:
            return []
        members = []
        for i, (loss, error) in enumerate(zip(self.last_loss, self.last_error)):
            significant = math.isfinite(error) and loss - self.best_loss[i] > OVERFIT_SIGMAS * error
            if not significant:
                self.best_loss[i], self.best_epoch[i] = loss, self.last_epoch
                members.append(i)
        return members

    @property
    def should_stop(self) -> bool:
        patience = self.config.patience
        return patience is not None and all(b >= patience for b in self.bad_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in
                ("best_loss", "best_epoch", "smoothed", "best_smoothed", "kept_smoothed", "bad_epochs", "plateau_best", "plateau_bad", "reductions",
                 "last_epoch", "last_loss", "last_error")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)


def warn_if_overfitting(history: dict[str, list], kept_epochs: list[int], keep: str) -> None:
    r"""Warn (:class:`OverfittingWarning`) if a member's kept weights validate significantly worse than its best epoch.

    With :math:`v_e` the validation loss of epoch :math:`e` and :math:`\sigma_e` its standard
    error (``history["val_loss_error"]``, from the per-event spread of the loss over the
    validation events), the warning fires when :math:`v_\mathrm{kept} - \min_e v_e >`
    ``OVERFIT_SIGMAS`` :math:`\sigma_\mathrm{kept}`. Differences within the noise of the
    validation estimate (flat losses such as ALICE's, whose epochs differ by far less than
    :math:`\sigma`) do not warn; a network that fits its training events' noise does.
    """
    values = history.get("val_loss_members") or [[v] for v in history.get("val_loss", [])]
    errors = history.get("val_loss_error", [])
    if not values or len(errors) != len(values):
        return
    worst = None
    for member, kept in enumerate(kept_epochs):
        curve = [row[member] for row in values]
        low = min(range(len(curve)), key=curve.__getitem__)
        error = errors[kept - 1]
        if not (error > 0 and math.isfinite(error)):
            continue
        sigmas = (curve[kept - 1] - curve[low]) / error
        if sigmas > OVERFIT_SIGMAS and (worst is None or sigmas > worst[0]):
            worst = (sigmas, member, kept, curve[kept - 1], low + 1, curve[low])
    if worst is not None:
        sigmas, member, kept, value, low, lowest = worst
        who = f"member {member}'s" if len(kept_epochs) > 1 else "the"
        warnings.warn(OverfittingWarning(
            f"fit: {who} kept weights (epoch {kept}, keep={keep!r}) have validation loss {value:.5g}, {sigmas:.1f} standard "
            f"errors above the minimum {lowest:.5g} at epoch {low}: the network fits the noise of its training events. "
            "Use more training events, fewer epochs or weight_decay, or keep='best' to return the epoch of the minimum."
        ), stacklevel=4)
