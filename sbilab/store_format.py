"""On-disk format of :class:`~sbilab.store.SimulationStore`: schema, manifest, writer lock, packed file.

A store directory holds ``manifest.json`` (schema name and version, metadata, the kind of
events — ``"events"`` for :class:`~sbilab.events.Events`, ``"paired"`` for
:class:`~sbilab.paired.PairedEvents`, whose fields are stored as ``gen/x``, ``reco/mask``, ...,
``pass_gen`` — field dtypes and shapes, and every committed chunk with its row count, size and
SHA-256) beside one HDF5 file per
chunk; a *packed* store is one HDF5 file whose ``manifest`` attribute carries the same manifest
without the chunk list, and whose datasets carry their SHA-256 as an attribute. This module reads
and checks both forms and writes the packed one; :mod:`sbilab.store` does the writing and
streaming of chunks.

Schema versions: 1 stores plain Events with the fields of the first release (and no ``kind``
key: it means ``"events"``); 2 adds paired events, ``spectator``, 3-D ``latent`` and
``latent_mask``. A store records the lowest version that describes its content
(:func:`schema_version_for`), so an older sbilab still reads every store it can understand and
refuses the others with a message to upgrade.

Stores are untrusted input when shared. Every file is opened through :func:`open_h5`, which
refuses HDF5 objects that reach outside the file (external and soft links, external raw
storage, virtual datasets) before any dataset is read (:func:`check_self_contained`), and a
manifest may list only chunk files that lie directly in the store directory
(:func:`chunk_path`): no ``../``, no absolute paths, no symbolic links leading elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from .durable import atomic_write
from .events import SET_FIELDS
from .exceptions import StoreError
from .paired import LEVELS

try:  # POSIX advisory lock: a killed writer releases it automatically
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["conform_arrays", "STORE_SCHEMA", "STORE_SCHEMA_VERSION", "MANIFEST", "LOCK", "SEGMENT_ROWS", "KINDS", "check_schema", "schema_version_for", "open_h5",
           "acquire_lock", "read_manifest", "read_packed_manifest", "verify_packed", "write_packed", "check_self_contained",
           "chunk_path", "CHUNK_NAME", "is_own_temporary"]

STORE_SCHEMA = "sbilab.store"
STORE_SCHEMA_VERSION = 2  # the newest version this sbilab reads and writes
KINDS = ("events", "paired")
_V1_FIELDS = {"x", "theta", "log_r_joint", "score_joint", "weights", "label", "latent", "mask"}
MANIFEST = "manifest.json"
LOCK = ".lock"
SEGMENT_ROWS = 65536  # rows per streamed segment of a packed single-file store
CHUNK_NAME = re.compile(r"chunk-\d{6,}\.h5")
"""Names of committed chunk files (``chunk-000000.h5``, ...)."""
_TEMPORARY = re.compile(r"(chunk-\d{6,}\.h5\.tmp-\d+|\.manifest\.json\.tmp-\d+-[0-9a-f]{8})")
_MAX_DEPTH = 32  # deepest group nesting walked by check_self_contained


def check_schema(where: Path, schema: Any, version: Any) -> None:
    """Raise StoreError unless ``schema``/``version`` name a store format this sbilab reads."""
    if schema != STORE_SCHEMA:
        raise StoreError(
            f"{where} is not an sbilab simulation store (schema {schema!r}, expected {STORE_SCHEMA!r}). "
            "Create stores with SimulationStore.create."
        )
    version = int(version) if isinstance(version, (int, np.integer)) else version
    if not isinstance(version, int) or not 1 <= version <= STORE_SCHEMA_VERSION:
        raise StoreError(
            f"{where} has store schema version {version!r}; this sbilab reads versions 1..{STORE_SCHEMA_VERSION}. "
            "Upgrade sbilab to read it."
        )


def schema_version_for(kind: str, fields: dict[str, Any]) -> int:
    """Lowest schema version that describes a store of ``kind`` with ``fields`` ``{name: {"shape": per-event shape}}``."""
    if kind != "events" or not set(fields) <= _V1_FIELDS:
        return 2
    if "latent" in fields and len(fields["latent"]["shape"]) != 1:
        return 2
    return 1


def check_self_contained(f: h5py.Group, where: Any, *, error: type[Exception] = StoreError) -> None:
    """Raise ``error`` unless every object of ``f`` lives in the file itself.

    Walks the hard-linked groups (nothing is read but the file's structure) and refuses
    external links and soft links, datasets with external raw storage, and virtual datasets:
    each could make a reader pull bytes from another file on disk.
    """
    stack: list[tuple[str, h5py.Group, int]] = [("/", f, 0)]
    while stack:
        prefix, group, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise error(f"{where}: groups nest deeper than {_MAX_DEPTH} levels at {prefix}; not a file sbilab writes.")
        for key in group:
            name, link = prefix + key, group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                target = f" to {link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else ""
                raise error(f"{where}: {name} is an HDF5 {type(link).__name__}{target}; sbilab files hold all their data "
                            "themselves, so this file is refused before anything is read.")
            obj = group.get(key)
            if isinstance(obj, h5py.Group):
                stack.append((name + "/", obj, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise error(f"{where}: dataset {name} is a virtual dataset (mapped from other files); sbilab files hold "
                                "all their data themselves, so this file is refused before anything is read.")
                if obj.id.get_create_plist().get_external_count():
                    raise error(f"{where}: dataset {name} keeps its bytes in external files {obj.external}; sbilab files hold "
                                "all their data themselves, so this file is refused before anything is read.")


def open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only after :func:`check_self_contained`, or a StoreError naming it."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path} cannot be read as HDF5: the file is truncated, corrupt or not HDF5 ({err}).") from err
    try:
        check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def chunk_path(store: Path, name: Any) -> Path:
    """The chunk file ``name`` listed in the manifest of ``store``, which must lie directly in the store directory.

    Raises:
        StoreError: ``name`` is not a chunk file name (``chunk-000000.h5``: no folders, no ``..``,
            not absolute), or is a symbolic link leading out of the store.
    """
    if not isinstance(name, str) or not CHUNK_NAME.fullmatch(name):
        raise StoreError(f"{store / MANIFEST} lists the chunk {name!r}; chunks are files chunk-NNNNNN.h5 directly in the store "
                         "directory (no folders, '..' or absolute paths). The manifest was altered; refusing it.")
    path = store / name
    if path.is_symlink() and path.resolve().parent != store.resolve():
        raise StoreError(f"{path} is a symbolic link to {path.resolve()}, outside the store; refusing to read it.")
    return path


def is_own_temporary(name: str, listed: Iterable[str]) -> bool:
    """Whether the file ``name`` in a store directory is a leftover of a killed writer of this store.

    Only names the store itself writes qualify, and never a chunk its manifest lists: temporary
    files (``chunk-NNNNNN.h5.tmp-PID``, ``.manifest.json.tmp-PID-HEX``) and a chunk renamed into
    place whose manifest commit never happened (``chunk-NNNNNN.h5`` numbered at or beyond the
    manifest's chunk count). Anything else — a user's ``chunk-notes.txt`` — is left alone.
    """
    listed = set(listed)
    if name in listed:
        return False
    if _TEMPORARY.fullmatch(name):
        return True
    return bool(CHUNK_NAME.fullmatch(name)) and int(name[6:-3]) >= len(listed)


def acquire_lock(path: Path) -> Any:
    """Take the exclusive writer lock of the store directory ``path`` (an open file), or raise StoreError."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fh = open(path / LOCK, "a")
    except OSError as err:
        raise StoreError(f"cannot write to the store directory {path} ({err.strerror or err}); open it read-only with "
                         "SimulationStore.open(path) to read it, or make the folder writable (or copy the store) to add to it.") from err
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StoreError(f"{path} is being written by another process; one writer at a time.") from None
    return fh


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest of the store directory ``path`` (schema, required keys, row count)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not an sbilab simulation store: it has no {MANIFEST}.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreError(f"{manifest_path} is truncated or not JSON ({err}).") from err
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path} is not an sbilab store manifest (not a JSON object).")
    check_schema(manifest_path, manifest.get("schema"), manifest.get("schema_version"))
    missing = [k for k in ("fields", "rows", "chunks", "metadata") if k not in manifest]
    if missing:
        raise StoreError(f"{manifest_path} is corrupt: it lacks the keys {missing}.")
    if sum(int(c["rows"]) for c in manifest["chunks"]) != manifest["rows"]:
        raise StoreError(f"{manifest_path} is inconsistent: its chunks hold a different number of rows than it records.")
    for c in manifest["chunks"]:
        chunk_path(path, c.get("file") if isinstance(c, dict) else c)
    return manifest


def read_packed_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest of the packed store file ``path`` (schema, every dataset present and shaped)."""
    with open_h5(path) as f:
        if "sbilab_schema" not in f.attrs:
            raise StoreError(f"{path} is an HDF5 file but not an sbilab simulation store (no 'sbilab_schema' attribute).")
        check_schema(path, f.attrs["sbilab_schema"], f.attrs.get("sbilab_schema_version"))
        try:
            manifest = json.loads(f.attrs["manifest"])
        except (KeyError, ValueError) as err:
            raise StoreError(f"{path}: the 'manifest' attribute is missing or corrupt ({err!r}).") from err
        for name, info in manifest["fields"].items():
            if name not in f or f[name].shape != (manifest["rows"], *info["shape"]):
                raise StoreError(f"{path}: dataset {name!r} is missing or has the wrong shape.")
    return manifest


def verify_packed(path: Path, fields: Iterable[str], rows: int) -> None:
    """Recompute every dataset's SHA-256 of the packed store ``path`` segment by segment; StoreError on a mismatch."""
    with open_h5(path) as f:
        for name in fields:
            digest = hashlib.sha256()
            for s in range(0, rows, SEGMENT_ROWS):
                digest.update(np.ascontiguousarray(f[name][s:s + SEGMENT_ROWS]).tobytes())
            if digest.hexdigest() != f[name].attrs.get("sha256"):
                raise StoreError(f"{path}: dataset {name!r} is corrupt (SHA-256 differs from the one written).")


def write_packed(path: Path, manifest: dict[str, Any], segments: Iterable[dict[str, np.ndarray]]) -> None:
    """Write ``segments`` (dicts of field arrays, in row order) as one packed store file, atomically."""
    n, fields = int(manifest["rows"]), manifest["fields"]

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["sbilab_schema"] = STORE_SCHEMA
            f.attrs["sbilab_schema_version"] = int(manifest.get("schema_version", STORE_SCHEMA_VERSION))
            f.attrs["manifest"] = json.dumps(manifest)
            ds = {k: f.create_dataset(k, shape=(n, *i["shape"]), dtype=i["dtype"], chunks=(min(n, 4096), *i["shape"]),
                                      compression=manifest["compression"]) for k, i in fields.items()}
            digests = {k: hashlib.sha256() for k in fields}
            row = 0
            for arrays in segments:
                m = len(next(iter(arrays.values())))
                for name, a in arrays.items():
                    ds[name][row:row + m] = a
                    digests[name].update(np.ascontiguousarray(a).tobytes())
                row += m
            for name, d in digests.items():
                ds[name].attrs["sha256"] = d.hexdigest()

    atomic_write(path, write)


def conform_arrays(path: Path, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``arrays`` in the layout of the store at ``path`` with ``fields``, and its fields after this append (set lengths may grow).

    Raises:
        StoreError: a field is missing or extra, or differs in per-event shape, or its dtype cannot be cast safely.
    """
    if not fields:
        return arrays, fields
    for prefix in ("", *(f"{level}/" for level in LEVELS)):  # shorter padded sets: pad to the store's length
        for field, mask in SET_FIELDS.items():
            f, m = prefix + field, prefix + mask
            if f in arrays and m in arrays and f in fields and m in fields:
                a, longest = arrays[f], fields[f]["shape"][0]
                if a.ndim == 3 and list(a.shape[2:]) == fields[f]["shape"][1:] and a.shape[1] < longest:
                    arrays[f] = np.pad(a, ((0, 0), (0, longest - a.shape[1]), (0, 0)))
                    arrays[m] = np.pad(arrays[m], ((0, 0), (0, longest - a.shape[1])), constant_values=False)
                elif a.ndim == 3 and list(a.shape[2:]) == fields[f]["shape"][1:] and a.shape[1] > longest:
                    fields = {**fields, f: {**fields[f], "shape": list(a.shape[1:])}, m: {**fields[m], "shape": [a.shape[1]]}}
    if set(arrays) != set(fields):
        missing, extra = sorted(set(fields) - set(arrays)), sorted(set(arrays) - set(fields))
        raise StoreError(
            f"{path} holds fields {list(fields)}; the appended Events "
            + (f"lack {missing}" if missing else "") + (" and " if missing and extra else "")
            + (f"have extra {extra}" if extra else "") + ". Every chunk must carry the same fields."
        )
    for name, info in fields.items():
        a = arrays[name]
        if list(a.shape[1:]) != info["shape"]:
            raise StoreError(
                f"{path}: field {name!r} has per-event shape {tuple(a.shape[1:])} but the store holds {tuple(info['shape'])}."
            )
        dtype = np.dtype(info["dtype"])
        if a.dtype != dtype:
            if not np.can_cast(a.dtype, dtype, "safe"):
                raise StoreError(
                    f"{path}: field {name!r} has dtype {a.dtype} but the store holds {dtype}; converting would lose precision. "
                    f"Cast the events first (e.g. events.to(dtype=torch.{dtype}))."
                )
            arrays[name] = a.astype(dtype)
    return arrays, fields
