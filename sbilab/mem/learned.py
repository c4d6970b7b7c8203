r"""Learned detector pieces of the MEM: transfer function :math:`p(x|y)` and acceptance :math:`\epsilon(y)`.

From (reco, parton) pairs of any simulator (:class:`~sbilab.paired.PairedEvents`: parton level
``gen``, reconstructed objects ``reco`` in the same slot order, ``pass_reco`` the selection),
the core estimators learn (ML-MEM, arXiv:2210.00019, arXiv:2310.07752):

* the **transfer function of accepted events** :math:`W_\mathrm{acc}(x|y) = W(x|y)\,\mathbb 1[x \in \mathrm{cuts}]/\epsilon(y)`,
  a :class:`~sbilab.estimators.ConditionalDensity` of ``reco`` given ``gen`` trained by
  :func:`~sbilab.training.fit` on the matched pairs (:meth:`PairedEvents.conditional`
  with ``target="reco"``), wrapped as a :class:`~sbilab.mem.transfer.TransferFunction` by
  :class:`LearnedTransfer`;
* the **acceptance** :math:`\epsilon(y) = P(\mathrm{pass}|y)`, a
  :class:`~sbilab.estimators.Classifier` of ``pass_reco`` given ``gen`` (the cross-entropy's
  minimiser is :math:`\sigma(f) = P(\mathrm{pass}|y)`), entering the process as its
  parton-level efficiency (:class:`AcceptedProcess`).

Their product is the detector response restricted to the cuts,
:math:`\epsilon(y)\,W_\mathrm{acc}(x|y) = W(x|y)\,\mathbb 1[x\in\mathrm{cuts}]`, so the MEM
numerator :math:`\int d\sigma\,\epsilon\,W_\mathrm{acc}` and its normalisation
:math:`\sigma_\mathrm{fid} = \int d\sigma\,\epsilon` are those of the analytic model. A
transfer density with bounds equal to the cuts (e.g. ``low``/``high`` the window) keeps every
draw inside them.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
from torch import Tensor

from ..estimators import Classifier, ConditionalDensity, classifier_training_data, get_loss
from ..estimators.support import training_support
from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..paired import PairedEvents
from ..training import TrainingConfig, fit
from .model import HardProcess, MatrixElement

__all__ = ["LearnedTransfer", "LearnedAcceptance", "AcceptedProcess", "detector_pairs", "fit_transfer", "fit_acceptance",
           "TRANSFER_TRAINING", "ACCEPTANCE_TRAINING"]

TRANSFER_TRAINING = TrainingConfig(epochs=30, batch_size=512, learning_rate=2e-3, schedule="cosine", final_lr_fraction=0.01,
                                   plateau_factor=0.3, plateau_patience=2, weight_decay=0.0, clip_norm=5.0, validation_fraction=0.1,
                                   patience=8, smoothing=0.5, keep="best", min_delta=0.0, ensemble=1, amp=False, seed=0)
"""Training of :func:`fit_transfer` (every option explicit: independent of ``fit``'s defaults)."""
ACCEPTANCE_TRAINING = TrainingConfig(epochs=30, batch_size=128, learning_rate=5e-3, schedule="cosine", final_lr_fraction=0.01,
                                     plateau_factor=0.3, plateau_patience=2, weight_decay=0.0, clip_norm=5.0, validation_fraction=0.1,
                                     patience=8, smoothing=0.5, keep="best", min_delta=0.0, ensemble=1, amp=False, seed=0)
"""Training of :func:`fit_acceptance`."""

_CHUNK = 2**16

Response = Literal["absolute", "residual", "relative"]
"""What a :class:`LearnedTransfer`'s densities model: ``x``, ``x - y`` or ``x/y - 1``."""
RESPONSES: tuple[str, ...] = get_args(Response)


def _to_response(response: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""The modelled variable ``r`` of ``x`` given ``y`` (``(M, d)`` each) and :math:`\log|\partial r/\partial x|`, ``(M,)``."""
    zero = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if response == "absolute":
        return x, zero
    if response == "residual":
        return x - y, zero
    return x / y - 1, -torch.log(y.abs()).sum(-1).to(torch.float64)


def _from_response(response: str, r: Tensor, y: Tensor) -> Tensor:
    return r if response == "absolute" else y + r if response == "residual" else y * (1 + r)


def _single(training: TrainingConfig, owner: str) -> None:
    if training.ensemble != 1:
        raise ConfigError(f"{owner}: training.ensemble must be 1 (the MEM evaluates one network), got {training.ensemble}.")


class LearnedTransfer:
    r"""A :class:`~sbilab.mem.transfer.TransferFunction` made of conditional densities, one per block of columns.

    .. math:: \log W(x|y) = \sum_b \log q_b\big(x_{[b]} \,\big|\, y_{[b]}\big),

    each :math:`q_b` a :class:`~sbilab.estimators.ConditionalDensity` of the columns ``[b]`` of
    the reconstructed objects given the same columns of the partons (one block over all columns
    is a joint response; several blocks factorise it, e.g. lepton and missing momentum). Outside
    a density's bounds the log-density is ``-inf`` and :meth:`support` is false. No nuisance
    parameters.

    The densities may model the response rather than ``x`` itself (:data:`Response`), as
    detector resolutions are usually parameterised: ``"residual"`` :math:`r = x - y`,
    ``"relative"`` :math:`r = x/y - 1` (Jacobian :math:`\prod_d 1/|y_d|`); a density's bounds
    are then bounds of ``r``. A flow learns such a nearly parton-independent variable much
    faster than the raw ``x``.

    Args:
        blocks: ``(density, columns)`` pairs; the columns of all blocks are ``0 .. D-1``, each once.
        response: What the densities model: ``"absolute"`` (``x``), ``"residual"`` or ``"relative"``.

    Raises:
        ConfigError: columns missing, repeated, or not matching a density's sizes.

    Example:
        >>> q = ConditionalDensity(1, 1, low=[85.0], high=[115.0], flow=FlowSpec(transforms=1, hidden=(8,)))
        >>> w = LearnedTransfer([(q, [0])])
        >>> w.log_prob(torch.tensor([[120.0]]), torch.tensor([[100.0]]), torch.zeros(1, 0)).tolist()
        [-inf]
    """

    nuisance_names: tuple[str, ...] = ()

    def __init__(self, blocks: Sequence[tuple[ConditionalDensity, Sequence[int]]], *, response: Response = "absolute") -> None:
        if response not in RESPONSES:
            raise ConfigError(f"LearnedTransfer: response must be one of {RESPONSES}, got {response!r}.")
        self.response = response
        self.blocks = [(density, tuple(int(c) for c in cols)) for density, cols in blocks]
        columns = sorted(c for _, cols in self.blocks for c in cols)
        if not self.blocks or columns != list(range(len(columns))):
            raise ConfigError(f"LearnedTransfer: the blocks' columns {columns} must be 0..D-1, each exactly once.")
        for density, cols in self.blocks:
            if not isinstance(density, ConditionalDensity) or density.is_set:
                raise ConfigError("LearnedTransfer: every block needs a ConditionalDensity with a vector context.")
            if density.features != len(cols) or density.context_features != len(cols):
                raise ConfigError(f"LearnedTransfer: the block on columns {cols} has a density of {density.features} target and "
                                  f"{density.context_features} context features; it must model x[{list(cols)}] given y[{list(cols)}].")
        self.width = len(columns)

    def _inside(self, density: ConditionalDensity, x: Tensor) -> Tensor:
        lo, hi = (b.to(device=x.device, dtype=x.dtype) for b in density.bounds)
        return (torch.isfinite(x) & (x >= lo) & (x <= hi)).all(-1)

    @torch.no_grad()
    def log_prob(self, x: Tensor, y: Tensor, nuisance: Tensor) -> Tensor:
        r""":math:`\log W(x|y)` for ``x (..., D)`` and ``y (..., D)`` (broadcastable); ``nuisance`` is ignored. Returns ``(...)``.

        No graph: the networks are fixed inside the MEM (and neither x nor y is differentiated)."""
        if x.shape[-1] != self.width or y.shape[-1] != self.width:
            raise ShapeMismatchError(f"LearnedTransfer.log_prob: x {tuple(x.shape)} and y {tuple(y.shape)} must end in {self.width}.")
        shape = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        xf = x.expand(*shape, self.width).reshape(-1, self.width)
        yf = y.expand(*shape, self.width).reshape(-1, self.width)
        out = torch.zeros(xf.shape[0], dtype=torch.float64, device=x.device)
        for density, cols in self.blocks:
            xc, log_jac = _to_response(self.response, xf[:, cols], yf[:, cols])
            yc = yf[:, cols]
            inside = self._inside(density, xc)
            lo, hi = (b.to(device=x.device, dtype=x.dtype) for b in density.bounds)
            safe = torch.where(inside[:, None], xc, torch.minimum(torch.maximum(torch.nan_to_num(xc), lo), hi))
            dtype = density.low.dtype
            parts = [density(safe[s:s + _CHUNK].to(dtype), yc[s:s + _CHUNK].to(dtype)) for s in range(0, xf.shape[0], _CHUNK)]
            log_q = torch.cat(parts).to(torch.float64) if parts else out
            out = out + torch.where(inside, log_q + log_jac, torch.full_like(log_q, -torch.inf))
        return out.reshape(shape).to(torch.promote_types(x.dtype, y.dtype))

    @torch.no_grad()
    def sample(self, y: Tensor, nuisance: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x (M, D)`` for ``y (M, D)`` (inside every density's bounds)."""
        x = torch.empty(y.shape[0], self.width, dtype=y.dtype, device=y.device)
        for density, cols in self.blocks:
            r = density.sample(1, y[:, cols].to(density.low.dtype), generator=generator)[0].to(y.dtype)
            x[:, cols] = _from_response(self.response, r, y[:, cols])
        return x

    def covers(self, y: Tensor) -> Tensor:
        """Parton points ``y (..., D)`` inside every density's training range of contexts (with its margin), ``(...)`` bool.

        Outside, the densities extrapolate (:class:`~sbilab.exceptions.ExtrapolationWarning` from
        :meth:`sample`); :class:`~sbilab.mem.FiducialCrossSection` draws only where this is true.
        A density without a recorded range covers everything."""
        flat = y.reshape(-1, self.width)
        ok = torch.isfinite(flat).all(-1)
        for density, cols in self.blocks:
            support = training_support(density)
            if support is not None:
                ok = ok & ~support.outside(flat[:, cols])
        return ok.reshape(y.shape[:-1])

    def support(self, x: Tensor) -> Tensor:
        """Finite rows inside every block's bounds (``"absolute"``; any finite row otherwise), ``(N,)`` bool."""
        ok = torch.isfinite(x).all(-1)
        if self.response == "absolute":
            for density, cols in self.blocks:
                ok = ok & self._inside(density, x[:, cols])
        return ok


class LearnedAcceptance:
    r""":math:`\epsilon(y) = \sigma(f(y)) = P(\mathrm{pass}|y)` from a :class:`~sbilab.estimators.Classifier` trained on the natural mixture.

    Args:
        classifier: Trained on parton-level ``y`` with label 1 = passes the reconstruction
            selection, unweighted classes as simulated (:func:`fit_acceptance`).
    """

    def __init__(self, classifier: Classifier) -> None:
        if not isinstance(classifier, Classifier) or classifier.theta_features:
            raise ConfigError("LearnedAcceptance: needs a Classifier of y alone (theta_features = 0).")
        self.classifier = classifier

    @torch.no_grad()
    def __call__(self, y: Tensor) -> Tensor:
        """:math:`\\epsilon` at ``y (..., D)``, ``(...)`` float64 in (0, 1)."""
        flat = y.reshape(-1, y.shape[-1]).to(self.classifier.class_totals.dtype)
        logits = torch.cat([self.classifier(flat[s:s + _CHUNK]) for s in range(0, flat.shape[0], _CHUNK)]) if flat.shape[0] else flat[:, 0]
        return torch.sigmoid(logits.to(torch.float64)).reshape(y.shape[:-1])


class AcceptedProcess(HardProcess):
    r"""A hard process with an extra parton-level efficiency: :math:`\epsilon(z) = \epsilon_0(z)\,a(y(z))`.

    Delegates everything to ``process``; :meth:`acceptance` multiplies its own by
    ``acceptance(process.partons(z))`` (e.g. a :class:`LearnedAcceptance`). The closed-form
    total is dropped (the efficiency changes it).

    Args:
        process: The hard process.
        acceptance: ``a(y: (..., Dy)) -> (...)`` in [0, 1].
    """

    def __init__(self, process: HardProcess, acceptance: LearnedAcceptance) -> None:
        self.process, self.efficiency = process, acceptance
        self.parameter_names, self.bounds, self.slot_sizes = process.parameter_names, process.bounds, process.slot_sizes

    def dsigma(self, z: Tensor, alpha: Tensor) -> Tensor:
        return self.process.dsigma(z, alpha)

    def partons(self, z: Tensor) -> Tensor:
        return self.process.partons(z)

    def acceptance(self, z: Tensor) -> Tensor:
        return self.process.acceptance(z) * self.efficiency(self.process.partons(z)).to(z.dtype)


@torch.no_grad()
def detector_pairs(model: MatrixElement, z: Tensor, *, generator: torch.Generator | None = None) -> PairedEvents:
    r"""(reco, parton) pairs from a model standing in for the detector simulation.

    ``y = process.partons(z)`` (slot order) is the parton level, ``x ~ W(\cdot|y)`` at the
    nominal nuisances (ones) the reconstructed objects in the same order, ``pass_reco`` the
    model's selection and the transfer function's support, ``pass_gen`` the process's box.

    Args:
        model: The model whose transfer function and cuts play the detector.
        z: Parton-level points, ``(N, dim)``; rows outside the box are dropped as never generated.
        generator: Randomness of the smearing.

    Returns:
        :class:`~sbilab.paired.PairedEvents` with ``gen = Events(x=y, latent=z)``, ``reco = Events(x=x)``.
    """
    z = torch.as_tensor(z, dtype=torch.float64)
    lo, hi = model.bounds.unbind(-1)
    z = z[((z >= lo) & (z <= hi)).all(-1)]
    y = model.process.partons(z)
    k = len(model.transfer.nuisance_names)
    x = model.transfer.sample(y, torch.ones(y.shape[0], k, dtype=torch.float64), generator)
    passed = model.transfer.support(x) & model.selected(x)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    empty = torch.zeros(y.shape[0], 0, dtype=torch.float64)
    return PairedEvents(gen=Events(x=y, theta=empty, latent=z), reco=Events(x=x, theta=empty), pass_reco=passed)


def fit_transfer(
    pairs: PairedEvents,
    *,
    blocks: Sequence[Sequence[int]] | None = None,
    low: Sequence[float | None] | None = None,
    high: Sequence[float | None] | None = None,
    response: Response = "absolute",
    flow: FlowSpec = FlowSpec("nsf", transforms=4, hidden=(64, 64)),
    training: TrainingConfig = TRANSFER_TRAINING,
    progress: bool = False,
) -> LearnedTransfer:
    r"""Train :math:`W_\mathrm{acc}(x|y)` on the matched pairs, one :class:`~sbilab.estimators.ConditionalDensity` per block.

    Args:
        pairs: Parton level ``gen.x (N, D)`` and reco objects ``reco.x (N, D)`` in the same slot
            order, with ``pass_reco``; only events passing both selections are used.
        blocks: Column groups modelled independently (default: one joint block).
        low, high: Bounds of the modelled variable per column, ``(D,)`` (``None`` entries open):
            for ``response="absolute"`` e.g. the cuts, so the density lives where the selection does.
        response: What the densities model (:class:`LearnedTransfer`); ``"residual"`` or
            ``"relative"`` learn a resolution function much faster. Such densities are not
            bounded to the cuts: their draws may fail them, which the fiducial cross section
            counts, so the likelihood stays normalised over the selected events.
        flow: The flows' architecture.
        training: Options of :func:`~sbilab.training.fit` (all explicit).
        progress: Show progress bars.

    Raises:
        ShapeMismatchError: the two levels have different widths.
    """
    _single(training, "fit_transfer")
    data = pairs.conditional(target="reco")  # x = parton y, latent = reco objects
    width = data.x.shape[-1]
    if data.latent.shape[-1] != width:
        raise ShapeMismatchError(f"fit_transfer: gen has {width} columns but reco {data.latent.shape[-1]}; pair objects slot by slot.")
    groups = [list(range(width))] if blocks is None else [list(b) for b in blocks]
    lows = [None] * width if low is None else list(low)
    highs = [None] * width if high is None else list(high)
    if response not in RESPONSES:
        raise ConfigError(f"fit_transfer: response must be one of {RESPONSES}, got {response!r}.")
    out = []
    for cols in groups:
        r, _ = _to_response(response, data.latent[:, cols].to(torch.float64), data.x[:, cols].to(torch.float64))
        part = Events(x=data.x[:, cols], theta=data.theta, latent=r, weights=data.weights).to(dtype=torch.get_default_dtype())
        with torch.random.fork_rng():
            torch.manual_seed(training.seed)
            density = ConditionalDensity.from_events(part, target="latent", flow=flow, low=[lows[c] for c in cols],
                                                     high=[highs[c] for c in cols])
        result = fit(density, get_loss("density", target="latent"), part, **{**training.to_dict(), "init": "keep"},  # drawn above
                     device="cpu", progress=progress)
        out.append((result.model.eval(), cols))
    return LearnedTransfer(out, response=response)


def fit_acceptance(
    pairs: PairedEvents,
    *,
    hidden: Sequence[int] = (64, 64),
    training: TrainingConfig = ACCEPTANCE_TRAINING,
    progress: bool = False,
) -> LearnedAcceptance:
    r"""Train :math:`\epsilon(y) = P(\mathrm{pass\ reco}|y)`: a :class:`~sbilab.estimators.Classifier` of ``pass_reco`` given ``gen.x``.

    Args:
        pairs: Parton level ``gen.x (N, D)`` of every generated event (passing the gen
            selection) with ``pass_reco``; both outcomes must occur.
        hidden: Hidden widths.
        training: Options of :func:`~sbilab.training.fit` (all explicit).
        progress: Show progress bars.
    """
    _single(training, "fit_acceptance")
    gen = pairs.level("gen").x
    passed = pairs.pass_reco[pairs.pass_gen]
    weights = None if pairs.weights is None else pairs.weights[pairs.pass_gen]
    data = classifier_training_data(gen[~passed], gen[passed], weights0=None if weights is None else weights[~passed],
                                    weights1=None if weights is None else weights[passed])
    classifier = Classifier.from_events(data, hidden=tuple(hidden), seed=training.seed)
    result = fit(classifier, get_loss("carl"), data, **{**training.to_dict(), "init": "keep"},  # drawn from training.seed
                 device="cpu", progress=progress)
    return LearnedAcceptance(result.model.eval())
