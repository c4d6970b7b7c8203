"""Builders of HDF5 files that reach outside themselves, for the tests of publish and the store.

Each replaces one dataset of an existing file by an object of the same name, dtype and shape
whose bytes live in *another* file (an external link, external raw storage, a virtual dataset)
or behind a soft link, and can re-sign what the sbilab formats checksum, so that the file is
well-formed in every other respect: only the refusal of such objects stands between a reader
and the outside bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

KINDS = ("external_link", "external_storage", "virtual", "soft_link")


def point_outside(path: Path, name: str, kind: str, outside: Path) -> None:
    """Replace dataset ``name`` of ``path`` by a ``kind`` object whose data come from the new file ``outside``.

    The outside file holds the same values, so checksums of the values still match.
    """
    with h5py.File(path, "r+") as f:
        values = f[name][()]
        del f[name]
        if kind == "external_link":
            with h5py.File(outside, "w") as g:
                g["data"] = values
            f[name] = h5py.ExternalLink(str(outside), "/data")
        elif kind == "external_storage":
            raw = np.ascontiguousarray(values)
            raw.tofile(outside)
            f.create_dataset(name, shape=raw.shape, dtype=raw.dtype, external=[(str(outside), 0, raw.nbytes)])
        elif kind == "virtual":
            with h5py.File(outside, "w") as g:
                g["data"] = values
            layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
            layout[...] = h5py.VirtualSource(str(outside), "data", shape=values.shape)
            f.create_virtual_dataset(name, layout)
        elif kind == "soft_link":
            hidden = name.rsplit("/", 1)[0] + "/.hidden" if "/" in name else ".hidden"
            f[hidden] = values
            f[name] = h5py.SoftLink("/" + hidden)
        else:
            raise ValueError(kind)


def resign_store_chunk(store: Path, index: int = 0) -> None:
    """Record the current size and SHA-256 of chunk ``index`` in the store's manifest (as an attacker would)."""
    manifest_path = store / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["chunks"][index]
    data = (store / entry["file"]).read_bytes()
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def rewrite_publish_spec(path: Path, edit) -> None:
    """Edit the JSON spec of a published file and re-sign it with a valid checksum."""
    with h5py.File(path, "r+") as f:
        header = json.loads(f.attrs["spec"])
        header.pop("spec_sha256")
        edit(header)
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        header["spec_sha256"] = hashlib.sha256(canonical).hexdigest()
        f.attrs["spec"] = json.dumps(header)
