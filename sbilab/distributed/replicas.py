r"""Replica farms: the same training for K seeds, bootstrap weights and systematic variants.

:func:`train_replicas` is the one way to run many trainings of one recipe. A **recipe** is an
importable function (``"package.module:attr"``) that builds a :class:`TrainingTask` —
estimator, loss, events — from JSON options; a **variant** is a dict of options merged into
them (a systematic shift, another detector map); every variant gets ``k`` **replicas** that
differ by their initial weights and, with ``bootstrap=True``, by Poisson(1) event weights
(the bootstrap of Efron's, as the unfolding literature draws it per event).

How the work is spread, chosen by ``engine`` and ``groups``:

* one device (``engine="serial"``, the default, ``groups=1``): the ``k`` replicas of a variant
  are one batched :class:`~sbilab.nets.ensemble.Ensemble` trained by one ``fit`` call; with
  bootstrap the events carry one weight column per member, ``weights (N, k)``;
* ensemble parallelism (``engine="processes"``, ``devices=[...]``): each variant's replicas are
  split into ``groups`` contiguous groups, each a batched ensemble trained in its own process
  on its device — no gradient traffic between them;
* a cluster (``engine="dask"`` or a ``distributed.Client``): the groups are Dask tasks.

The result does not depend on the split: replica ``j`` of variant ``v`` draws its initial weights
and its bootstrap weights from its own seed (``SeedSequence(seed, spawn_key=(v, j))``), and
all replicas of a variant share the batch order and validation split (``fit``'s seed for the
variant), so member ``j`` trains exactly as it would alone. (With early stopping, a group stops
when all *its* members have run out of patience; pass ``patience=None`` in ``fit_options`` when
the members must be identical across splits.)

All members of all variants are joined into one Ensemble (variant-major: member
``v * k + j``) and, with ``out=``, published with :func:`sbilab.publish.save` in one file whose
metadata lists every member's variant, replica, seeds, kept epoch and validation loss.

Example:
    >>> res = train_replicas("sbilab.distributed.replicas:demo_recipe", 3, bootstrap=True,
    ...                      fit_options={"epochs": 2}, progress=False)
    >>> res.ensemble.k, [m["replica"] for m in res.members]
    (3, [0, 1, 2])
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import ConfigError, WorkerError
from ..nets.ensemble import Ensemble
from ..publish import save
from ..training import TrainingConfig, fit
from .engines import limit_threads, make_engine
from .specs import check_json, resolve_reference

__all__ = ["TrainingTask", "ReplicaResult", "train_replicas", "join_ensembles", "demo_recipe"]


@dataclass
class TrainingTask:
    """What a recipe returns: the network every replica starts from, its loss and the events.

    Attributes:
        estimator: The template (each replica re-draws its initial weights; buffers such as a
            standardisation are kept).
        loss: ``loss(model, batch) -> (K, N)`` per-event losses, as for :func:`~sbilab.training.fit`.
        data: Training events ``(N, ...)``; their weights, if any, multiply the bootstrap weights.
        validation: Explicit validation events (default: ``fit``'s random split of ``data``).
    """

    estimator: nn.Module
    loss: Callable[[nn.Module, Events], torch.Tensor]
    data: Events
    validation: Events | None = None


@dataclass(frozen=True)
class ReplicaResult:
    """What :func:`train_replicas` returns.

    Attributes:
        ensemble: All members, variant-major (member ``v * k + j``), in eval mode.
        members: Per member: ``variant``, ``replica``, ``init_seed``, ``bootstrap_seed``,
            ``best_epoch``, ``best_val_loss``.
        path: The published file (``None`` without ``out``).
        seconds: Wall time.
        engine: The engine's name.
        groups: Number of trainings run (``fit`` calls).
    """

    ensemble: Ensemble
    members: list[dict[str, Any]]
    path: Path | None
    seconds: float
    engine: str
    groups: int


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(key[0], spawn_key=key[1:]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def join_ensembles(parts: Sequence[Ensemble]) -> Ensemble:
    """One Ensemble holding the members of ``parts`` in order (templates of equal architecture).

    Raises:
        ConfigError: the parts' parameters differ in names or per-member shapes.
    """
    first = parts[0]
    joined = Ensemble(first.template, sum(p.k for p in parts), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for get in ("stacked_parameters", "stacked_buffers"):
            target = getattr(joined, get)()
            for name, tensor in target.items():
                pieces = [getattr(p, get)().get(name) for p in parts]
                if any(t is None or t.shape[1:] != tensor.shape[1:] for t in pieces):
                    raise ConfigError(f"join_ensembles: the members differ in {name!r}; only networks of one architecture join.")
                tensor.copy_(torch.cat([t.to(tensor.device) for t in pieces]))
    return joined


def _members(template: nn.Module, seeds: Sequence[int]) -> Ensemble:
    """A batched ensemble whose member ``i`` is initialised from ``seeds[i]`` alone."""
    return join_ensembles([Ensemble(template, 1, generator=torch.Generator().manual_seed(s)) for s in seeds])


def run_group(recipe: str, options: dict[str, Any], init_seeds: list[int], bootstrap_seeds: list[int] | None, fit_seed: int,
              fit_options: dict[str, Any], device: str, threads: int) -> dict[str, Any]:
    """One group of replicas of one variant, in a worker: build the task, train it as one ensemble.

    Returns:
        Stacked parameters and buffers (numpy, by the template's names), kept epochs, validation losses.
    """
    limit_threads(threads)
    started = time.process_time()
    task = resolve_reference(recipe, "train_replicas")(**options)
    if not isinstance(task, TrainingTask):
        raise ConfigError(f"train_replicas: {recipe!r} returned a {type(task).__name__}; a recipe returns a TrainingTask.")
    data = task.data
    if bootstrap_seeds is not None:
        columns = [torch.poisson(torch.ones(len(data), dtype=torch.float64), generator=torch.Generator().manual_seed(s))
                   for s in bootstrap_seeds]
        weights = torch.stack(columns, dim=1)
        if data.weights is not None:
            weights = weights * data.weights.double().reshape(len(data), -1)
        data = data.replace(weights=(weights[:, 0] if len(init_seeds) == 1 else weights).to(data.x.dtype))
    model: nn.Module = _members(task.estimator, init_seeds)
    if len(init_seeds) == 1:  # one replica: the plain network (fit trains an Ensemble of K >= 2 members)
        model = model.member(0)
    result = fit(model, task.loss, data, validation=task.validation, seed=fit_seed, device=device, progress=False,
                 init="keep", **fit_options)  # the members were drawn from init_seeds above
    trained = result.model
    if isinstance(trained, Ensemble):
        params, buffers = trained.stacked_parameters(), trained.stacked_buffers()
    else:
        params, buffers = ({n: t[None] for n, t in named} for named in (trained.named_parameters(), trained.named_buffers()))
    members = result.history.get("val_loss_members") or [[v] for v in result.history["val_loss"]]
    best = [members[e - 1][i] if e > 0 else math.nan for i, e in enumerate(result.best_epochs)]
    return {
        "parameters": {n: t.detach().cpu().numpy() for n, t in params.items()},
        "buffers": {n: t.detach().cpu().numpy() for n, t in buffers.items()},
        "best_epochs": list(result.best_epochs), "best_val_loss": best, "cpu_seconds": time.process_time() - started,
    }


def _split(k: int, groups: int) -> list[range]:
    bounds = np.linspace(0, k, groups + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def train_replicas(
    recipe: str,
    k: int,
    *,
    options: Mapping[str, Any] | None = None,
    variants: Sequence[Mapping[str, Any]] | None = None,
    bootstrap: bool = False,
    seed: int = 0,
    fit_options: Mapping[str, Any] | None = None,
    engine: Any = "serial",
    groups: int | None = None,
    workers: int = 2,
    devices: Sequence[str] | None = None,
    threads: int = 1,
    scheduler: str | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    out: str | os.PathLike | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ReplicaResult:
    """Train ``k`` replicas of ``recipe`` for every variant, spread by ``engine``, joined into one Ensemble.

    Args:
        recipe: ``"package.module:attr"`` of a function ``recipe(**options) -> TrainingTask``
            (importable by the workers; see :mod:`sbilab.distributed.specs`).
        k: Replicas per variant.
        options: JSON options of the recipe.
        variants: Systematic variants, each a dict of JSON options overriding ``options``
            (default: one variant, ``[{}]``).
        bootstrap: Give each replica Poisson(1) weights per event (times the events' weights).
        seed: Seed of everything: replica ``j`` of variant ``v`` uses ``SeedSequence(seed, (v, j))``.
        fit_options: JSON options of :func:`~sbilab.training.fit` (TrainingConfig fields but
            ``seed`` and ``ensemble``).
        engine: ``"serial"`` (this process), ``"processes"``, ``"dask"``, an Executor or a Dask Client.
        groups: Groups per variant, each one batched ``fit``; default 1 with ``"serial"``, else
            enough to give every worker (or device) one group.
        workers: Processes started here (``"processes"``, Dask LocalCluster).
        devices: Device of each group in turn (e.g. ``["cuda:0", "cuda:1"]``); default ``"cpu"``.
        threads, scheduler, timeout: As in :func:`~sbilab.distributed.simulate_to_store`.
        retries: How often a group may be lost to a dying worker.
        out: Publish the joined ensemble to this file (HDF5 + JSON; needs a publishable template).
        metadata: JSON metadata added to the published file.
        progress: Show a progress bar over finished groups.

    Raises:
        ConfigError: bad options, a recipe that cannot be sent or does not return a TrainingTask,
            a CUDA device on a machine without CUDA, variants of different architectures.
        WorkerError: a group raised (named by variant and replicas), or was lost too often.
        PublishError: the template is not publishable (``out`` given).
    """
    started = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"train_replicas: k must be a positive integer, got {k!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"train_replicas: seed must be a non-negative integer, got {seed!r}.")
    base = check_json(options, "train_replicas")
    variant_options = [{**base, **check_json(v, f"train_replicas: variant {i}")} for i, v in enumerate(variants or [{}])]
    fit_opts = check_json(fit_options, "train_replicas: fit_options")
    bad = sorted(set(fit_opts) - (set(TrainingConfig().to_dict()) - {"seed", "ensemble"}))
    if bad:
        raise ConfigError(f"train_replicas: fit_options {bad} are not TrainingConfig options (seed and ensemble are set per replica group).")
    device_list = [str(d) for d in (devices or ["cpu"])]
    for d in device_list:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train_replicas: devices {device_list} name a GPU ({d!r}), and CUDA is not available here; use devices=['cpu'].")
    template = resolve_reference(recipe, "train_replicas")(**variant_options[0])  # fails here on a bad recipe
    if not isinstance(template, TrainingTask):
        raise ConfigError(f"train_replicas: {recipe!r} returned a {type(template).__name__}; a recipe returns a TrainingTask.")
    eng = make_engine(engine, workers=workers, threads=threads, scheduler=scheduler,
                      timeout=timeout, where="train_replicas")
    if groups is None:
        groups = 1 if eng.name == "serial" else max(1, math.ceil(max(eng.workers, len(device_list)) / len(variant_options)))
    jobs = [(v, list(part)) for v in range(len(variant_options)) for part in _split(k, groups)]
    try:
        results = _run(eng, jobs, recipe, variant_options, bootstrap, seed, fit_opts, device_list, threads, retries, progress)
    finally:
        eng.close()
    parts, members = [], []
    for (v, replicas), res in zip(jobs, results):
        ens = _members(template.estimator, [0] * len(replicas))
        with torch.no_grad():
            for name, t in ens.stacked_parameters().items():
                t.copy_(torch.from_numpy(res["parameters"][name]))
            for name, t in ens.stacked_buffers().items():
                t.copy_(torch.from_numpy(res["buffers"][name]))
        parts.append(ens)
        for i, j in enumerate(replicas):
            members.append({"variant": v, "replica": j, "options": variant_options[v], "init_seed": _seed(seed, v, j),
                            "bootstrap_seed": _seed(seed, v, j, 1) if bootstrap else None,
                            "best_epoch": int(res["best_epochs"][i]), "best_val_loss": float(res["best_val_loss"][i])})
    ensemble = join_ensembles(parts).eval()
    path = None
    if out is not None:
        info = {"recipe": recipe, "k": k, "variants": variant_options, "bootstrap": bootstrap, "seed": seed,
                "fit_options": fit_opts, "members": members}
        path = save(out, ensemble, metadata={**check_json(metadata, "train_replicas: metadata"), "replicas": info})
    return ReplicaResult(ensemble=ensemble, members=members, path=path, seconds=time.perf_counter() - started,
                         engine=eng.name, groups=len(jobs))


def _run(eng: Any, jobs: list[tuple[int, list[int]]], recipe: str, variant_options: list[dict], bootstrap: bool, seed: int,
         fit_opts: dict, devices: list[str], threads: int, retries: int, progress: bool) -> list[dict[str, Any]]:
    """Run every group on the engine; redo lost ones; stop at the first that raises."""
    def submit(g: int) -> Any:
        v, replicas = jobs[g]
        boot = [_seed(seed, v, j, 1) for j in replicas] if bootstrap else None
        return eng.submit(run_group, recipe, variant_options[v], [_seed(seed, v, j) for j in replicas], boot, _seed(seed, v) % 2**31,
                          fit_opts, devices[g % len(devices)], threads)

    todo = list(range(len(jobs)))
    inflight: dict[Any, tuple[int, int]] = {}  # future -> (group, pool generation)
    results: dict[int, dict[str, Any]] = {}
    losses: dict[int, int] = {}
    generation = 0
    with tqdm(total=len(jobs), desc="replicas", unit="group", disable=not progress) as bar:
        while todo or inflight:
            while todo:
                g = todo.pop(0)
                inflight[submit(g)] = (g, generation)
            restart = False
            for future in eng.wait(inflight):
                g, born = inflight.pop(future)
                status, value = eng.outcome(future)
                if status == "ok":
                    results[g] = value
                    bar.update(1)
                    continue
                losses[g] = losses.get(g, 0) + 1
                if status == "raised" or losses[g] > retries:
                    eng.cancel(list(inflight))
                    v, replicas = jobs[g]
                    what = f"variant {v} ({variant_options[v]}), replicas {replicas[0]}..{replicas[-1]}"
                    why = f"raised {type(value).__name__}: {value}" if status == "raised" else f"lost its worker {losses[g]} times"
                    raise WorkerError(f"train_replicas: the group of {what} {why}; {len(results)} of {len(jobs)} groups had finished.") from value
                todo.append(g)
                restart = restart or born == generation
            if restart:  # a dead worker breaks a process pool: start a new one (the other groups in flight come back lost)
                eng.restart()
                generation += 1
    return [results[g] for g in range(len(jobs))]


def demo_recipe(n: int = 400, shift: float = 0.0, hidden: int = 16) -> TrainingTask:
    """A small ratio-estimation task on the Gaussian toy (CARL loss), for examples and tests.

    ``shift`` moves every observable by a constant — a stand-in for a systematic variation.
    """
    from ..estimators import RatioEstimator
    from ..estimators.losses import carl_loss
    from ..simulators import GaussianLatent, ratio_training_data

    sim = GaussianLatent()
    events = ratio_training_data(sim, n, generator=torch.Generator().manual_seed(1), augmented=False)
    events = events.replace(x=events.x + shift)
    estimator = RatioEstimator.from_events(events, sim.space, hidden=(hidden, hidden))
    return TrainingTask(estimator=estimator, loss=carl_loss, data=events)
