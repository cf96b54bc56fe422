"""Context (history SIDs) -> encoder-decoder Transformer -> per-level code logits."""

from gensid.model.recommender import CodeHead, GenerativeRecommender

__all__ = ["CodeHead", "GenerativeRecommender"]
