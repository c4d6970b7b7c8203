r""":func:`fit`: the one training loop of sbilab, for every estimator and loss.

A loss is a plain function ``loss(model, batch) -> per-event losses``, shape ``(N,)`` for a
module or ``(K, N)`` for an :class:`~sbilab.nets.ensemble.Ensemble`. ``fit`` minimises

.. math::
    L = \sum_{k=1}^{K} \frac{\sum_i w_i\, \ell_{k,i}}{\sum_i w_i}

(event weights :math:`w_i`, ones if the events carry none) with Adam(W), and reports the
members' mean of the weighted mean loss. Because the members' losses are summed, their
parameters are disjoint and Adam and the (per-member) gradient clipping act element- or
member-wise, K members train exactly as K independent runs on the same batches would.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import ConfigError, TrainingDivergedError
from ..nets.ensemble import Ensemble
from ..nets.init import reinitialise
from .checks import check_checkpoint_path, check_estimator, check_events, check_members, dry_run, first_events
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Init, Keep, Schedule, TrainingConfig, learning_rate_factor
from .data import BatchSource, EventStream, InMemorySource, StreamedSource, events_nbytes, fits_on_device
from .distributed import DataParallel, check_world_size
from .optim import adam, clip_gradients, clone_state, copy_best, reduce_losses
from .result import TrainingResult
from .stopping import EarlyStopping, warn_if_overfitting

__all__ = ["fit", "TrainingResult", "Loss"]

Loss = Callable[[nn.Module, Events], Tensor]
_D = TrainingConfig  # defaults of fit's keyword arguments


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"fit: device {device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("fit: device='cuda' but CUDA is not available; use device='auto' or 'cpu'.")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def fit(
    estimator: nn.Module,
    loss: Loss,
    data: Events | EventStream,
    *,
    validation: Events | None = None,
    epochs: int = _D.epochs,
    batch_size: int = _D.batch_size,
    learning_rate: float = _D.learning_rate,
    schedule: Schedule = _D.schedule,
    final_lr_fraction: float = _D.final_lr_fraction,
    plateau_factor: float = _D.plateau_factor,
    plateau_patience: int = _D.plateau_patience,
    weight_decay: float = _D.weight_decay,
    clip_norm: float | None = _D.clip_norm,
    validation_fraction: float = _D.validation_fraction,
    patience: int | None = _D.patience,
    smoothing: float = _D.smoothing,
    keep: Keep = _D.keep,
    min_delta: float = _D.min_delta,
    ensemble: int = _D.ensemble,
    amp: bool = _D.amp,
    seed: int = _D.seed,
    init: Init = _D.init,
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    stream: bool | None = None,
    progress: bool = True,
    parallel: DataParallel | None = None,
) -> TrainingResult:
    r"""Train ``estimator`` by minimising ``loss`` on ``data``; see :class:`TrainingConfig` for the options.

    Args:
        estimator: The module to train, in place: what the caller holds is the trained model.
            With ``init="seed"`` (default) its parameters are first drawn again from ``seed``
            (every submodule's ``reset_parameters``; buffers such as the standardisation are
            kept), so that ``seed`` alone fixes the run however the module was built; with
            ``init="keep"`` training starts from its current weights (a warm start). For an
            ensemble pass an :class:`~sbilab.nets.ensemble.Ensemble`: ``ens = Ensemble(estimator, K);
            fit(ens, ...)`` trains the K members at once, in ``ens``.
        loss: ``loss(model, batch) -> (N,)`` per-event losses, ``(K, N)`` for ensembles. A loss
            that differentiates w.r.t. inputs (score matching) also works in validation: it is
            evaluated with gradients enabled but no parameter update (detected when it fails
            under ``no_grad``, or declared by a ``needs_input_grad = True`` attribute).
        data: Training Events ``(N, ...)``, or a store with ``__len__`` and ``batches(...)``.
        validation: Explicit validation Events; default: a random ``validation_fraction`` of ``data``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ... The data are moved there
            once if they fit in half its free memory, otherwise batch by batch.
        checkpoint: File written atomically after every epoch (model, optimizer, schedule,
            early-stopping state, best weights, history, RNG states).
        resume: Continue from ``checkpoint`` if it exists (a killed run resumed ends with the same
            weights as an uninterrupted one); a finished checkpoint returns at once.
        stream: Stream batches from a store (``True``), load it into memory (``False``), or load it
            if it fits (``None``).
        progress: Show a tqdm bar over epochs (on stderr).
        parallel: Train data-parallel over the processes of a torch.distributed group (call
            ``fit`` in every process with the same arguments); see :mod:`sbilab.training.distributed`.

    Returns:
        :class:`TrainingResult` with the model holding its best weights and the history.

    Before the first epoch (so that nothing is trained on bad input, and no epoch is lost) ``fit``
    checks the events (labels 0/1, event weights with a clearly positive sum), the
    estimator's shapes against the events' (``check_training_events``), the loss on two events
    (a dry run in eval mode: missing augmented data, bad loss options, shape errors) and that the
    checkpoint's folder is writable; see :mod:`sbilab.training.checks`.

    Raises:
        ConfigError: an option is invalid (including ``ensemble > 1`` with a single module), the
            checkpoint path is not writable, or the checkpoint does not match this run.
        InvalidEventsError: labels other than 0/1, event weights that cancel.
        ShapeMismatchError: the events do not have the shapes the estimator was built for, or the
            loss does not return per-event losses of shape ``(N,)``/``(K, N)``.
        MissingAugmentedDataError: the loss needs a field the events lack.
        TrainingDivergedError: the loss became NaN/inf; the message names epoch and batch, the
            model holds the best weights so far (also in the exception's ``model`` attribute).

    Example:
        >>> x = torch.linspace(-1, 1, 200).reshape(-1, 1)
        >>> ev = Events(x=x, theta=3 * x - 1)
        >>> mse = lambda model, b: (model(b.x) - b.theta).pow(2).squeeze(-1)
        >>> res = fit(nn.Linear(1, 1), mse, ev, epochs=300, batch_size=50, learning_rate=0.05,
        ...           patience=None, validation_fraction=0, progress=False)
        >>> [round(v, 3) for v in (res.model.weight.item(), res.model.bias.item())]
        [3.0, -1.0]
    """
    config = TrainingConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, schedule=schedule,
        final_lr_fraction=final_lr_fraction, plateau_factor=plateau_factor, plateau_patience=plateau_patience,
        weight_decay=weight_decay, clip_norm=clip_norm, validation_fraction=validation_fraction, patience=patience,
        smoothing=smoothing, keep=keep, min_delta=min_delta, ensemble=ensemble, amp=amp, seed=seed, init=init,
    )
    if not isinstance(estimator, nn.Module):
        raise ConfigError(f"fit: estimator must be a torch.nn.Module, got {type(estimator).__name__}.")
    config = check_members(estimator, config)
    if not callable(loss):
        raise ConfigError("fit: loss must be a function loss(model, batch) -> per-event losses.")
    dev = _resolve_device(device)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)
    devices = [dev.index] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        run = _Run(estimator, loss, data, validation, config, dev, stream, progress, parallel)
        return run.execute(checkpoint, resume)


class _Run:
    """State of one call of :func:`fit` (kept out of the public API)."""

    def __init__(self, estimator: nn.Module, loss: Loss, data: Any, validation: Events | None,
                 config: TrainingConfig, device: torch.device, stream: bool | None, progress: bool,
                 parallel: DataParallel | None = None) -> None:
        self.loss, self.config, self.device, self.progress = loss, config, device, progress
        self.parallel, self.progress = parallel, progress and (parallel is None or parallel.is_writer)
        self.source, self.validation = self._sources(data, validation, stream)
        probe = first_events(self.source)
        for what, events in (("data", getattr(self.source, "events", probe)), ("validation", self.validation)):
            if events is not None:
                check_events(events, what=what)
                check_estimator(estimator, events)
        model = estimator
        if config.init == "seed":
            reinitialise(model, config.seed + 2)
        self.model = model.to(device)
        self.k = model.k if isinstance(model, Ensemble) else 1
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"fit: {type(estimator).__name__} has no trainable parameters.")
        self.params = params
        if probe is not None:
            dry_run(self.model, loss, probe)
        self._train_losses = self._member_losses if parallel is None else parallel.attach(
            self.model, self._member_losses, self.source, config.batch_size, config.seed)
        self.optimizer = adam(params, config)
        self.stopper = EarlyStopping(self.k, config)
        self.best = clone_state(self.model)
        self.history: dict[str, list] = {key: [] for key in ("train_loss", "val_loss", "val_loss_error", "val_loss_smoothed", "lr", "time")}
        if self.k > 1:
            self.history["val_loss_members"] = []
        self.amp = config.amp and device.type == "cuda"
        self.val_needs_grad = bool(getattr(loss, "needs_input_grad", False))
        self.stopped_early = False

    # ------------------------------------------------------------------ data
    def _sources(self, data: Any, validation: Events | None, stream: bool | None) -> tuple[BatchSource, Events | None]:
        cfg, dev = self.config, self.device
        if isinstance(data, Events):
            events = data
        elif isinstance(data, EventStream):
            if stream is None:
                probe = next(iter(data.batches(min(len(data), 1024), shuffle=False)))
                stream = not fits_on_device(events_nbytes(probe) * len(data) // max(len(probe), 1), dev)
            if stream:
                if validation is None and cfg.validation_fraction > 0:
                    raise ConfigError(
                        "fit: streaming from a store needs explicit validation events (validation=...), "
                        "e.g. from a second store; or pass validation_fraction=0 to train without early stopping."
                    )
                return StreamedSource(data, dev, cfg.seed + 1), None if validation is None else validation.to(dev)
            events = data.read(0, len(data))
        else:
            raise ConfigError(f"fit: data must be Events or a store with __len__ and batches(), got {type(data).__name__}.")
        if validation is None and cfg.validation_fraction > 0:
            events, validation = events.split(cfg.validation_fraction, generator=torch.Generator().manual_seed(cfg.seed))
        if validation is not None:
            validation = validation.to(dev) if fits_on_device(events_nbytes(validation), dev) else validation
        return InMemorySource(events, dev, cfg.seed + 1), validation

    # ------------------------------------------------------------------ losses
    def _member_losses(self, batch: Events) -> Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
            per_event = self.loss(self.model, batch)
        return reduce_losses(per_event, batch.weights, self.k, len(batch))

    def _moments(self, batch: Events) -> Tensor:
        """Weighted means of the per-event losses and of their squares, ``(2, K)``."""
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
            per_event = self.loss(self.model, batch)
        first = reduce_losses(per_event, batch.weights, self.k, len(batch))
        second = reduce_losses(per_event.float() ** 2, batch.weights, self.k, len(batch))
        return torch.stack([first.reshape(-1), second.reshape(-1)]).detach()

    @torch.no_grad()
    def _no_grad_moments(self, batch: Events) -> Tensor:
        return self._moments(batch)

    def _validate(self) -> tuple[list[float], list[float]]:
        """Per member: the weighted mean validation loss and its standard error (from the per-event spread)."""
        val = self.validation if self.parallel is None else self.parallel.local_part(self.validation)
        chunk = max(4 * self.config.batch_size, 4096)
        self.model.eval()
        total, norm, norm2 = 0.0, 0.0, 0.0
        for start in range(0, len(val), chunk):
            batch = val[start:start + chunk].to(self.device)
            w = batch.weights.double() if batch.weights is not None else None
            weight = float(w.sum()) if w is not None else float(len(batch))
            if not self.val_needs_grad:
                try:
                    moments = self._no_grad_moments(batch)
                except RuntimeError:  # the loss differentiates w.r.t. its inputs (e.g. score matching)
                    self.val_needs_grad = True
            if self.val_needs_grad:
                with torch.enable_grad():
                    moments = self._moments(batch)
            total = total + moments.double() * weight
            norm += weight
            norm2 += float((w ** 2).sum()) if w is not None else float(len(batch))
        self.model.train()
        if self.parallel is not None:  # a rank's part may be empty: its moments are then zeros
            total = torch.as_tensor(total, dtype=torch.float64).expand(2, self.k)
            total, norm, norm2 = self.parallel.sum_over_ranks(total, norm, norm2)
        mean, square = total / norm
        n_eff = norm ** 2 / norm2
        error = ((square - mean ** 2).clamp_min(0.0) / n_eff).sqrt()
        return mean.tolist(), error.tolist()

    # ------------------------------------------------------------------ main loop
    def execute(self, checkpoint: str | os.PathLike | None, resume: bool) -> TrainingResult:
        cfg, model = self.config, self.model
        n_batches = self.source.n_batches(cfg.batch_size)
        total_steps = cfg.epochs * n_batches
        start_epoch, step, finished = 0, 0, False
        if checkpoint is not None and resume and os.path.exists(checkpoint):
            start_epoch, step, finished = self._restore(load_checkpoint(checkpoint))
        stopped_early = self.stopped_early
        check_each_batch = self.device.type != "cuda"  # on CUDA, check once per epoch to avoid syncs
        bar = tqdm(total=cfg.epochs, initial=start_epoch, disable=not self.progress, desc="fit", unit="epoch", file=sys.stderr)
        epoch = start_epoch
        model.train()
        try:
            while not finished and epoch < cfg.epochs:
                epoch += 1
                started = time.perf_counter()
                batch_losses, sizes = [], []
                for b, batch in enumerate(self.source.epoch(cfg.batch_size), start=1):
                    lr = cfg.learning_rate * learning_rate_factor(cfg, step, total_steps, self.stopper.reductions)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    members = self._train_losses(batch)
                    objective = members.sum()
                    if check_each_batch and not bool(torch.isfinite(objective)):
                        self._diverged(epoch, f"batch {b} of {n_batches}", objective)
                    self.optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    if cfg.clip_norm is not None:
                        clip_gradients(self.params, cfg.clip_norm, self.k if isinstance(model, Ensemble) else 1)
                    self.optimizer.step()
                    step += 1
                    batch_losses.append(members.detach())
                    sizes.append(len(batch))
                stacked = torch.stack(batch_losses).reshape(len(batch_losses), -1)
                finite = torch.isfinite(stacked).all(dim=1)
                if not bool(finite.all()):
                    first = int((~finite).nonzero()[0, 0])
                    self._diverged(epoch, f"batch {first + 1} of {n_batches}", stacked[first].sum())
                weights = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
                train_loss = float((stacked.mean(dim=1) * weights).sum() / weights.sum())
                self._end_of_epoch(epoch, train_loss, time.perf_counter() - started, lr)
                stopped_early = self.stopper.should_stop and self.validation is not None and epoch < cfg.epochs
                finished = stopped_early or epoch >= cfg.epochs
                self.stopped_early = stopped_early
                if checkpoint is not None:  # once the stopper has fired, the checkpoint says so: a resume does not train on
                    self._save(checkpoint, epoch, step, finished=finished)
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4g}", val=f"{self.history['val_loss'][-1]:.4g}")
        finally:
            bar.close()
        if self.validation is not None:
            last = self.stopper.finish()  # keep="auto": members whose last weights are kept
            if last:
                copy_best(self.best, self.model, last, self.k)
            model.load_state_dict(self.best)
            warn_if_overfitting(self.history, self.stopper.best_epoch, self.config.keep)
        if checkpoint is not None:
            self._save(checkpoint, epoch, step, finished=True)
        return self._result(stopped_early)

    def _end_of_epoch(self, epoch: int, train_loss: float, seconds: float, lr: float) -> None:
        h = self.history
        if self.validation is not None:
            members, errors = self._validate()
            if not all(math.isfinite(v) for v in members):
                self._diverged(epoch, "validation", torch.tensor(members).sum())
            improved = self.stopper.update(epoch, members, errors)
            if improved:
                copy_best(self.best, self.model, improved, self.k)
            val, error = sum(members) / len(members), sum(errors) / len(errors)
            smoothed = sum(s for s in self.stopper.smoothed if s is not None) / self.k
        else:
            members, val, smoothed, error = [math.nan] * self.k, math.nan, math.nan, math.nan
            self.stopper.best_epoch = [epoch] * self.k
        h["train_loss"].append(train_loss)
        h["val_loss"].append(val)
        h["val_loss_error"].append(error)
        h["val_loss_smoothed"].append(smoothed)
        h["lr"].append(lr)
        h["time"].append(seconds)
        if self.k > 1:
            h["val_loss_members"].append(members)

    def _diverged(self, epoch: int, where: str, value: Tensor) -> None:
        self.model.load_state_dict(self.best)
        best = max(self.stopper.best_epoch)
        kept = f"epoch {best}" if best > 0 else "the initial weights"
        err = TrainingDivergedError(
            f"fit: the loss is {float(value.detach())} at epoch {epoch}, {where}; training stopped and the model holds the "
            f"best weights so far ({kept}). Lower learning_rate, set clip_norm, or check the loss and the data."
        )
        err.model, err.history, err.best_epoch = self.model, self.history, best  # type: ignore[attr-defined]
        raise err

    # ------------------------------------------------------------------ checkpoints
    def _save(self, path: str | os.PathLike, epoch: int, step: int, *, finished: bool) -> None:
        ranks = {} if self.parallel is None else self.parallel.checkpoint_state(self.device)  # collective: every rank
        if self.parallel is not None and not self.parallel.is_writer:
            return
        save_checkpoint(path, {**ranks,
            "config": self.config.to_dict(), "data": self.source.fingerprint(), "k": self.k,
            "epoch": epoch, "step": step, "finished": finished, "stopped_early": self.stopped_early,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "best": self.best,
            "stopper": self.stopper.state_dict(), "history": self.history,
            "rng": rng_state(self.device, self.source.generator),
        })

    def _restore(self, state: dict[str, Any]) -> tuple[int, int, bool]:
        check_world_size(state, self.parallel)
        saved = {**TrainingConfig().to_dict(), **state["config"]}  # options added since the checkpoint: their defaults
        now = self.config.to_dict()
        diff = sorted(key for key in now if key != "epochs" and saved.get(key) != now[key])
        if diff:
            raise ConfigError(
                f"fit: the checkpoint was written with different options {', '.join(f'{k}={saved.get(k)!r}' for k in diff)} "
                f"(now {', '.join(f'{k}={now[k]!r}' for k in diff)}); use the same options or resume=False."
            )
        fingerprint = self.source.fingerprint()
        if state["data"]["n"] != fingerprint["n"] or not math.isclose(
            state["data"].get("x_sum", 0.0), fingerprint.get("x_sum", 0.0), rel_tol=1e-9, abs_tol=1e-9
        ):
            raise ConfigError("fit: the checkpoint was written for different training data; use the same data or resume=False.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = {name: t.to(self.device) for name, t in state["best"].items()}
        self.stopper.load_state_dict(state["stopper"])
        self.history = {key: list(value) for key, value in state["history"].items()}
        self.history.setdefault("val_loss_error", [math.nan] * len(self.history["train_loss"]))  # older checkpoints
        set_rng_state(state["rng"], self.device, self.source.generator)
        self.stopped_early = bool(state.get("stopped_early", False))
        if self.parallel is not None:
            self.parallel.restore(state, self.device)
        return int(state["epoch"]), int(state["step"]), bool(state["finished"])

    def _result(self, stopped_early: bool) -> TrainingResult:
        has_val = self.validation is not None
        best_epochs = tuple(int(e) for e in self.stopper.best_epoch)
        best_val = sum(self.stopper.best_loss) / self.k if has_val else math.nan
        return TrainingResult(
            model=self.model, history=self.history, best_epoch=max(best_epochs), best_epochs=best_epochs,
            best_val_loss=best_val, epochs_run=len(self.history["train_loss"]), stopped_early=stopped_early,
            config=self.config, device=self.device,
        )
