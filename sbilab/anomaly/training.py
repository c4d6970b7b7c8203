r"""Labelled training data with spectators, classifier training through ``fit``, and scores.

Every classifier of :mod:`sbilab.anomaly` — DisCo, Double-DisCo, CWoLa, CATHODE, the idealised
and supervised references — is a core :class:`~sbilab.estimators.Classifier` (or a
:class:`~sbilab.estimators.ClassifierPair`) trained by :func:`sbilab.training.fit`; ensembles are an
:class:`~sbilab.nets.Ensemble` of K members trained by ``fit`` and their score is the members' mean logit (the logarithm of the
geometric mean of their likelihood ratios).

Training runs the whole cosine schedule and keeps the last epoch (``validation_fraction=0``,
no early stopping): with ``keep="best"`` on a small validation split the returned weights can
come from an early, biased epoch (observed with the core classifier); the tests check the
trained logit against the exact log-ratio of the toys.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..estimators import Classifier, ClassifierPair, carl_loss, check_spectator_not_input, classifier_training_data
from ..events import Events
from ..exceptions import InvalidEventsError
from ..nets import Ensemble
from ..training import fit

__all__ = ["labelled_events", "train_classifier", "classifier_score"]


def labelled_events(class0: Events, class1: Events, *, weights0: Any = None, weights1: Any = None) -> Events:
    """Training events: ``class0`` with label 0 (background, reference), ``class1`` with label 1, spectators kept.

    Args:
        class0, class1: Events with ``x (N, D)``; a ``spectator (N, S)`` on both or neither.
        weights0, weights1: Weights ``(N0,)``, ``(N1,)`` (default: the events' own weights, if any).

    Raises:
        InvalidEventsError: one sample has a spectator and the other not, or they differ in columns.
        ConfigError: a spectator column is identical to an input column.
    """
    if (class0.spectator is None) != (class1.spectator is None):
        raise InvalidEventsError("labelled_events: give a spectator (e.g. the mass) for both samples or for neither.")
    train = classifier_training_data(class0.x, class1.x, weights0=class0.weights if weights0 is None else weights0,
                                     weights1=class1.weights if weights1 is None else weights1)
    if class0.spectator is None:
        return train
    if class0.spectator.shape[1] != class1.spectator.shape[1]:
        raise InvalidEventsError(f"labelled_events: spectators have {class0.spectator.shape[1]} and {class1.spectator.shape[1]} columns.")
    spectator = torch.cat([class0.spectator, class1.spectator]).to(train.x.dtype)
    check_spectator_not_input(train.x, spectator)
    return train.replace(spectator=spectator)


def train_classifier(
    train: Events,
    *,
    loss: Callable[[nn.Module, Events], Tensor] = carl_loss,
    pair: bool = False,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 30,
    batch_size: int = 1024,
    learning_rate: float = 5e-3,
    ensemble: int = 1,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> nn.Module:
    """A :class:`Classifier` (or :class:`ClassifierPair` with ``pair``) trained by ``fit`` on labelled ``train`` events.

    Args:
        train: Labelled events (:func:`labelled_events`).
        loss: ``carl_loss`` (cross-entropy), ``functools.partial(disco_loss, lam=...)``, or for a
            pair ``functools.partial(double_disco_loss, lam=...)``.
        pair: Train two classifiers at once (Double-DisCo).
        hidden, epochs, batch_size, learning_rate, seed, device, progress: Network and ``fit`` options.
        ensemble: Members K trained at once (an :class:`~sbilab.nets.Ensemble` of the classifier, trained
            by ``fit``; its members' initial weights drawn from ``seed``); the result is then that Ensemble.

    Returns:
        The trained module (on CPU), in evaluation mode.
    """
    if pair:
        model: nn.Module = ClassifierPair(Classifier.from_events(train, hidden=hidden, seed=seed),
                                          Classifier.from_events(train, hidden=hidden, seed=seed + 7919))
    else:
        model = Classifier.from_events(train, hidden=hidden, seed=seed)
    if ensemble > 1:
        model = Ensemble(model, ensemble, generator=torch.Generator().manual_seed(seed))
    # a single classifier keeps the weights drawn from ``seed`` above; fit draws an ensemble's members from ``seed``
    init = "seed" if ensemble > 1 else "keep"
    result = fit(model, loss, train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, ensemble=ensemble,
                 seed=seed, init=init, device=device, validation_fraction=0.0, patience=None, progress=progress)
    return result.model.cpu().eval()


@torch.no_grad()
def classifier_score(model: nn.Module, x: Any, *, chunk: int = 65536) -> Tensor:
    """Logits of a trained classifier (mean over ensemble members), ``x (N, D)`` -> ``(N,)`` (``(N, 2)`` for a pair)."""
    parameter = next(model.parameters())
    x = torch.as_tensor(x).to(device=parameter.device, dtype=parameter.dtype)
    outs = []
    for start in range(0, x.shape[0], chunk):
        out = model(x[start:start + chunk])
        outs.append(out.mean(0) if isinstance(model, Ensemble) else out)
    return torch.cat(outs).double().cpu()
