# %% [markdown]
# # Plug in your own simulator and get every estimator
#
# A particle decays with lifetime τ; the detector measures its decay time with a Gaussian
# resolution σ. The true decay time t is the latent variable:
#
# $$ t \sim \mathrm{Exp}(1/\tau), \qquad x = t + \epsilon,\ \epsilon \sim \mathcal N(0, \sigma^2). $$
#
# Writing `sample` and `joint_log_prob` (log p(x, t | τ), a few lines) is all sbilab needs to
# augment the data with joint ratios and scores, which every "gold-mining" method (ROLR,
# RASCAL, ALICE(S), CASCAL, SALLY, SCANDAL) trains on. Here the marginal likelihood is known too
# (an exponentially modified Gaussian), so every learned log-ratio is compared with the exact one.
#
# Run: `python tutorials/own_simulator.py` (a few minutes) or `--quick` (seconds; used by the tests).

# %%
import argparse
import math
import sys

import torch

from sbilab.estimators import LikelihoodEstimator, RatioEstimator, ScoreEstimator, get_loss
from sbilab.events import Events
from sbilab.simulators import CallableSimulator, ParameterSpace, Simulator, ratio_training_data
from sbilab.simulators.augment import augment, score_training_data
from sbilab.stats import UnbinnedLikelihood
from sbilab.training import fit

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="tiny training budget (seconds)")
args = parser.parse_args([a for a in sys.argv[1:] if a == "--quick"])
torch.manual_seed(0)
N_PAIRS, EPOCHS, BATCH, HIDDEN = (2000, 4, 128, (32, 32)) if args.quick else (50_000, 30, 256, (64, 64))
SIGMA = 0.5


# %% [markdown]
# ## 1. The simulator: `sample` and `joint_log_prob`

# %%
class Decay(Simulator):
    """Exponential decay time τ, Gaussian time resolution; latent = true decay time."""

    observable_names = ("time",)
    space = ParameterSpace(("tau",), low=(0.5,), high=(2.0,), reference=(1.0,))

    def sample(self, theta, generator=None):
        t = -theta * torch.log1p(-torch.rand(theta.shape, generator=generator, dtype=theta.dtype))
        x = t + SIGMA * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return Events(x=x, theta=theta, latent=t)

    def joint_log_prob(self, events, theta):
        tau, t, x = theta[:, 0], events.latent[:, 0], events.x[:, 0]
        return -torch.log(tau) - t / tau - 0.5 * ((x - t) / SIGMA) ** 2 - math.log(SIGMA * math.sqrt(2 * math.pi))

    def log_prob(self, x, theta):  # optional: only to validate (exponentially modified Gaussian)
        tau = torch.as_tensor(theta, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)[:, 0]
        z = x[:, 0] / SIGMA - SIGMA / tau
        return -torch.log(tau) + SIGMA**2 / (2 * tau**2) - x[:, 0] / tau + torch.special.log_ndtr(z)


sim = Decay()
ref = sim.space.reference


def exact_log_ratio(x, theta):
    return sim.log_prob(x, theta) - sim.log_prob(x, ref.to(x.dtype))


# %% [markdown]
# ## 2. Augmented training data
# `ratio_training_data` draws θ from the proposal (uniform in the box), events at θ (label 1)
# and at the reference (label 0), and attaches the joint log-ratio and joint score by autograd
# of `joint_log_prob`. It also checks them (`sbilab.simulators.checks`): the joint score must
# average to zero and the joint ratio to one within groups of θ. Had this simulator kept only
# decays before a cut t < T without putting −log A(τ), A = 1 − e^{−T/τ}, into `joint_log_prob`,
# it would stop here with an `IdentityCheckError` naming the mean, its error and pull.

# %%
gen = torch.Generator().manual_seed(1)
data = ratio_training_data(sim, N_PAIRS, generator=gen)
print(f"{len(data)} augmented events; fields: log_r_joint {tuple(data.log_r_joint.shape)}, score_joint {tuple(data.score_joint.shape)}")

# held-out test points: events at random θ, evaluated at other random θ
test = sim.simulate(4000, generator=torch.Generator().manual_seed(2))
theta_eval = sim.space.sample(4000, generator=torch.Generator().manual_seed(3))
truth = exact_log_ratio(test.x, theta_eval)


# %% [markdown]
# ## 3. Every estimator, trained with the one loop `fit()`

# %%
def train(estimator, loss, events, epochs=None):
    return fit(estimator, loss, events, epochs=epochs or EPOCHS, batch_size=BATCH, learning_rate=3e-3, patience=None,
               seed=0, device="cpu", progress=False).model.eval()


mse = {}
for method in ("carl", "rolr", "rascal", "alice", "alices", "cascal"):
    options = {"alpha": 0.5} if method in ("rascal", "alices", "cascal") else {}
    model = train(RatioEstimator.from_events(data, sim.space, hidden=HIDDEN), get_loss(method, **options), data)
    with torch.no_grad():
        mse[method.upper()] = float(((model.log_ratio(test.x, theta_eval) - truth) ** 2).mean())

# NDE and SCANDAL: conditional flows p̂(x|θ) trained on events at their own θ
density_data = augment(sim, sim.simulate(2 * N_PAIRS, generator=torch.Generator().manual_seed(4)))
for method in ("nde", "scandal"):
    options = {"alpha": 0.1} if method == "scandal" else {}
    flow = train(LikelihoodEstimator.from_events(density_data, sim.space, hidden=HIDDEN, transforms=2), get_loss(method, **options), density_data)
    with torch.no_grad():
        mse[method.upper()] = float(((flow.log_ratio(test.x, theta_eval) - truth) ** 2).mean())

# SALLY: the score at the reference from events there; SALLINO uses t̂(x) as the observable.
# Its local log-ratio t̂(x)(θ − θ_ref) is compared with the exact score on events at the reference.
score_data = score_training_data(sim, 2 * N_PAIRS, generator=torch.Generator().manual_seed(5))
sally = train(ScoreEstimator.from_events(score_data, sim.space, hidden=HIDDEN), get_loss("sally"), score_data)
x_ref = sim.simulate(4000, theta=ref, generator=torch.Generator().manual_seed(6)).x
with torch.enable_grad():
    point = ref.to(x_ref.dtype).expand(len(x_ref), 1).clone().requires_grad_(True)
    (exact_score,) = torch.autograd.grad(sim.log_prob(x_ref, point).sum(), point)
with torch.no_grad():
    sally_mse = float(((sally.score(x_ref) - exact_score) ** 2).mean())

# %% [markdown]
# ## 4. Accuracy table: mean squared error of log r̂ against the exact log-ratio

# %%
variance = float(truth.var())
print(f"\n{'method':<10} {'MSE(log r)':>11} {'MSE / Var':>10}")
for name, value in mse.items():
    print(f"{name:<10} {value:11.4f} {value / variance:10.3f}")
print(f"{'SALLY':<10} {sally_mse:11.4f} {sally_mse / float(exact_score.var()):10.3f}   (score at the reference vs exact score)")
print(f"Var(log r_exact) = {variance:.4f}")
BOUND = 0.9 if args.quick else 0.5  # a network that learned nothing has MSE >= Var(log r)
for name, value in {**mse, "SALLY": sally_mse / float(exact_score.var()) * variance}.items():
    assert value < BOUND * variance, f"{name}: MSE {value:.4f} is not well below Var(log r) = {variance:.4f}"

# %% [markdown]
# ## 5. A quick unbinned fit of the lifetime with the learned ratio (ALICES)

# %%
alices = train(RatioEstimator.from_events(data, sim.space, hidden=HIDDEN), get_loss("alices", alpha=0.5), data)
observed = Events.observed(sim.simulate(500, theta=torch.tensor([1.3]), generator=torch.Generator().manual_seed(7)).x)
learned_fit = UnbinnedLikelihood(alices, observed, sim.space).fit()
exact_fit = UnbinnedLikelihood(exact_log_ratio, observed, sim.space).fit()
print(f"\ntau (true 1.3): learned {learned_fit.best['tau']:.3f} ± {learned_fit.errors['tau']:.3f}, "
      f"exact {exact_fit.best['tau']:.3f} ± {exact_fit.errors['tau']:.3f}")
assert abs(learned_fit.best["tau"] - exact_fit.best["tau"]) < 3 * exact_fit.errors["tau"]

# %% [markdown]
# ## 6. No joint likelihood? Wrap a plain function
# `CallableSimulator` turns `f(theta) -> x` into a simulator. Without a latent path there is no
# augmented data, so only CARL (and NDE) apply.

# %%
def black_box(theta, seed):
    g = torch.Generator().manual_seed(seed)
    return -theta * torch.log1p(-torch.rand(theta.shape, generator=g, dtype=theta.dtype)) + SIGMA * torch.randn(theta.shape, generator=g, dtype=theta.dtype)


wrapped = CallableSimulator(black_box, sim.space, ["time"], seed_keyword="seed")
plain = ratio_training_data(wrapped, N_PAIRS, generator=torch.Generator().manual_seed(8), augmented=False)
carl = train(RatioEstimator.from_events(plain, sim.space, hidden=HIDDEN), get_loss("carl"), plain, epochs=3 * EPOCHS)  # CARL is cheap
with torch.no_grad():
    carl_mse = float(((carl.log_ratio(test.x, theta_eval) - truth) ** 2).mean())
print(f"CallableSimulator + CARL: MSE(log r) = {carl_mse:.4f} (MSE / Var = {carl_mse / variance:.3f})")
assert carl_mse < BOUND * variance
print("tutorial finished")
