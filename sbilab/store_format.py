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
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from .durable import atomic_write
from .exceptions import StoreError

try:  # POSIX advisory lock: a killed writer releases it automatically
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["STORE_SCHEMA", "STORE_SCHEMA_VERSION", "MANIFEST", "LOCK", "SEGMENT_ROWS", "KINDS", "check_schema", "schema_version_for", "open_h5",
           "acquire_lock", "read_manifest", "read_packed_manifest", "verify_packed", "write_packed"]

STORE_SCHEMA = "sbilab.store"
STORE_SCHEMA_VERSION = 2  # the newest version this sbilab reads and writes
KINDS = ("events", "paired")
_V1_FIELDS = {"x", "theta", "log_r_joint", "score_joint", "weights", "label", "latent", "mask"}
MANIFEST = "manifest.json"
LOCK = ".lock"
SEGMENT_ROWS = 65536  # rows per streamed segment of a packed single-file store


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


def open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only, or a StoreError naming it when it is not readable HDF5."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path} cannot be read as HDF5: the file is truncated, corrupt or not HDF5 ({err}).") from err


def acquire_lock(path: Path) -> Any:
    """Take the exclusive writer lock of the store directory ``path`` (an open file), or raise StoreError."""
    if fcntl is None:  # pragma: no cover
        return None
    fh = open(path / LOCK, "a")
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
