"""The approximate top-k path for large catalogs (faiss inverted lists over the item vectors)."""

import numpy as np
import pytest
import torch

from gensid.index.item_search import ItemVectorSearch, recall_against
from gensid.model.parallel import top_items


def test_approximate_top_k_matches_exact_ranking_and_scores():
    g = torch.Generator().manual_seed(0)
    vectors, states = torch.randn(3000, 16, generator=g), torch.randn(40, 16, generator=g)
    exact_scores, exact_ids = top_items(lambda a, b: states @ vectors[a:b].T, len(vectors), 10, chunk=700)
    scores, ids = ItemVectorSearch(vectors, cells=100, probes=30).search(states, 10)
    assert ids.shape == scores.shape == (40, 10)
    assert ((ids >= 0) & (ids < 3000)).all()
    # each returned score is the item's true inner product, best first
    assert torch.allclose(scores, (states[:, None, :] * vectors[ids]).sum(-1), atol=1e-4)
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()
    assert recall_against(exact_ids.numpy(), ids.numpy()) >= 0.9
    assert (scores[:, 0] <= exact_scores[:, 0] + 1e-4).all()  # nothing beats the exact best
    # scanning every cell is exact
    every = ItemVectorSearch(vectors, cells=20, probes=20).search(states, 10)[1]
    assert recall_against(exact_ids.numpy(), every.numpy()) == 1.0


def test_small_catalog_and_bad_input():
    search = ItemVectorSearch(torch.eye(4))
    scores, ids = search.search(torch.tensor([[0.0, 0.0, 1.0, 0.5]]), 10)
    assert ids.shape == (1, 4)  # fewer items than k: every item once
    assert ids[0, :2].tolist() == [2, 3] and set(ids[0].tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="3 dimensions, the item vectors 4"):
        search.search(torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="non-empty"):
        ItemVectorSearch(np.zeros((0, 4), dtype=np.float32))


def test_recall_against_hand_computed():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    approximate = np.array([[4, 3, 9, 8], [6, 7, 5, -1]])
    assert recall_against(exact, approximate) == pytest.approx((2 / 4 + 2 / 2) / 2)
