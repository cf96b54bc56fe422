"""Item-level ranking metrics and evaluation of recommenders on a split."""

from gensid.eval.metrics import metrics_from_ranks, rank_of_targets

__all__ = ["metrics_from_ranks", "rank_of_targets"]
