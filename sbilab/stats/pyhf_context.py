r"""pyhf's global state, scoped: backend and optimizer contexts, and pyhf's exceptions wrapped with names.

pyhf keeps one global backend (tensor library and optimizer) and, with the torch backend, sets
torch's global default dtype. :func:`pyhf_backend` switches to the requested backend and optimizer
and restores the previous ones (and torch's default dtype) afterwards; :func:`numpy_minuit` is its
default, the numpy backend with Minuit. :func:`pyhf_errors` turns pyhf's model and data exceptions
into a :class:`~sbilab.exceptions.WorkspaceError` naming the workspace's channels and samples.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Literal

import pyhf
import torch

from ..exceptions import FitError, WorkspaceError

__all__ = ["pyhf_backend", "numpy_minuit", "pyhf_errors", "BACKENDS", "OPTIMIZERS"]


BACKENDS = ("numpy", "torch")
OPTIMIZERS = ("minuit", "scipy")
_TENSORLIB_NAMES = {"numpy": "numpy", "torch": "pytorch"}


@contextlib.contextmanager
def pyhf_backend(backend: Literal["numpy", "torch"] = "numpy", optimizer: Literal["minuit", "scipy"] = "minuit", *,
                 tolerance: float | None = None, strategy: int | None = None) -> Iterator[None]:
    """Context in which pyhf uses ``backend`` (float64) and ``optimizer``; restores the previous backend.

    ``"torch"`` gives the optimizer exact gradients by autodiff (numpy: finite differences, one
    likelihood evaluation per parameter and step). ``tolerance=None`` keeps the optimizer's own
    default (minuit: 0.1, scipy SLSQP: ``ftol`` 1e-6, pyhf's defaults). When pyhf already runs
    with these settings nothing is switched (a switch makes every live pyhf model re-convert its
    tensors).

    Raises:
        FitError: an unknown backend or optimizer.
    """
    if backend not in BACKENDS or optimizer not in OPTIMIZERS:
        raise FitError(f"backend={backend!r}, optimizer={optimizer!r}: choose backend from {BACKENDS} and optimizer from {OPTIMIZERS}.")
    old_tensorlib, old_optimizer = pyhf.get_backend()
    if (old_tensorlib.name == _TENSORLIB_NAMES[backend] and getattr(old_tensorlib, "precision", "64b") == "64b"
            and old_optimizer.name == optimizer and old_optimizer.tolerance == (0.1 if tolerance is None and optimizer == "minuit" else tolerance)
            and getattr(old_optimizer, "strategy", None) == strategy):
        yield
        return
    default_dtype = torch.get_default_dtype()  # pyhf's torch backend sets torch's global default to float64
    tensorlib = "numpy" if backend == "numpy" else pyhf.tensor.pytorch_backend(precision="64b")
    if optimizer == "minuit":
        opt = pyhf.optimize.minuit_optimizer(tolerance=0.1 if tolerance is None else tolerance, strategy=strategy)
    else:
        opt = pyhf.optimize.scipy_optimizer(tolerance=tolerance)
    _set_backend(tensorlib, opt)
    try:
        yield
    finally:
        _set_backend(old_tensorlib, old_optimizer)
        torch.set_default_dtype(default_dtype)


def _set_backend(tensorlib: Any, optimizer: Any) -> None:
    """``pyhf.set_backend``; live models re-convert their tensors, which under torch makes torch warn about pyhf's lists of arrays."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Creating a tensor from a list of numpy.ndarrays", category=UserWarning)
        pyhf.set_backend(tensorlib, optimizer)


@contextlib.contextmanager
def numpy_minuit(*, tolerance: float = 0.1, strategy: int | None = None) -> Iterator[None]:
    """Context in which pyhf uses the numpy backend (float64) and the minuit optimizer; restores the previous backend."""
    with pyhf_backend("numpy", "minuit", tolerance=tolerance, strategy=strategy):
        yield


@contextlib.contextmanager
def pyhf_errors(workspace: Any) -> Iterator[None]:
    """Context turning pyhf's model/data exceptions into a WorkspaceError that names the workspace's channels and samples."""
    try:
        yield
    except (pyhf.exceptions.InvalidModel, pyhf.exceptions.InvalidModifier, pyhf.exceptions.InvalidPdfData,
            pyhf.exceptions.InvalidPdfParameters, pyhf.exceptions.InvalidSpecification, pyhf.exceptions.UnspecifiedPOI,
            pyhf.exceptions.InvalidNameReuse) as err:
        try:
            layout = {c["name"]: [s["name"] for s in c["samples"]] for c in workspace["channels"]}
        except (KeyError, TypeError):
            layout = {}
        raise WorkspaceError(f"pyhf rejects the workspace (channels and samples {layout}): {type(err).__name__}: {err}") from err
