"""Bad input outside training is refused early, by a named SbilabError subclass saying what was wrong.

One row per bad input, ``(description, call, error type, phrase of the message)``, the row shape
of the other tables of bad inputs (``BAD_INPUT_ROWS`` of ``tests/test_checks.py``: identity checks;
``tests/test_bad_inputs.py``: losses, estimators, fit); ``call`` takes no arguments and must
raise, the phrase is searched (case-insensitive regex) in the message. This table covers Events,
simulators, likelihoods, estimator supports, the simulation store, published files, pyhf
workspaces and the analysis configuration / command line. Files are built in a fresh folder
per call (:func:`fresh`), small and seeded.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple
from unittest import mock

import numpy as np
import pytest
import torch

from sbilab import Events, RatioEstimator
from sbilab.analysis import load_config, run_analysis
from sbilab.analysis.config import output_folder
from sbilab.estimators.support import TrainingSupport
from sbilab.exceptions import (
    ConfigError,
    FitError,
    InvalidEventsError,
    MissingAugmentedDataError,
    PublishError,
    SamplingError,
    SbilabError,
    StoreError,
    WorkspaceError,
)
from sbilab.publish import inspect, load, load_results, save, save_results
from sbilab.simulators import GaussianLatent, ratio_training_data
from sbilab.simulators.base import autograd_score, checked_joint_log_prob, checked_sample
from sbilab.stats import UnbinnedLikelihood
from sbilab.stats.binned import PyhfModel, apply_patch, build_workspace, load_workspace
from sbilab.store import SimulationStore

import sys

sys.path.insert(0, str(Path(__file__).parent))
from _hdf5_attacks import point_outside, resign_store_chunk, rewrite_publish_spec  # noqa: E402


class Row(NamedTuple):
    description: str
    call: Callable[[], Any]
    error: type[SbilabError]
    phrase: str


# ---------------------------------------------------------------------------- small, seeded data
SIM = GaussianLatent()
PAIRS = ratio_training_data(SIM, 40, generator=torch.Generator().manual_seed(0))  # x (80, 1), augmented
EST = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
X_OBS = torch.randn(50, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
EXACT = lambda x, t: SIM.log_prob(x, t) - SIM.log_prob(x, SIM.space.reference)  # noqa: E731
WS = build_workspace(signal={"sig": [1.0, 2.0]}, backgrounds={"bkg": [10.0, 10.0]}, observed=[11, 12])
_BASE: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _base(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASE[:] = [tmp_path_factory.mktemp("bad_io")]


def fresh() -> Path:
    """A new empty folder for one row."""
    return Path(tempfile.mkdtemp(dir=_BASE[0] if _BASE else None))


# ---------------------------------------------------------------------------- simulators that break the protocol
class DropsRejected(GaussianLatent):
    """A sampler with an acceptance cut that drops the rejected rows instead of redrawing them."""

    def sample(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> Events:
        events = super().sample(theta, generator=generator)
        return events[events.x[:, 0] > -0.5]


class ReturnsTensor(GaussianLatent):
    def sample(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return super().sample(theta, generator=generator).x


class DetachedJoint(GaussianLatent):
    """joint_log_prob computed without the autograd graph (e.g. through numpy)."""

    def joint_log_prob(self, events: Events, theta: torch.Tensor) -> torch.Tensor:
        return super().joint_log_prob(events, theta).detach()


class ColumnJoint(GaussianLatent):
    def joint_log_prob(self, events: Events, theta: torch.Tensor) -> torch.Tensor:
        return super().joint_log_prob(events, theta).reshape(-1, 1)


def _joint(sim: GaussianLatent, differentiable: bool) -> torch.Tensor:
    ev = sim.simulate(6, generator=torch.Generator().manual_seed(2))
    theta = ev.theta.clone().requires_grad_(differentiable)
    with torch.enable_grad():
        return checked_joint_log_prob(sim, ev, theta, differentiable=differentiable)


# ---------------------------------------------------------------------------- stores
def _store() -> Path:
    path = fresh() / "run.sbistore"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(Events(x=torch.randn(10, 2, dtype=torch.float64), theta=torch.zeros(10, 1, dtype=torch.float64)))
    return path


def _store_listing(chunk_name: str) -> Path:
    path = _store()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["chunks"][0]["file"] = chunk_name
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _store_symlinked_chunk() -> Path:
    path = _store()
    outside = path.parent / "elsewhere.h5"
    (path / "chunk-000000.h5").rename(outside)
    (path / "chunk-000000.h5").symlink_to(outside)
    return path


def _store_chunk_outside(kind: str) -> Path:
    path = _store()
    point_outside(path / "chunk-000000.h5", "x", kind, path.parent / "outside.bin")
    resign_store_chunk(path)
    return path


def _packed_outside(kind: str) -> Path:
    packed = _store().parent / "packed.h5"
    SimulationStore.open(packed.parent / "run.sbistore").pack(packed)
    point_outside(packed, "x", kind, packed.parent / "outside.bin")
    return packed


def _append_unwritable() -> None:
    path = _store()
    with SimulationStore.open(path, mode="a") as store, mock.patch("sbilab.store.h5py.File", side_effect=PermissionError(13, "Permission denied")):
        store.append(Events(x=torch.randn(3, 2, dtype=torch.float64), theta=torch.zeros(3, 1, dtype=torch.float64)))


def _open_unwritable() -> None:
    path = _store()
    with mock.patch("sbilab.store_format.open", create=True, side_effect=PermissionError(13, "Permission denied")):
        SimulationStore.open(path, mode="a")


def _create_under_a_file() -> None:
    blocker = fresh() / "a_file"
    blocker.write_text("not a folder")
    SimulationStore.create(blocker / "run.sbistore")


# ---------------------------------------------------------------------------- published files
def _published(kind: str | None = None, name: str = "tensors/net.mlp.0.weight") -> Path:
    path = save(fresh() / "est.h5", EST)
    if kind is not None:
        point_outside(path, name, kind, path.parent / "outside.bin")
    return path


def _published_results(kind: str) -> Path:
    path = save_results(fresh() / "res.h5", {"w": np.arange(5.0)}, {"observables": ["x"]})
    point_outside(path, "tensors/w", kind, path.parent / "outside.bin")
    return path


def _huge_spec() -> Path:
    path = _published()
    rewrite_publish_spec(path, lambda h: h["spec"].update(hidden=[6000, 6000]))
    return path


def _bad_support_spec() -> Path:
    path = _published()
    rewrite_publish_spec(path, lambda h: h["spec"].update(training_support={"low": [1.0], "high": [0.0], "n_events": 5}))
    return path


# ---------------------------------------------------------------------------- analysis configuration
CONFIG = """
[analysis]
name = "gauss"
{extra}
[simulator]
toy = "gaussian"
{toy}
[truth]
{truth}
{tail}
"""


def _config(extra: str = "", toy: str = "sigma_x = 1.0", truth: str = "theta = 0.4", tail: str = "") -> Any:
    folder = fresh()
    text = CONFIG.format(extra=extra, toy=toy, truth=truth, tail=tail)
    if extra.startswith("name"):
        text = text.replace('name = "gauss"\n', "")
    (folder / "analysis.toml").write_text(text)
    return load_config(folder)


def _run_into_file() -> None:
    config = _config()
    target = fresh() / "results.txt"
    target.write_text("an existing file")
    run_analysis(config, out=target)


def _patched_wrong_bins() -> None:
    apply_patch(WS, [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [1.0, 2.0, 3.0]}])


def _workspace_with(path: str, value: Any) -> dict:
    spec = json.loads(json.dumps(dict(WS)))
    target = spec
    keys = path.split("/")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    target[keys[-1]] = value
    return spec


BAD_INPUT_ROWS: list[Row] = [
    # Events
    Row("Events: complex x", lambda: Events(x=torch.ones(3, 1, dtype=torch.complex64), theta=torch.zeros(3, 1)),
        InvalidEventsError, r"Events\.x is complex.*imaginary part"),
    Row("Events: complex weights", lambda: Events(x=torch.ones(3, 1), theta=torch.zeros(3, 1), weights=np.ones(3) + 1j),
        InvalidEventsError, r"Events\.weights is complex"),
    Row("Events.observed: complex numpy x", lambda: Events.observed(np.ones((3, 2)) * (1 + 2j)),
        InvalidEventsError, r"Events\.x is complex"),
    # simulators
    Row("Simulator.simulate: sample() drops rejected rows", lambda: DropsRejected().simulate(40, generator=torch.Generator().manual_seed(0)),
        SamplingError, r"DropsRejected\.sample returned \d+ events for 40 rows of theta.*redraw rejected rows"),
    Row("Simulator.simulate: sample() returns a tensor", lambda: ReturnsTensor().simulate(4),
        SamplingError, r"ReturnsTensor\.sample returned a Tensor; it must return Events"),
    Row("checked_sample: rows dropped (the check augment's builders use)",
        lambda: checked_sample(DropsRejected(), torch.zeros(40, 1), generator=torch.Generator().manual_seed(0)),
        SamplingError, r"one event per row"),
    Row("joint_log_prob: not differentiable in theta", lambda: _joint(DetachedJoint(), True),
        MissingAugmentedDataError, r"DetachedJoint\.joint_log_prob is not differentiable in theta.*joint score"),
    Row("joint_log_prob: returns (N, 1)", lambda: _joint(ColumnJoint(), False),
        MissingAugmentedDataError, r"ColumnJoint\.joint_log_prob returned \(6, 1\).*\(6,\)"),
    Row("autograd_score: log_prob without a graph", lambda: autograd_score(lambda x, t: SIM.log_prob(x, t).detach(), X_OBS, [0.1], 1),
        MissingAugmentedDataError, r"no autograd graph in theta"),
    # likelihoods and supports
    Row("UnbinnedLikelihood: max_outside < 0", lambda: UnbinnedLikelihood(EXACT, Events.observed(X_OBS), SIM.space, max_outside=-0.1),
        FitError, r"max_outside = -0\.1.*in \[0, 1\]"),
    Row("UnbinnedLikelihood: max_outside > 1", lambda: UnbinnedLikelihood(EXACT, Events.observed(X_OBS), SIM.space, max_outside=5),
        FitError, r"max_outside = 5"),
    Row("TrainingSupport.from_dict: low > high", lambda: TrainingSupport.from_dict({"low": [1.0], "high": [0.0], "n_events": 3}),
        PublishError, r"low <= high"),
    Row("RatioEstimator.from_spec: malformed training_support",
        lambda: RatioEstimator.from_spec({**EST.spec(), "training_support": {"low": "x"}}), PublishError, r"training_support .* is malformed"),
    # simulation store: folders, permissions, paths, objects outside the file
    Row("SimulationStore.create: parent is a file", _create_under_a_file, StoreError, r"cannot create the store directory"),
    Row("SimulationStore.create: read-only filesystem (/sys)", lambda: SimulationStore.create("/sys/sbilab-test.sbistore"),
        StoreError, r"cannot create the store directory /sys/sbilab-test\.sbistore .*writable location"),
    Row("SimulationStore.open(mode='a'): directory not writable", _open_unwritable, StoreError,
        r"cannot write to the store directory .*Permission denied.*read-only with SimulationStore\.open\(path\)"),
    Row("SimulationStore.append: directory became unwritable", _append_unwritable, StoreError,
        r"cannot write a chunk to .*Nothing was committed"),
    Row("SimulationStore.pack: into a missing folder", lambda: SimulationStore.open(_store()).pack(fresh() / "no" / "p.h5"),
        StoreError, r"cannot write the packed store"),
    Row("store manifest: chunk '../x.h5'", lambda: SimulationStore.open(_store_listing("../chunk-000000.h5")),
        StoreError, r"lists the chunk '\.\./chunk-000000\.h5'.*no folders, '\.\.' or absolute paths"),
    Row("store manifest: absolute chunk path", lambda: SimulationStore.open(_store_listing("/etc/passwd")),
        StoreError, r"lists the chunk '/etc/passwd'"),
    Row("store manifest: chunk in a sub-folder", lambda: SimulationStore.open(_store_listing("sub/chunk-000000.h5")),
        StoreError, r"lists the chunk 'sub/chunk-000000\.h5'"),
    Row("store: chunk is a symlink out of the store", lambda: SimulationStore.open(_store_symlinked_chunk()).to_events(),
        StoreError, r"symbolic link to .*elsewhere\.h5, outside the store"),
    Row("store chunk: external link", lambda: SimulationStore.open(_store_chunk_outside("external_link")).to_events(),
        StoreError, r"/x is an HDF5 ExternalLink to .*outside\.bin:/data.*refused before anything is read"),
    Row("store chunk: external raw storage", lambda: SimulationStore.open(_store_chunk_outside("external_storage")).to_events(),
        StoreError, r"dataset /x keeps its bytes in external files"),
    Row("store chunk: virtual dataset", lambda: SimulationStore.open(_store_chunk_outside("virtual")).to_events(),
        StoreError, r"dataset /x is a virtual dataset"),
    Row("packed store: virtual dataset", lambda: SimulationStore.open(_packed_outside("virtual")),
        StoreError, r"packed\.h5: dataset /x is a virtual dataset"),
    Row("packed store: external raw storage", lambda: SimulationStore.open(_packed_outside("external_storage")),
        StoreError, r"keeps its bytes in external files"),
    # published files
    Row("publish.load: external link", lambda: load(_published("external_link")), PublishError,
        r"ExternalLink to .*outside\.bin.*refused before anything is read"),
    Row("publish.load: external raw storage", lambda: load(_published("external_storage")), PublishError,
        r"keeps its bytes in external files"),
    Row("publish.load: virtual dataset", lambda: load(_published("virtual")), PublishError, r"is a virtual dataset"),
    Row("publish.load: soft link", lambda: load(_published("soft_link")), PublishError, r"is an HDF5 SoftLink"),
    Row("publish.load_results: external link", lambda: load_results(_published_results("external_link")), PublishError,
        r"ExternalLink"),
    Row("publish.load_results: virtual dataset", lambda: load_results(_published_results("virtual")), PublishError,
        r"virtual dataset"),
    Row("publish.inspect: external raw storage", lambda: inspect(_published("external_storage")), PublishError,
        r"external files"),
    Row("publish.load: re-hashed spec hidden=[6000, 6000]", lambda: load(_huge_spec()), PublishError,
        r"spec describes a RatioEstimator of \d+ numbers but the file stores \d+.*refused before building anything"),
    Row("publish.load: malformed training_support in the spec", lambda: load(_bad_support_spec()), PublishError,
        r"low <= high"),
    # pyhf
    Row("PyhfModel.fit: data of the wrong length", lambda: PyhfModel(WS).fit(np.ones(3)), WorkspaceError,
        r"data has shape \(3,\); this model needs \(2,\).*channels \{'SR': 2\}"),
    Row("PyhfModel.asimov: wrong number of parameters", lambda: PyhfModel(WS).asimov(np.ones(4)), WorkspaceError,
        r"this model has 1 parameters"),
    Row("load_workspace: observation with the wrong bins", lambda: load_workspace(_workspace_with("observations/0/data", [1.0, 2.0, 3.0])),
        WorkspaceError, r"observation of channel 'SR' has 3 bins but the channel has 2"),
    Row("load_workspace: sample with the wrong bins (pyhf InvalidModel)",
        lambda: load_workspace(_workspace_with("channels/0/samples/1/data", [1.0])), WorkspaceError,
        r"pyhf rejects the workspace \(channels and samples \{'SR': \['sig', 'bkg'\]\}\): InvalidModel"),
    Row("apply_patch: signal with the wrong number of bins", _patched_wrong_bins, WorkspaceError,
        r"channels and samples \{'SR': \['sig', 'bkg'\]\}.*InvalidModel"),
    # analysis configuration and command line
    Row("[analysis]: unknown key", lambda: _config('nmae = "typo"'), ConfigError,
        r"unknown key\(s\) \['nmae'\] in \[analysis\]; allowed keys are \['name', 'description', 'kind'\]"),
    Row("[analysis]: name = '../../x'", lambda: _config('name = "../../x"'), ConfigError,
        r"name = '\.\./\.\./x'.*one folder name"),
    Row("[analysis]: absolute name", lambda: _config('name = "/tmp/x"'), ConfigError, r"name = '/tmp/x'"),
    Row("[analysis]: description not a string", lambda: _config("description = 3"), ConfigError, r"description = 3 must be a string"),
    Row("[simulator]: unknown toy option", lambda: _config(toy="sigma_y = 1.0"), ConfigError,
        r"\[simulator\] options \['sigma_y'\] do not fit the 'gaussian' toy.*its options are"),
    Row("[truth]: a name that is not a parameter", lambda: _config(truth="thta = 0.4"), ConfigError,
        r"\[truth\] gives \['thta'\] but the 'gaussian' toy has parameters \['theta'\]"),
    Row("[nuisances]: a name that is not a parameter", lambda: _config(tail="[nuisances]\nsigma = {mean = 1.0, sigma = 0.1}"),
        ConfigError, r"\[nuisances\] names \['sigma'\], which are not parameters"),
    Row("[simulator]: option values the toy refuses", lambda: _config(toy="low = 3.0\nhigh = 1.0"), ConfigError,
        r"not valid for the 'gaussian' toy"),
    Row("[fit]: max_outside above 1", lambda: _config(tail="[fit]\nmax_outside = 2.0"), ConfigError,
        r"max_outside = 2\.0 must lie in \[0, 1\]"),
    Row("run_analysis: out is an existing file", _run_into_file, ConfigError, r"is an existing file"),
    Row("output_folder: a name with a folder", lambda: output_folder("out", "a/b"), ConfigError, r"one folder name"),
]


@pytest.mark.parametrize("row", BAD_INPUT_ROWS, ids=[r.description for r in BAD_INPUT_ROWS])
def test_bad_input_raises_named_error(row: Row) -> None:
    with pytest.raises(row.error) as info:
        row.call()
    assert issubclass(row.error, SbilabError)
    assert re.search(row.phrase, str(info.value), re.IGNORECASE | re.DOTALL), str(info.value)


def _other_tables() -> list[tuple[str, list[tuple]]]:
    """The other tables of bad inputs in tests/ (the identity checks' table, and fit's where present)."""
    import importlib

    tables = []
    for module, name in (("test_checks", "BAD_INPUT_ROWS"), ("test_bad_inputs", "ROWS")):
        if (Path(__file__).parent / f"{module}.py").exists():
            tables.append((module, list(getattr(importlib.import_module(module), name))))
    return tables


def test_table_rows_are_well_formed_and_consistent_with_the_other_tables() -> None:
    """One row shape everywhere; no description twice across the tables; >= 60 bad inputs in all (issue 11)."""
    rows = [(r.description, r.call, r.error, r.phrase) for r in BAD_INPUT_ROWS]
    for _, table in _other_tables():
        rows += [tuple(row) for row in table]
    for description, call, error, phrase in rows:
        assert isinstance(description, str) and callable(call) and issubclass(error, SbilabError), description
        assert isinstance(phrase, str) and re.compile(phrase), description
    descriptions = [row[0] for row in rows]
    assert len(set(descriptions)) == len(descriptions), sorted({d for d in descriptions if descriptions.count(d) > 1})
    assert len(BAD_INPUT_ROWS) >= 50 and len(rows) >= 60
