"""W -> lnu refit spread split: `mem_fid_split_w.py fid|event N_SEEDS` (200 events, analytic proposal, 2048 samples per event, sigma_fid 2^17 sobol, Gamma fixed)."""
import sys, torch
sys.path.insert(0, "benchmarks")
from mem import *  # noqa
from sbilab.mem import FiducialCrossSection, MatrixElementLikelihood, integration_noise
from sbilab.events import Events
sim = WToLeptonNeutrino(); prop = w_proposal(sim.model)
x = sim.simulate(200, theta=sim.space.reference.float(), generator=torch.Generator().manual_seed(20)).x.double()
fid = lambda s: FiducialCrossSection(sim.model, WGenerator(sim.model.process, 80.4, 2.1), samples=2**17, sequence="sobol", draws=8, seed=s)
mode = sys.argv[1]; f0 = fid(0) if mode == "event" else None
def factory(s):
    return MatrixElementLikelihood(sim.model, prop, sim.space, samples=2048, sequence="random", seed=0 if mode=="fid" else s,
                                   fiducial=fid(s) if mode=="fid" else f0, chunk_calls=2**17)
n = integration_noise(factory, Events.observed(x), sim.space, seeds=tuple(range(int(sys.argv[2]))), fit_options={"fixed": {"Gamma": 2.1}})
print(mode, n.relative_spread, n.valid, flush=True)
