"""SASRec baseline: shapes, causality, learning a trivial pattern, ranking output."""

from __future__ import annotations

import numpy as np
import torch

from gensid.baselines.sasrec import (
    SASRec,
    SASRecConfig,
    align_histories,
    evaluate,
    fit,
    make_windows,
)
from gensid.data import Interactions, leave_one_out
from gensid.data.splits import PAD, Samples

SMALL = SASRecConfig(hidden=16, layers=2, heads=2, inner=32, max_len=8, dropout=0.1, attn_dropout=0.1)


def test_forward_and_logit_shapes() -> None:
    model = SASRec(50, SMALL).eval()
    items = torch.tensor([[1, 2, 3, PAD, PAD, PAD, PAD, PAD], [4, 5, 6, 7, 8, 9, 10, 11]])
    hidden = model(items)
    assert hidden.shape == (2, 8, 16)
    assert model.logits(hidden).shape == (2, 8, 50)


def test_causal_mask_later_items_do_not_change_earlier_positions() -> None:
    model = SASRec(50, SMALL).eval()
    items = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    changed = items.clone()
    changed[0, 5] = 40
    a, b = model(items), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_align_histories_right_aligns_and_truncates() -> None:
    hist = np.array([[PAD, PAD, 7, 8, 9], [1, 2, 3, 4, 5], [PAD] * 5])
    out, lengths = align_histories(hist, 3)
    np.testing.assert_array_equal(out, [[7, 8, 9], [3, 4, 5], [PAD] * 3])
    np.testing.assert_array_equal(lengths, [3, 3, 0])
    wide, _ = align_histories(hist[:, -2:], 4)
    np.testing.assert_array_equal(wide[0], [8, 9, PAD, PAD])


def test_windows_cover_every_target_once() -> None:
    seq = np.arange(20)
    x, y = make_windows([seq, np.array([5])], max_len=8)
    targets = y[y >= 0]
    assert sorted(targets.tolist()) == list(range(1, 20))
    for row_x, row_y in zip(x, y, strict=True):
        keep = row_y >= 0
        np.testing.assert_array_equal(row_x[keep] + 1, row_y[keep])  # input t predicts item t+1


def _successor_data(num_items: int = 30, users: int = 300) -> Interactions:
    """Item i is always followed by item i + 1 (mod num_items)."""
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(num_items) + np.arange(rng.integers(5, 12))) % num_items
            for _ in range(users)]
    return Interactions([str(u) for u in range(users)], seqs)


def test_learns_successor_pattern() -> None:
    torch.set_num_threads(1)
    inter = _successor_data()
    split = leave_one_out(inter, max_history=8)
    cfg = SASRecConfig(**{**SMALL.__dict__, "hidden": 32, "lr": 1e-2, "batch_size": 64,
                          "max_epochs": 30, "patience": 5})
    seqs = [s[:-2] for s in inter.sequences]
    result = fit(seqs, split.valid, 30, cfg, progress=False)
    assert evaluate(result.model, split.test, [1])["recall@1"] > 0.95


def test_rank_returns_valid_ids_and_exclude_history() -> None:
    model = SASRec(12, SMALL).eval()
    hist = np.array([[PAD, PAD, 0, 1, 2, 3, 4, 5, 6, 7], [PAD] * 9 + [11]])
    samples = Samples(hist, np.array([8, 0]), np.array([0, 1]))
    ranked = model.rank(samples, 12)
    assert ranked.shape == (2, 12)
    assert ((ranked >= 0) & (ranked < 12)).all()
    assert all(len(set(row)) == 12 for row in ranked)  # a permutation of the catalog
    top = model.rank(samples, 4, exclude_history=True)
    assert top.shape == (2, 4)
    assert set(top[0]) == {8, 9, 10, 11}  # only 4 items are left for the first user
    assert 11 not in top[1]
    # Padding in the history must not change the scores.
    torch.testing.assert_close(model.score(hist[1:, -3:]), model.score(hist[1:]))
