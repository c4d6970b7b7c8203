r"""Options of :func:`~sbilab.training.fit`: a frozen, JSON-able :class:`TrainingConfig`.

The defaults are chosen to converge fast on the small networks of likelihood-ratio and
density estimation (10⁴–10⁶ events, 10³–10⁵ parameters): batches of 512, a high Adam learning
rate (5·10⁻³, gradients clipped at norm 5) decayed by a cosine to 1 % over a budget of 50
epochs, trained to the end of that budget, and the weights of the last epoch kept unless the
10 % validation split says, beyond its own statistical noise, that an earlier epoch was better
(``keep="auto"``). ``benchmarks/trainer_speed.py`` measures them against sbi's trainer (same
network, same data: equal or lower held-out loss in a fraction of the time).

Why no early stopping by default (measured: ``benchmarks/readme_seeds.py``,
``benchmarks/stopping_rules.py``, tables in ``benchmarks/README.md``): the validation losses of
the ratio and classifier losses are nearly flat — ALICES's epochs 30–50 differ by ≈ 10⁻⁴ while
the standard error of the validation estimate is ≈ 7·10⁻⁴ (10⁴ validation events) — so
"the epoch of the lowest validation loss" is an epoch drawn by noise, often an early one
trained at a high learning rate. Kept that way, a classifier's reweighting weights were off by
up to 9 % in normalisation (last epoch: ≤ 1.5 %), ROLR kept epoch 5 of 60, and patience 10
ended runs long before the cosine annealing that makes the estimator precise. The price: with
few events (≈ 10³) a (100, 100) network overfits within 50 epochs and a validation split of
≈ 100 events cannot tell (CARL: median MSE of log r̂ 0.034 for the last epoch, 0.021 for the
early minimum); there, pass ``keep="best"`` with ``patience``, fewer ``epochs`` or
``weight_decay``. Large flows may want a lower ``learning_rate``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..exceptions import ConfigError

__all__ = ["TrainingConfig", "Schedule", "Keep", "Init", "learning_rate_factor"]

Schedule = Literal["cosine", "onecycle", "plateau", "constant"]
_SCHEDULES = ("cosine", "onecycle", "plateau", "constant")
Keep = Literal["auto", "best", "smoothed", "last"]
_KEEP = ("auto", "best", "smoothed", "last")
Init = Literal["seed", "keep"]
_INIT = ("seed", "keep")


@dataclass(frozen=True)
class TrainingConfig:
    r"""Everything that determines a training run (saved with checkpoints, publishable).

    Attributes:
        epochs: Maximum number of passes over the training data.
        batch_size: Events per optimizer step.
        learning_rate: Peak Adam learning rate.
        schedule: Learning-rate schedule: ``"cosine"`` (per step, from ``learning_rate`` to
            ``final_lr_fraction * learning_rate`` over ``epochs``), ``"onecycle"`` (linear warm-up
            over the first 20 % of steps, then cosine; Smith & Topin, arXiv:1708.07120),
            ``"plateau"`` (multiply by ``plateau_factor`` when the smoothed validation loss has not
            improved for ``plateau_patience`` epochs) or ``"constant"``.
        final_lr_fraction: Learning rate at the end of ``"cosine"``/``"onecycle"``, relative.
        plateau_factor: Factor of a ``"plateau"`` reduction, in (0, 1).
        plateau_patience: Epochs without improvement before a ``"plateau"`` reduction.
        weight_decay: Decoupled weight decay (AdamW; Loshchilov & Hutter, arXiv:1711.05101).
        clip_norm: Maximum gradient norm (per member for ensembles); ``None`` disables clipping.
        validation_fraction: Fraction of the events held out for validation when no explicit
            validation events are given (monitoring in ``history``, ``keep``, ``patience``);
            ``0`` disables validation: the last epoch is kept, nothing stops early.
        patience: Stop when the smoothed validation loss has not improved (by more than
            ``min_delta``, relative) for this many epochs; ``None`` (default) trains the whole
            budget, which the cosine schedule anneals over.
        smoothing: Weight of the past in the exponential moving average of the validation
            loss that early stopping watches, in [0, 1); ``0`` watches the raw loss.
        keep: Which weights ``fit`` returns (per ensemble member): ``"auto"`` (default) — the
            last epoch, unless its validation loss lies more than 3 standard errors (from the
            per-event spread of the loss) above the lowest one, then the lowest one's: noise
            does not choose, clear overfitting does; ``"best"`` — the epoch of the lowest raw
            validation loss; ``"smoothed"`` — the epoch of the lowest smoothed validation loss;
            ``"last"`` — the final epoch (``fit`` warns with
            :class:`~sbilab.training.OverfittingWarning` if it validates > 3 standard errors
            above the minimum). Without validation the last epoch is always kept.
        min_delta: Relative improvement of the smoothed validation loss that resets patience.
            Default 0: losses with a high floor (ALICE's soft-label entropy, NLLs) improve by
            tiny relative amounts while the estimator still gets markedly better.
        ensemble: Number of ensemble members trained at once. ``fit`` trains the module it is
            given: pass an :class:`~sbilab.nets.ensemble.Ensemble` of K members (this field then
            records K); ``ensemble > 1`` with a single module is refused, since its copies would be
            trained and the module itself left untrained.
        amp: bfloat16 autocast for the forward pass on CUDA (ignored on CPU).
        seed: Seed of the validation split, the batch order, the initial weights (``init="seed"``;
            per member for ensembles) and any randomness inside the model (dropout): ``fit(...,
            seed=s)`` alone makes a run reproducible, however the estimator was built.
        init: ``"seed"`` (default) — draw the estimator's parameters again from ``seed`` before
            training (every submodule's ``reset_parameters``; buffers such as standardisation
            constants are kept; :func:`sbilab.nets.init.reinitialise`); ``"keep"`` — start from
            the weights it holds (a warm start, fine-tuning a loaded estimator).
    """

    epochs: int = 50
    batch_size: int = 512
    learning_rate: float = 5e-3
    schedule: Schedule = "cosine"
    final_lr_fraction: float = 0.01
    plateau_factor: float = 0.3
    plateau_patience: int = 2
    weight_decay: float = 0.0
    clip_norm: float | None = 5.0
    validation_fraction: float = 0.1
    patience: int | None = None
    smoothing: float = 0.5
    keep: Keep = "auto"
    min_delta: float = 0.0
    ensemble: int = 1
    amp: bool = False
    seed: int = 0
    init: Init = "seed"

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"fit: {name} must be a positive integer, got {value!r}.")

        for name in ("epochs", "batch_size", "ensemble", "plateau_patience"):
            positive_int(name)
        if self.patience is not None:
            positive_int("patience")
        if self.keep not in _KEEP:
            raise ConfigError(f"fit: keep must be one of {_KEEP}, got {self.keep!r}.")
        if self.init not in _INIT:
            raise ConfigError(f"fit: init must be one of {_INIT}, got {self.init!r}; 'keep' continues from the "
                              "estimator's current weights (a warm start).")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"fit: schedule must be one of {_SCHEDULES}, got {self.schedule!r}.")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"fit: learning_rate must be a positive number, got {self.learning_rate!r}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"fit: validation_fraction must be in [0, 1), got {self.validation_fraction!r}.")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"fit: smoothing must be in [0, 1), got {self.smoothing!r}.")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError(f"fit: plateau_factor must be in (0, 1), got {self.plateau_factor!r}.")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ConfigError(f"fit: final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"fit: clip_norm must be positive or None, got {self.clip_norm!r}.")
        if self.weight_decay < 0 or self.min_delta < 0:
            raise ConfigError("fit: weight_decay and min_delta must be non-negative.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"fit: seed must be an integer, got {self.seed!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (JSON-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"TrainingConfig: unknown options {unknown}; known: {sorted(known)}.")
        return cls(**values)


def learning_rate_factor(config: TrainingConfig, step: int, total_steps: int, plateau_reductions: int = 0) -> float:
    r"""Learning rate relative to ``config.learning_rate`` before optimizer step ``step`` (0-based).

    Example:
        >>> cfg = TrainingConfig(schedule="cosine", final_lr_fraction=0.0)
        >>> [round(learning_rate_factor(cfg, s, 4), 3) for s in range(4)]
        [1.0, 0.854, 0.5, 0.146]
    """
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "plateau":
        return config.plateau_factor ** plateau_reductions
    floor = config.final_lr_fraction
    t = min(step / max(total_steps, 1), 1.0)
    if config.schedule == "onecycle":
        warm = 0.2
        if t < warm:
            return 0.04 + 0.96 * t / warm
        t = (t - warm) / (1.0 - warm)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
