"""Most-popular: every user gets the items most often seen as training targets/history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gensid.data.splits import Samples


@dataclass
class MostPopular:
    order: np.ndarray  # [num_items] item ids, most popular first

    @classmethod
    def fit(cls, train: Samples, num_items: int) -> MostPopular:
        """Counts training targets (each training interaction once; the first item of each
        user is counted through the histories of that user's first sample)."""
        counts = np.bincount(train.targets, minlength=num_items).astype(np.float64)
        single = train.histories[(train.histories >= 0).sum(1) == 1, -1]
        counts += np.bincount(single, minlength=num_items)
        return cls(np.argsort(-counts, kind="stable"))

    def rank(self, num_users: int, k: int) -> np.ndarray:
        return np.tile(self.order[:k], (num_users, 1))
