r"""A plain (optionally parameterised) binary classifier: logits for ``x``, vector or particle set.

:class:`Classifier` returns the logit :math:`f(x)` (or :math:`f(x, \theta)`) of "class 1"
against "class 0". Trained by :func:`sbilab.training.fit` with the binary cross-entropy
:func:`~sbilab.estimators.losses.carl_loss` on events labelled 0/1 with weights :math:`w_i`,

.. math:: L[f] = \sum_i w_i\,\bigl[-y_i \log\sigma(f(x_i)) - (1-y_i)\log(1-\sigma(f(x_i)))\bigr],

its minimiser is :math:`f(x) = \log \frac{W_1\,p_1(x)}{W_0\,p_0(x)}` with :math:`p_c` the
(weighted) density of class :math:`c` and :math:`W_c = \sum_{i: y_i = c} w_i` the class
totals (the likelihood-ratio trick: Cranmer, Pavez, Louppe, arXiv:1506.02169). The density
ratio :math:`p_1/p_0 = e^{f}\,W_0/W_1` is what reweighting needs; it is computed, with reported
clipping, by the one function :func:`~sbilab.estimators.reweighting.classifier_weights`.
:meth:`Classifier.from_events` records :math:`(W_0, W_1)` in the buffer ``class_totals``.

Build training data with :func:`classifier_training_data` (sample 0, sample 1, optional weights,
θ and set masks). A parameterised classifier (Baldi et al., arXiv:1601.07913) sees θ as an extra
input; give the events a ``theta (N, P)``; for a classifier of ``x`` alone ``theta`` is ``(N, 0)``.

How applications compose it (sketch; every name below is core API)::

    from sbilab.estimators import Classifier, carl_loss, classifier_training_data, classifier_weights
    from sbilab.training import fit

    # OmniFold step 1 (Andreassen et al., arXiv:1911.09107): reweight simulation to data at
    # detector level. sim_reco (N, D) with prior weights nu (N,), data (M, D).
    train = classifier_training_data(sim_reco, data, weights0=nu)      # label 0: sim, 1: data
    clf = Classifier.from_events(train, hidden=(100, 100), seed=0)
    fit(clf, carl_loss, train, seed=0)
    step1 = classifier_weights(clf.logit(sim_reco), class_totals=clf.class_totals,
                               base_weights=nu, w_min=1e-3, w_max=1e3)   # clipping reported
    pulled = step1.weights                                               # omega (N,) = nu * p_data/p_sim
    # step 2: the same three calls at generator level, sample 0 = sim_gen with weights nu,
    # sample 1 = sim_gen with weights pulled; the new nu = nu * ratio; iterate.

    # CWoLa hunting (Metodiev, Nachman, Thaler, arXiv:1708.02949; Collins et al., 1805.02664):
    # signal-region vs sideband events, features x (N, D) without the mass.
    train = classifier_training_data(x_sideband, x_signal_region)
    clf = Classifier.from_events(train, seed=1)
    fit(clf, carl_loss, train, seed=1)
    score = clf.logit(x_signal_region)                                  # cut on it, then ABCD/fit in m

    # Reweighting closure test (sbilab.calibration.closure_test): reweight the reference by
    # a learned ratio with classifier_weights(log_r, base_weights=w0) and train a fresh
    # Classifier between reweighted reference and target; AUC 0.5 means closure.

Sets: with ``x (N, M, F)`` and a ``mask (N, M)`` the network embeds the set first
(:mod:`sbilab.nets.sets`, deep sets by default), so padded slots never count.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from ..nets.conditioned import ConditionedNetwork
from ..registry import register_publishable
from .checks import check_finite, check_x
from .support import TrainingSupport, warn_outside

__all__ = ["Classifier", "classifier_training_data"]


def _input(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value)
    if t.is_complex():
        raise ShapeMismatchError(f"{name} is complex ({t.dtype}); pass real observables (e.g. x.real and x.imag as two columns).")
    return t


@register_publishable
class Classifier(nn.Module):
    r"""Binary classifier; ``forward(x, theta=None, mask=None) -> logit (N,)``.

    Args:
        x_features: ``D`` for vector inputs ``(N, D)``; features per particle ``F`` for sets.
        theta_features: ``P`` of a parameterised classifier (inputs ``theta (N, P)``); 0 for a
            classifier of ``x`` alone.
        hidden, activation, residual: Network shape (see :class:`~sbilab.nets.conditioned.ConditionedNetwork`).
        embedding: Set embedding options for particle-set inputs, e.g. ``{"kind": "deepsets", "out_features": 32}``;
            ``None`` for vector inputs.

    Buffers: the x (and θ) standardisation and ``class_totals`` :math:`(W_0, W_1)` of the training
    events, all set by :meth:`from_events` / :meth:`standardize_from` and published with the weights.

    ``forward`` is the fast, unvalidated training path (θ ignored when ``theta_features = 0``);
    :meth:`logit` checks shapes and that the output is finite.

    Example:
        >>> train = classifier_training_data(torch.randn(64, 2), torch.randn(32, 2) + 1)
        >>> clf = Classifier.from_events(train, hidden=(8,), seed=0)
        >>> clf.logit(torch.zeros(3, 2)).shape, clf.class_totals.tolist()
        (torch.Size([3]), [64.0, 32.0])
    """

    ensemble_reduction = "mean"  # EnsembleMean averages the members' logits (see sbilab.estimators.ensembles)

    def __init__(self, x_features: int, *, theta_features: int = 0, hidden: Sequence[int] = (100, 100), activation: str = "silu",
                 residual: bool = False, embedding: dict[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(x_features, bool) or not isinstance(x_features, int) or x_features < 1:
            raise ConfigError(f"Classifier: x_features must be a positive integer, got {x_features!r}.")
        if isinstance(theta_features, bool) or not isinstance(theta_features, int) or theta_features < 0:
            raise ConfigError(f"Classifier: theta_features must be an integer >= 0, got {theta_features!r}.")
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"Classifier: hidden must list at least one layer width >= 1, got {hidden}; e.g. hidden=(100, 100).")
        self.x_features, self.theta_features = x_features, theta_features
        self._options = {"hidden": hidden, "activation": activation, "residual": bool(residual),
                         "embedding": None if embedding is None else dict(embedding)}
        self.net = ConditionedNetwork(x_features, theta_features, 1, hidden=hidden, activation=activation,
                                      residual=residual, embedding=embedding)
        self.register_buffer("class_totals", torch.ones(2))
        self.training_support: TrainingSupport | None = None  # range of the training x, set by standardize_from

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_events(cls, events: Events, *, seed: int | None = None, **options: Any) -> "Classifier":
        """A new classifier whose shapes, standardisation and class totals come from labelled training ``events``.

        Args:
            events: Events with ``label`` 0/1 (:func:`classifier_training_data`); ``theta (N, P)``
                makes a parameterised classifier, ``(N, 0)`` a classifier of ``x`` alone.
            seed: Seed of the initial weights (drawn under a private RNG; the global one is untouched).
                ``None`` draws from torch's global RNG.
            **options: ``hidden``, ``activation``, ``residual``, ``embedding`` (default for sets:
                ``{"kind": "deepsets"}``).
        """
        embedding = options.pop("embedding", {"kind": "deepsets"} if events.is_set else None)
        if seed is None:
            est = cls(events.n_observables, theta_features=events.n_parameters, embedding=embedding, **options)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                est = cls(events.n_observables, theta_features=events.n_parameters, embedding=embedding, **options)
        return est.standardize_from(events)

    def check_training_events(self, events: Events) -> None:
        """Raise :class:`ShapeMismatchError` unless ``events`` have the x and θ shapes this classifier was built for.

        :func:`~sbilab.training.fit` calls it before the first epoch.
        """
        if events.is_set != self.is_set or events.n_observables != self.x_features:
            raise ShapeMismatchError(
                f"Classifier: events have x of shape {tuple(events.x.shape)} but the classifier was built for "
                f"{'sets (N, M, ' if self.is_set else '(N, '}{self.x_features}); build it with Classifier.from_events(events)."
            )
        if events.n_parameters != self.theta_features:
            raise ShapeMismatchError(
                f"Classifier: events have theta with {events.n_parameters} columns, the classifier takes {self.theta_features}; "
                "for a classifier of x alone give theta of shape (N, 0) (classifier_training_data does)."
            )

    def standardize_from(self, events: Events) -> "Classifier":
        """Set the x/θ standardisation (weights respected) and ``class_totals`` from labelled training ``events``.

        Raises:
            ShapeMismatchError: the events' x or θ do not have the classifier's shapes.
            InvalidEventsError: labels missing or not all 0/1, or a class with no positive total weight.
        """
        self.check_training_events(events)
        self.class_totals.copy_(torch.as_tensor(_class_totals(events), dtype=self.class_totals.dtype))
        self.net.standardize_from(events.x, events.theta, mask=events.mask, weights=events.weights)
        self.training_support = TrainingSupport.from_data(events.x, mask=events.mask, weights=events.weights)
        return self

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments and the training support (weights, standardisation and class totals are saved as tensors)."""
        support = {} if self.training_support is None else {"training_support": self.training_support.to_dict()}
        return {"x_features": self.x_features, "theta_features": self.theta_features, **self._options, **support}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Classifier":
        """Rebuild an untrained classifier from :meth:`spec` (no training support in a spec from an older file: ``None``)."""
        spec = dict(spec)
        support = spec.pop("training_support", None)
        clf = cls(spec.pop("x_features"), **spec)
        clf.training_support = None if support is None else TrainingSupport.from_dict(support)
        return clf

    @property
    def is_set(self) -> bool:
        return self._options["embedding"] is not None

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: Tensor, theta: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logit: ``x (N, D)`` or ``(N, M, F)``, ``theta (N, P)`` (ignored if unparameterised), ``mask (N, M)`` -> ``(N,)``."""
        return self.net(x, theta if self.theta_features else None, mask)[..., 0]

    def logit(self, x: Any, theta: Any = None, *, mask: Any = None) -> Tensor:
        r"""Validated logit :math:`f(x[, \theta]) = \log \frac{W_1 p_1}{W_0 p_0}`, ``(N,)``.

        Args:
            x: ``(N, D)`` (``(N,)`` when ``D = 1``), or ``(N, M, F)`` with ``mask (N, M)``.
            theta: ``(P,)`` (all events) or ``(N, P)``; only for a parameterised classifier.

        Raises:
            ShapeMismatchError: ``x``, ``mask`` or ``theta`` do not have the trained shapes,
                ``x`` is complex, or θ is given to a classifier of ``x`` alone (or missing).
            NonFiniteOutputError: the network returns NaN/inf.
        """
        x, mask = check_x(_input(x, "x"), features=self.x_features, is_set=self.is_set, like=self.class_totals, mask=mask)
        warn_outside(self.training_support, x, mask, owner="Classifier.logit")
        t = self._theta(theta, x.shape[0])
        return check_finite(self(x, t, mask), what="Classifier.logit")

    def _theta(self, theta: Any, n: int) -> Tensor | None:
        if self.theta_features == 0:
            if theta is not None and torch.as_tensor(theta).numel() > 0:
                raise ShapeMismatchError("Classifier.logit: this classifier takes x alone (theta_features=0); do not pass theta.")
            return None
        if theta is None:
            raise ShapeMismatchError(f"Classifier.logit: this classifier is parameterised; pass theta (P,) or (N, P) with P = {self.theta_features}.")
        t = _input(theta, "theta").to(device=self.class_totals.device, dtype=self.class_totals.dtype)
        if t.dim() == 1 and t.shape[0] == self.theta_features:
            t = t.expand(n, -1)
        if t.dim() != 2 or t.shape != (n, self.theta_features):
            raise ShapeMismatchError(f"Classifier.logit: theta has shape {tuple(t.shape)}; expected ({self.theta_features},) or ({n}, {self.theta_features}).")
        if not bool(torch.isfinite(t).all()):
            raise ShapeMismatchError("Classifier.logit: theta holds NaN or inf values.")
        return t


def _class_totals(events: Events) -> tuple[float, float]:
    """Weighted totals :math:`(W_0, W_1)` of the two classes; checks the labels are 0/1."""
    label = events.label
    if label is None:
        raise InvalidEventsError("Classifier: the training events have no label; build them with "
                                 "classifier_training_data(x0, x1) (label 0 for x0, 1 for x1).")
    bad = (label != 0) & (label != 1)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise InvalidEventsError(f"Events.label must be 0 or 1 for a classifier; {int(bad.sum())} rows are not "
                                 f"(first at row {first}: {float(label[first])}). Soft labels need another loss.")
    w = events.weights_or_ones().double()
    lab = label.to(w)
    totals = (float((w * (1 - lab)).sum()), float((w * lab).sum()))
    for c, total in enumerate(totals):
        if not total > 0:
            raise InvalidEventsError(f"Classifier: class {c} has total weight {total:g}; both classes need events with a "
                                     "positive total weight.")
    return totals


def classifier_training_data(
    x0: Any,
    x1: Any,
    *,
    weights0: Any = None,
    weights1: Any = None,
    theta0: Any = None,
    theta1: Any = None,
    mask0: Any = None,
    mask1: Any = None,
) -> Events:
    """Labelled events of two samples: ``x0`` with label 0, ``x1`` with label 1.

    Args:
        x0, x1: ``(N0, D)`` and ``(N1, D)`` (``(N,)`` for ``D = 1``), or padded sets ``(N, M, F)``
            (the two ``M`` may differ: the shorter is padded).
        weights0, weights1: Event weights ``(N0,)``, ``(N1,)`` (default ones).
        theta0, theta1: Parameters of a parameterised classifier, ``(N0, P)``, ``(N1, P)``
            (or ``(P,)`` for all events of the sample); give both or neither.
        mask0, mask1: Set masks ``(N0, M0)``, ``(N1, M1)`` (default: all entries real).

    Returns:
        :class:`~sbilab.events.Events` with ``x``, ``theta`` (``(N, 0)`` without θ), ``label``,
        ``weights`` (if any were given) and ``mask`` (for sets), sample 0 first, in torch's
        default dtype.

    Raises:
        ShapeMismatchError: the samples differ in width or kind (vector/set), or θ is given for one only.
        InvalidEventsError: a field has the wrong length or non-finite values.
    """
    a, b = _input(x0, "x0"), _input(x1, "x1")
    a = a.reshape(-1, 1) if a.dim() == 1 else a
    b = b.reshape(-1, 1) if b.dim() == 1 else b
    if a.dim() != b.dim() or a.shape[-1] != b.shape[-1] or a.dim() not in (2, 3):
        raise ShapeMismatchError(f"classifier_training_data: x0 has shape {tuple(a.shape)} and x1 {tuple(b.shape)}; "
                                 "they must both be (N, D) or both (N, M, F) with the same D or F.")
    dtype = torch.get_default_dtype()  # the dtype networks are built in (numpy's float64 would not match them)
    a, b = a.to(dtype), b.to(dtype)
    mask = None
    if a.dim() == 3:
        m0 = torch.ones(a.shape[:2], dtype=torch.bool) if mask0 is None else torch.as_tensor(mask0).bool()
        m1 = torch.ones(b.shape[:2], dtype=torch.bool) if mask1 is None else torch.as_tensor(mask1).bool()
        for name, m, x in (("mask0", m0, a), ("mask1", m1, b)):
            if m.shape != x.shape[:2]:
                raise ShapeMismatchError(f"classifier_training_data: {name} has shape {tuple(m.shape)}, expected {tuple(x.shape[:2])}.")
        width = max(a.shape[1], b.shape[1])
        a, b, m0, m1 = _pad(a, width), _pad(b, width), _pad(m0, width), _pad(m1, width)
        mask = torch.cat([m0, m1])
    elif mask0 is not None or mask1 is not None:
        raise ShapeMismatchError("classifier_training_data: masks are for padded sets x (N, M, F); vector x takes none.")
    n0, n1 = a.shape[0], b.shape[0]
    if (theta0 is None) != (theta1 is None):
        raise ShapeMismatchError("classifier_training_data: give theta0 and theta1 together (a parameterised classifier "
                                 "needs θ for every event), or neither.")
    if theta0 is None:
        theta = a.new_zeros(n0 + n1, 0)
    else:
        t0, t1 = (_input(t, name).to(dtype) for t, name in ((theta0, "theta0"), (theta1, "theta1")))
        t0 = t0.expand(n0, -1) if t0.dim() == 1 else t0
        t1 = t1.expand(n1, -1) if t1.dim() == 1 else t1
        if t0.dim() != 2 or t1.dim() != 2 or t0.shape[1] != t1.shape[1]:
            raise ShapeMismatchError(f"classifier_training_data: theta0 {tuple(t0.shape)} and theta1 {tuple(t1.shape)} must be (N, P) with one P.")
        theta = torch.cat([t0, t1])
    weights = None
    if weights0 is not None or weights1 is not None:
        w0 = torch.ones(n0, dtype=dtype) if weights0 is None else torch.as_tensor(weights0, dtype=dtype).reshape(-1)
        w1 = torch.ones(n1, dtype=dtype) if weights1 is None else torch.as_tensor(weights1, dtype=dtype).reshape(-1)
        if w0.numel() != n0 or w1.numel() != n1:
            raise InvalidEventsError(f"classifier_training_data: weights0 has {w0.numel()} values for {n0} events and weights1 "
                                     f"{w1.numel()} for {n1}; give one weight per event.")
        weights = torch.cat([w0, w1])
    label = torch.cat([a.new_zeros(n0), a.new_ones(n1)])
    return Events(x=torch.cat([a, b]), theta=theta, label=label, weights=weights, mask=mask)


def _pad(t: Tensor, width: int) -> Tensor:
    """``t (N, M, ...)`` (a set or its mask) padded with zeros (``False``) along axis 1 to ``(N, width, ...)``."""
    if t.shape[1] == width:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], *t.shape[2:])], dim=1)
