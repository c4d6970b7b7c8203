"""ONNX export (onnxruntime vs torch at two batch sizes), `sbilab export/info`, and a third party
using a published estimator from a file written in another process."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbilab import publish
from sbilab.cli import main
from sbilab.estimators import Classifier, ConditionalDensity, LikelihoodEstimator, PosteriorEstimator, PosteriorMixture, RatioEstimator, ScoreEstimator
from sbilab.events import Events
from sbilab.exceptions import ExportError
from sbilab.nets import Ensemble
from sbilab.simulators import ParameterSpace

HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime not installed (optional extra 'onnx': pip install 'sbilab[onnx]')")
SPACE = ParameterSpace(("a", "b"), low=(-1.0, 0.5), high=(1.0, 2.0))


def trained_like(module, x):
    """Random (non-trivial) weights, as after training; outputs of order 1, so float32 rounding stays ~1e-6."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return module


def estimators():
    g = torch.Generator().manual_seed(0)
    theta = SPACE.sample(64, generator=g).to(torch.get_default_dtype())
    vec = Events(x=torch.randn(64, 3, generator=g) * 4 + 1, theta=theta)
    sets = Events(x=torch.randn(64, 5, 2, generator=g), theta=theta, mask=torch.rand(64, 5, generator=g) < 0.7)
    doubly = Events(x=vec.x, theta=torch.cat([theta, theta.flip(0)], 1))
    return {
        "ratio": RatioEstimator.from_events(vec, SPACE, hidden=(16, 16)),
        "ratio_set": RatioEstimator.from_events(sets, SPACE, hidden=(16,)),
        "ratio_doubly": RatioEstimator.from_events(doubly, SPACE, hidden=(16,), doubly=True),
        "flow_nsf": LikelihoodEstimator.from_events(vec, SPACE, hidden=(16,), transforms=2),
        "flow_maf": LikelihoodEstimator.from_events(vec, SPACE, hidden=(16,), flow="maf"),
        "posterior": PosteriorEstimator.from_events(vec, SPACE, hidden=(16,), transforms=2),
        "score": ScoreEstimator.from_events(vec, SPACE, hidden=(16,)),
        "classifier_set": Classifier.from_events(sets.replace(theta=torch.zeros(64, 0), label=(torch.arange(64) % 2).double()), hidden=(16,), seed=0),
        "classifier_theta": Classifier.from_events(vec.replace(label=(torch.arange(64) % 2).double()), hidden=(16,), seed=0),
        "density_set": ConditionalDensity.from_events(sets, target="theta", low=(-1.0, None), high=(None, 2.0),
                                                      flow={"transforms": 2, "hidden": [16]}),
    }


CASES = [(n, torch.float32) for n in ("ratio", "ratio_set", "ratio_doubly", "flow_nsf", "flow_maf", "posterior", "score", "classifier_set", "classifier_theta", "density_set")]
CASES += [("ratio_set", torch.float64), ("flow_nsf", torch.float64)]


@needs_onnx
@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_onnxruntime_matches_torch_at_two_batch_sizes(tmp_path, name, dtype):
    from sbilab.io.onnx import describe_onnx, export_onnx, verify_onnx

    module = trained_like(estimators()[name], None).to(dtype)
    path = export_onnx(module, tmp_path / f"{name}.onnx")
    assert verify_onnx(path, module, batch_sizes=(2, 29), seed=1) < (1e-5 if dtype == torch.float32 else 1e-10)
    info = describe_onnx(path)
    assert info["kind"] == type(module).__name__
    assert info["parameter_names"] == ([] if name in ("classifier_set", "classifier_theta", "density_set") else ["a", "b"])
    assert info["graph_inputs"][info["inputs"][0]][0] == "batch"  # dynamic batch axis
    if name == "ratio_set":
        assert info["inputs"] == ["x", "theta", "mask"] and info["graph_inputs"]["x"][:2] == ["batch", "particles"]
    if name in ("classifier_set", "classifier_theta"):
        assert info["inputs"] == (["x", "mask"] if name == "classifier_set" else ["x", "theta"])
    if name == "posterior":
        assert info["inputs"] == ["theta", "x"]
    if name == "density_set":
        assert info["inputs"] == ["y", "context", "mask"] and info["graph_inputs"]["context"][:2] == ["batch", "particles"]


@needs_onnx
def test_what_cannot_be_exported_is_named(tmp_path):
    from sbilab.io.onnx import export_onnx

    est = estimators()
    ensemble = Ensemble(est["ratio"], 2)
    mixture = PosteriorMixture(Ensemble(est["posterior"], 2))
    for module in (ensemble, mixture, torch.nn.Linear(2, 1)):
        with pytest.raises(ExportError, match=r"cannot be exported to ONNX; exportable kinds are \['Classifier', 'ConditionalDensity', 'LikelihoodEstimator'"):
            export_onnx(module, tmp_path / "x.onnx")


@needs_onnx
def test_cli_export_and_info(tmp_path, capsys):
    from sbilab.store import SimulationStore

    est = trained_like(estimators()["ratio"], None)
    h5 = publish.save(tmp_path / "ratio.h5", est)
    assert main(["export", str(h5), "--onnx"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["onnx"] == str(tmp_path / "ratio.onnx") and summary["max_abs_diff_onnxruntime_vs_torch"] < 1e-5
    assert main(["info", str(tmp_path / "ratio.onnx")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "RatioEstimator" and info["output"] == "log_ratio" and info["source"] == str(h5)
    with SimulationStore.create(tmp_path / "s.sbistore", observable_names=["x0"], parameter_names=["a"]) as store:
        store.append(Events(x=torch.zeros(5, 1), theta=torch.ones(5, 1)))
    assert main(["info", str(tmp_path / "s.sbistore")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "sbilab store" and info["rows"] == 5 and info["metadata"]["parameter_names"] == ["a"]
    assert main(["info", str(h5)]) == 0 and json.loads(capsys.readouterr().out)["kind"] == "RatioEstimator"
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert main(["info", str(tmp_path / "junk.h5")]) == 2
    assert "neither a published file" in capsys.readouterr().err
    mixture = publish.save(tmp_path / "mix.h5", PosteriorMixture(Ensemble(estimators()["posterior"], 2)))
    assert main(["export", str(mixture), "--onnx"]) == 2
    assert "exportable kinds are" in capsys.readouterr().err


def test_third_party_uses_a_published_estimator_without_training_code(tmp_path):
    """The writer trains and publishes in its own process; here only the .h5 file and sbilab are used."""
    from sbilab.stats import UnbinnedLikelihood

    writer = Path(__file__).with_name("_publish_writer.py")
    done = subprocess.run([sys.executable, str(writer), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads((tmp_path / "reference.json").read_text())
    est = publish.load(tmp_path / "ratio.h5", expected_kind="RatioEstimator")
    assert publish.inspect(tmp_path / "ratio.h5")["metadata"] == {"analysis": "gaussian toy", "observable": "x"}
    new_x = torch.tensor(reference["new_x"], dtype=torch.get_default_dtype())
    with torch.no_grad():
        log_r = est.log_ratio(new_x, torch.tensor(reference["theta"], dtype=new_x.dtype))
    np.testing.assert_allclose(log_r.numpy(), reference["log_r"], rtol=0, atol=1e-6)
    observed = Events.observed(torch.tensor(reference["observed_x"], dtype=new_x.dtype))
    best = UnbinnedLikelihood(est, observed, est.space).fit()
    assert list(est.space.names) == reference["names"]
    np.testing.assert_allclose([best.best[n] for n in reference["names"]], reference["best"], rtol=0, atol=1e-6)
    assert best.nll_min == pytest.approx(reference["nll_min"], abs=1e-6)
