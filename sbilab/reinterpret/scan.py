r"""Scan every signal patch of a published likelihood: CLs per point, in parallel, resumable.

:func:`scan_patches` tests each patch (:func:`~sbilab.reinterpret.evaluate.evaluate_patch`) in
worker processes started with the ``spawn`` method, each with one BLAS/OpenMP/torch thread: the
thread variables are set in the environment the workers inherit, so they hold before numpy and
torch are imported there (pyhf's users measured 25x slower hypotests from oversubscribed
threads, scikit-hep/pyhf#620). Every finished point is appended to a JSON-lines journal and
forced to disk (:class:`~sbilab.reinterpret.journal.ScanJournal`); a scan started again on the
same journal skips the points already there, so a killed scan resumes where it stopped.
Points are sent in the order of their model parameters, so that each worker's next point is a
neighbour of its last and starts from its background-only fit.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Iterator, Mapping, Sequence

import pyhf
from tqdm.auto import tqdm

from ..exceptions import ConfigError, WorkspaceError
from .evaluate import ScanSettings, _model, evaluate_patch
from .journal import ScanJournal
from .patches import PatchCollection, SignalPatch
from .results import PatchResult, ScanResult

__all__ = ["scan_patches", "THREAD_VARIABLES"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
JOURNAL_FORMAT = "sbilab.reinterpret.scan/1"

_WORKER: dict[str, Any] = {}


@contextlib.contextmanager
def _one_thread_per_process() -> Iterator[None]:
    """Environment in which spawned processes start with one BLAS/OpenMP thread (restored afterwards)."""
    saved = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    os.environ.update({v: "1" for v in THREAD_VARIABLES})
    try:
        yield
    finally:
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def _init_worker(background: dict[str, Any], settings: dict[str, Any]) -> None:
    """Worker set-up: one thread everywhere, the background workspace and settings kept for every point."""
    os.environ.update({v: "1" for v in THREAD_VARIABLES})  # for libraries imported later
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before any parallel work
        torch.set_num_interop_threads(1)
    _WORKER.update(background=background, settings=ScanSettings.from_dict(settings), warm=None)


def _run_point(name: str, values: Sequence[float], operations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Worker task: one point, started from this worker's previous background-only fit."""
    settings: ScanSettings = _WORKER["settings"]
    patch = SignalPatch(name, tuple(values), tuple(operations))
    result, warm = _guarded(_WORKER["background"], patch, settings, _WORKER["warm"] if settings.warm_start else None)
    if warm is not None:
        _WORKER["warm"] = warm
    return result.to_dict()


def _guarded(background: Mapping[str, Any], patch: SignalPatch, settings: ScanSettings,
             warm: Mapping[str, Any] | None) -> tuple[PatchResult, dict[str, list[float]] | None]:
    """:func:`evaluate_patch`, with an unexpected failure of one point recorded as its error (the scan goes on)."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        return evaluate_patch(background, patch, settings, warm)
    except Exception as err:  # noqa: BLE001 - one pathological point must not stop a scan of hundreds; it is reported
        return PatchResult.failed(patch.name, patch.values, settings.poi, f"{type(err).__name__}: {err}",
                                  time.process_time() - cpu, time.perf_counter() - wall, 0), None


def _check_first(background: Mapping[str, Any], todo: Sequence[SignalPatch], settings: ScanSettings) -> None:
    """Refuse a patch set none of whose first three patches fits the workspace (e.g. another region's)."""
    errors = []
    for patch in todo[:3]:
        try:
            _model(background, patch, settings, None)
            return
        except WorkspaceError as err:
            errors.append(err)
    if errors:
        raise WorkspaceError(f"none of the first {len(errors)} patches fits this background-only workspace; the first: {errors[0]}")


def _order(patches: Sequence[SignalPatch]) -> list[SignalPatch]:
    """Neighbours next to each other: sorted by the model parameters (then name)."""
    return sorted(patches, key=lambda p: (tuple(p.values), p.name))


def scan_patches(
    workspace: pyhf.Workspace | Mapping[str, Any],
    patches: PatchCollection | Sequence[SignalPatch],
    *,
    settings: ScanSettings | None = None,
    journal: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ScanResult:
    r"""Observed and expected CLs (and optionally upper limits) of every signal patch.

    Example (the ATLAS sbottom search, region A)::

        ws = read_background("RegionA/BkgOnly.json", archive="ins1748602-....tar.gz")
        patches = read_patches("ins1748602-....tar.gz", region="RegionA", labels=("m_sb", "m_chi2", "m_chi1"))
        result = scan_patches(ws, patches, journal="out/scan.jsonl")
        result.write("out")  # results.json, results.csv

    Args:
        workspace: The background-only workspace (a pyhf workspace or its specification).
        patches: The signal patches (a :class:`PatchCollection` is checked against the
            workspace's digest when it has one).
        settings: How each point is tested (default :class:`ScanSettings`: CLs at μ = 1 with
            :math:`\tilde q_\mu`, scipy SLSQP, torch gradients).
        journal: JSON-lines file that receives every finished point at once (and lets a killed
            scan resume); ``None`` keeps results in memory only.
        workers: Worker processes (default: the CPUs available, at most one per point); 1 runs
            in this process.
        progress: Show a progress bar.

    Returns:
        A :class:`ScanResult` with one point per patch, in the patches' order.

    Raises:
        WorkspaceError: the PatchSet was made for another workspace, or none of the first
            patches fits it (points that fail later are recorded with their ``error``).
        ConfigError: ``journal`` holds a scan with other settings or workspace, or ``workers`` < 1.
    """
    settings = settings or ScanSettings()
    background = json.loads(json.dumps(dict(workspace)))
    if isinstance(patches, PatchCollection):
        patches.verify(background)
        labels, points = patches.labels, list(patches.patches)
    else:
        points = list(patches)
        labels = tuple(f"m{i + 1}" for i in range(max((len(p.values) for p in points), default=0)))
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}; give at least 1 (1 runs in this process).")
    digest = pyhf.utils.digest(background, algorithm="sha256")
    log = ScanJournal(journal, {"format": JOURNAL_FORMAT, "workspace_sha256": digest, "settings": settings.to_dict()}) \
        if journal is not None else None
    done = {n: PatchResult.from_dict(r) for n, r in (log.latest() if log else {}).items() if not r.get("error")}
    names = {p.name for p in points}
    done = {n: r for n, r in done.items() if n in names}
    todo = _order([p for p in points if p.name not in done])
    start = time.perf_counter()
    new: dict[str, PatchResult] = {}
    if todo:
        if not done:  # a journal with finished points has shown that the patches fit
            _check_first(background, todo, settings)
        n_workers = min(len(todo), workers or len(os.sched_getaffinity(0)))
        bar = tqdm(total=len(points), initial=len(done), desc="patches", unit="pt", disable=not progress)
        try:
            for result in (_serial(background, todo, settings) if n_workers == 1 else _parallel(background, todo, settings, n_workers)):
                if log is not None:
                    log.append(result.to_dict())
                new[result.name] = result
                bar.update(1)
                if result.error:
                    bar.set_postfix(failed=sum(1 for r in new.values() if r.error))
        finally:
            bar.close()
    by_name = {**done, **new}
    ordered = tuple(by_name[p.name] for p in points)
    return ScanResult(ordered, tuple(labels), settings.to_dict(), digest, wall_s=time.perf_counter() - start,
                      cpu_s=sum(r.cpu_s for r in ordered), resumed=len(done))


def _serial(background: Mapping[str, Any], todo: Sequence[SignalPatch], settings: ScanSettings) -> Iterator[PatchResult]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warm = None
    try:
        for patch in todo:
            result, new_warm = _guarded(background, patch, settings, warm if settings.warm_start else None)
            warm = new_warm or warm
            yield result
    finally:
        torch.set_num_threads(threads)


def _parallel(background: Mapping[str, Any], todo: Sequence[SignalPatch], settings: ScanSettings,
              n_workers: int) -> Iterator[PatchResult]:
    context = multiprocessing.get_context("spawn")
    with _one_thread_per_process(), ProcessPoolExecutor(max_workers=n_workers, mp_context=context, initializer=_init_worker,
                                                        initargs=(dict(background), settings.to_dict())) as pool:
        pending: set[Future] = {pool.submit(_run_point, p.name, list(p.values), [dict(op) for op in p.operations]) for p in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield PatchResult.from_dict(future.result())
        finally:
            for future in pending:
                future.cancel()
