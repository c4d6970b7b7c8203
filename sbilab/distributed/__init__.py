r"""Scale-out on engines people already run: simulation fan-out, data-parallel training, replica farms.

* :func:`simulate_to_store` — N events in chunks on ``concurrent.futures`` processes or a Dask
  cluster, committed into a :class:`~sbilab.store.SimulationStore` (:mod:`.fanout`); simulators
  travel as a :class:`SimulatorSpec` (:mod:`.specs`).
* :func:`launch` — W data-parallel training processes (torchrun's environment, a free port, a
  deadline) for ``fit(..., parallel=DataParallel())`` (:mod:`.ddp`,
  :mod:`sbilab.training.distributed`).
* :func:`train_replicas` — the same training for K seeds, bootstrap weights and systematic
  variants: batched ensembles on one device, groups of members on several processes/devices,
  or Dask workers; one published Ensemble (:mod:`.replicas`).

The engines (:mod:`.engines`): ``concurrent.futures`` processes locally, Dask ``distributed``
(optional extra ``sbilab[dask]``) on clusters, torch DDP for training. No scheduler of our own.
"""

from .ddp import free_port, launch
from .fanout import FanoutResult, chunk_seed, simulate_to_store
from .replicas import ReplicaResult, TrainingTask, join_ensembles, train_replicas
from .specs import SimulatorSpec
from ..training.distributed import DataParallel

__all__ = ["simulate_to_store", "FanoutResult", "SimulatorSpec", "chunk_seed", "launch", "free_port", "DataParallel",
           "train_replicas", "ReplicaResult", "TrainingTask", "join_ensembles"]
