"""PairedEvents: two levels of the same events, pass masks, weights and the training views."""

from __future__ import annotations

import pytest
import torch

from sbilab import Events, PairedEvents
from sbilab.exceptions import InvalidEventsError, SbilabError


def make(n: int = 10, seed: int = 0, m: int = 4) -> PairedEvents:
    """Vectors at gen (N, 2), particle sets at reco (N, m, 3), every category present."""
    g = torch.Generator().manual_seed(seed)
    pass_gen = torch.ones(n, dtype=torch.bool)
    pass_reco = torch.ones(n, dtype=torch.bool)
    pass_reco[1::4] = False  # misses
    pass_gen[2::4] = False  # fakes
    counts = torch.randint(1, m + 1, (n,), generator=g)
    reco_mask = torch.arange(m)[None, :] < counts[:, None]
    reco_mask[~pass_reco] = False  # nothing reconstructed
    gen = Events(x=torch.randn(n, 2, generator=g), theta=torch.full((n, 1), 0.5), spectator=torch.randn(n, 1, generator=g))
    reco = Events(x=torch.randn(n, m, 3, generator=g), theta=torch.full((n, 1), 0.5), mask=reco_mask)
    return PairedEvents(gen, reco, pass_gen=pass_gen, pass_reco=pass_reco, weights=torch.rand(n, generator=g) + 0.5)


def test_categories_and_defaults():
    p = make(12)
    assert p.misses.tolist() == [i % 4 == 1 for i in range(12)]
    assert p.fakes.tolist() == [i % 4 == 2 for i in range(12)]
    assert int(p.matched.sum()) == 6 and len(p) == 12
    plain = PairedEvents(p.gen, p.reco)
    assert bool(plain.pass_gen.all() and plain.pass_reco.all()) and plain.weights is None
    torch.testing.assert_close(plain.weights_or_ones(), torch.ones(12))


def test_bad_input_names_field_and_rows():
    p = make(12)
    never = torch.arange(12) % 4 == 3
    with pytest.raises(InvalidEventsError, match=r"3 of 12 events pass neither selection \(rows 3, 7, 11\)") as err:
        PairedEvents(p.gen, p.reco, pass_gen=~never, pass_reco=~never)
    assert isinstance(err.value, SbilabError)
    with pytest.raises(InvalidEventsError, match="gen has 12 events but reco has 11"):
        PairedEvents(p.gen, p.reco[:11])
    with pytest.raises(InvalidEventsError, match=r"PairedEvents.reco carries its own weights"):
        PairedEvents(p.gen, p.reco.replace(weights=torch.ones(12)))
    with pytest.raises(InvalidEventsError, match=r"pass_reco has shape \(11,\); it must be \(12,\)"):
        PairedEvents(p.gen, p.reco, pass_reco=torch.ones(11, dtype=torch.bool))
    with pytest.raises(InvalidEventsError, match="pass_gen must be boolean"):
        PairedEvents(p.gen, p.reco, pass_gen=torch.full((12,), 0.5))
    w = torch.ones(12)
    w[4] = float("nan")
    with pytest.raises(InvalidEventsError, match=r"weights has non-finite values in 1 of 12 rows \(rows 4\)"):
        PairedEvents(p.gen, p.reco, weights=w)
    with pytest.raises(InvalidEventsError, match="must be Events"):
        PairedEvents(p.gen.x, p.reco)
    with pytest.raises(InvalidEventsError, match="target must be one of"):
        p.conditional(target="parton")


def test_level_views_carry_pair_weights():
    p = make(12)
    reco = p.level("reco")
    assert len(reco) == int(p.pass_reco.sum()) and reco.is_set
    torch.testing.assert_close(reco.weights, p.weights[p.pass_reco])
    torch.testing.assert_close(reco.x, p.reco.x[p.pass_reco])
    torch.testing.assert_close(reco.mask, p.reco.mask[p.pass_reco])
    gen_all = p.level("gen", passing=False)
    assert len(gen_all) == 12 and torch.equal(gen_all.spectator, p.gen.spectator)


def test_conditional_views_for_sets_and_vectors():
    p = make(12)
    keep = p.matched
    q_gen = p.conditional(target="gen")  # q(gen | reco): context a set, target a vector
    assert len(q_gen) == 6 and q_gen.is_set and q_gen.latent.shape == (6, 2) and q_gen.latent_mask is None
    torch.testing.assert_close(q_gen.x, p.reco.x[keep])
    torch.testing.assert_close(q_gen.mask, p.reco.mask[keep])
    torch.testing.assert_close(q_gen.latent, p.gen.x[keep])
    torch.testing.assert_close(q_gen.weights, p.weights[keep])
    q_reco = p.conditional(target="reco")  # p(reco | gen): context a vector, target a set -> 3-D latent + mask
    assert not q_reco.is_set and q_reco.latent.shape == (6, 4, 3)
    torch.testing.assert_close(q_reco.latent_mask, p.reco.mask[keep])
    torch.testing.assert_close(q_reco.x, p.gen.x[keep])
    torch.testing.assert_close(q_reco.spectator, p.gen.spectator[keep])


def test_slicing_to_split_concatenate():
    p = make(12)
    s = p[torch.tensor([0, 2, 5])]
    assert s.fakes.tolist() == [False, True, False] and torch.equal(s.reco.x, p.reco.x[[0, 2, 5]])
    assert len(p[3]) == 1 and len(p[-1]) == 1 and torch.equal(p[-1].gen.x, p.gen.x[-1:])
    moved = p.to("cpu", dtype=torch.float64)
    assert moved.gen.x.dtype == torch.float64 and moved.weights.dtype == torch.float64 and moved.pass_gen.dtype == torch.bool
    a, b = p.split(0.25, generator=torch.Generator().manual_seed(0))
    assert (len(a), len(b)) == (9, 3)
    for part in (a, b):  # pairs stay together: gen row i still belongs to reco row i
        rows = [int((p.gen.x[:, 0] == v).nonzero()[0, 0]) for v in part.gen.x[:, 0]]
        assert torch.equal(part.reco.x, p.reco.x[rows]) and torch.equal(part.pass_reco, p.pass_reco[rows])
        torch.testing.assert_close(part.weights, p.weights[rows])
    longer = make(5, seed=1, m=6).replace(weights=None)  # sets of another length, no weights
    both = PairedEvents.concatenate([p, longer])
    assert len(both) == 17 and both.reco.x.shape == (17, 6, 3)
    assert not bool(both.reco.mask[:12, 4:].any())  # padded entries stay padding
    torch.testing.assert_close(both.weights, torch.cat([p.weights, torch.ones(5)]))
    torch.testing.assert_close(both.pass_gen, torch.cat([p.pass_gen, longer.pass_gen]))
    new = p.with_weights(2 * p.weights)
    torch.testing.assert_close(new.weights, 2 * p.weights)


def test_from_arrays_fills_placeholders_of_failed_levels_only():
    gen = torch.tensor([[1.0], [2.0], [float("nan")]])
    reco = torch.tensor([[1.5], [float("nan")], [3.25]])
    p = PairedEvents.from_arrays(gen, reco, pass_gen=[True, True, False], pass_reco=[True, False, True], weights=[1.0, 2.0, 3.0])
    assert p.gen.x[:, 0].tolist() == [1.0, 2.0, 0.0] and p.reco.x[:, 0].tolist() == [1.5, 0.0, 3.25]
    assert p.fakes.tolist() == [False, False, True]
    with pytest.raises(InvalidEventsError, match="Events.x has non-finite values .* first at row 1"):
        PairedEvents.from_arrays(gen, reco, pass_gen=[True, True, False], pass_reco=[True, True, True])


def test_flat_tensors_round_trip():
    p = make(8)
    flat = p.tensors()
    assert {"gen/x", "gen/spectator", "reco/x", "reco/mask", "pass_gen", "pass_reco", "weights"} <= set(flat)
    back = PairedEvents.from_tensors(flat)
    for name, t in back.tensors().items():
        assert torch.equal(t, flat[name]), name
    with pytest.raises(InvalidEventsError, match="unknown field 'truth/x'"):
        PairedEvents.from_tensors({**flat, "truth/x": flat["gen/x"]})
