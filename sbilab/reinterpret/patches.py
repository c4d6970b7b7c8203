r"""Signal patches of a published likelihood: read them from a pyhf PatchSet, a folder or a tarball, apply them.

A published search gives a background-only HistFactory workspace and one JSON Patch (RFC 6902)
per signal model, either as a pyhf *PatchSet* (one JSON file: ``labels`` naming the model
parameters, and per patch ``metadata.name`` and ``metadata.values``) or, in the older layout
of HEPData records such as ATLAS ins1748602, as one file per point, ``patch.<name>.json``, whose
model parameters are the numbers at the end of the name (``patch.sbottom_1300_205_60.json`` →
(1300, 205, 60)). :func:`read_patches` reads any of them (also from a ``.tar.gz`` without
extracting it) into a :class:`PatchCollection`; :func:`patched_workspace` applies one patch.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import jsonpatch
import pyhf

from ..exceptions import WorkspaceError
from ..stats.histfactory import load_workspace

__all__ = ["SignalPatch", "PatchCollection", "read_patches", "read_background", "patched_workspace", "to_patchset"]


@dataclass(frozen=True)
class SignalPatch:
    """One signal model: its name, its model parameters (e.g. masses) and the JSON Patch adding it.

    Attributes:
        name: Patch name, e.g. ``"sbottom_1300_205_60"``.
        values: The signal model's parameters, ``(K,)`` (e.g. three masses), possibly empty.
        operations: The JSON Patch operations (``{"op": ..., "path": ..., "value": ...}``).
    """

    name: str
    values: tuple[float, ...]
    operations: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class PatchCollection:
    """The patches of one background-only workspace.

    Attributes:
        patches: The patches, in the source's order.
        labels: Names of the ``values`` axes (a PatchSet's ``labels``; ``("m1", "m2", ...)`` for
            per-patch files unless given).
        source: Where they were read from.
        digests: ``{algorithm: digest}`` of the background workspace they were made for
            (PatchSet metadata; empty for per-patch files).
    """

    patches: tuple[SignalPatch, ...]
    labels: tuple[str, ...]
    source: str
    digests: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patches)

    def select(self, patterns: Sequence[str]) -> PatchCollection:
        """The patches whose names match any of the shell-style ``patterns`` (e.g. ``"sbottom_1300_*"``).

        Raises:
            WorkspaceError: no patch matches a pattern.
        """
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(p.name, pattern) for p in self.patches):
                raise WorkspaceError(f"no patch name matches {pattern!r}; names look like {[p.name for p in self.patches[:3]]}.")
        chosen = tuple(p for p in self.patches if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))
        return PatchCollection(chosen, self.labels, self.source, self.digests)

    def verify(self, workspace: Mapping[str, Any]) -> None:
        """Check the PatchSet's digests against the background-only ``workspace`` (no-op without digests).

        Raises:
            WorkspaceError: a digest differs (the patches were made for another workspace).
        """
        for algorithm, expected in self.digests.items():
            got = pyhf.utils.digest(dict(workspace), algorithm=algorithm)
            if got != expected:
                raise WorkspaceError(f"the patches in {self.source} were made for a different background-only workspace: its "
                                     f"{algorithm} digest is {expected}, this workspace's is {got}; give the matching BkgOnly.json.")


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _values_from_name(name: str) -> tuple[float, ...]:
    """The numbers at the end of ``name``: ``"sbottom_1300_205_60"`` -> ``(1300.0, 205.0, 60.0)``."""
    values: list[float] = []
    for token in reversed(name.split("_")):
        if not _NUMBER.match(token):
            break
        values.insert(0, float(token))
    return tuple(values)


def _patch_name(filename: str) -> str:
    stem = PurePosixPath(filename).name.removesuffix(".json")
    return stem.removeprefix("patch.")


def _from_operations(name: str, operations: Any, where: str) -> SignalPatch:
    if not isinstance(operations, list) or not all(isinstance(op, dict) and "op" in op and "path" in op for op in operations):
        raise WorkspaceError(f"{where} is not a JSON Patch (a list of {{'op': ..., 'path': ...}} operations) nor a pyhf PatchSet.")
    return SignalPatch(name, _values_from_name(name), tuple(operations))


def _from_patchset(spec: Mapping[str, Any], where: str) -> tuple[list[SignalPatch], tuple[str, ...], dict[str, str]]:
    try:
        patchset = pyhf.PatchSet(dict(spec))
    except (pyhf.exceptions.InvalidSpecification, pyhf.exceptions.InvalidPatchSet) as err:
        raise WorkspaceError(f"{where} is not a valid pyhf PatchSet: {err}") from err
    patches = [SignalPatch(p.name, tuple(float(v) for v in p.values), tuple(p.patch)) for p in patchset.patches]
    return patches, tuple(patchset.labels), dict(patchset.digests)


def _parse(text: bytes | str, filename: str) -> tuple[list[SignalPatch], tuple[str, ...] | None, dict[str, str]]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise WorkspaceError(f"cannot read patch JSON {filename!r}: {err}") from err
    if isinstance(spec, dict) and "patches" in spec:
        return _from_patchset(spec, filename)
    return [_from_operations(_patch_name(filename), spec, filename)], None, {}


def _choose_folder(folders: Sequence[str], region: str | None, where: str) -> str:
    if region is not None:
        if region not in folders:
            raise WorkspaceError(f"region {region!r} not found in {where}; its folders with patches are {sorted(folders)}.")
        return region
    if len(folders) != 1:
        raise WorkspaceError(f"{where} holds patches in several folders {sorted(folders)}; choose one with region=... (--region).")
    return folders[0]


def read_patches(source: str | Path, *, region: str | None = None, labels: Sequence[str] | None = None) -> PatchCollection:
    """Signal patches from a PatchSet JSON, a ``patch.*.json`` file, a folder of them, or a tarball.

    Args:
        source: A pyhf PatchSet file, one per-patch JSON file, a folder holding ``patch*.json``
            files (directly or in one sub-folder per region), or a ``.tar``/``.tar.gz`` of such folders.
        region: The sub-folder to read when there are several (e.g. ``"RegionA"``).
        labels: Names of the values' axes (default: the PatchSet's labels, else ``m1, m2, ...``).

    Raises:
        WorkspaceError: an unreadable file, not a patch, no patch found, an ambiguous or unknown
            region, patch names repeated, or ``labels`` of the wrong length.
    """
    path = Path(source)
    found: list[SignalPatch] = []
    set_labels: tuple[str, ...] | None = None
    digests: dict[str, str] = {}
    if path.is_dir():
        folders = sorted({str(f.parent.relative_to(path)) for f in path.rglob("patch*.json")})
        if not folders:
            raise WorkspaceError(f"no patch*.json files in folder {str(path)!r}.")
        folder = _choose_folder(folders, region, f"folder {str(path)!r}")
        for f in sorted((path / folder).glob("patch*.json")):
            found += _parse(f.read_bytes(), f.name)[0]
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatchcase(PurePosixPath(m.name).name, "patch*.json")]
            folders = sorted({str(PurePosixPath(m.name).parent) for m in members})
            if not folders:
                raise WorkspaceError(f"no patch*.json files in the archive {str(path)!r}.")
            folder = _choose_folder(folders, region, f"archive {str(path)!r}")
            for m in sorted((m for m in members if str(PurePosixPath(m.name).parent) == folder), key=lambda m: m.name):
                found += _parse(tar.extractfile(m).read(), m.name)[0]  # type: ignore[union-attr]
    elif path.is_file():
        found, set_labels, digests = _parse(path.read_bytes(), path.name)
    else:
        raise WorkspaceError(f"patch source {str(path)!r} does not exist; give a PatchSet JSON, a patch file, a folder or a tarball.")
    names = [p.name for p in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise WorkspaceError(f"patch names {repeated[:5]} repeat in {str(path)!r}; every patch needs its own name.")
    width = max((len(p.values) for p in found), default=0)
    if labels is not None:
        if len(labels) != width:
            raise WorkspaceError(f"labels {list(labels)} name {len(labels)} axes but the patches have {width} values each.")
        set_labels = tuple(labels)
    return PatchCollection(tuple(found), set_labels or tuple(f"m{i + 1}" for i in range(width)), str(path), digests)


def read_background(source: str | Path, *, archive: str | Path | None = None) -> pyhf.Workspace:
    """The background-only workspace from a JSON file, or from a member of ``archive`` (a tarball).

    ``read_background("RegionA/BkgOnly.json", archive="ins1748602-...tar.gz")`` reads the member
    without extracting the archive.

    Raises:
        WorkspaceError: the file or member is missing, unreadable, or fails pyhf's schema.
    """
    if archive is None or Path(source).is_file():
        return load_workspace(source)
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile(str(source))
        except KeyError:
            member = None
        if member is None:
            jsons = [m.name for m in tar.getmembers() if m.isfile() and not PurePosixPath(m.name).name.startswith("patch")
                     and m.name.endswith(".json")]
            raise WorkspaceError(f"{str(source)!r} is neither a file nor a member of {str(archive)!r}; its workspaces are {jsons}.")
        try:
            return load_workspace(json.loads(member.read()))
        except json.JSONDecodeError as err:
            raise WorkspaceError(f"cannot read workspace JSON {str(source)!r} in {str(archive)!r}: {err}") from err


def _sample_operations(patch: SignalPatch) -> list[Any]:
    """The samples a patch adds or replaces (values of ``/channels/<i>/samples/<j>`` operations)."""
    return [op["value"] for op in patch.operations if op.get("op") in ("add", "replace")
            and re.fullmatch(r"/channels/\d+/samples/(\d+|-)", str(op.get("path", ""))) and isinstance(op.get("value"), dict)]


def patched_workspace(background: Mapping[str, Any], patch: SignalPatch) -> pyhf.Workspace:
    """The background-only specification with ``patch`` applied, as a pyhf workspace (not re-validated).

    The published background is validated once when it is read; here only the samples the patch
    adds are checked against pyhf's schema (validating the whole workspace again costs as much as
    a fit). The model's bin counts and modifiers are checked when the model is built.

    Raises:
        WorkspaceError: the patch does not apply (a path that does not exist) or adds a malformed sample.
    """
    try:
        spec = jsonpatch.JsonPatch([dict(op) for op in patch.operations]).apply(dict(background))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        channels = [c.get("name") for c in background.get("channels", [])]
        raise WorkspaceError(f"patch {patch.name!r} does not apply to this workspace ({err}); its channels are {channels}: "
                             "is it a patch for another background-only workspace (another region)?") from err
    samples = _sample_operations(patch)
    if samples:
        try:
            pyhf.schema.validate({"channels": [{"name": "patch", "samples": samples}], "parameters": []}, "model.json")
        except pyhf.exceptions.InvalidSpecification as err:
            raise WorkspaceError(f"patch {patch.name!r} adds a malformed sample: {err}") from err
    return pyhf.Workspace(spec, validate=False)


def to_patchset(patches: PatchCollection, background: Mapping[str, Any], *, hepdata: str, name: str = "signal patches",
                description: str = "") -> dict[str, Any]:
    """A pyhf PatchSet specification (validated) of ``patches`` for ``background``, e.g. to publish old per-patch files as one file.

    Args:
        patches: The patches (their ``labels`` become the PatchSet's).
        background: The background-only specification (its sha256 digest is recorded).
        hepdata: The HEPData record, ``"ins"`` and seven digits (e.g. ``"ins1748602"``); pyhf's
            PatchSet schema requires it.
        name: The PatchSet's name.
        description: Its description (default: ``name``).

    Raises:
        WorkspaceError: ``hepdata`` is not of the form ``insNNNNNNN``, or a patch has a different
            number of values than there are labels.
    """
    if not re.fullmatch(r"ins[0-9]{7}", str(hepdata)):
        raise WorkspaceError(f"hepdata={hepdata!r}; pyhf's PatchSet schema needs the HEPData record id, 'ins' and seven digits "
                             "(e.g. 'ins1748602').")
    bad = [p.name for p in patches.patches if len(p.values) != len(patches.labels)]
    if bad:
        raise WorkspaceError(f"patches {bad[:5]} do not have one value per label {list(patches.labels)}.")
    spec = {
        "metadata": {"name": name, "description": description or name, "references": {"hepdata": str(hepdata)},
                     "digests": {"sha256": pyhf.utils.digest(dict(background), algorithm="sha256")}, "labels": list(patches.labels)},
        "patches": [{"metadata": {"name": p.name, "values": list(p.values)}, "patch": [dict(op) for op in p.operations]}
                    for p in patches.patches],
        "version": "1.0.0",
    }
    _from_patchset(spec, name)
    return spec
