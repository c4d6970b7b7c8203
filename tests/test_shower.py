"""The batched parton shower against its scalar reference, and its exact history likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbilab.events import Events
from sbilab.exceptions import ConfigError, HistoryVersionError, InvalidEventsError, NegativeKernelError, OverestimateError
from sbilab.simulators import augment, joint_score, ratio_training_data
from sbilab.simulators.shower import COLUMNS, PartonShower, history_log_prob
from sbilab.simulators.shower.history import FIELDS, HISTORY_VERSION, decode, encode, field
from sbilab.simulators.shower.kernels import CF, RunningCoupling
from sbilab.simulators.shower.observables import durham_rates, thrust
from sbilab.simulators.shower.reference import as_state, reference_log_prob, reference_shower

SM = (1.0, 1.0, 0.0)
ODD = (1.4, 0.6, 1.2)
COL = {name: i for i, name in enumerate(COLUMNS)}


@pytest.fixture(scope="module")
def shower() -> PartonShower:
    return PartonShower()


def _summaries(state) -> dict[str, np.ndarray]:
    mask = torch.arange(state.momenta.shape[1]) < state.n_particles.unsqueeze(1)
    t, _ = thrust(state.momenta, mask)
    y23, _ = durham_rates(state.momenta, mask)
    h = state.history
    hmask = torch.arange(h.shape[1]) < state.n_trials.unsqueeze(1)
    accepted = (field(h, "accepted") > 0) & hmask
    has = accepted.any(1)
    first = accepted.to(torch.int8).argmax(1)
    rows = torch.arange(len(first))
    return {"n": state.n_particles.numpy(), "tau": (1 - t).numpy(), "y23": y23[state.n_particles > 2].numpy(),
            "t1": h[rows, first, COL["t"]][has].numpy(), "z1": h[rows, first, COL["z"]][has].numpy()}


@pytest.mark.parametrize("point", [SM, ODD])
def test_batched_shower_reproduces_the_scalar_reference(shower, point):
    ref = _summaries(as_state(reference_shower(point, 1200, seed=11)))
    batched = _summaries(shower.shower(torch.tensor([point], dtype=torch.float64).expand(8000, 3),
                                       generator=torch.Generator().manual_seed(5)))
    top = int(max(ref["n"].max(), batched["n"].max()))
    counts = np.array([np.bincount(ref["n"], minlength=top + 1), np.bincount(batched["n"], minlength=top + 1)])[:, 2:]
    merged = np.concatenate([counts[:, :6], counts[:, 6:].sum(1, keepdims=True)], axis=1)  # multiplicities 2..7, >= 8
    assert stats.chi2_contingency(merged)[1] > 1e-3
    for key in ("tau", "y23", "t1", "z1"):
        assert stats.ks_2samp(ref[key], batched[key]).pvalue > 1e-3, key
    # and the test has power: the SM reference differs from the batched shower at the odd point
    if point == SM:
        odd = _summaries(shower.shower(torch.tensor([ODD], dtype=torch.float64).expand(8000, 3),
                                       generator=torch.Generator().manual_seed(6)))
        assert stats.ks_2samp(ref["tau"], odd["tau"]).pvalue < 1e-6


def test_final_states_conserve_momentum_and_stay_massless(shower):
    state = shower.shower(torch.tensor([ODD], dtype=torch.float64).expand(2000, 3), generator=torch.Generator().manual_seed(1))
    mask = torch.arange(state.momenta.shape[1]) < state.n_particles.unsqueeze(1)
    total = state.momenta.sum(1)
    torch.testing.assert_close(total, torch.tensor([[91.2, 0.0, 0.0, 0.0]], dtype=torch.float64).expand_as(total), atol=1e-9, rtol=0)
    p = state.momenta[mask]
    assert (p[:, 0] ** 2 - (p[:, 1:] ** 2).sum(1)).abs().max() < 1e-9
    assert (p[:, 0] > 0).all()
    hmask = torch.arange(state.history.shape[1]) < state.n_trials.unsqueeze(1)
    accepted = ((field(state.history, "accepted") > 0) & hmask).sum(1)
    assert torch.equal(accepted + 2, state.n_particles)  # every accepted trial adds one parton
    quarks = ((state.pid > 0) & (state.pid < 6)).sum(1)
    antiquarks = ((state.pid < 0)).sum(1)
    assert torch.equal(quarks, antiquarks) and bool((quarks >= 1).all())
    assert bool((state.history[..., COL["y"]][hmask] < 1).all())
    # the packed fields decode to the values the shower used: in range, and the emitter's flavour as stored
    fields = decode(state.history)
    code = encode(**{name: fields[name][hmask] for name in FIELDS})  # checks every field's range
    assert torch.equal(code, state.history[..., COL["code"]][hmask])
    assert bool((fields["version"][hmask] == HISTORY_VERSION).all()) and bool((fields["spectator"][hmask] >= 0).all())
    assert bool((fields["emitter"][hmask] < state.n_particles.unsqueeze(1).expand_as(hmask)[hmask]).all())
    first = fields["flavour"][:, 0]  # the first trial's emitter is the quark or the antiquark of the hard process
    assert bool(((first == state.pid[:, 0]) | (first == state.pid[:, 1]))[state.n_trials > 0].all())
    kernel, flavour = fields["kernel"][hmask], fields["flavour"][hmask]
    assert bool(((kernel == 0) == (flavour != 21)).all()) and set(fields["emitted"][hmask].unique().tolist()) <= {21, -1, -2, -3, -4, -5}


def test_joint_log_prob_matches_the_scalar_reference_at_any_theta(shower):
    events = reference_shower(ODD, 40, seed=3)
    state = as_state(events)
    mask = torch.arange(state.history.shape[1]) < state.n_trials.unsqueeze(1)
    for point in (SM, ODD, (0.7, 1.3, -0.4)):
        theta = torch.tensor([point], dtype=torch.float64).expand(len(events), 3)
        ours = history_log_prob(state.history, mask, theta)
        want = torch.tensor([reference_log_prob(e, point) for e in events], dtype=torch.float64)
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-10)


def test_joint_log_prob_of_a_hand_made_history(shower):
    # two q -> qg trials: one accepted at (z, y) = (0.9, 0.01), one rejected at (0.3, 0.5)
    hat = lambda z: 2 * CF * 1.5 / (1 - z) + CF * (1.5 + 1.5 / 4)  # noqa: E731
    code = encode(accepted=torch.tensor([1, 0]), kernel=torch.tensor([0, 0]), emitter=torch.tensor([0, 0]),
                  spectator=torch.tensor([1, 1]), flavour=torch.tensor([1, 1]), emitted=torch.tensor([21, 21]),
                  version=torch.tensor([HISTORY_VERSION] * 2))
    rows = [[4.0, 0.9, 0.01, 0.0, hat(0.9), code[0]], [2.0, 0.3, 0.5, 0.0, hat(0.3), code[1]]]
    latent = torch.tensor([rows], dtype=torch.float64)
    ev = Events(x=torch.zeros(1, 1), theta=torch.ones(1, 3), latent=latent, latent_mask=torch.ones(1, 2, dtype=torch.bool))
    d, f, c = 1.2, 0.8, 0.5

    def p_qq(z, y):
        return CF * (d * 2 * z * (1 - y) / (1 - z * (1 - y)) + f * (1 - z) + c * y * z * (1 - z))

    want = math.log(0.99 * p_qq(0.9, 0.01) / hat(0.9)) + math.log(1 - 0.5 * p_qq(0.3, 0.5) / hat(0.3))
    got = shower.joint_log_prob(ev, torch.tensor([[d, f, c]], dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-13)
    # the joint score by autograd against central differences
    score = joint_score(shower, ev, torch.tensor([d, f, c]))
    for j in range(3):
        step = torch.zeros(1, 3, dtype=torch.float64)
        step[0, j] = 1e-6
        base = torch.tensor([[d, f, c]], dtype=torch.float64)
        fd = (shower.joint_log_prob(ev, base + step) - shower.joint_log_prob(ev, base - step)) / 2e-6
        assert score[0, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)


def test_history_likelihood_is_the_true_one(shower):
    """E_θ[t(x, z|θ)] = 0 and E_θ0[p(z|θ1)/p(z|θ0)] = 1 hold only for the sampler's true likelihood."""
    point = torch.tensor([1.2, 0.8, 0.6])
    ev = shower.simulate(6000, theta=point, generator=torch.Generator().manual_seed(2))
    score = joint_score(shower, ev).double()
    mean, err = score.mean(0), score.std(0) / math.sqrt(len(ev))
    assert bool((mean.abs() < 4 * err).all()), (mean, err)
    assert bool((err < torch.tensor([0.05, 0.1, 0.1], dtype=torch.float64)).all())  # the check has power
    log_w = shower.joint_log_prob(ev, torch.tensor([[0.9, 1.2, 0.0]]).expand(len(ev), 3)) - shower.joint_log_prob(ev, ev.theta)
    w = log_w.exp()
    assert abs(w.mean().item() - 1) < 4 * w.std().item() / math.sqrt(len(ev))


def test_augment_and_ratio_training_data_work_unchanged(shower):
    data = ratio_training_data(shower, 60, generator=torch.Generator().manual_seed(0))
    assert len(data) == 120 and data.latent.dim() == 3 and data.latent_mask.shape == data.latent.shape[:2]
    assert data.mask.shape == data.x.shape[:2] and data.log_r_joint.shape == (120,) and data.score_joint.shape == (120, 3)
    ref = shower.space.reference.expand(120, 3)
    direct = shower.joint_log_prob(data, data.theta) - shower.joint_log_prob(data, ref)
    torch.testing.assert_close(data.log_r_joint.double(), direct.to(data.log_r_joint.dtype).double(), rtol=1e-5, atol=1e-5)
    again = augment(shower, data[:10], check="off")  # same scores; an identity check on 10 events would judge noise
    torch.testing.assert_close(again.score_joint, data.score_joint[:10])


def test_observables_output_and_chunks():
    sim = PartonShower(output="observables", chunk_size=50)
    ev = sim.simulate(120, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(4))
    assert ev.x.shape == (120, 9) and ev.mask is None and ev.latent.shape[0] == 120
    assert bool((ev.x[:, 5] >= 2).all()) and bool((ev.x[:, 0] >= 0).all() & (ev.x[:, 0] < 0.5).all())


def test_named_errors(shower):
    with pytest.raises(OverestimateError, match="D above 1.5"):
        shower.sample(torch.tensor([[1.6, 1.0, 0.0]]))
    with pytest.raises(NegativeKernelError, match="F \\+ C < 0"):
        shower.sample(torch.tensor([[1.0, 0.3, -0.5]]))
    with pytest.raises(NegativeKernelError, match="F < 0"):
        PartonShower(low=(0.5, -0.1, 0.2))
    with pytest.raises(ConfigError, match="hard scale"):
        PartonShower(ecms=10.0, t0=30.0)
    with pytest.raises(ConfigError, match="Lambda"):
        PartonShower(t0=0.005)
    ev = shower.simulate(5, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(0))
    theta = ev.theta.double()
    with pytest.raises(OverestimateError):
        shower.joint_log_prob(ev, theta + torch.tensor([0.0, 0.6, 0.0], dtype=torch.float64))
    old = ev.latent.clone()
    old[..., COL["code"]] -= float(HISTORY_VERSION - 1) * 2.0 ** FIELDS["version"][0]  # as written by version 1
    with pytest.raises(HistoryVersionError, match="version"):
        shower.joint_log_prob(ev.replace(latent=old), theta)
    with pytest.raises(HistoryVersionError, match="columns"):
        shower.joint_log_prob(ev.replace(latent=ev.latent[..., :5]), theta)
    with pytest.raises(InvalidEventsError, match="history"):
        shower.joint_log_prob(Events(x=ev.x, theta=ev.theta, mask=ev.mask), theta)
    # a narrower shower's histories are refused at points its overestimate does not cover
    narrow = PartonShower(high=(1.1, 1.1, 0.2))
    ev_narrow = narrow.simulate(200, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(0))
    with pytest.raises(OverestimateError):
        shower.joint_log_prob(ev_narrow, torch.tensor([[1.5, 1.5, 1.5]], dtype=torch.float64).expand(200, 3))


def test_running_coupling():
    a = RunningCoupling()
    assert a(91.1876**2) == pytest.approx(0.118, rel=1e-14)
    # one loop: 1/alpha(t) - 1/alpha(mz^2) = b0 ln(t / mz^2)
    assert 1 / a(100.0) - 1 / 0.118 == pytest.approx((23 / (12 * math.pi)) * math.log(100.0 / 91.1876**2), rel=1e-12)
    # next_scale inverts the Sudakov factor (L'/L)^(R / 2 pi b0)
    t, rate, u = torch.tensor([1000.0], dtype=torch.float64), torch.tensor([7.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    t_new = a.next_scale(t, rate, u)
    sudakov = (math.log(t_new.item() / a.lambda2) / math.log(1000.0 / a.lambda2)) ** (7.0 / (2 * math.pi * a.b0))
    assert sudakov == pytest.approx(0.3, rel=1e-12)


def test_showers_of_different_history_lengths_append_to_one_store(shower, tmp_path):
    from sbilab.store import SimulationStore

    parts = [shower.simulate(n, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(seed)) for n, seed in ((5, 1), (300, 2))]
    assert parts[0].latent.shape[1] < parts[1].latent.shape[1] and parts[0].x.shape[1] < parts[1].x.shape[1]
    with SimulationStore.create(tmp_path / "shower.sbistore", simulator=shower) as store:
        for part in parts:  # the second append is longer in particles and in trials
            store.append(part)
    back = SimulationStore.open(tmp_path / "shower.sbistore").to_events()
    want = Events.concatenate(parts)
    assert back.latent.shape == want.latent.shape and back.x.shape == want.x.shape
    for name in ("x", "mask", "latent", "latent_mask", "theta"):
        assert torch.equal(getattr(back, name), getattr(want, name)), name
    torch.testing.assert_close(shower.joint_log_prob(back, back.theta.double()), shower.joint_log_prob(want, want.theta.double()))
    packed = SimulationStore.open(tmp_path / "shower.sbistore").pack(tmp_path / "shower.h5")
    assert torch.equal(SimulationStore.open(packed).to_events().latent, want.latent)
