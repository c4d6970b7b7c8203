"""Publication: exact round trips, checksums, schema checks, unknown kinds, no pickle, atomic writes."""

from __future__ import annotations

import ast
import hashlib
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import sbilab.publish as publish
from sbilab.exceptions import PublishError
from sbilab.publish import build_module, inspect, load, load_results, module_spec, register_publishable, save, save_results
from _hdf5_attacks import rewrite_publish_spec  # noqa: E402 - edits a published spec and re-signs it


@register_publishable(kind="tests.ToyNet")
class ToyNet(nn.Module):
    """Small MLP with a standardisation buffer."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.d, self.hidden = d, hidden
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.register_buffer("shift", torch.zeros(d))

    def spec(self) -> dict:
        return {"d": self.d, "hidden": self.hidden}

    @classmethod
    def from_spec(cls, spec: dict) -> "ToyNet":
        return cls(spec["d"], spec["hidden"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.shift)[:, 0]


@register_publishable(kind="tests.ToyEnsemble")
class ToyEnsemble(nn.Module):
    """Nests other publishable modules through module_spec / build_module."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def spec(self) -> dict:
        return {"members": [module_spec(m) for m in self.members]}

    @classmethod
    def from_spec(cls, spec: dict) -> "ToyEnsemble":
        return cls([build_module(e) for e in spec["members"]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


@register_publishable(kind="tests.BadSpec")
class BadSpec(ToyNet):
    def spec(self) -> dict:
        return {"d": self.d, "hidden": self.hidden + 1}  # does not describe the module


def trained_toy(dtype: torch.dtype = torch.float32, seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    net = ToyNet(3, 7).to(dtype)
    net.shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_identical_outputs(tmp_path: Path, dtype: torch.dtype) -> None:
    net = trained_toy(dtype)
    path = save(tmp_path / "net.h5", net, metadata={"analysis": "toy", "lumi_fb": 139.0})
    back = load(path, expected_kind="tests.ToyNet")
    x = torch.randn(50, 3, dtype=dtype)
    assert type(back) is ToyNet and not back.training
    assert back.shift.dtype == dtype and next(back.parameters()).dtype == dtype
    assert torch.equal(back(x), net(x))
    info = inspect(path)
    assert info["kind"] == "tests.ToyNet" and info["spec"] == {"d": 3, "hidden": 7}
    assert info["metadata"] == {"analysis": "toy", "lumi_fb": 139.0} and info["schema"]["version"] == 1
    assert info["tensors"]["net.0.weight"] == {
        "dtype": str(dtype).removeprefix("torch."), "shape": [7, 3],
        "sha256": hashlib.sha256(net.net[0].weight.detach().numpy().tobytes()).hexdigest(),
    }
    assert info["sbilab_version"] and info["torch_version"] == torch.__version__
    with pytest.raises(PublishError, match="not the expected 'Other'"):
        load(path, expected_kind="Other")


def test_nested_modules_round_trip(tmp_path: Path) -> None:
    ens = ToyEnsemble([trained_toy(seed=s) for s in range(3)])
    back = load(save(tmp_path / "ens.h5", ens))
    x = torch.randn(20, 3)
    assert torch.equal(back(x), ens(x)) and back(x).shape == (3, 20)


def test_sbilab_ensemble_of_estimators_round_trip(tmp_path: Path) -> None:
    ensemble = pytest.importorskip("sbilab.nets.ensemble")
    ratio = pytest.importorskip("sbilab.estimators.ratio")
    from sbilab.simulators.toys.gaussian import GaussianLatent  # noqa: PLC0415

    space = GaussianLatent().space
    ens = ensemble.Ensemble(ratio.RatioEstimator(space, 1, hidden=(8, 8)), 3, generator=torch.Generator().manual_seed(0))
    back = load(save(tmp_path / "ens.h5", ens))
    x, theta = torch.randn(10, 1), space.sample(10, generator=torch.Generator().manual_seed(1))
    assert type(back) is ensemble.Ensemble and torch.equal(back(x, theta), ens.eval()(x, theta))


def test_tampered_tensor_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "net.h5", trained_toy())
    with h5py.File(path, "r+") as f:
        f["tensors/net.2.weight"][0, 0] += 1e-6
    with pytest.raises(PublishError, match=r"net\.h5: tensor 'net\.2\.weight' does not match its SHA-256 checksum"):
        load(path)


def test_tampered_spec_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "net.h5", trained_toy())
    with h5py.File(path, "r+") as f:
        f.attrs["spec"] = f.attrs["spec"].replace('"hidden": 7', '"hidden": 8')
    for reader in (load, inspect):
        with pytest.raises(PublishError, match="the JSON spec does not match its SHA-256 checksum"):
            reader(path)


def test_resigned_spec_that_does_not_fit_the_tensors(tmp_path: Path) -> None:
    path = save(tmp_path / "net.h5", trained_toy())
    rewrite_publish_spec(path, lambda h: h["spec"].update(hidden=8))
    with pytest.raises(PublishError, match=r"ToyNet of 44 numbers but the file stores 39; tensor 'net\.0\.weight' is \(8, 3\) by the spec and \(7, 3\) in the file"):
        load(path)
    path = save(tmp_path / "net2.h5", trained_toy())
    with h5py.File(path, "r+") as f:
        del f["tensors/shift"]
    with pytest.raises(PublishError, match=r"\['shift'\] listed in the spec are missing"):
        load(path)
    rewrite_publish_spec(path, lambda h: h["tensors"].pop("shift"))
    with pytest.raises(PublishError, match=r"tensor 'shift' is \(3,\) by the spec and absent in the file"):
        load(path)


def test_wrong_schema_version_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "net.h5", trained_toy())
    with h5py.File(path, "r+") as f:
        f.attrs["sbilab_schema_version"] = 2
    with pytest.raises(PublishError, match="publish schema version 2; this sbilab reads 1..1"):
        load(path)


def test_unknown_kind_lists_known_kinds_and_imports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "executed.txt"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = save(tmp_path / "net.h5", trained_toy())
    rewrite_publish_spec(path, lambda h: h.update(kind="evilmod.Evil", spec={"module": "evilmod", "class": "Evil"}))
    with pytest.raises(PublishError, match=r"kind 'evilmod\.Evil'; known kinds: \[.*'tests\.ToyNet'") as err:
        load(path)
    assert "Import the package" in str(err.value)
    assert "evilmod" not in sys.modules and not marker.exists()
    assert inspect(path)["kind"] == "evilmod.Evil"  # describing the file is still possible


def test_files_that_are_not_publications(tmp_path: Path) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("not hdf5\n" * 50)
    with pytest.raises(PublishError, match=r"readme\.txt is not a readable HDF5 file"):
        load(text)
    good = save(tmp_path / "net.h5", trained_toy())
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(PublishError, match=r"cut\.h5 is not a readable HDF5 file"):
        load(cut)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["tensors/w"] = np.zeros(3)
    with pytest.raises(PublishError, match=r"foreign\.h5 is not an sbilab published file"):
        inspect(foreign)
    with pytest.raises(PublishError, match="missing.h5 does not exist"):
        load(tmp_path / "missing.h5")


def test_save_refuses_bad_input_and_never_leaves_half_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PublishError, match="is not publishable.*@register_publishable"):
        save(tmp_path / "x.h5", nn.Linear(2, 2))
    with pytest.raises(PublishError, match=r"tests\.BadSpec\.spec\(\) does not rebuild this module"):
        save(tmp_path / "x.h5", BadSpec(3, 4))
    with pytest.raises(PublishError, match="metadata is not JSON-serialisable"):
        save(tmp_path / "x.h5", trained_toy(), metadata={"when": object()})
    path = save(tmp_path / "net.h5", trained_toy(seed=0))
    original = path.read_bytes()
    with pytest.raises(PublishError, match="already exists; pass overwrite=True"):
        save(path, trained_toy(seed=1))
    calls = []

    def failing_create_dataset(self, name, **kwargs):  # the disk fills up after the first tensor
        calls.append(name)
        if len(calls) > 1:
            raise OSError("No space left on device")
        return original_create(self, name, **kwargs)

    original_create = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)
    with pytest.raises(PublishError, match="No space left on device"):
        save(path, trained_toy(seed=1), overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["net.h5"]
    save(path, trained_toy(seed=1), overwrite=True)
    assert torch.equal(load(path).net[0].weight, trained_toy(seed=1).net[0].weight)


def test_results_round_trip_and_checks(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    arrays = {
        "weights": g.random(1000),
        "observables": g.normal(size=(1000, 2)).astype(np.float32),
        "passed": g.random(1000) > 0.2,
        "covariance": torch.tensor([[1.0, 0.2], [0.2, 2.0]], dtype=torch.float64),
    }
    spec = {"observables": ["pt", "eta"], "method": "OmniFold", "iterations": 4}
    path = save_results(tmp_path / "unfolded.h5", arrays, spec, kind="unfolded_weights", metadata={"doi": "10.x/y"})
    res = load_results(path, expected_kind="unfolded_weights")
    assert res.kind == "unfolded_weights" and res.spec == spec and res.metadata == {"doi": "10.x/y"}
    for name in ("weights", "observables", "passed"):
        assert res.arrays[name].dtype == arrays[name].dtype and np.array_equal(res.arrays[name], arrays[name])
    assert np.array_equal(res.arrays["covariance"], arrays["covariance"].numpy())
    with pytest.raises(PublishError, match="not a module; use load_results"):
        load(path)
    with pytest.raises(PublishError, match="not results; use load"):
        load_results(save(tmp_path / "net.h5", trained_toy()))
    with pytest.raises(PublishError, match="only numeric and bool arrays"):
        save_results(tmp_path / "s.h5", {"names": np.array(["a", "b"])}, {})
    with pytest.raises(PublishError, match="without '/'"):
        save_results(tmp_path / "s.h5", {"a/b": np.zeros(2)}, {})
    with h5py.File(path, "r+") as f:
        f["tensors/passed"][3] = not f["tensors/passed"][3]
    with pytest.raises(PublishError, match="tensor 'passed' does not match its SHA-256 checksum"):
        load_results(path)


def test_no_pickle_is_involved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbidden = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
    for module in (publish, pytest.importorskip("sbilab.store")):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & forbidden, module.__name__
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not {"torch.load", "np.load", "numpy.load"} & calls, module.__name__
    path = save(tmp_path / "net.h5", trained_toy())

    def trap(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "Unpickler", trap)
    monkeypatch.setattr(torch, "load", trap)
    x = torch.randn(4, 3)
    assert torch.equal(load(path)(x), trained_toy()(x))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    from sbilab.durable import atomic_write, atomic_write_text

    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary left behind


# ---------------------------------------------------------------------------- files stay in their folder (issue 11)
sys.path.insert(0, str(Path(__file__).parent))
from _hdf5_attacks import KINDS, point_outside  # noqa: E402


@pytest.mark.parametrize("kind", KINDS)
def test_objects_reaching_outside_the_file_are_refused_before_reading(kind: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Same values, same checksums, but the bytes come from another file: the old code loaded it."""
    net = trained_toy()
    path = save(tmp_path / "net.h5", net)
    point_outside(path, "tensors/net.0.weight", kind, tmp_path / "elsewhere.bin")

    def no_read(self, *args):
        raise AssertionError("a dataset was read before the file was refused")

    with monkeypatch.context() as m:
        m.setattr(h5py.Dataset, "__getitem__", no_read)
        with pytest.raises(PublishError, match=r"net\.h5: (dataset )?/tensors/net\.0\.weight (is an HDF5 (External|Soft)Link|keeps its bytes in external files|is a virtual dataset)"):
            load(path)
        with pytest.raises(PublishError, match="refused before anything is read"):
            inspect(path)
    res = save_results(tmp_path / "res.h5", {"w": np.arange(4.0)}, {"k": 1})
    point_outside(res, "tensors/w", kind, tmp_path / "elsewhere2.bin")
    with pytest.raises(PublishError, match="refused before anything is read"):
        load_results(res)


def test_rehashed_spec_asking_for_a_huge_network_is_refused_before_allocation(tmp_path: Path) -> None:
    """A 12 kB file whose re-hashed spec says hidden=[6000, 6000]: the old code built the 144 MB network first."""
    from torch.overrides import TorchFunctionMode

    from sbilab import RatioEstimator
    from sbilab.simulators import GaussianLatent

    sim = GaussianLatent()
    path = save(tmp_path / "small.h5", RatioEstimator(sim.space, 1, hidden=(16, 16)))
    rewrite_publish_spec(path, lambda h: h["spec"].update(hidden=[6000, 6000]))
    assert path.stat().st_size < 20_000

    class LargestAllocation(TorchFunctionMode):
        largest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.device.type != "meta":
                LargestAllocation.largest = max(LargestAllocation.largest, out.numel())
            return out

    with LargestAllocation(), pytest.raises(PublishError, match=r"describes a RatioEstimator of 36\d{6} numbers but the file stores \d{3}; "
                                                                  r"tensor 'net\.mlp\.0\.weight' is \(6000, 2\).*refused before building"):
        load(path)
    assert LargestAllocation.largest < 10_000  # nothing of the size the spec asks for was allocated
