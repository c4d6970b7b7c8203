"""Networks: MLPs, standardisation, set embeddings, flows."""

from .conditioned import ConditionedNetwork
from .ensemble import Ensemble
from .flows import FLOW_KINDS, FlowSpec, build_flow
from .mlp import MLP, ResidualMLP, Standardize, activation
from .sets import DeepSets, NestedDeepSets, SetTransformer, build_embedding, register_embedding, set_embedding

__all__ = ["MLP", "ResidualMLP", "Standardize", "activation", "ConditionedNetwork", "DeepSets", "NestedDeepSets", "SetTransformer", "set_embedding", "build_embedding", "register_embedding", "Ensemble", "FlowSpec", "FLOW_KINDS", "build_flow"]
