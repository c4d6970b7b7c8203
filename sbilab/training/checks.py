r"""What :func:`~sbilab.training.fit` checks before the first epoch, so that bad input is named, not trained on.

* **Events** (training and validation; complex fields are refused by ``Events`` itself):
  ``label`` only 0 or 1 (the losses' convention: 1 = drawn at θ, 0 = at the reference;
  other values are not probabilities and train silently to nonsense), event weights whose sum
  is clearly positive (the loss is normalised by :math:`\sum_i w_i`; weights of both signs that
  cancel make it noise).
* **Estimator and events agree**: an estimator with ``check_training_events`` (every sbilab
  estimator) compares the events' shapes with those it was built for.
* **A dry run of the loss** on two events (eval mode, no update): a missing augmented field, a
  bad loss option or a shape error surfaces now, with the estimator's expected shapes, instead
  of after an epoch.
* **The checkpoint path** is writable (a file is created and removed next to it).
* **An ensemble is passed as one**: ``ensemble=K > 1`` with a single module is refused.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from ..nets.ensemble import Ensemble
from .config import TrainingConfig

__all__ = ["check_events", "check_estimator", "check_members", "dry_run", "check_checkpoint_path", "first_events"]

_CANCELLING = 1e-6  # |sum w| below this fraction of sum |w|: weights cancel


def _rows(bad: Tensor) -> str:
    index = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).reshape(-1)
    first = ", ".join(str(int(i)) for i in index[:5])
    return f"{index.numel()} of {bad.shape[0]} rows (first: {first})"


def check_events(events: Events, *, what: str) -> None:
    """Raise :class:`InvalidEventsError` for labels other than 0/1 or cancelling weights.

    Args:
        events: Training or validation events (or one batch of a stream).
        what: How the message names them (``"data"``, ``"validation"``).
    """
    label = events.label
    if label is not None:
        bad = (label != 0) & (label != 1)
        if bool(bad.any()):
            values = sorted({float(v) for v in label[bad][:1000].tolist()})[:5]
            raise InvalidEventsError(
                f"fit: {what}.label holds values other than 0 and 1 in {_rows(bad)}; values {values}. The label says where "
                "an event was drawn: 1 at its theta, 0 at the reference (ratio_training_data, classifier_training_data "
                "set it). Map your classes to 0/1; for soft targets use a loss that reads them (e.g. ALICE's joint ratio)."
            )
    weights = events.weights
    if weights is not None:
        total, scale = float(weights.double().sum()), float(weights.double().abs().sum())
        if not total > _CANCELLING * scale:
            raise InvalidEventsError(
                f"fit: the event weights of {what} sum to {total:.4g} (sum of |w| = {scale:.4g}); the loss is the weighted "
                "mean over events, normalised by the sum of the weights, which must be clearly positive. Check the sign "
                "convention of the weights, or drop/merge events whose negative weights cancel the positive ones."
            )


def check_estimator(model: nn.Module, events: Events) -> None:
    """Let the estimator (an Ensemble's template) compare ``events`` with the shapes it was built for."""
    base = model.template if isinstance(model, Ensemble) else model
    check = getattr(base, "check_training_events", None)
    if callable(check):
        check(events)


def _describe(model: nn.Module) -> str:
    base = model.template if isinstance(model, Ensemble) else model
    parts = [type(base).__name__]
    if isinstance(getattr(base, "x_features", None), int):
        parts.append(f"built for {base.x_features} observable(s) per event")
    first = next((m for m in base.modules() if isinstance(m, nn.Linear)), None)
    if first is not None and len(parts) == 1:
        parts.append(f"whose first layer takes {first.in_features} input features")
    return " ".join(parts)


def dry_run(model: nn.Module, loss: Callable[[nn.Module, Events], Tensor], batch: Events) -> None:
    """Evaluate ``loss`` once on ``batch`` (eval mode, parameters untouched); name shape errors.

    Errors sbilab raises itself (missing augmented data, bad options) pass unchanged; torch's
    shape errors (``mat1 and mat2 shapes cannot be multiplied``, ``size of tensor a``) become a
    :class:`ShapeMismatchError` naming the estimator and the events' shapes.
    """
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss(model, batch)
    except RuntimeError as err:
        text = str(err)
        if not any(key in text for key in ("shape", "size of tensor", "must match the size", "mat1", "dimension")):
            raise
        theta = tuple(batch.theta.shape) if batch.theta is not None else None
        raise ShapeMismatchError(
            f"fit: the loss failed on the first events, x of shape {tuple(batch.x.shape)} and theta of shape {theta}, "
            f"with {_describe(model)} ({text.splitlines()[0]}). Build the estimator from these events "
            "(e.g. RatioEstimator.from_events(events, space)) or pass events of the shape it was built for."
        ) from err
    finally:
        model.train(training)


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """Make sure ``path``'s folder exists and is writable, before any epoch is spent; returns the path.

    Raises:
        ConfigError: the folder cannot be created or written, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"fit: checkpoint={str(path)!r} is a folder; give a file name, e.g. {str(path / 'run.pt')!r}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ConfigError(
            f"fit: cannot write the checkpoint {str(path)!r} ({err.strerror or err}); choose a writable folder, "
            "or pass checkpoint=None to train without checkpoints."
        ) from err
    return path


def first_events(source: Any, n: int = 2) -> Events | None:
    """The first ``n`` training events of a batch source (for the dry run), on its device."""
    events = getattr(source, "events", None)
    if isinstance(events, Events):
        return events[:n].to(source.device)
    stream = getattr(source, "stream", None)
    if stream is not None:
        return next(iter(stream.batches(n, shuffle=False))).to(source.device)
    return None


def check_members(estimator: nn.Module, config: TrainingConfig) -> TrainingConfig:
    """``config`` with ``ensemble`` = the number of members of ``estimator``; refuses a plain module with ``ensemble > 1``.

    ``fit`` trains the module it is given, in place; building an Ensemble of copies of a single
    estimator would leave the caller's estimator untrained, with the trained members only in the
    returned result: an easy way to fit data with an untrained network. So the caller builds the
    Ensemble and holds it.
    """
    k = estimator.k if isinstance(estimator, Ensemble) else 1
    if config.ensemble > 1 and k == 1:
        name = type(estimator).__name__
        raise ConfigError(
            f"fit: ensemble={config.ensemble} with a single {name}: fit trains the module it is given, in place, and "
            f"would leave this {name} untrained. Build the ensemble yourself and keep it: "
            f"ens = Ensemble(estimator, {config.ensemble}); fit(ens, ...); then use EnsembleMean(ens) "
            "(sbilab.nets.Ensemble, sbilab.estimators.EnsembleMean). Or pass ensemble=1."
        )
    if config.ensemble not in (1, k):
        raise ConfigError(f"fit: ensemble={config.ensemble}, but the Ensemble passed has {k} members; pass ensemble={k} or 1.")
    return dataclasses.replace(config, ensemble=k)
