"""Toy-2 refit spread split: `mem_fid_split.py fid|event N_SEEDS FID_SAMPLES EVENT_SAMPLES` varies only the sigma_fid seed (event seed 0) or only the per-event seed (sigma_fid seed 0); 200 events, analytic proposal."""
import sys, time, torch
sys.path.insert(0, "benchmarks")
from mem import *  # noqa
from sbilab.mem import FiducialCrossSection, MatrixElementLikelihood, integration_noise
from sbilab.events import Events
sim2 = TwoBody(); model2 = two_body_model(sim2.process); prop = two_body_proposal(sim2.process)
x = sim2.simulate(200, theta=sim2.space.reference.float(), generator=torch.Generator().manual_seed(20)).x.double()
fid = lambda s: FiducialCrossSection(model2, two_body_sampler(sim2.process, sim2.space), samples=int(sys.argv[3]), draws=4, seed=s)
mode = sys.argv[1]
f0 = fid(0) if mode == "event" else None
def factory(s):
    if mode == "fid":
        return MatrixElementLikelihood(model2, prop, sim2.space, samples=int(sys.argv[4]), sequence="random", seed=0, fiducial=fid(s), chunk_calls=2**17)
    return MatrixElementLikelihood(model2, prop, sim2.space, samples=int(sys.argv[4]), sequence="random", seed=s, fiducial=f0, chunk_calls=2**17)
t=time.time()
n = integration_noise(factory, Events.observed(x), sim2.space, seeds=tuple(range(int(sys.argv[2]))))
print(mode, n.best, n.errors, n.relative_spread, n.valid, time.time()-t, flush=True)
