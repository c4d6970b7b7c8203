"""The result of :func:`~sbilab.training.fit`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import TrainingConfig

__all__ = ["TrainingResult"]


@dataclass
class TrainingResult:
    """What :func:`fit` returns.

    Attributes:
        model: The trained module (the estimator itself, trained in place) or the Ensemble,
            holding the kept weights (per member for ensembles; see ``TrainingConfig.keep``).
        history: Per-epoch lists ``"train_loss"``, ``"val_loss"``, ``"val_loss_error"`` (the
            standard error of ``val_loss`` from the per-event spread of the loss; members' mean),
            ``"val_loss_smoothed"``,
            ``"lr"`` (at the end of the epoch), ``"time"`` (seconds of the epoch) and, for
            ensembles, ``"val_loss_members"`` (a list of K losses per epoch). Losses are the
            members' mean of the weighted mean per-event loss.
        best_epoch: Epoch (counted from 1) whose weights were kept; ``history[key][best_epoch - 1]``.
            For ensembles, the latest of the members' best epochs.
        best_epochs: Kept epoch of every member (see ``TrainingConfig.keep``).
        best_val_loss: Mean over members of the raw validation loss at their kept epochs (their
            lowest ones with ``keep="best"``; NaN without validation).
        epochs_run: Number of epochs trained.
        stopped_early: Whether early stopping ended the run before ``epochs``.
        config: The options of the run.
        device: The device it ran on.
    """

    model: nn.Module
    history: dict[str, list]
    best_epoch: int
    best_epochs: tuple[int, ...]
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    config: TrainingConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
