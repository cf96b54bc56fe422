"""Leave-one-out: last item is the test target, second-to-last the validation target,
every prefix of the rest a training sample. Histories keep the last ``max_history`` items."""

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


def leave_one_out(interactions: Interactions, max_history: int = 20) -> LeaveOneOut:
    """Split every user's sequence; users with fewer than 3 items give training samples only."""
    train, valid, test = [], [], []
    for user, seq in enumerate(interactions.sequences):
        n = len(seq)
        cut = n - 2 if n >= 3 else n
        for t in range(1, cut):
            train.append((user, seq[:t], seq[t]))
        if n >= 3:
            valid.append((user, seq[: n - 2], seq[n - 2]))
            test.append((user, seq[: n - 1], seq[n - 1]))
    return LeaveOneOut(*(pack_samples(rows, max_history) for rows in (train, valid, test)))


def sequence_windows(interactions: Interactions, max_history: int = 20) -> Samples:
    """The training part of each user's sequence (what :func:`leave_one_out` trains on, ``seq[:-2]``)
    cut from its end into windows of ``max_history + 1`` items: history = all but the window's last
    item, target = its last. A model that predicts at every history position (causal) then sees
    every training target exactly once, as the one-sample-per-prefix split does, with one
    encoder pass per window instead of one per target."""
    rows = []
    for user, seq in enumerate(interactions.sequences):
        train = seq[:-2] if len(seq) >= 3 else seq
        end = len(train)
        while end >= 2:
            start = max(0, end - max_history - 1)
            rows.append((user, train[start:end - 1], train[end - 1]))
            end = start + 1 if start > 0 else 0
    return pack_samples(rows, max_history)
