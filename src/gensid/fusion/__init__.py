"""Hybrid retrieval: the generative retriever's beam mixed with a full-catalog scorer."""

from gensid.fusion.hybrid import Hybrid, fit_hybrid
from gensid.fusion.mixture import fused_rankings, generative_log_probs, mix

__all__ = ["Hybrid", "fit_hybrid", "fused_rankings", "generative_log_probs", "mix"]
