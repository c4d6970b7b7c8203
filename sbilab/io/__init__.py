"""External formats: LHE files, ROOT files (uproot), ONNX export, hist histograms.

Optional libraries (uproot, awkward, onnx, onnxruntime, hist) are imported only inside the
functions that need them, so ``import sbilab.io`` always works; a missing one raises
:class:`ImportError` naming the extra to install (``pip install 'sbilab[root]'``, ...).
"""

from .lhe import LHEData, LHEHeader, iter_lhe_chunks, read_lhe, read_lhe_header
from .lhe_header import LHEWeight, WeightGroup
from .lhe_weights import COMBINE_KINDS, Normalisation, WeightSet, combine_variations, normalisation, weight_sets

__all__ = [
    "LHEHeader",
    "LHEData",
    "LHEWeight",
    "WeightGroup",
    "read_lhe_header",
    "iter_lhe_chunks",
    "read_lhe",
    "Normalisation",
    "normalisation",
    "WeightSet",
    "weight_sets",
    "combine_variations",
    "COMBINE_KINDS",
]
