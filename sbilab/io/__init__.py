"""External formats: LHE files, ROOT files (uproot), ONNX export, hist histograms.

- LHE (:mod:`~sbilab.io.lhe`, :mod:`~sbilab.io.lhe_header`, :mod:`~sbilab.io.lhe_weights`,
  :mod:`~sbilab.io.lhe_systematics`, :mod:`~sbilab.io.lhe_stream`): a streaming reader with IDWTUP
  normalisation, LHEF 3 metadata, weight groups turned into systematics, LHE -> store.
- ROOT (:mod:`~sbilab.io.root`): TTree/RNTuple branches into :class:`~sbilab.events.Events`,
  tables and histograms out (extra ``root``).
- hist (:mod:`~sbilab.io.hist`): edges + counts + variances <-> ``hist.Hist`` (extra ``hist``).
- ONNX (:mod:`~sbilab.io.onnx`): published estimators as ONNX models (extra ``onnx``).

Optional libraries are imported only inside the functions that need them, so ``import sbilab.io``
always works; a missing one raises :class:`ImportError` naming the extra to install.
"""

from .hist import from_hist, to_hist
from .lhe import LHEData, LHEHeader, iter_lhe_chunks, read_lhe, read_lhe_header
from .lhe_header import IDWTUP_VALUES, LHEWeight, WeightGroup
from .lhe_stream import LHEScan, lhe_to_store, scan_normalisation
from .lhe_systematics import BinnedSystematics, binned_systematics, event_systematics, nuisance_weighted_events
from .lhe_weights import COMBINE_KINDS, Normalisation, WeightSet, combine_variations, normalisation, weight_sets
from .onnx import EXPORTABLE, describe_onnx, export_onnx, verify_onnx
from .root import iter_root, read_root, root_to_store, write_root

__all__ = [
    # LHE
    "LHEHeader",
    "LHEData",
    "LHEWeight",
    "WeightGroup",
    "IDWTUP_VALUES",
    "read_lhe_header",
    "iter_lhe_chunks",
    "read_lhe",
    "Normalisation",
    "normalisation",
    "WeightSet",
    "weight_sets",
    "combine_variations",
    "COMBINE_KINDS",
    "BinnedSystematics",
    "binned_systematics",
    "event_systematics",
    "nuisance_weighted_events",
    "LHEScan",
    "scan_normalisation",
    "lhe_to_store",
    # ROOT
    "read_root",
    "iter_root",
    "root_to_store",
    "write_root",
    # hist
    "to_hist",
    "from_hist",
    # ONNX
    "EXPORTABLE",
    "export_onnx",
    "verify_onnx",
    "describe_onnx",
]
