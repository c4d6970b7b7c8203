import numpy as np
import pytest
import torch

from sbilab import Events, ParameterSpace
from sbilab.exceptions import InvalidEventsError, OutOfSupportError, SbilabError


def make(n=10, d=2, p=1):
    g = torch.Generator().manual_seed(0)
    return Events(
        x=torch.randn(n, d, generator=g),
        theta=torch.rand(n, p, generator=g),
        log_r_joint=torch.randn(n, generator=g),
        score_joint=torch.randn(n, p, generator=g),
        weights=torch.rand(n, generator=g),
        label=(torch.arange(n) % 2).float(),
    )


def test_nan_names_field_count_and_first_row():
    x = torch.zeros(6, 2)
    x[3, 1] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(InvalidEventsError) as err:
        Events(x=x, theta=torch.zeros(6, 1))
    msg = str(err.value)
    assert "Events.x" in msg and "2 of 6 rows" in msg and "row 3" in msg
    assert isinstance(err.value, SbilabError) and isinstance(err.value, ValueError)


def test_length_mismatch_and_dimensionality():
    with pytest.raises(InvalidEventsError, match="theta has 4 rows but x has 5"):
        Events(x=torch.zeros(5, 1), theta=torch.zeros(4, 1))
    with pytest.raises(InvalidEventsError, match=r"reshape\(-1, 1\)"):
        Events(x=torch.zeros(5), theta=torch.zeros(5, 1))
    with pytest.raises(InvalidEventsError, match="score_joint has 2 columns"):
        Events(x=torch.zeros(5, 1), theta=torch.zeros(5, 1), score_joint=torch.zeros(5, 2))
    with pytest.raises(InvalidEventsError, match="log_r_joint"):
        Events(x=torch.zeros(5, 1), theta=torch.zeros(5, 1), log_r_joint=torch.zeros(5, 1))


def test_theta_outside_space_names_rows():
    space = ParameterSpace(("M", "Gamma"), low=(95, 2), high=(105, 8))
    theta = torch.tensor([[100.0, 5.0], [110.0, 5.0], [100.0, 1.0]])
    with pytest.raises(OutOfSupportError) as err:
        Events(x=torch.zeros(3, 1), theta=theta, space=space)
    assert "2 of 3 rows" in str(err.value) and "row 1" in str(err.value) and "'M': 110.0" in str(err.value)


def test_masked_padding_may_hold_nan():
    x = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    x[~mask] = float("nan")
    ev = Events(x=x, theta=torch.zeros(3, 1), mask=mask)
    assert ev.is_set and ev.n_observables == 2
    x[0, 0, 0] = float("nan")
    with pytest.raises(InvalidEventsError, match="row 0"):
        Events(x=x, theta=torch.zeros(3, 1), mask=mask)


def test_slicing_concatenation_split_roundtrip():
    ev = make(10)
    assert len(ev[2:5]) == 3
    torch.testing.assert_close(ev[torch.tensor([1, 3])].x, ev.x[[1, 3]])
    torch.testing.assert_close(ev[ev.label > 0].theta, ev.theta[1::2])
    both = Events.concatenate([ev[:4], ev[4:]])
    for name, value in ev.tensors().items():
        torch.testing.assert_close(getattr(both, name), value)
    train, val = ev.split(0.3, generator=torch.Generator().manual_seed(1))
    assert (len(train), len(val)) == (7, 3)
    rows = torch.cat([train.x, val.x])
    assert sorted(rows[:, 0].tolist()) == sorted(ev.x[:, 0].tolist())
    with pytest.raises(InvalidEventsError, match="fraction"):
        ev.split(1.5)


def test_batches_cover_each_event_once():
    ev = make(23)
    seen = torch.cat([b.x[:, 0] for b in ev.batches(5, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert sorted(seen.tolist()) == sorted(ev.x[:, 0].tolist())


def test_numpy_input_and_observed_and_to():
    ev = Events(x=np.ones((3, 2)), theta=np.zeros((3, 1)), label=np.array([0, 1, 1]))
    assert ev.x.dtype == torch.float64 and ev.label.dtype == torch.get_default_dtype()
    obs = Events.observed(np.ones((4, 3)))
    assert obs.n_parameters == 0 and len(obs) == 4
    moved = ev.to("cpu", dtype=torch.float32)
    assert moved.x.dtype == torch.float32
    torch.testing.assert_close(ev.weights_or_ones(), torch.ones(3, dtype=torch.float64))


def test_concatenate_refuses_mismatched_shapes():
    with pytest.raises(InvalidEventsError, match="field x"):
        Events.concatenate([make(3, d=2), make(3, d=3)])


def test_spectator_is_validated_and_carried_everywhere():
    n = 8
    g = torch.Generator().manual_seed(2)
    ev = Events(x=torch.randn(n, 2, generator=g), theta=torch.zeros(n, 1), spectator=torch.randn(n, 1, generator=g))
    with pytest.raises(InvalidEventsError, match=r"spectator has shape \(8,\).*reshape\(-1, 1\)"):
        Events(x=ev.x, theta=ev.theta, spectator=torch.zeros(n))
    with pytest.raises(InvalidEventsError, match="spectator has 7 rows but x has 8"):
        Events(x=ev.x, theta=ev.theta, spectator=torch.zeros(7, 1))
    bad = ev.spectator.clone()
    bad[5, 0] = float("nan")
    with pytest.raises(InvalidEventsError, match=r"Events.spectator has non-finite values .* 1 of 8 rows; first at row 5"):
        Events(x=ev.x, theta=ev.theta, spectator=bad)
    torch.testing.assert_close(ev[2:5].spectator, ev.spectator[2:5])
    torch.testing.assert_close(ev[torch.tensor([6, 1])].spectator, ev.spectator[[6, 1]])
    assert ev.to("cpu", dtype=torch.float64).spectator.dtype == torch.float64
    torch.testing.assert_close(Events.concatenate([ev[:3], ev[3:]]).spectator, ev.spectator)
    train, val = ev.split(0.25, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train.spectator, val.spectator])[:, 0].tolist()) == sorted(ev.spectator[:, 0].tolist())
    for a, b in ((train, ev), (val, ev)):  # rows stay intact: spectator follows its x
        rows = [int((b.x[:, 0] == v).nonzero()[0, 0]) for v in a.x[:, 0]]
        torch.testing.assert_close(a.spectator, b.spectator[rows])
    obs = Events.observed(ev.x, spectator=ev.spectator)
    assert obs.n_parameters == 0 and torch.equal(obs.spectator, ev.spectator)


def test_history_latent_with_mask():
    lat = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0))
    lmask = torch.arange(6)[None, :] < torch.tensor([1, 6, 3, 0])[:, None]
    lat[~lmask] = float("nan")  # padding of a history may hold anything
    ev = Events(x=torch.zeros(4, 1), theta=torch.zeros(4, 1), latent=lat, latent_mask=lmask.int())
    assert ev.latent_mask.dtype == torch.bool and ev.latent.shape == (4, 6, 3)
    bad = lat.clone()
    bad[2, 1, 0] = float("inf")  # a real entry
    with pytest.raises(InvalidEventsError, match="Events.latent has non-finite values .* first at row 2"):
        Events(x=torch.zeros(4, 1), theta=torch.zeros(4, 1), latent=bad, latent_mask=lmask)
    with pytest.raises(InvalidEventsError, match=r"latent_mask of shape \(4, 6\) needs latent of shape \(N, 6, F\)"):
        Events(x=torch.zeros(4, 1), theta=torch.zeros(4, 1), latent=torch.zeros(4, 2), latent_mask=lmask)
    with pytest.raises(InvalidEventsError, match=r"latent has shape \(4, 6, 3, 1\) but must have 2 or 3 dimensions"):
        Events(x=torch.zeros(4, 1), theta=torch.zeros(4, 1), latent=torch.zeros(4, 6, 3, 1))
    torch.testing.assert_close(ev[1:3].latent_mask, lmask[1:3])


def test_concatenate_pads_sets_and_histories_to_the_longest():
    g = torch.Generator().manual_seed(4)
    a = Events(x=torch.randn(2, 3, 2, generator=g), theta=torch.zeros(2, 1), mask=torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(),
               latent=torch.randn(2, 4, 1, generator=g), latent_mask=torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool())
    b = Events(x=torch.randn(3, 5, 2, generator=g), theta=torch.ones(3, 1),  # a set without mask: all entries real
               latent=torch.randn(3, 2, 1, generator=g), latent_mask=torch.ones(3, 2, dtype=torch.bool))
    both = Events.concatenate([a, b])
    assert both.x.shape == (5, 5, 2) and both.mask.shape == (5, 5) and both.latent.shape == (5, 4, 1)
    torch.testing.assert_close(both.x[:2, :3], a.x)
    torch.testing.assert_close(both.x[2:], b.x)
    assert both.mask[:2].tolist() == [[True, True, False, False, False], [True, False, False, False, False]]
    assert bool(both.mask[2:].all())
    assert both.latent_mask.tolist()[2:] == [[True, True, False, False]] * 3
    assert both.mask.sum().item() == a.mask.sum().item() + 15  # no padded entry became real
    with pytest.raises(InvalidEventsError, match="field x has different shapes"):
        Events.concatenate([a, b.replace(x=torch.zeros(3, 5, 4))])
