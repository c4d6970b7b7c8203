r"""Training: :func:`fit`, the one loop for every estimator, loss and ensemble.

Modules: :mod:`.config` (the frozen :class:`TrainingConfig` and learning-rate schedules),
:mod:`.loop` (:func:`fit`, :class:`TrainingResult`), :mod:`.data` (device-resident and streamed
batches), :mod:`.stopping` (early stopping on a smoothed validation loss, the overfitting
warning), :mod:`.checks` (what is checked before the first epoch), :mod:`.checkpoint` (atomic
checkpoints and resume), :mod:`.distributed` (:class:`DataParallel`: data-parallel training over
the processes of a torch.distributed group).
"""

from .checkpoint import load_checkpoint
from .distributed import DataParallel
from .config import Schedule, TrainingConfig, learning_rate_factor
from .loop import Loss, TrainingResult, fit
from .stopping import OverfittingWarning

__all__ = ["fit", "TrainingResult", "TrainingConfig", "Schedule", "Loss", "learning_rate_factor", "load_checkpoint", "DataParallel",
           "OverfittingWarning"]
