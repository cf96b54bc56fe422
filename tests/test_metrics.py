import math

import numpy as np
import pytest

from gensid.eval.analysis import isotropy
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets


def test_rank_of_targets_hand_case():
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, -1, -1], [4, 4, 8]])
    targets = np.array([9, 4, 7, 4])
    assert rank_of_targets(ranked, targets).tolist() == [2, -1, 0, 0]


def test_metrics_hand_computed():
    # four users: target at rank 0, rank 2, rank 7, and absent
    m = metrics_from_ranks(np.array([0, 2, 7, -1]), [1, 5, 10])
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@5"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["hit@10"] == m["recall@10"]
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(9)) / 4)


def test_items_sharing_a_sid_are_not_deduplicated():
    # items 10 and 11 share a semantic prefix; the list is ranked per item, so the
    # target 11 sits at rank 1, not merged into item 10's slot
    ranked = np.array([[10, 11, 12]])
    assert rank_of_targets(ranked, np.array([11])).tolist() == [1]
    assert metrics_from_ranks(np.array([1]), [1])["recall@1"] == 0.0


def test_isotropy_hand_cases():
    # three directions at 0, 45 and 90 degrees: pair cosines 0, 1/sqrt 2, 1/sqrt 2 (lengths do not count)
    assert isotropy(np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))["mean_cosine"] == pytest.approx(math.sqrt(2) / 3)
    # +-x and +-y: no shared direction, the spread even over both dimensions
    cross = isotropy(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
    assert cross["mean_cosine"] == pytest.approx(-1 / 3) and cross["effective_dims"] == pytest.approx(2.0)
    # one shared direction: every measure says so
    same = isotropy(np.array([[1.0, 1.0]] * 5))
    assert same["mean_cosine"] == pytest.approx(1.0) and same["effective_dims"] == 0.0
    assert same["partition"] == pytest.approx(math.exp(-2))  # Z(-u) / Z(u) = 5 e^-1 / 5 e


def test_isotropy_separates_a_spread_cloud_from_a_narrow_cone():
    rng = np.random.default_rng(0)
    spread = isotropy(rng.standard_normal((4000, 16)))
    cone = isotropy(rng.standard_normal((4000, 16)) * 0.1 + np.eye(16)[0])
    assert abs(spread["mean_cosine"]) < 0.01 and spread["partition"] > 0.9 and spread["effective_dims"] > 15
    assert cone["mean_cosine"] > 0.8 and cone["partition"] < 0.5 and cone["effective_dims"] < spread["effective_dims"]
