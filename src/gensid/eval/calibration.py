"""How much to lift the items training never saw: the parallel model's new-item offset.

A model with ``parallel.item_dropout`` scores an item without a free vector (new in a cold-start
split, or added while serving) by its digits, its text and a learned stand-in vector. Among
themselves such items are ranked well, but their scores sit on a different scale than the trained
items': nothing in training told the model how often a new item is what a user wants next. The
offset added to their scores is that prior. It is fitted on the validation split, by its targets
only as a share: the offset at which new items take the same share of the top-``k`` lists as they
take of the validation targets (a calibrated recommender, Steck 2018). Choosing it for the best
validation ndcg instead would lean on how many new targets the validation split happens to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gensid.data.splits import Samples
from gensid.run import Run


@dataclass
class OffsetFit:
    offset: float  # added to a new item's score
    target_share: float  # share of the samples whose target is a new item
    ranked_share: float  # share of new items in the top-k lists at ``offset``
    k: int


def new_item_share(run: Run, samples: Samples, k: int) -> float:
    """Share of new items (no free vector) among the top-``k`` items ranked for ``samples``."""
    ranked = run.rank(samples, beam_size=k)
    ranked = ranked[ranked >= 0]
    new = ~run.model.has_own_vector(torch.from_numpy(ranked)).numpy()
    return float(new.mean()) if len(ranked) else 0.0


def fit_new_item_offset(run: Run, samples: Samples, new_targets: np.ndarray | None, k: int = 10,
                        high: float = 8.0, steps: int = 12) -> OffsetFit:
    """Set ``run.model.new_item_offset`` so that new items take the share ``new_targets.mean()`` of the
    top-``k`` lists for ``samples`` (bisection on [0, ``high``]; the share grows with the offset) and
    return the fit. No new target (``new_targets`` [N] bool, None without a cold-start split): offset 0."""
    target = float(new_targets.mean()) if new_targets is not None and len(new_targets) else 0.0
    low = 0.0
    offset = run.model.new_item_offset
    if target > 0:
        for _ in range(steps):
            offset.fill_((low + high) / 2)
            if new_item_share(run, samples, k) < target:
                low = float(offset)
            else:
                high = float(offset)
    offset.fill_((low + high) / 2 if target > 0 else 0.0)
    return OffsetFit(float(offset), target, new_item_share(run, samples, k), k)
