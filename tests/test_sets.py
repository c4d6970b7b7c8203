"""Set embeddings: permutation invariance and mask invariance, also inside a ratio estimator."""

from __future__ import annotations

import pytest
import torch

from sbilab.estimators import RatioEstimator, alices_loss
from sbilab.events import Events
from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.nets import DeepSets, SetTransformer
from sbilab.nets.sets import NestedDeepSets
from sbilab.simulators import GaussianLatent

NETS = [
    lambda: DeepSets(3, 4, hidden=(16,), latent=8),
    lambda: DeepSets(3, 4, hidden=(16,), latent=8, pooling="mean"),
    lambda: SetTransformer(3, 4, dim=16, heads=2, layers=2),
]


def _sets() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 3, generator=g, dtype=torch.float64)
    counts = torch.tensor([6, 4, 1, 3, 0])
    mask = torch.arange(6)[None, :] < counts[:, None]
    return x, mask


@pytest.mark.parametrize("make", NETS)
def test_permutation_invariance(make) -> None:
    torch.manual_seed(1)
    net = make().double().eval()
    x, mask = _sets()
    perm = torch.randperm(6)
    assert torch.allclose(net(x, mask), net(x[:, perm], mask[:, perm]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", NETS)
def test_padding_never_changes_the_output(make) -> None:
    torch.manual_seed(1)
    net = make().double().eval()
    x, mask = _sets()
    out = net(x, mask)
    junk = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, float("nan")))
    assert torch.equal(net(junk, mask), out)  # padding values are ignored exactly, NaN included
    wider = torch.cat([x, 1e3 * torch.ones(5, 4, 3, dtype=x.dtype)], dim=1)  # four more padding slots
    wider_mask = torch.cat([mask, torch.zeros(5, 4, dtype=torch.bool)], dim=1)
    assert torch.allclose(net(wider, wider_mask), out, rtol=0, atol=1e-12)
    assert torch.isfinite(out).all()  # the empty set (row 4) too


def test_deep_sets_sum_is_the_sum_of_phi() -> None:
    net = DeepSets(3, 2, hidden=(8,), latent=5).double()
    x, mask = _sets()
    phi = net.phi(x) * mask.unsqueeze(-1)
    assert torch.allclose(net(x, mask), net.rho(phi.sum(1)), atol=1e-14)


def test_gradients_ignore_nan_padding() -> None:
    net = DeepSets(3, 1, hidden=(8,), latent=5).double()
    x, mask = _sets()
    junk = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, float("nan")))
    net(junk, mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_configuration_and_shapes() -> None:
    with pytest.raises(ConfigError):
        DeepSets(3, 2, pooling="max")
    with pytest.raises(ConfigError):
        SetTransformer(3, 2, dim=10, heads=4)
    with pytest.raises(ShapeMismatchError):
        DeepSets(3, 2)(torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="Unknown activation 'swish'"):
        DeepSets(3, 2, activation="swish")


def test_one_embedding_vocabulary_for_every_estimator() -> None:
    from sbilab.estimators import PosteriorEstimator, ScoreEstimator
    from sbilab.nets import build_embedding
    from sbilab.nets.sets import EMBEDDINGS

    assert {k: v.sets for k, v in EMBEDDINGS.items()} == {"mlp": False, "deepsets": True, "transformer": True, "nested_deepsets": True}
    x, mask = _sets()
    net = build_embedding({"kind": "transformer", "out_features": 5, "dim": 8, "heads": 2, "layers": 1}, 3, sets=True).double()
    assert isinstance(net, SetTransformer) and net(x, mask).shape == (5, 5)
    assert build_embedding(None, 3, sets=True) is None and build_embedding(net, 3, sets=True) is net
    space = GaussianLatent().space
    # the same unknown kind and the same misuse are refused alike by every consumer, naming it
    for make, owner in ((lambda e: ScoreEstimator(space, 3, embedding=e), "ConditionedNetwork"),
                        (lambda e: PosteriorEstimator(space, 3, sets=True, embedding=e), "PosteriorEstimator")):
        with pytest.raises(ConfigError, match=rf"{owner}: unknown embedding kind 'gnn'; choose one of \['deepsets', 'mlp', 'nested_deepsets', 'transformer'\]"):
            make({"kind": "gnn"})
        with pytest.raises(ConfigError, match=rf"{owner}: the 'mlp' embedding is for vector observables"):
            make({"kind": "mlp"})
    with pytest.raises(ConfigError, match="'deepsets' embedding is for sets"):
        PosteriorEstimator(space, 3, embedding={"kind": "deepsets"})
    mlp = PosteriorEstimator(space, 3, embedding={"kind": "mlp", "out_features": 6}).embedding
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [64, 64, 6]


def test_ratio_estimator_on_particle_sets() -> None:
    sim = GaussianLatent()
    x, mask = _sets()
    x = x.float()
    ev = Events(x=x, theta=torch.zeros(5, 1), mask=mask, log_r_joint=torch.zeros(5), score_joint=torch.zeros(5, 1),
                label=torch.ones(5))
    est = RatioEstimator.from_events(ev, sim, hidden=(8,), embedding={"kind": "transformer", "out_features": 4, "dim": 8, "heads": 2})
    out = est.log_ratio(x, torch.tensor([0.5]), mask=mask)
    perm = torch.randperm(6)
    assert torch.allclose(est.log_ratio(x[:, perm], torch.tensor([0.5]), mask=mask[:, perm]), out, atol=1e-5)
    assert alices_loss(est, ev).shape == (5,)
    with pytest.raises(ShapeMismatchError, match="padded particle sets"):
        est.log_ratio(torch.zeros(5, 3), torch.tensor([0.5]))


def test_nested_deep_sets_embed_events_of_particles() -> None:
    torch.manual_seed(2)
    net = NestedDeepSets(3, 4, block=6, inner=5, hidden=(16,), latent=8).double().eval()
    x, mask = _sets()  # five "events" of up to 6 particles (the last one empty)
    data, data_mask = x.reshape(1, 30, 3), mask.reshape(1, 30)  # one data set of five events
    out = net(data, data_mask)
    inner = net.members(x, mask)  # (5, 5): per-event embeddings; the empty event takes no part
    torch.testing.assert_close(out, net.sets(inner[:4].unsqueeze(0), torch.ones(1, 4, dtype=torch.bool)), rtol=0, atol=1e-12)
    events = torch.randperm(5)
    particles = torch.randperm(6)
    moved = x[events][:, particles].reshape(1, 30, 3), mask[events][:, particles].reshape(1, 30)
    torch.testing.assert_close(net(*moved), out, rtol=0, atol=1e-12)
    junk = torch.where(data_mask.unsqueeze(-1), data, torch.full_like(data, float("nan")))
    assert torch.equal(net(junk, data_mask), out)
    with pytest.raises(ShapeMismatchError, match="multiple of block = 6"):
        net(data[:, :28], data_mask[:, :28])
    with pytest.raises(ConfigError, match="block"):
        NestedDeepSets(3, 4, block=0)
