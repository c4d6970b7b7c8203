r"""The pipeline registry and ``run_analysis``: dispatch a configuration to the pipeline named by ``[analysis] kind``.

A pipeline registers itself where it is defined, with :func:`register_pipeline` on its run
function; the configuration (``kind = "..."`` in ``analysis.toml``) and the command line look it
up here. A pipeline may bring its own configuration section (a frozen dataclass, e.g. ``[eft]``),
restrict the toys it runs on, and check the whole configuration. The built-in pipelines (imported
by :mod:`sbilab.analysis`):

===================  =========================================================================
kind                 pipeline
===================  =========================================================================
``"measurement"``    :func:`sbilab.analysis.measurement.run_measurement`: unbinned fit of the
                     parameters (nuisances profiled with constraints), learned vs exact
``"eft_limits"``     :func:`sbilab.analysis.eft.run_eft_limits`: expected and observed limits on
                     morphing couplings, learned ratio vs histograms vs SALLINO, learned vs exact
``"search"``         :func:`sbilab.analysis.search.run_search`: binned resonance search with pyhf
                     (CLs limits, significances) on raw x, a learned classifier and the exact s/b
``"qcd_splittings"`` :func:`sbilab.analysis.splittings.run_qcd_splittings`: (D, F, C) of the quark
                     splitting kernel from parton-shower events, learned ratios with and without
                     the history's gold, a set posterior, the exact primary-emission toy
``"mem_resonance"``  :func:`sbilab.analysis.mem_resonance.run_mem_resonance`: (M, Γ) of toy 1 by
                     the matrix-element method (analytic and ML-accelerated) vs ALICES vs exact
``"anomaly"``        :func:`sbilab.analysis.anomaly.run_anomaly`: DisCo λ scan, ABCD likelihood
                     with pyhf, SIC of weakly supervised classifiers, a bump hunt
``"surrogate"``      :func:`sbilab.analysis.surrogate.run_surrogate`: the resonance measurement
                     with its detector stage replaced by a learned surrogate, validated,
                     refined, and fitted against the original
``"unfolding"``      :func:`sbilab.analysis.unfolding.run_unfolding`: OmniFold with ensembles,
                     bootstraps and a detector systematic on a Gaussian toy with efficiency,
                     fakes and background, against the ideal iterations, IBU and generative
                     unfolding; the published per-event result
===================  =========================================================================

Every pipeline writes ``results.h5`` (:func:`sbilab.publish.save_results`: the numeric arrays
with the summary as their JSON spec, checksummed, no pickle) and ``results.json`` (the same
summary, human-readable) with :func:`write_results`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..exceptions import ConfigError

__all__ = ["Pipeline", "PIPELINES", "register_pipeline", "run_analysis", "write_results"]


@dataclass(frozen=True)
class Pipeline:
    """A registered analysis pipeline.

    Attributes:
        kind: Its name in ``[analysis] kind``.
        run: ``run(config, *, out, quick, device, progress) -> summary``.
        section: ``(name, dataclass)`` of its own configuration section, or ``None``.
        toys: The toys it can run on (``None``: any).
        check: ``check(config)`` raising :class:`ConfigError` for configurations it cannot run.
    """

    kind: str
    run: Callable[..., str]
    section: tuple[str, type] | None = None
    toys: tuple[str, ...] | None = None
    check: Callable[[Any], None] | None = None


PIPELINES: dict[str, Pipeline] = {}
"""Every registered pipeline by kind (filled by :func:`register_pipeline`)."""


def register_pipeline(kind: str, *, section: tuple[str, type] | None = None, toys: tuple[str, ...] | None = None,
                      check: Callable[[Any], None] | None = None) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Decorator: register the run function of a pipeline under ``kind`` (see :class:`Pipeline` for the options).

    Raises:
        ConfigError: another function holds the kind.
    """

    def decorate(run: Callable[..., str]) -> Callable[..., str]:
        old = PIPELINES.get(kind)
        if old is not None and (old.run.__module__, old.run.__qualname__) != (run.__module__, run.__qualname__):
            raise ConfigError(f"register_pipeline: the kind {kind!r} is already taken by {old.run.__module__}.{old.run.__qualname__}.")
        PIPELINES[kind] = Pipeline(kind, run, section, tuple(toys) if toys is not None else None, check)
        return run

    return decorate


def run_analysis(config: Any, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the analysis described by ``config`` with its pipeline; write results to ``out``; return a printable summary.

    Args:
        config: A configuration from :func:`~sbilab.analysis.load_config`.
        out: Output directory (created).
        quick: Apply the ``[quick]`` overrides (a smoke run of seconds to a minute).
        device: Training device (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: Print progress messages and bars.

    Raises:
        ConfigError: ``out`` is an existing file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out = {out} is an existing file; the analysis writes several files into a folder. Give a folder path.")
    return PIPELINES[config.kind].run(config, out=out, quick=quick, device=device, progress=progress)


def _split(value: Any, key: str, arrays: dict[str, list]) -> Any:
    """``value`` with every list of two or more numbers moved to ``arrays[key]`` and replaced by its name."""
    if isinstance(value, dict):
        return {k: _split(v, f"{key}.{k}" if key else str(k), arrays) for k, v in value.items()}
    numeric = isinstance(value, (list, tuple)) and len(value) > 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if numeric:
        name = key.replace("/", "_")
        arrays[name] = [float(v) for v in value]
        return f"array:{name}"
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{key}.{i}", arrays) for i, v in enumerate(value)]
    return value


def write_results(out: Path, document: dict[str, Any], *, kind: str, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``document`` as ``out/results.json`` and publish it as ``out/results.h5``; return the latter.

    In ``results.h5`` (:func:`~sbilab.publish.save_results`, kind ``analysis.<kind>``) every list of
    numbers of the document (profiles, scans, bin edges, templates) is a float64 array named by
    its dotted key path, e.g. ``profiles.learned.M.delta_nll``; the spec is the document with each
    such list replaced by ``"array:<name>"``. ``load_results`` verifies every checksum.
    """
    import numpy as np

    from ..publish import save_results

    out = Path(out)
    (out / "results.json").write_text(json.dumps(document, indent=2, default=float))
    arrays: dict[str, list] = {}
    spec = _split(json.loads(json.dumps(document, default=float)), "", arrays)
    numbers = {name: np.asarray(values, dtype=np.float64) for name, values in arrays.items()}
    return save_results(out / "results.h5", numbers, spec, kind=f"analysis.{kind}", metadata=metadata, overwrite=True)
