r"""Chunked, crash-safe storage of simulated events: :class:`SimulationStore`.

A store is a **directory** holding one small HDF5 file per committed chunk and a JSON
manifest that lists them::

    run.sbistore/
        manifest.json        schema, metadata, field dtypes/shapes, committed chunks
        chunk-000000.h5      datasets x, theta, log_r_joint, ... (one per Events field)
        chunk-000001.h5
        .lock                held (flock) by the one writer

Why a directory and not one growing HDF5 file: HDF5 updates its B-trees, heaps and
superblock *in place*; a writer killed with SIGKILL in the middle of such an update leaves
a file whose metadata may not parse at all, so even rows flushed long before are lost (and files
with the v3 superblock may refuse to open until ``h5clear``). SWMR mode avoids torn
metadata, but a SWMR writer cannot add groups or attributes once it has started, and a
crashed one leaves consistency flags that ``h5clear`` must reset. Here
every chunk is written to a temporary name, flushed, ``fsync``-ed and atomically renamed;
then the manifest is rewritten the same way (temp file, ``fsync``, ``os.replace``,
``fsync`` of the directory). ``os.replace`` is atomic on POSIX, so at any instant the
manifest is either the old or the new one and every chunk it lists is complete. A kill at
any point loses at most the chunk being written; its orphan file is ignored by readers and
removed by the next writer (``open(path, mode="a")``). The ``fsync`` calls extend this to
power loss. The manifest also records each chunk's size and SHA-256: truncated chunks are
refused on read, corrupted ones by :meth:`SimulationStore.verify`.

A store holds either :class:`~sbilab.events.Events` or :class:`~sbilab.paired.PairedEvents`
(two levels of the same events, stored as datasets ``gen/x``, ``reco/x``, ..., ``pass_gen``,
``pass_reco``, ``weights``), through the same commit mechanism. Padded sets (``x`` with
``mask``, ``latent`` with ``latent_mask``) may differ in length between appends: shorter ones
are padded to the store's length on append, a longer one raises the store's length (recorded
with the commit that brings it), and chunks written before are padded on read (mask false in
the new entries).

A store can also be packed into a single HDF5 file (:meth:`SimulationStore.pack`) for
sharing; :meth:`SimulationStore.open` reads both forms and streams either chunk by chunk.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/run.sbistore"
    >>> with SimulationStore.create(path, parameter_names=["mu"], observable_names=["x"], seed=1) as store:
    ...     store.append(Events(x=torch.zeros(5, 1), theta=torch.ones(5, 1)))
    >>> len(SimulationStore.open(path)), SimulationStore.open(path).metadata["seed"]
    (5, 1)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ._version import __version__
from .durable import atomic_write_text, fsync_and_hash
from .events import Events
from .exceptions import StoreError
from .paired import PairedEvents
from .store_format import (
    KINDS,
    MANIFEST,
    SEGMENT_ROWS,
    STORE_SCHEMA,
    STORE_SCHEMA_VERSION,
    acquire_lock,
    chunk_path,
    conform_arrays,
    is_own_temporary,
    open_h5,
    read_manifest,
    read_packed_manifest,
    schema_version_for,
    verify_packed,
    write_packed,
)

__all__ = ["SimulationStore", "STORE_SCHEMA", "STORE_SCHEMA_VERSION"]


class SimulationStore:
    r"""Events on disk: chunked append, streaming reads, metadata, crash safety.

    Do not call the constructor; use :meth:`create` (new store, writable), :meth:`open`
    (``mode="r"`` read, ``mode="a"`` continue writing, e.g. after a crash).

    Every :meth:`append` commits one chunk (or several of at most ``max_chunk_rows`` rows)
    before it returns: the rows are on disk and survive the process being killed. Readers
    see only committed chunks. Appends should be large (≳ 10⁴ rows): each chunk is a file.

    Attributes:
        path: The store directory (or packed ``.h5`` file).
        metadata: Simulator name and config, parameter and observable names, seed, sbilab
            version, creation time and the user's ``extra`` dict.
        fields: Per-event shape and dtype of every stored Events field.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, packed: bool, lock: Any = None) -> None:
        self.path = path
        self._manifest = manifest
        self._packed = packed
        self._lock = lock
        self._fsync = bool(manifest.get("fsync", True))
        self._handle: tuple[Path, h5py.File] | None = None
        self._segments = self._make_segments()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        simulator: Any = None,
        parameter_names: Sequence[str] | None = None,
        observable_names: Sequence[str] | None = None,
        seed: int | None = None,
        config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        max_chunk_rows: int = 262144,
        compression: str | None = None,
        fsync: bool = True,
        overwrite: bool = False,
    ) -> "SimulationStore":
        """Create an empty store directory and return it open for writing.

        Args:
            path: New directory (conventionally ``*.sbistore``).
            simulator: A :class:`~sbilab.simulators.Simulator`; its name, ``config()``,
                parameter and observable names fill the metadata unless given explicitly.
            parameter_names, observable_names: Names of the ``theta`` and ``x`` columns.
            seed: Seed the events were simulated with (recorded, not used).
            config: JSON-serialisable simulator configuration.
            extra: Any further JSON-serialisable metadata.
            max_chunk_rows: Larger appends are split into chunks of at most this many rows,
                which bounds the memory of streaming reads.
            compression: HDF5 filter for the datasets (``"gzip"``, ``"lzf"`` or ``None``).
            fsync: Flush to the disk device at every commit (protects against power loss; a
                killed process is safe either way).
            overwrite: Replace an existing store at ``path`` (never a foreign directory).

        Raises:
            StoreError: ``path`` exists, or metadata is not JSON-serialisable.
        """
        path = Path(path)
        if max_chunk_rows < 1:
            raise StoreError(f"SimulationStore.create: max_chunk_rows must be >= 1, got {max_chunk_rows}.")
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists; pass overwrite=True to replace it, or SimulationStore.open(path, mode='a') to add to it.")
            if not (path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))):
                raise StoreError(f"{path} exists and is not an sbilab store; refusing to overwrite it. Choose another path.")
            shutil.rmtree(path)
        metadata = {
            "simulator": getattr(simulator, "name", None) if simulator is not None else None,
            "config": config if config is not None else (simulator.config() if simulator is not None else None),
            "parameter_names": list(parameter_names) if parameter_names is not None else (
                list(simulator.space.names) if simulator is not None else None),
            "observable_names": list(observable_names) if observable_names is not None else (
                list(simulator.observable_names) if simulator is not None else None),
            "seed": seed,
            "sbilab_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "extra": extra or {},
        }
        manifest = {
            "schema": STORE_SCHEMA, "schema_version": schema_version_for("events", {}), "metadata": metadata,
            "fields": {}, "rows": 0, "chunks": [],
            "max_chunk_rows": int(max_chunk_rows), "compression": compression, "fsync": fsync,
        }
        try:
            text = json.dumps(manifest, indent=1)
        except (TypeError, ValueError) as err:
            raise StoreError(f"SimulationStore.create: metadata for {path} is not JSON-serialisable ({err}).") from err
        try:
            path.mkdir(parents=True)
        except OSError as err:
            raise StoreError(f"cannot create the store directory {path} ({err.strerror or err}); choose a writable location.") from err
        lock = acquire_lock(path)
        try:
            atomic_write_text(path / MANIFEST, text, fsync=fsync)
        except OSError as err:
            if lock is not None:
                lock.close()
            raise StoreError(f"cannot write {path / MANIFEST} ({err.strerror or err}); choose a writable location.") from err
        return cls(path, manifest, packed=False, lock=lock)

    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str = "r") -> "SimulationStore":
        """Open a store directory (``mode`` ``"r"`` or ``"a"``) or a packed store file (``"r"``).

        Raises:
            StoreError: ``path`` is missing, foreign, truncated, corrupt or of a newer
                schema version; the message names the file and the problem.
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"SimulationStore.open: mode must be 'r' or 'a', got {mode!r}.")
        if not path.exists():
            raise StoreError(f"{path} does not exist; create a store with SimulationStore.create(path, ...).")
        if path.is_file():
            if mode != "r":
                raise StoreError(f"{path} is a packed store file and is read-only; append to the store directory instead.")
            return cls(path, read_packed_manifest(path), packed=True)
        manifest = read_manifest(path)
        chunks = manifest["chunks"]
        lock = None
        if mode == "a":
            lock = acquire_lock(path)
            listed = [c["file"] for c in chunks]
            for orphan in path.iterdir():  # temporaries of a killed writer: only names the store writes, never listed ones
                if orphan.is_file() and not orphan.is_symlink() and is_own_temporary(orphan.name, listed):
                    orphan.unlink()
        return cls(path, manifest, packed=False, lock=lock)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self._manifest["rows"])

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest["metadata"]))

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self._manifest["fields"]))

    @property
    def kind(self) -> str:
        """``"events"`` (:class:`Events`) or ``"paired"`` (:class:`PairedEvents`)."""
        return str(self._manifest.get("kind", "events"))

    @property
    def n_chunks(self) -> int:
        return len(self._segments)

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def __repr__(self) -> str:
        return f"SimulationStore({str(self.path)!r}, rows={len(self)}, fields={list(self._manifest['fields'])})"

    # ------------------------------------------------------------------ writing
    def append(self, events: Events | PairedEvents) -> None:
        """Commit ``events`` to disk (in chunks of at most ``max_chunk_rows``) before returning.

        Raises:
            StoreError: the store is read-only, holds the other kind of events, or the events'
                fields, per-event shapes or dtypes differ from the store's (the message names
                the field); sets longer than the store's cannot be appended.
        """
        if self._lock is None:
            raise StoreError(f"{self.path} is open read-only; use SimulationStore.open(path, mode='a') to append.")
        if not isinstance(events, (Events, PairedEvents)):
            raise StoreError(f"SimulationStore.append takes Events or PairedEvents, got {type(events).__name__}.")
        kind = "paired" if isinstance(events, PairedEvents) else "events"
        if self._manifest["fields"] and kind != self.kind:
            raise StoreError(f"{self.path} holds {self.kind!r} events; it cannot take {kind!r} events. Use another store.")
        arrays = {name: t.detach().cpu().numpy() for name, t in events.tensors().items()}
        arrays, fields = conform_arrays(self.path, self._manifest["fields"], arrays)
        n, step = len(events), int(self._manifest["max_chunk_rows"])
        for start in range(0, n, step):
            self._commit({k: v[start:start + step] for k, v in arrays.items()}, kind, fields)

    def _commit(self, arrays: dict[str, np.ndarray], kind: str, fields: dict[str, Any]) -> None:
        index = len(self._manifest["chunks"])
        name = f"chunk-{index:06d}.h5"
        final, tmp = self.path / name, self.path / f"{name}.tmp-{os.getpid()}"
        rows = len(next(iter(arrays.values())))
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["sbilab_schema"] = STORE_SCHEMA
                f.attrs["sbilab_schema_version"] = schema_version_for(kind, {k: {"shape": list(a.shape[1:])} for k, a in arrays.items()})
                f.attrs["rows"] = rows
                for key, a in arrays.items():
                    f.create_dataset(key, data=a, compression=self._manifest["compression"])
            size, digest = fsync_and_hash(tmp, fsync=self._fsync)
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write a chunk to {self.path} ({err.strerror or err}); the directory must be writable with "
                             "free space. Nothing was committed: the store still holds its previous rows.") from err
        manifest = dict(self._manifest)
        if not manifest["fields"]:
            manifest["fields"] = {k: {"dtype": str(a.dtype), "shape": list(a.shape[1:])} for k, a in arrays.items()}
            manifest["kind"] = kind
            manifest["schema_version"] = schema_version_for(kind, manifest["fields"])
        elif fields:
            manifest["fields"] = fields  # padded sets may have grown
        manifest["chunks"] = [*manifest["chunks"], {"file": name, "rows": rows, "bytes": size, "sha256": digest}]
        manifest["rows"] = int(manifest["rows"]) + rows
        try:
            atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=1), fsync=self._fsync)  # the commit point
        except OSError as err:
            raise StoreError(f"cannot write {self.path / MANIFEST} ({err.strerror or err}); the chunk was not committed. "
                             "Make the store directory writable and append again.") from err
        self._manifest = manifest
        self._segments.append((final, 0, rows, size))

    def close(self) -> None:
        """Release the write lock and any open file; reading remains possible."""
        if self._handle is not None:
            self._handle[1].close()
            self._handle = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "SimulationStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ reading
    def _make_segments(self) -> list[tuple[Path, int, int, int | None]]:
        """(file, first row in file, rows, expected bytes) of every streamed piece."""
        if self._packed:
            n = len(self)
            return [(self.path, s, min(SEGMENT_ROWS, n - s), None) for s in range(0, n, SEGMENT_ROWS)]
        return [(chunk_path(self.path, c["file"]), 0, int(c["rows"]), int(c["bytes"])) for c in self._manifest["chunks"]]

    def _file(self, path: Path, expected_bytes: int | None, rows: int) -> h5py.File:
        if self._handle is not None and self._handle[0] == path:
            return self._handle[1]
        if self._handle is not None:
            self._handle[1].close()
            self._handle = None
        if expected_bytes is not None:
            if not path.is_file():
                raise StoreError(f"{path} is missing: the store's manifest lists it as a committed chunk.")
            size = path.stat().st_size
            if size != expected_bytes:
                raise StoreError(f"{path} is truncated or altered: {size} bytes on disk, {expected_bytes} committed.")
        f = open_h5(path)
        if not self._packed:
            if f.attrs.get("sbilab_schema") != STORE_SCHEMA or int(f.attrs.get("rows", -1)) != rows:
                f.close()
                raise StoreError(f"{path} is not the chunk the manifest lists (schema or row count differ).")
        self._handle = (path, f)
        return f

    def _read_segment(self, k: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        path, offset, rows, nbytes = self._segments[k]
        hi = rows if hi is None else hi
        f = self._file(path, nbytes, rows)
        fields = self._manifest["fields"]
        try:
            arrays = {name: f[name][offset + lo:offset + hi] for name in fields}
        except (KeyError, OSError) as err:
            raise StoreError(f"{path}: cannot read rows {offset + lo}..{offset + hi} ({err}); the file is corrupt.") from err
        for name, a in arrays.items():  # chunks written before a longer set was appended
            short = fields[name]["shape"][0] - a.shape[1] if a.ndim > 1 and fields[name]["shape"] else 0
            if short > 0:
                arrays[name] = np.pad(a, ((0, 0), (0, short)) + ((0, 0),) * (a.ndim - 2))
        return arrays

    def _events(self, arrays: dict[str, np.ndarray]) -> Events | PairedEvents:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if self.kind not in KINDS:
            raise StoreError(f"{self.path} holds events of kind {self.kind!r}; this sbilab reads {list(KINDS)}. Upgrade sbilab.")
        return PairedEvents.from_tensors(tensors) if self.kind == "paired" else Events(**tensors)

    def read(self, start: int = 0, stop: int | None = None) -> Events | PairedEvents:
        """Rows ``start:stop`` as Events; only the chunks overlapping the range are read."""
        n = len(self)
        stop = n if stop is None else stop
        if not (0 <= start <= stop <= n):
            raise StoreError(f"{self.path}: read(start={start}, stop={stop}) is outside 0..{n}.")
        if start == stop:
            raise StoreError(f"{self.path}: read(start={start}, stop={stop}) selects no rows.")
        parts, first = [], 0
        for k, (_, _, rows, _) in enumerate(self._segments):
            lo, hi = max(start - first, 0), min(stop - first, rows)
            if lo < hi:
                parts.append(self._read_segment(k, lo, hi))
            first += rows
        return self._events({name: np.concatenate([p[name] for p in parts]) for name in parts[0]})

    def to_events(self) -> Events | PairedEvents:
        """The whole store in memory (for small stores; use :meth:`batches` for large ones)."""
        return self.read(0, len(self))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Events | PairedEvents]:
        """Stream the store in batches of ``batch_size`` rows (the last may be shorter).

        Memory stays at about one chunk plus one batch. With ``shuffle``, chunks are visited
        in a random order and rows are permuted within each chunk (and the carry-over of the
        previous one); every row still appears exactly once per pass.
        """
        if batch_size < 1:
            raise StoreError(f"batches: batch_size must be >= 1, got {batch_size}.")
        order = torch.randperm(len(self._segments), generator=generator).tolist() if shuffle else range(len(self._segments))
        pending: dict[str, np.ndarray] | None = None
        for k in order:
            arrays = self._read_segment(k)
            if pending is not None:
                arrays = {name: np.concatenate([pending[name], a]) for name, a in arrays.items()}
            rows = len(next(iter(arrays.values())))
            if shuffle:
                perm = torch.randperm(rows, generator=generator).numpy()
                arrays = {name: a[perm] for name, a in arrays.items()}
            full = rows - rows % batch_size
            for s in range(0, full, batch_size):
                yield self._events({name: a[s:s + batch_size] for name, a in arrays.items()})
            pending = {name: a[full:] for name, a in arrays.items()} if full < rows else None
        if pending is not None:
            yield self._events(pending)

    # ------------------------------------------------------------------ integrity and export
    def verify(self, *, progress: bool = False) -> None:
        """Check every committed chunk's size and SHA-256 against the manifest.

        Raises:
            StoreError: naming the first chunk that is missing, truncated or altered.
        """
        if self._packed:
            return verify_packed(self.path, self._manifest["fields"], len(self))
        for c in tqdm(self._manifest["chunks"], desc="verify", disable=not progress):
            path = chunk_path(self.path, c["file"])
            if not path.is_file():
                raise StoreError(f"{path} is missing: the manifest lists it as a committed chunk.")
            size, digest = fsync_and_hash(path, fsync=False)
            if size != c["bytes"] or digest != c["sha256"]:
                raise StoreError(f"{path} is corrupt: its SHA-256 or size differs from the committed chunk.")

    def pack(self, path: str | os.PathLike, *, overwrite: bool = False, progress: bool = False) -> Path:
        """Write all committed rows into one HDF5 file (atomically), readable with :meth:`open`.

        Raises:
            StoreError: ``path`` exists and ``overwrite`` is false, or the store is empty.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True to replace it.")
        if len(self) == 0:
            raise StoreError(f"{self.path} is empty; nothing to pack.")
        manifest = {k: v for k, v in self._manifest.items() if k != "chunks"}
        segments = (self._read_segment(k) for k in tqdm(range(len(self._segments)), desc="pack", disable=not progress))
        try:
            write_packed(path, manifest, segments)
        except OSError as err:
            raise StoreError(f"cannot write the packed store {path} ({err.strerror or err}); choose a writable location.") from err
        return path
