"""Embeddings -> ResidualQuantizer -> semantic IDs (codes + a disambiguation code)."""

from gensid.quantize.assign import ASSIGNMENTS, Assignment
from gensid.quantize.residual import QuantizerOutput, ResidualQuantizer
from gensid.quantize.rqvae import RQVAE, ItemAdapter, fit_semantic_ids
from gensid.quantize.sids import SemanticIDs, code_usage

__all__ = [
    "ASSIGNMENTS",
    "Assignment",
    "ItemAdapter",
    "QuantizerOutput",
    "RQVAE",
    "ResidualQuantizer",
    "SemanticIDs",
    "code_usage",
    "fit_semantic_ids",
]
