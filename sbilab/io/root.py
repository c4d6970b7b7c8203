r"""ROOT files through uproot: TTree and RNTuple branches into :class:`~sbilab.events.Events`, and
result tables and histograms back into ROOT files.

Reading (:func:`read_root`, streaming :func:`iter_root`, into a store :func:`root_to_store`):

- ``x=[...]``: flat branches (one number per entry) or expressions of them -> ``x (N, D)``;
- ``particles=[...]``: jagged branches of one collection (equal lengths per entry, e.g.
  ``Muon_Px, Muon_Py, Muon_Pz``) -> a padded set ``x (N, M, F)`` with ``mask (N, M)``, the first
  ``M = max_particles`` entries of each collection kept (default: the longest collection read);
- ``cut``: a selection expression (``"(NJet >= 2) & (MET_pt > 20)"``), ``weight``: a weight
  expression (``"EventWeight * 0.5"``).

Expressions are Python expressions of branch names, numbers, arithmetic, comparisons, ``&``,
``|``, ``~`` and ``np.<function>`` calls; they are checked against that grammar (nothing else is
evaluated) and computed with awkward arrays, the same way for TTrees and RNTuples (uproot's own
``cut=`` is ignored by RNTuples in uproot 5.7, so sbilab does not rely on it).

Writing (:func:`write_root`): tables (a mapping of column -> array, or :class:`Events`) become
TTrees, histograms (``hist.Hist``, or ``(edges, counts, variances)`` via :func:`~sbilab.io.hist.to_hist`)
become TH1D/TH2D with their sum of squared weights.

Needs the optional extra ``root`` (``pip install 'sbilab[root]'``: uproot + awkward).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..events import Events
from ..exceptions import ConfigError, FileFormatError

__all__ = ["read_root", "iter_root", "root_to_store", "write_root", "require_uproot"]

_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load, ast.Constant, ast.Call, ast.Attribute,
            ast.operator, ast.unaryop, ast.cmpop, ast.Subscript, ast.Slice, ast.Tuple)


def require_uproot() -> tuple[Any, Any]:
    """``(uproot, awkward)``, or an ImportError naming the extra to install."""
    try:
        import awkward
        import uproot
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("sbilab.io.root needs the optional packages uproot and awkward: pip install 'sbilab[root]'.") from err
    return uproot, awkward


def _parse(expression: str, what: str) -> tuple[ast.Expression, set[str]]:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{what} {expression!r} is not a valid expression ({err.msg}).") from None
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(f"{what} {expression!r}: {type(node).__name__} is not allowed; use branch names, numbers, "
                              "arithmetic, comparisons, &, |, ~ and np.<function>(...).")
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "np" and not node.attr.startswith("_")):
            raise ConfigError(f"{what} {expression!r}: only np.<function> attributes are allowed.")
        if isinstance(node, ast.Name) and node.id != "np":
            names.add(node.id)
    return tree, names


def _evaluate(tree: ast.Expression, arrays: Any) -> Any:
    namespace = {name: arrays[name] for name in arrays.fields}
    return eval(compile(tree, "<sbilab expression>", "eval"), {"__builtins__": {}, "np": np}, namespace)  # noqa: S307 - grammar checked in _parse


def _open_object(path: str | os.PathLike, tree: str) -> tuple[Any, Any]:
    uproot, _ = require_uproot()
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"ROOT file {str(path)!r} does not exist.")
    try:
        handle = uproot.open(path)
    except Exception as err:  # noqa: BLE001 - uproot raises many types for a damaged file
        raise FileFormatError(f"{path}: cannot be opened as a ROOT file; it is truncated or not ROOT ({type(err).__name__}: {err}).") from None
    try:
        obj = handle[tree]
    except Exception as err:  # noqa: BLE001
        try:
            keys = [k.split(";")[0] for k in handle.keys()]
        except Exception:  # noqa: BLE001 - a damaged directory
            keys = []
        handle.close()
        raise FileFormatError(f"{path}: no tree or RNTuple {tree!r} ({type(err).__name__}); the file holds {keys[:20]}.") from None
    if not hasattr(obj, "iterate"):
        handle.close()
        raise FileFormatError(f"{path}: {tree!r} is a {type(obj).__name__}, not a TTree or RNTuple.")
    return handle, obj


class _Plan:
    """The branches to read and the expressions to compute, checked against the file."""

    def __init__(self, obj: Any, path: Any, x: Sequence[str] | None, particles: Sequence[str] | None,
                 cut: str | None, weight: str | None) -> None:
        if (x is None) == (particles is None):
            raise ConfigError("read_root: give exactly one of x=[flat branches] or particles=[jagged branches of one collection].")
        self.columns = list(x if x is not None else particles)  # type: ignore[arg-type]
        if not self.columns:
            raise ConfigError("read_root: the list of branches is empty.")
        self.is_set = particles is not None
        self.trees = [_parse(c, "branch expression") for c in self.columns]
        self.cut = None if cut is None else _parse(cut, "cut")
        self.weight = None if weight is None else _parse(weight, "weight")
        needed = set().union(*(n for _, n in self.trees), *(n for _, n in ([self.cut] if self.cut else [])),
                             *(n for _, n in ([self.weight] if self.weight else [])))
        available = set(obj.keys())
        missing = sorted(needed - available)
        if missing:
            raise FileFormatError(f"{path}: branches {missing} do not exist in {obj.name!r}; it has {sorted(available)[:30]}.")
        self.needed = sorted(needed)


def _to_events(plan: _Plan, arrays: Any, max_particles: int | None, path: Any) -> Events:
    _, ak = require_uproot()
    if plan.cut is not None:
        keep = _evaluate(plan.cut[0], arrays)
        arrays = arrays[ak.values_astype(keep, bool)]
    weights = None if plan.weight is None else np.asarray(ak.to_numpy(_evaluate(plan.weight[0], arrays)), dtype=float)
    cols = [_evaluate(tree, arrays) for tree, _ in plan.trees]
    if not plan.is_set:
        try:
            x = np.stack([np.asarray(ak.to_numpy(c), dtype=float).reshape(len(arrays)) for c in cols], axis=1)
        except (ValueError, TypeError) as err:
            raise FileFormatError(f"{path}: x= needs flat branches (one number per entry); {plan.columns} are not ({err}). "
                                  "Use particles= for jagged branches.") from None
        return Events.observed(x, weights=weights)
    counts = [np.asarray(ak.num(c, axis=1)) for c in cols]
    if any(not np.array_equal(counts[0], n) for n in counts[1:]):
        raise FileFormatError(f"{path}: particles= branches {plan.columns} have different lengths per entry; give branches of one collection.")
    width = int(counts[0].max(initial=0)) if max_particles is None else int(max_particles)
    width = max(width, 1)
    feats = [ak.to_numpy(ak.fill_none(ak.pad_none(c, width, axis=1, clip=True), 0.0)).astype(float) for c in cols]
    mask = np.arange(width)[None, :] < np.minimum(counts[0], width)[:, None]
    return Events.observed(np.stack(feats, axis=-1), weights=weights, mask=mask)


def iter_root(path: str | os.PathLike, tree: str, *, x: Sequence[str] | None = None, particles: Sequence[str] | None = None,
              max_particles: int | None = None, cut: str | None = None, weight: str | None = None,
              step_size: int | str = 100000, entry_start: int | None = None, entry_stop: int | None = None) -> Iterator[Events]:
    """Stream a TTree or RNTuple as :class:`Events` chunks of ``step_size`` entries (before the cut).

    Set inputs need ``max_particles`` so that every chunk has the same width ``M``.

    Raises:
        FileFormatError: missing or damaged file, no such tree, a branch that does not exist.
        ConfigError: neither or both of ``x``/``particles``, a malformed expression, sets without ``max_particles``.
    """
    handle, obj = _open_object(path, tree)
    with handle:
        plan = _Plan(obj, path, x, particles, cut, weight)
        if plan.is_set and max_particles is None:
            raise ConfigError("iter_root: streaming particle sets needs max_particles= (a fixed width M for every chunk).")
        try:
            for arrays in obj.iterate(filter_name=plan.needed, step_size=step_size, entry_start=entry_start, entry_stop=entry_stop, library="ak"):
                yield _to_events(plan, arrays, max_particles, path)
        except (FileFormatError, ConfigError):
            raise
        except Exception as err:  # noqa: BLE001 - a truncated basket surfaces as many types
            raise FileFormatError(f"{path}: reading {tree!r} failed; the file is truncated or damaged ({type(err).__name__}: {err}).") from None


def read_root(path: str | os.PathLike, tree: str, *, x: Sequence[str] | None = None, particles: Sequence[str] | None = None,
              max_particles: int | None = None, cut: str | None = None, weight: str | None = None,
              entry_start: int | None = None, entry_stop: int | None = None) -> Events:
    """Read a TTree or RNTuple into one :class:`Events` (observed: ``theta`` is ``(N, 0)``).

    Args:
        path: The ROOT file.
        tree: Name of the TTree or RNTuple (``"dir/tree"`` for subdirectories).
        x: Flat branches or expressions -> ``x (N, D)``.
        particles: Jagged branches (expressions) of one collection -> ``x (N, M, F)`` and ``mask (N, M)``.
        max_particles: ``M`` (default: the longest collection).
        cut: Selection expression; entries where it is false are dropped.
        weight: Weight expression -> ``weights (N,)``.
        entry_start, entry_stop: Entry range read.

    Raises:
        FileFormatError, ConfigError: as :func:`iter_root`.

    Example:
        >>> ev = read_root("HZZ.root", "events", particles=["Muon_Px", "Muon_Py"], cut="NMuon >= 2", weight="EventWeight")  # doctest: +SKIP
    """
    handle, obj = _open_object(path, tree)
    with handle:
        plan = _Plan(obj, path, x, particles, cut, weight)
        try:
            arrays = obj.arrays(filter_name=plan.needed, entry_start=entry_start, entry_stop=entry_stop, library="ak")
        except Exception as err:  # noqa: BLE001
            raise FileFormatError(f"{path}: reading {tree!r} failed; the file is truncated or damaged ({type(err).__name__}: {err}).") from None
        return _to_events(plan, arrays, max_particles, path)


def root_to_store(path: str | os.PathLike, tree: str, store: str | os.PathLike, *, x: Sequence[str] | None = None,
                  particles: Sequence[str] | None = None, max_particles: int | None = None, cut: str | None = None,
                  weight: str | None = None, step_size: int = 100000, overwrite: bool = False, progress: bool = True) -> Any:
    """Stream a TTree/RNTuple into a new :class:`~sbilab.store.SimulationStore`, one chunk at a time.

    The observable names are the branch expressions; ``extra["root"]`` records the source.
    """
    from tqdm.auto import tqdm

    from ..store import SimulationStore

    out = SimulationStore.create(store, observable_names=list(x or particles or []), parameter_names=[], overwrite=overwrite,
                                 extra={"root": {"file": str(path), "tree": tree, "cut": cut, "weight": weight}})
    try:
        for events in tqdm(iter_root(path, tree, x=x, particles=particles, max_particles=max_particles, cut=cut, weight=weight,
                                     step_size=step_size), desc=f"{Path(path).name} -> store", disable=not progress):
            if len(events):
                out.append(events)
    finally:
        out.close()
    return SimulationStore.open(store)


def _table(value: Any, names: Sequence[str] | None) -> dict[str, Any]:
    if not isinstance(value, Events):
        return {str(k): np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in value.items()}
    _, ak = require_uproot()
    x = value.x.detach().cpu().numpy()
    cols = list(names) if names is not None else [f"x{i}" for i in range(x.shape[-1])]
    if len(cols) != x.shape[-1]:
        raise ConfigError(f"write_root: {len(cols)} names for {x.shape[-1]} observables.")
    out: dict[str, Any] = {}
    if value.mask is None:
        out.update({c: x[:, i] for i, c in enumerate(cols)})
    else:
        mask = value.mask.cpu().numpy()
        counts = mask.sum(1)
        out.update({c: ak.unflatten(x[..., i][mask], counts) for i, c in enumerate(cols)})
    for i in range(value.theta.shape[1]):
        out[f"theta{i}"] = value.theta[:, i].detach().cpu().numpy()
    if value.weights is not None:
        out["weight"] = value.weights.detach().cpu().numpy()
    return out


def write_root(path: str | os.PathLike, *, trees: Mapping[str, Any] | None = None, histograms: Mapping[str, Any] | None = None,
               names: Mapping[str, Sequence[str]] | None = None, overwrite: bool = False) -> Path:
    """Write tables as TTrees and histograms as TH1/TH2 into a new ROOT file.

    Args:
        trees: Name -> ``{column: array (N,)}`` (jagged: awkward arrays) or :class:`Events`
            (columns ``x0...`` or ``names[tree]``, jagged for sets; ``theta0...``, ``weight``).
        histograms: Name -> ``hist.Hist`` or ``(edges, counts, variances)`` (see :func:`~sbilab.io.hist.to_hist`).
        names: Observable names per tree for :class:`Events`.
        overwrite: Replace an existing file.

    Raises:
        FileFormatError: ``path`` exists and ``overwrite`` is False.
    """
    uproot, _ = require_uproot()
    from .hist import to_hist

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileFormatError(f"{path} already exists; pass overwrite=True to replace it.")
    with uproot.recreate(path) as f:
        for name, value in (trees or {}).items():
            f.mktree(name, _table(value, (names or {}).get(name)))
        for name, value in (histograms or {}).items():
            f[name] = to_hist(*value) if isinstance(value, tuple) else value
    return path
