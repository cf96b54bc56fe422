"""Next-item splits. Leave-one-out: last item is the test target, second-to-last the validation
target, every prefix of the rest a training sample. Histories keep the last ``max_history`` items.

Cold start (:func:`cold_start`): the same targets, but the newest share of the items (by first
interaction) never reaches training: their interactions are dropped from the training sequences,
so no training sample has one as its target or in its history. Validation and test samples keep
the user's real history, new items included (a live service sees them too), and their targets
include the new items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gensid.data.catalog import Interactions

PAD = -1


@dataclass
class Samples:
    """``histories`` [N, H] int64, left-padded with ``PAD`` (-1); ``targets`` [N]; ``users`` [N]."""

    histories: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int) -> Samples:
        if n <= 0 or n >= len(self):
            return self
        return Samples(self.histories[:n], self.targets[:n], self.users[:n])


@dataclass
class LeaveOneOut:
    train: Samples
    valid: Samples
    test: Samples
    cold_items: np.ndarray | None = None  # cold start: the sorted ids of the items training never saw

    def new_targets(self, samples: Samples) -> np.ndarray | None:
        """[N] bool: whether each sample's target is a cold item; None without a cold-start split."""
        return None if self.cold_items is None else np.isin(samples.targets, self.cold_items)

    def trained_items(self, num_items: int) -> np.ndarray:
        """The ids of the items training may see: every item but the cold ones, sorted."""
        return np.setdiff1d(np.arange(num_items), self.cold_items if self.cold_items is not None else [])


def pack_samples(rows: list[tuple[int, np.ndarray, int]], max_history: int) -> Samples:
    """(user, history oldest first, target) rows -> Samples, each history cut to its newest
    ``max_history`` items (none when 0) and left-padded with ``PAD``."""
    hist = np.full((len(rows), max_history), PAD, dtype=np.int64)
    targets = np.empty(len(rows), dtype=np.int64)
    users = np.empty(len(rows), dtype=np.int64)
    for i, (user, history, target) in enumerate(rows):
        history = history[-max_history:] if max_history else history[:0]
        if len(history):
            hist[i, -len(history):] = history
        targets[i], users[i] = target, user
    return Samples(hist, targets, users)


def training_sequences(interactions: Interactions, cold_items: np.ndarray | None = None) -> list[np.ndarray]:
    """Each user's items before the validation target (``seq[:-2]``; users with < 3 items keep their
    whole sequence), without the ``cold_items``: what every model trains on."""
    train = [seq[:-2] if len(seq) >= 3 else seq for seq in interactions.sequences]
    if cold_items is None:
        return train
    return [seq[~np.isin(seq, cold_items)] for seq in train]


def leave_one_out(interactions: Interactions, max_history: int = 20, cold_items: np.ndarray | None = None
                  ) -> LeaveOneOut:
    """Split every user's sequence; users with fewer than 3 items give training samples only.
    ``cold_items``: left out of the training samples (:func:`cold_start`)."""
    train, valid, test = [], [], []
    for user, (seq, kept) in enumerate(zip(interactions.sequences, training_sequences(interactions, cold_items),
                                           strict=True)):
        n = len(seq)
        for t in range(1, len(kept)):
            train.append((user, kept[:t], kept[t]))
        if n >= 3:
            valid.append((user, seq[: n - 2], seq[n - 2]))
            test.append((user, seq[: n - 1], seq[n - 1]))
    return LeaveOneOut(*(pack_samples(rows, max_history) for rows in (train, valid, test)), cold_items)


def first_seen_order(interactions: Interactions, num_items: int) -> np.ndarray:
    """[num_items] item ids, oldest to newest by first interaction; ties by item id (lower first).
    With timestamps an item's first interaction is its earliest timestamp. Without them (LETTER
    data: per-user order only) it is measured in the users' own steps: an item is as old as the
    most interactions any of its users made after it (an item only ever seen last is the newest).
    Items without interactions count as the newest."""
    first = np.full(num_items, np.inf)
    for u, seq in enumerate(interactions.sequences):
        if interactions.timestamps is not None:
            when = interactions.timestamps[u]
        else:
            when = -(len(seq) - 1 - np.arange(len(seq), dtype=np.float64))  # minus the steps made after it
        np.minimum.at(first, seq, when)
    return np.lexsort((np.arange(num_items), first))


def cold_start(interactions: Interactions, num_items: int, share: float, max_history: int = 20) -> LeaveOneOut:
    """Leave-one-out targets with the newest ``share`` of the ``num_items`` items (by
    :func:`first_seen_order`, at least one, never all) removed from training (the module's docstring)."""
    count = min(max(round(share * num_items), 1), num_items - 1)
    cold = np.sort(first_seen_order(interactions, num_items)[num_items - count:])
    return leave_one_out(interactions, max_history, cold)


def next_item_split(interactions: Interactions, num_items: int, max_history: int, split: str = "leave_one_out",
                    cold_share: float = 0.15) -> LeaveOneOut:
    """``data.split``: :func:`leave_one_out` or :func:`cold_start` (the newest ``cold_share`` of the items)."""
    if split == "cold_start":
        return cold_start(interactions, num_items, cold_share, max_history)
    return leave_one_out(interactions, max_history)


def sequence_windows(interactions: Interactions, max_history: int = 20, cold_items: np.ndarray | None = None
                     ) -> Samples:
    """Each user's training sequence (:func:`training_sequences`, what :func:`leave_one_out` trains on)
    cut from its end into windows of ``max_history + 1`` items: history = all but the window's last
    item, target = its last. A model that predicts at every history position (causal) then sees
    every training target exactly once, as the one-sample-per-prefix split does, with one
    encoder pass per window instead of one per target."""
    rows = []
    for user, train in enumerate(training_sequences(interactions, cold_items)):
        end = len(train)
        while end >= 2:
            start = max(0, end - max_history - 1)
            rows.append((user, train[start:end - 1], train[end - 1]))
            end = start + 1 if start > 0 else 0
    return pack_samples(rows, max_history)
