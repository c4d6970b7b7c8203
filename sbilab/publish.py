r"""Publishing trained estimators and unbinned results: HDF5 + JSON spec, checksums, no pickle.

A published file (schema ``sbilab.publish``, version 1) is an HDF5 file::

    /                  attrs sbilab_schema, sbilab_schema_version, spec (a JSON string)
    /tensors/<name>    one dataset per state_dict entry (modules) or per array (results)

The JSON spec holds the schema, the content (``"module"`` or ``"results"``), the ``kind``
(registered class name, or a results label), the constructor arguments ``spec`` (for sbilab
estimators: parameter space and names, observables, architecture, preprocessing options),
the user's ``metadata``, sbilab/torch versions, the creation time, every tensor's dtype,
shape and SHA-256, and ``spec_sha256``: the SHA-256 of the canonical JSON of all the rest.

Loading reads JSON and numeric arrays only: no pickle, no ``torch`` deserialisation, no
import of anything named in the file. A module is rebuilt by the class registered under its
kind (:func:`sbilab.registry.register_publishable`; the class's module must already be imported) from the
JSON spec; then the schema version, the spec checksum, every tensor's checksum, dtype and
shape, and the exact set of tensor names are checked before ``load_state_dict(strict=True)``.
The checksums detect corruption and accidental edits; they are not signatures, so they do
not authenticate the author. A file is therefore treated as untrusted input:

* it must hold its data itself: HDF5 external links, soft links, datasets with external raw
  storage and virtual datasets (which would pull bytes from other files on disk into a
  model) are refused before any dataset is read;
* the module its spec describes is first built *without memory* (every tensor larger than
  4096 entries on torch's ``meta`` device) and its tensor shapes compared with the stored
  ones, so a small file whose (re-hashed) spec asks for a huge network is refused before
  anything large is allocated.

Files are written to a temporary name and atomically renamed, so a failed or killed save
never replaces a good file with a half-written one.

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> @register_publishable
    ... class Affine(nn.Linear):
    ...     def spec(self): return {"n": self.in_features}
    ...     @classmethod
    ...     def from_spec(cls, spec): return cls(spec["n"], 1)
    >>> path = save(tempfile.mkdtemp() + "/affine.h5", Affine(3, 1), metadata={"analysis": "demo"})
    >>> inspect(path)["kind"], load(path).in_features
    ('Affine', 3)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .durable import atomic_write
from .exceptions import PublishError
from .registry import (
    build_module,
    jsonable,
    module_spec,
    publishable_kinds,
    register_publishable,
    registered_class,
    state_shapes_without_memory,
)
from .store_format import check_self_contained

__all__ = [
    "PUBLISH_SCHEMA",
    "PUBLISH_SCHEMA_VERSION",
    "PublishedResults",
    "register_publishable",
    "publishable_kinds",
    "module_spec",
    "build_module",
    "save",
    "load",
    "save_results",
    "load_results",
    "inspect",
]

PUBLISH_SCHEMA = "sbilab.publish"
PUBLISH_SCHEMA_VERSION = 1
_GROUP = "tensors"


# ---------------------------------------------------------------------- helpers
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def _to_numpy(name: str, value: Any) -> tuple[np.ndarray, str]:
    """Array to store and the dtype name to record (torch names; bfloat16 is stored as int16)."""
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), "bfloat16"
        try:
            return t.numpy(), str(t.dtype).removeprefix("torch.")
        except (TypeError, RuntimeError) as err:
            raise PublishError(f"tensor {name!r} has dtype {t.dtype}, which cannot be published.") from err
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        raise PublishError(f"array {name!r} has dtype {array.dtype}; only numeric and bool arrays can be published.")
    return np.ascontiguousarray(array), str(array.dtype)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name or name == ".":
        raise PublishError(f"tensor name {name!r} cannot be published: names must be non-empty strings without '/'.")


def _versions() -> dict[str, str]:
    return {"sbilab_version": __version__, "torch_version": torch.__version__, "h5py_version": h5py.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _write(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray], overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise PublishError(f"{path} already exists; pass overwrite=True to replace it.")
    if not path.parent.is_dir():
        raise PublishError(f"cannot write {path}: the folder {path.parent} does not exist.")
    header["spec_sha256"] = hashlib.sha256(_canonical(header)).hexdigest()

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["sbilab_schema"] = PUBLISH_SCHEMA
            f.attrs["sbilab_schema_version"] = PUBLISH_SCHEMA_VERSION
            f.attrs["spec"] = json.dumps(header, indent=1, sort_keys=True)
            group = f.create_group(_GROUP)
            for name, array in arrays.items():
                group.create_dataset(name, data=array)

    try:
        atomic_write(path, write)
    except OSError as err:
        raise PublishError(f"cannot write {path}: {err}") from err
    return path


def _read_header(path: Path, f: h5py.File) -> dict[str, Any]:
    schema = f.attrs.get("sbilab_schema")
    if schema != PUBLISH_SCHEMA:
        hint = " It is a simulation store: open it with SimulationStore.open." if schema == "sbilab.store" else ""
        raise PublishError(f"{path} is not an sbilab published file (sbilab_schema attribute is {schema!r}).{hint}")
    version = f.attrs.get("sbilab_schema_version")
    version = int(version) if isinstance(version, (int, np.integer)) else version
    if not isinstance(version, int) or not 1 <= version <= PUBLISH_SCHEMA_VERSION:
        raise PublishError(
            f"{path} has publish schema version {version!r}; this sbilab reads 1..{PUBLISH_SCHEMA_VERSION}. Upgrade sbilab."
        )
    try:
        header = json.loads(f.attrs["spec"])
        stored = header.pop("spec_sha256")
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise PublishError(f"{path}: the JSON spec is missing or malformed ({err!r}).") from err
    if hashlib.sha256(_canonical(header)).hexdigest() != stored:
        raise PublishError(f"{path}: the JSON spec does not match its SHA-256 checksum; the spec was altered or corrupted.")
    if header.get("schema") != {"name": PUBLISH_SCHEMA, "version": int(version)}:
        raise PublishError(f"{path}: the spec's schema {header.get('schema')} contradicts the file's version {int(version)}.")
    return header


def _open(path: str | os.PathLike) -> tuple[Path, h5py.File]:
    """``path`` opened read-only, after checking that it holds all its data itself (no links to other files)."""
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"{path} does not exist or is not a file.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise PublishError(f"{path} is not a readable HDF5 file (truncated, corrupt or another format): {err}") from err
    try:
        check_self_contained(f, path, error=PublishError)
    except BaseException:
        f.close()
        raise
    return path, f


def _probe_shapes(path: Path, header: dict[str, Any]) -> None:
    """Refuse a spec whose module's tensor shapes differ from the stored ones, before building it for real.

    The probe build allocates only small tensors (large ones live on the meta device); a spec
    that cannot be built that way (a module computing with its large tensors in ``__init__``)
    is left to the real build, whose shapes are checked again.
    """
    listed = {name: tuple(info["shape"]) for name, info in header.get("tensors", {}).items()}
    shapes = state_shapes_without_memory(header)
    if shapes is None:  # not probe-able without memory: the real build checks the shapes
        return
    wrong = sorted(set(shapes) ^ set(listed)) or [n for n in shapes if shapes[n] != listed[n]]
    if wrong:
        want = sum(math.prod(s) for s in shapes.values())
        have = sum(math.prod(s) for s in listed.values())
        first = wrong[0]
        raise PublishError(
            f"{path}: its spec describes a {header.get('kind')} of {want} numbers but the file stores {have}; tensor {first!r} "
            f"is {shapes.get(first, 'absent')} by the spec and {listed.get(first, 'absent')} in the file. The spec was altered "
            "or does not belong to these tensors; refused before building anything."
        )


def _read_tensors(path: Path, f: h5py.File, header: dict[str, Any]) -> dict[str, np.ndarray]:
    listed = header.get("tensors", {})
    present = set(f[_GROUP].keys()) if _GROUP in f else set()
    if present != set(listed):
        raise PublishError(
            f"{path}: datasets {sorted(present - set(listed))} are not in the spec and {sorted(set(listed) - present)} "
            "listed in the spec are missing."
        )
    out = {}
    for name, info in listed.items():
        array = f[_GROUP][name][()]
        stored_dtype = "int16" if info["dtype"] == "bfloat16" else info["dtype"]
        if str(array.dtype) != stored_dtype or list(array.shape) != info["shape"]:
            raise PublishError(
                f"{path}: tensor {name!r} is {array.dtype} {list(array.shape)} but the spec says {info['dtype']} {info['shape']}."
            )
        if _sha256(array) != info["sha256"]:
            raise PublishError(f"{path}: tensor {name!r} does not match its SHA-256 checksum; the file was altered or corrupted.")
        out[name] = array
    return out


def _header(content: str, kind: str, spec: Any, metadata: Any, arrays: dict[str, tuple[np.ndarray, str]]) -> dict[str, Any]:
    return {
        "schema": {"name": PUBLISH_SCHEMA, "version": PUBLISH_SCHEMA_VERSION},
        "content": content, "kind": kind, "spec": spec,
        "metadata": jsonable(metadata or {}, "metadata"),
        **_versions(),
        "tensors": {n: {"dtype": d, "shape": list(a.shape), "sha256": _sha256(a)} for n, (a, d) in arrays.items()},
    }


# ---------------------------------------------------------------------- modules
def save(path: str | os.PathLike, module: Any, *, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Publish a registered module (estimator, ensemble, ...) with its weights and buffers.

    Args:
        path: Output file (conventionally ``*.h5``).
        module: Instance of a class decorated with :func:`register_publishable`.
        metadata: JSON-serialisable extras (analysis name, luminosity, citation, ...).
        overwrite: Replace an existing file (atomically).

    Raises:
        PublishError: the class is not registered, ``spec()`` is not JSON or does not rebuild
            a module with the same tensors, a tensor cannot be stored, or writing fails.
    """
    entry = module_spec(module)
    state = module.state_dict()
    arrays = {}
    for name, value in state.items():
        _check_name(name)
        if not isinstance(value, Tensor):
            raise PublishError(f"{entry['kind']}.state_dict() entry {name!r} is a {type(value).__name__}, not a tensor.")
        arrays[name] = _to_numpy(name, value)
    rebuilt = build_module(entry).state_dict()  # catch a spec() that does not describe the module now, not at load time
    wrong = sorted(set(rebuilt) ^ set(state)) or [n for n in state if tuple(rebuilt[n].shape) != tuple(state[n].shape)]
    if wrong:
        raise PublishError(f"{entry['kind']}.spec() does not rebuild this module: tensors {wrong[:5]} differ in name or shape.")
    header = _header("module", entry["kind"], entry["spec"], metadata, arrays)
    return _write(path, header, {n: a for n, (a, _) in arrays.items()}, overwrite)


def load(path: str | os.PathLike, *, expected_kind: str | None = None) -> Any:
    """Load a published module, verifying schema, checksums and tensor names; returned in eval mode.

    Raises:
        PublishError: the file is not a valid publication, fails a checksum, holds an
            unknown or unexpected kind, reaches outside itself (external links or storage,
            virtual datasets), or its tensors do not fit the module its spec builds (checked
            before the module is built).
    """
    path, f = _open(path)
    with f:
        header = _read_header(path, f)
        if header.get("content") != "module":
            raise PublishError(f"{path} holds {header.get('content')!r}, not a module; use load_results.")
        kind = header.get("kind")
        if expected_kind is not None and kind != expected_kind:
            raise PublishError(f"{path} holds a {kind!r}, not the expected {expected_kind!r}.")
        if registered_class(kind) is None:  # before reading any tensor, and without importing anything
            build_module(header)
        _probe_shapes(path, header)  # before reading any tensor or allocating the module
        arrays = _read_tensors(path, f, header)
    module = build_module(header)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
    if missing or unexpected:
        raise PublishError(f"{path}: tensors do not fit a {kind} built from the spec; missing {missing}, unexpected {unexpected}.")
    state = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(array)
        if header["tensors"][name]["dtype"] == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise PublishError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the {kind} expects {tuple(own[name].shape)}.")
        state[name] = tensor
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) == 1 and isinstance(module, nn.Module):
        module.to(floats.pop())  # keep float64 weights float64 (and float32 float32)
    module.load_state_dict(state, strict=True)
    return module.eval() if isinstance(module, nn.Module) else module


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class PublishedResults:
    """Arrays published with :func:`save_results` and their description.

    Attributes:
        kind: Label given at saving (e.g. ``"unfolded_weights"``).
        arrays: The arrays by name, numpy, exact dtypes.
        spec: The JSON description saved with them (observables, units, binning, ...).
        metadata: The JSON metadata saved with them.
    """

    kind: str
    arrays: dict[str, np.ndarray]
    spec: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def save_results(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    spec: dict[str, Any],
    *,
    kind: str = "results",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Publish numeric arrays that are not a module (per-event unfolded weights with their
    observables, fit results, ...) under the same schema and checksum discipline.

    Args:
        arrays: Arrays or tensors by name (numeric or bool).
        spec: JSON description, e.g. ``{"observables": ["pt", "eta"], "parameters": [...]}``.
        kind: A label for readers, checked by ``load_results(expected_kind=...)``.

    Raises:
        PublishError: an array is not numeric, a name is invalid, ``spec`` is not JSON.
    """
    if not arrays:
        raise PublishError("save_results: arrays is empty; give at least one named array.")
    converted = {}
    for name, value in arrays.items():
        _check_name(name)
        converted[name] = _to_numpy(name, value)
    header = _header("results", str(kind), jsonable(spec, "save_results spec"), metadata, converted)
    return _write(path, header, {n: a for n, (a, _) in converted.items()}, overwrite)


def load_results(path: str | os.PathLike, *, expected_kind: str | None = None) -> PublishedResults:
    """Load arrays published with :func:`save_results`, verifying schema and every checksum.

    Raises:
        PublishError: as :func:`load`.
    """
    path, f = _open(path)
    with f:
        header = _read_header(path, f)
        if header.get("content") != "results":
            raise PublishError(f"{path} holds {header.get('content')!r}, not results; use load.")
        if expected_kind is not None and header.get("kind") != expected_kind:
            raise PublishError(f"{path} holds results of kind {header.get('kind')!r}, not the expected {expected_kind!r}.")
        arrays = _read_tensors(path, f, header)
    return PublishedResults(kind=header["kind"], arrays=arrays, spec=header["spec"], metadata=header["metadata"])


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The verified JSON spec of a published file, without reading its tensors.

    Raises:
        PublishError: the file is not a publication or its spec fails its checksum.
    """
    path, f = _open(path)
    with f:
        header = _read_header(path, f)
    return {"file": str(path), "bytes": path.stat().st_size, **header}
