"""The one flow vocabulary: FlowSpec validation and JSON round trip, build_flow against zuko, old published specs."""

import json

import pytest
import torch
import zuko

from sbilab.estimators import LikelihoodEstimator, PosteriorEstimator
from sbilab.exceptions import ConfigError
from sbilab.nets.flows import FLOW_KINDS, FlowSpec, build_flow


def test_spec_round_trip_and_defaults():
    assert FLOW_KINDS == ("nsf", "maf", "nsf_coupling", "realnvp")
    spec = FlowSpec("nsf_coupling", transforms=3, hidden=[32, 16], bins=6)
    assert spec.hidden == (32, 16)  # normalised to a tuple: the spec is hashable and compares equal
    assert FlowSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert FlowSpec.from_dict({}) == FlowSpec() == FlowSpec("nsf", 5, (64, 64), 8)
    with pytest.raises(ConfigError, match="unknown option"):
        FlowSpec.from_dict({"kind": "nsf", "layers": 3})
    with pytest.raises(ConfigError, match="mapping"):
        FlowSpec.from_dict(["nsf"])


@pytest.mark.parametrize("bad", [{"kind": "glow"}, {"transforms": 0}, {"transforms": True}, {"bins": 1},
                                 {"hidden": [64, 0]}, {"hidden": "64"}, {"hidden": 64}, {"transforms": 2.0}])
def test_spec_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        FlowSpec(**bad)


def _reference(kind: str, features: int, context: int, spec: FlowSpec) -> torch.nn.Module:
    """The zuko constructors the estimators called before the factory existed."""
    from functools import partial

    hidden = spec.hidden
    if kind == "nsf":
        return zuko.flows.NSF(features, context, bins=spec.bins, transforms=spec.transforms, hidden_features=hidden)
    if kind == "maf":
        return zuko.flows.MAF(features, context, transforms=spec.transforms, hidden_features=hidden)
    extra = {}
    if kind == "nsf_coupling":
        extra = dict(univariate=partial(zuko.transforms.MonotonicRQSTransform, slope=1e-3),
                     shapes=[(spec.bins,), (spec.bins,), (spec.bins - 1,)])
    return zuko.flows.NICE(features, context, transforms=spec.transforms, hidden_features=hidden, **extra)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_build_flow_is_the_zuko_flow_and_normalised(kind):
    spec = FlowSpec(kind, transforms=2, hidden=(16,), bins=5)
    torch.manual_seed(0)
    flow = build_flow(spec, 2, 3)
    torch.manual_seed(0)
    ref = _reference(kind, 2, 3, spec)
    assert flow.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(flow.state_dict().values(), ref.state_dict().values()))
    # a proper conditional density: integrates to one over R² (2-D trapezoid on [-9, 9]²)
    grid = torch.linspace(-9, 9, 241, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    flow = flow.double()
    with torch.no_grad():
        dens = flow(torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64)).log_prob(points).exp().reshape(241, 241)
    assert torch.trapezoid(torch.trapezoid(dens, grid, dim=1), grid).item() == pytest.approx(1.0, abs=2e-3)
    # and the distribution's sampler is the inverse of its density's transform
    with torch.no_grad():
        dist = flow(torch.zeros(4, 3, dtype=torch.float64))
        z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(dist.transform(dist.transform.inv(z)), z, atol=1e-6)


def test_build_flow_bad_input():
    with pytest.raises(ConfigError, match="coupling"):
        build_flow(FlowSpec("realnvp"), 1, 2)
    with pytest.raises(ConfigError, match="coupling"):
        build_flow(FlowSpec("nsf_coupling"), 1, 2)
    with pytest.raises(ConfigError, match="features"):
        build_flow(FlowSpec(), 0, 2)
    with pytest.raises(ConfigError, match="context"):
        build_flow(FlowSpec(), 2, -1)
    with pytest.raises(ConfigError, match="FlowSpec"):
        build_flow({"kind": "nsf"}, 2, 2)
    assert build_flow(FlowSpec("maf", transforms=1, hidden=(4,)), 2, 0)().sample((3,)).shape == (3, 2)  # unconditional


def test_estimators_share_the_vocabulary():
    from sbilab.simulators import ParameterSpace

    space = ParameterSpace(("a", "b"), low=(0.0, 0.0), high=(1.0, 1.0))
    for cls in (PosteriorEstimator, LikelihoodEstimator):
        with pytest.raises(ConfigError, match="unknown flow kind"):
            cls(space, 2, flow="glow")
    # coupling flows now also serve the likelihood estimator (one vocabulary)
    lik = LikelihoodEstimator(space, 2, flow="realnvp", transforms=1, hidden=(8,))
    assert lik.sample(torch.tensor([0.5, 0.5]), 3).shape == (3, 2)
    with pytest.raises(ConfigError, match="coupling"):
        LikelihoodEstimator(space, 1, flow="nsf_coupling")


# Specs and tensor names exactly as the code before the flow factory published them
SPACE = {"names": ["a", "b"], "low": [-3.0, -2.5], "high": [3.0, 2.0], "reference": [0.0, -0.25], "proposal": None}
OLD_POSTERIOR = {"space": SPACE, "x_features": 2, "sets": False, "flow": "nsf", "transforms": 1, "hidden": [8],
                 "bins": 5, "embedding": None}
OLD_LIKELIHOOD = {"space": SPACE, "x_features": 2, "flow": "maf", "transforms": 1, "hidden": [8], "bins": 6}
_MADE = [f"flow.transform.transforms.0.{n}" for n in ("order", "hyper.0.weight", "hyper.0.bias", "hyper.0.mask",
                                                      "hyper.2.weight", "hyper.2.bias", "hyper.2.mask")]
OLD_POSTERIOR_TENSORS = ["low", "width", "bounded", "lower_only", "upper_only", "z_mean", "z_std", "x_norm.mean",
                         "x_norm.std", *_MADE, "flow.base.loc", "flow.base.scale"]
OLD_LIKELIHOOD_TENSORS = ["theta_ref", "x_norm.mean", "x_norm.std", "theta_norm.mean", "theta_norm.std", *_MADE,
                          "flow.base.loc", "flow.base.scale"]


@pytest.mark.parametrize("cls,spec,tensors", [(PosteriorEstimator, OLD_POSTERIOR, OLD_POSTERIOR_TENSORS),
                                              (LikelihoodEstimator, OLD_LIKELIHOOD, OLD_LIKELIHOOD_TENSORS)])
def test_files_of_the_old_form_still_load(cls, spec, tensors, tmp_path):
    from sbilab.publish import load, save

    torch.manual_seed(0)
    module = cls.from_spec(spec)
    assert list(module.state_dict()) == tensors
    assert module.spec() == spec  # the published form is unchanged
    loaded = load(save(tmp_path / "old.h5", module))
    x, theta = torch.tensor([[0.3, -0.2], [1.0, 0.5]]), torch.tensor([[0.5, 0.5], [-1.0, 1.5]])
    with torch.no_grad():
        if cls is PosteriorEstimator:
            assert torch.equal(loaded.log_prob(theta, x), module.log_prob(theta, x))
        else:
            assert torch.equal(loaded.log_prob(x, theta), module.log_prob(x, theta))
