r"""ONNX export of published estimators, so that other programs (C++ event generators through
onnxruntime, e.g. a learned model re-inserted into Herwig or Pythia) evaluate them without Python.

:func:`export_onnx` traces an estimator's ``forward`` with torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``, which needs neither onnxscript nor a network) into an
ONNX graph with a dynamic batch axis (and a dynamic particle axis for set inputs):

=====================  =========================================  =========================
kind                   inputs                                     output
=====================  =========================================  =========================
RatioEstimator         ``x (N, D)`` or ``(N, M, F)`` + ``mask``,   ``log_ratio (N,)``
                       ``theta (N, P)`` (``(N, 2P)`` if doubly)
Classifier             ``x``, [``theta``], [``mask``]              ``logit (N,)``
LikelihoodEstimator    ``x (N, D)``, ``theta (N, P)``              ``log_prob (N,)``
PosteriorEstimator     ``theta (N, P)``, ``x`` [+ ``mask``]        ``log_prob (N,)``
ScoreEstimator         ``x`` [+ ``mask``]                          ``score (N, P)``
ConditionalDensity     ``y (N, Dy)``, ``context`` [+ ``mask``]     ``log_prob (N,)``
=====================  =========================================  =========================

A mask travels as float (1 = real entry). The model's ``metadata_props`` carry a JSON
description (kind, inputs, outputs, parameter and observable names, the estimator's spec,
sbilab version); :func:`describe_onnx` reads it back (``sbilab info FILE.onnx``).
:func:`verify_onnx` compares onnxruntime with torch on random inputs at several batch sizes.

Needs the optional extra ``onnx`` (``pip install 'sbilab[onnx]'``: onnx + onnxruntime).
"""

from __future__ import annotations

import inspect as _inspect
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._version import __version__
from ..exceptions import ExportError, FileFormatError
from ..registry import kind_of

__all__ = ["EXPORTABLE", "export_onnx", "verify_onnx", "describe_onnx"]

EXPORTABLE = {
    "RatioEstimator": "log_ratio",
    "Classifier": "logit",
    "LikelihoodEstimator": "log_prob",
    "PosteriorEstimator": "log_prob",
    "ScoreEstimator": "score",
    "ConditionalDensity": "log_prob",
}
"""Exportable kinds and the name of their output."""

_META_KEY = "sbilab"


def _kind(module: Any) -> str:
    try:
        return kind_of(module)
    except Exception:  # noqa: BLE001 - unregistered classes are reported below
        return type(module).__name__


def _arguments(module: nn.Module) -> dict[str, str]:
    """ONNX input name -> the estimator's ``forward`` argument. Conditional densities take ``(y, c)``:
    a :class:`PosteriorEstimator` exports them as ``theta`` and ``x``, any other as ``y`` and ``context``."""
    params = _inspect.signature(module.forward).parameters
    if "y" in params and "c" in params:
        posterior = getattr(module, "space", None) is not None
        return {"theta" if posterior else "y": "y", "x" if posterior else "context": "c", "mask": "mask"}
    return {"x": "x", "theta": "theta", "mask": "mask"}


class _Wrapper(nn.Module):
    """``forward(*inputs)`` in a fixed order, a float mask turned into bool."""

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.module, self.names = module, list(names)
        self.arguments = _arguments(module)

    def forward(self, *inputs: Tensor) -> Tensor:
        kwargs = {self.arguments[n]: t for n, t in zip(self.names, inputs)}
        if "mask" in kwargs:
            kwargs["mask"] = kwargs["mask"] > 0.5
        return self.module(**kwargs)


def _signature(module: nn.Module, kind: str) -> list[str]:
    params = [p for p in _inspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    onnx_name = {arg: name for name, arg in _arguments(module).items()}
    unknown = [p.name for p in params if p.name not in onnx_name and p.default is p.empty]
    if unknown:
        raise ExportError(f"{kind}.forward needs {unknown}; ONNX export handles the inputs x, theta and mask (y, c and mask "
                          "for conditional densities) only.")
    is_set = bool(getattr(module, "is_set", False) or getattr(module, "sets", False))
    names = []
    for p in params:
        if p.name == "mask":
            if is_set:
                names.append("mask")
        elif p.name == "theta" and p.default is not p.empty and getattr(module, "space", None) is None \
                and not getattr(module, "theta_features", 0):
            continue  # an optional θ the estimator does not use (e.g. a classifier of x alone)
        elif p.name in onnx_name:
            names.append(onnx_name[p.name])
    return names


def _example(module: nn.Module, names: Sequence[str], batch: int, generator: torch.Generator, particles: int = 5) -> list[Tensor]:
    """Random inputs: θ uniform in the space's finite box (normal around the reference where unbounded), x standard normal."""
    dtype = next((p.dtype for p in module.parameters()), torch.get_default_dtype())
    space = getattr(module, "space", None)
    features = int(getattr(module, "x_features", None) or getattr(module, "context_features"))
    is_set = "mask" in names
    out = []
    for name in names:
        if name == "y":  # a conditional density's target: uniform in its finite box, normal where open
            lo, hi = module.bounds
            u = torch.rand(batch, lo.numel(), generator=generator, dtype=torch.float64)
            finite = torch.isfinite(lo) & torch.isfinite(hi)
            edge = torch.where(torch.isfinite(lo), lo + 0.5, torch.where(torch.isfinite(hi), hi - 0.5, torch.zeros_like(lo)))
            y = torch.where(finite, lo + (hi - lo) * (0.05 + 0.9 * u), edge + torch.randn(batch, lo.numel(), generator=generator, dtype=torch.float64).abs()
                            * torch.where(torch.isfinite(hi) & ~torch.isfinite(lo), -1.0, 1.0))
            out.append(y.to(dtype))
        elif name in ("x", "context"):
            shape = (batch, particles, features) if is_set else (batch, features)
            out.append(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
        elif name == "theta" and space is None:  # a parameterised classifier: θ standard normal
            out.append(torch.randn(batch, int(module.theta_features), generator=generator, dtype=torch.float64).to(dtype))
        elif name == "theta":
            lo, hi, ref = space.low, space.high, space.reference
            u = torch.rand(batch, lo.numel(), generator=generator, dtype=torch.float64)
            finite = torch.isfinite(lo) & torch.isfinite(hi)
            theta = torch.where(finite, lo + (hi - lo) * u, ref + torch.randn(batch, lo.numel(), generator=generator, dtype=torch.float64))
            if getattr(module, "doubly", False):
                theta = torch.cat([theta, theta.flip(0)], dim=1)
            out.append(theta.to(dtype))
        else:
            mask = torch.rand(batch, particles, generator=generator) < 0.7
            mask[:, 0] = True
            out.append(mask.to(dtype))
    return out


def export_onnx(module: nn.Module, path: str | os.PathLike, *, opset: int = 17, source: str | None = None) -> Path:
    """Write an estimator's forward pass as an ONNX model with a dynamic batch size.

    Args:
        module: A trained estimator of a kind in :data:`EXPORTABLE` (e.g. from :func:`sbilab.publish.load`).
        path: The ``.onnx`` file to write (replaced if it exists).
        opset: ONNX opset version.
        source: Where the estimator came from (recorded in the metadata, e.g. the published file).

    Raises:
        ExportError: the kind is not exportable (the message lists those that are), or tracing fails.
    """
    kind = _kind(module)
    if kind not in EXPORTABLE or not isinstance(module, nn.Module):
        raise ExportError(
            f"a {kind} cannot be exported to ONNX; exportable kinds are {sorted(EXPORTABLE)} "
            "(for an Ensemble or a mixture, export its members one by one)."
        )
    names = _signature(module, kind)
    output = EXPORTABLE[kind]
    module = module.eval()
    example = _example(module, names, 3, torch.Generator().manual_seed(0))
    dynamic = {n: {0: "batch", 1: "particles"} if n == "mask" or (n in ("x", "context") and "mask" in names) else {0: "batch"} for n in names}
    dynamic[output] = {0: "batch"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values, checked by verify_onnx
            torch.onnx.export(_Wrapper(module, names), tuple(example), buffer, dynamo=False, opset_version=opset,
                              input_names=list(names), output_names=[output], dynamic_axes=dynamic)
    except Exception as err:  # noqa: BLE001 - the tracer raises many types
        raise ExportError(f"tracing the {kind} for ONNX failed ({type(err).__name__}: {err}).") from None
    onnx = _require("onnx")
    model = onnx.load_from_string(buffer.getvalue())
    space = getattr(module, "space", None)
    meta = {
        "kind": kind, "inputs": names, "output": output, "sbilab_version": __version__, "opset": opset,
        "dtype": str(example[0].dtype).replace("torch.", ""), "set_inputs": "mask" in names,
        "parameter_names": list(space.names) if space is not None else [],
        "spec": module.spec() if hasattr(module, "spec") else {}, "source": source,
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = _META_KEY, json.dumps(meta, sort_keys=True)
    model.producer_name, model.producer_version = "sbilab", __version__
    onnx.checker.check_model(model)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"ONNX export needs the optional packages onnx and onnxruntime: pip install 'sbilab[onnx]' ({name} missing).") from err


def verify_onnx(path: str | os.PathLike, module: nn.Module, *, batch_sizes: Sequence[int] = (1, 17), seed: int = 0) -> float:
    """Largest absolute difference between onnxruntime and torch on random inputs at each batch size.

    Inputs are drawn as in the export (θ inside the space, x standard normal, random masks).
    """
    ort = _require("onnxruntime")
    info = describe_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    wrapper = _Wrapper(module.eval(), info["inputs"])
    for batch in batch_sizes:
        inputs = _example(module, info["inputs"], int(batch), generator)
        with torch.no_grad():
            expected = wrapper(*inputs).cpu().numpy()
        got = session.run(None, {n: t.cpu().numpy() for n, t in zip(info["inputs"], inputs)})[0]
        if got.shape != expected.shape:
            raise ExportError(f"{path}: onnxruntime returned shape {got.shape} for batch {batch}, torch {expected.shape}.")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """What an ONNX file holds: sbilab's metadata (if written by :func:`export_onnx`), inputs and outputs with shapes.

    Raises:
        FileFormatError: the file is missing or not an ONNX model.
    """
    onnx = _require("onnx")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"ONNX file {str(path)!r} does not exist.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors
        raise FileFormatError(f"{path}: not an ONNX model ({type(err).__name__}: {err}).") from None

    def shape(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    meta = {p.key: p.value for p in model.metadata_props}
    described = json.loads(meta.pop(_META_KEY)) if _META_KEY in meta else {}
    return {
        "file": str(path), "bytes": path.stat().st_size, "format": "onnx", "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}, "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "graph_inputs": {i.name: shape(i) for i in model.graph.input}, "graph_outputs": {o.name: shape(o) for o in model.graph.output},
        "nodes": len(model.graph.node), **described, "other_metadata": meta,
    }
