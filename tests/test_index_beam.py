import itertools

import numpy as np
import pytest
import torch

from conftest import random_sids
from gensid.config import ModelConfig
from gensid.index import SIDIndex, constrained_beam_search
from gensid.index.beam import verify
from gensid.model import GenerativeRecommender

SMALL = ModelConfig(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=64, dropout=0.0)


def make_model(sizes, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**SMALL.__dict__, **overrides})
    return GenerativeRecommender(sizes, cfg, max_history=6).eval()


def random_histories(rng, codes, batch, length=6):
    items = rng.integers(0, len(codes), (batch, length))
    mask = torch.from_numpy(rng.random((batch, length)) < 0.7)
    mask[:, -1] = True
    return torch.from_numpy(codes[items]), mask


def test_trie_tables_accept_exactly_the_catalog(rng):
    sizes = [4, 3, 5]
    codes = random_sids(rng, 30, sizes)
    index = SIDIndex(codes, [4, 3, int(codes[:, -1].max()) + 1])
    every = torch.tensor(list(itertools.product(*(range(k) for k in index.sizes))))
    valid = index.is_valid(every)
    catalog = {tuple(c) for c in codes.tolist()}
    assert {tuple(c) for c in every[valid].tolist()} == catalog
    assert torch.equal(index.leaf_items.sort().values, torch.arange(30))
    assert index.max_leaf_size == 1 and index.collision_rate() == 0.0


def test_shared_sids_land_in_one_leaf_in_item_order():
    index = SIDIndex(np.array([[1, 0], [0, 1], [1, 0], [1, 0]]), [2, 2])
    items, valid = index.items_of_leaves(torch.tensor([[0, 1, -1]]))
    by_leaf = [sorted(row[ok].tolist()) for row, ok in zip(items[0], valid[0], strict=True)]
    assert sorted(by_leaf) == [[], [0, 2, 3], [1]]
    assert index.max_leaf_size == 3 and index.collision_rate() == 0.75


def test_index_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"position 1 must lie in \[0, 2\)"):
        SIDIndex(np.array([[0, 2]]), [2, 2])


@pytest.mark.parametrize("history_input", ["codes", "code_tokens"])
def test_beam_search_never_emits_an_invalid_sid(rng, history_input):
    """Thousands of random users over random catalogs and random models."""
    checked = 0
    for trial in range(6):
        sizes = [int(rng.integers(2, 12)), int(rng.integers(2, 12)), int(rng.integers(2, 12))]
        n = int(rng.integers(5, 200))
        codes = random_sids(rng, n, sizes + [1])
        full_sizes = sizes + [int(codes[:, -1].max()) + 1]
        index = SIDIndex(codes, full_sizes)
        model = make_model(full_sizes, seed=trial, history_input=history_input)
        hist, mask = random_histories(rng, codes, 500)
        beam = int(rng.integers(1, 30))
        result = constrained_beam_search(model, index, hist, mask, beam)
        assert result.items.shape == (500, min(beam, n)) or result.items.shape[1] <= beam
        found = result.items[result.items >= 0]
        assert found.numel() > 0
        assert index.is_valid(torch.from_numpy(codes)[found]).all()
        for row in result.items.tolist():  # each item at most once per user
            real = [i for i in row if i >= 0]
            assert len(real) == len(set(real))
        assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
        checked += 500
    assert checked >= 3000


def exhaustive_ranking(model, codes, hist, mask):
    """Log-probability of every catalog SID under teacher forcing, [B, N]."""
    memory = model.encode(hist, mask)
    batch, n = hist.shape[0], len(codes)
    target = torch.from_numpy(codes).repeat(batch, 1)
    hidden = model.decode(memory.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), target[:, :-1])
    logp = sum(head(hidden[:, m]).log_softmax(-1).gather(1, target[:, m:m + 1]).squeeze(1)
               for m, head in enumerate(model.heads))
    return logp.view(batch, n)


def test_full_width_beam_equals_exhaustive_scoring(rng):
    sizes = [3, 3, 3]
    codes = random_sids(rng, 20, sizes + [1])
    full = sizes + [int(codes[:, -1].max()) + 1]
    model, index = make_model(full), SIDIndex(codes, full)
    hist, mask = random_histories(rng, codes, 8)
    with torch.no_grad():
        result = constrained_beam_search(model, index, hist, mask, beam_size=len(codes))
        expected = exhaustive_ranking(model, codes, hist, mask)
    assert result.items.shape == (8, 20)
    top = expected.argsort(dim=1, descending=True, stable=True)
    assert torch.equal(result.items, top)
    assert torch.allclose(result.scores, expected.gather(1, top), atol=1e-4)


def test_fewer_items_than_beams_leaves_empty_slots(rng):
    codes = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 0]])
    model, index = make_model([2, 2, 1]), SIDIndex(codes, [2, 2, 1])
    hist = torch.from_numpy(codes[[0, 1, 2, 0, 1, 2]]).unsqueeze(0)
    result = constrained_beam_search(model, index, hist, torch.ones(1, 6, dtype=torch.bool), beam_size=5)
    assert sorted(result.items[0, :3].tolist()) == [0, 1, 2]
    assert result.items.shape[1] <= 5 and (result.items[0, 3:] == -1).all()


def test_adding_items_equals_building_the_index_with_them(rng):
    """SIDIndex.add grows the tables in place; the result serves exactly like a rebuilt index."""
    for _ in range(100):
        sizes = [3, 3, 2]
        n, extra = rng.integers(1, 30), rng.integers(1, 10)
        codes = np.stack([rng.integers(0, k, n) for k in sizes], 1)
        added = np.stack([rng.integers(0, k + 1, extra) for k in sizes], 1)  # some codes beyond sizes
        grown = SIDIndex(codes, sizes)
        assert grown.add(added[:3]).tolist() == list(range(n, n + min(3, extra)))
        grown.add(added[3:])
        both = np.concatenate([codes, added])
        rebuilt = SIDIndex(both, [max(k, int(both[:, m].max()) + 1) for m, k in enumerate(sizes)])
        assert grown.sizes == rebuilt.sizes and grown.max_leaf_size == rebuilt.max_leaf_size
        assert grown.is_valid(torch.from_numpy(both)).all()
        for sid in np.unique(both, axis=0):
            expected = np.flatnonzero((both == sid).all(1)).tolist()
            assert leaf_items(grown, sid) == leaf_items(rebuilt, sid) == expected


def leaf_items(index: SIDIndex, sid: np.ndarray) -> list[int]:
    node = 0
    for m, code in enumerate(sid):
        node = int(index.children[m][node, code])
    items, valid = index.items_of_leaves(torch.tensor([node]))
    return items[valid].tolist()


def test_verify_weight_fuses_the_cosine_into_the_beam_score():
    # items 0 and 1 share leaf A, item 2 is alone in leaf B; the beam ranks A (-1.0) over B (-1.5)
    index = SIDIndex(np.array([[0, 0], [0, 0], [1, 0]]), [2, 1])
    leaf = torch.from_numpy(index.leaf_of_item)
    leaves, scores = torch.stack([leaf[0], leaf[2]]).unsqueeze(0), torch.tensor([[-1.0, -1.5]])
    context = torch.tensor([[1.0, 0.0]])
    vectors = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])  # cosines 0, .6, 1

    rule = verify(index, leaves, scores, 3, context, vectors)  # DGI's: beam score, then cosine
    assert rule.items.tolist() == [[1, 0, 2]]
    assert rule.scores.tolist() == [[-1.0, -1.0, -1.5]]

    fused = verify(index, leaves, scores, 3, context, vectors, weight=1.0)  # -0.4, -1.0, -0.5
    assert fused.items.tolist() == [[1, 2, 0]]
    assert fused.scores[0].tolist() == pytest.approx([-0.4, -0.5, -1.0])
    assert verify(index, leaves, scores, 3, context, vectors, weight=0.4).items.tolist() == [[1, 0, 2]]


def brute_force_ranking(index, leaves, scores, k, context, vectors, weight):
    """Every item of every beam leaf, sorted by the documented keys in float64."""
    ranked = []
    for row in range(len(leaves)):
        c = context[row].double() / context[row].double().norm()
        keyed = []
        for leaf, score in zip(leaves[row].tolist(), scores[row].tolist(), strict=True):
            for item in np.flatnonzero(index.leaf_of_item == leaf).tolist() if leaf >= 0 else []:
                cos = 0.0 if vectors is None else float(vectors[item].double() @ c / vectors[item].double().norm())
                keyed.append((-(score + weight * cos), -cos, item))
        ranked.append([item for *_, item in sorted(keyed)[:k]])
    return ranked


@pytest.mark.parametrize("gather_limit", [0, 1 << 40], ids=["catalog_scored", "candidates_gathered"])
@pytest.mark.parametrize("weight", [0.0, 0.5])
@pytest.mark.parametrize("with_vectors", [True, False])
def test_verify_cuts_a_collapsed_index_without_changing_the_ranking(rng, monkeypatch, gather_limit, weight,
                                                                    with_vectors):
    # 90% of 400 items on two SIDs (a collapsed index), the rest spread; exact duplicates tie on cosine
    monkeypatch.setattr("gensid.index.beam.GATHER_LIMIT", gather_limit)
    codes = rng.integers(0, 8, size=(400, 2))
    collapsed = rng.random(400) < 0.9
    codes[collapsed] = rng.integers(0, 2, size=(int(collapsed.sum()), 1))
    index = SIDIndex(codes, [8, 8])
    assert index.max_leaf_size > 150
    vectors = torch.from_numpy(rng.normal(size=(400, 16))).float()
    vectors[1::7] = vectors[0]
    context = torch.from_numpy(rng.normal(size=(5, 16))).float()
    num_leaves = len(index.leaf_start) - 1
    leaves = torch.from_numpy(np.stack([rng.choice(num_leaves, 6, replace=False) for _ in range(5)]))
    leaves[:, 0] = int(index.leaf_of_item[np.flatnonzero(collapsed)[0]])  # every row expands a huge leaf
    leaves[1, -1] = -1
    scores = torch.from_numpy(-np.sort(rng.choice([0.5, 1.0, 1.5, 2.0], size=(5, 6)), axis=1)).float()
    scores[1, -1] = float("-inf")
    vectors_or_none = vectors if with_vectors else None
    result = verify(index, leaves, scores, 10, context, vectors_or_none, weight)
    assert result.items.tolist() == brute_force_ranking(index, leaves, scores, 10, context, vectors_or_none,
                                                        weight if with_vectors else 0.0)


def test_an_added_leaf_scores_as_its_stand_in_code_beyond_the_model_vocabulary(rng):
    sizes = [3, 4, 2]
    codes = np.array([[0, 0, 0], [0, 0, 1], [1, 2, 0], [2, 3, 0]])
    model = make_model(sizes)
    index = SIDIndex(codes, sizes)
    history, mask = random_histories(rng, codes, 4)
    before = constrained_beam_search(model, index, history, mask, beam_size=4)
    # a copy of item 1 (code 2, beyond the model's 2 last-position codes) scored as item 1's code 1,
    # and an item under a new prefix scored as itself
    index.add(np.array([[0, 0, 2], [1, 1, 0]]), np.array([1, 0]))
    assert index.sizes[-1] == 3 and index.score_code(np.arange(6)).tolist() == [0, 1, 0, 0, 1, 0]
    logp = torch.log_softmax(torch.randn(2, 2), -1)
    leaves = index.children[-1][torch.tensor([0, 0])]  # node of prefix (0, 0): codes 0, 1, 2
    assert torch.equal(index.last_level_log_probs(logp, leaves), logp[:, [0, 1, 1]])
    after = constrained_beam_search(model, index, history, mask, beam_size=5)
    for row in range(len(history)):
        old = dict(zip(before.items[row].tolist(), before.scores[row].tolist(), strict=True))
        new = dict(zip(after.items[row].tolist(), after.scores[row].tolist(), strict=True))
        assert all(new[i] == old[i] for i in old if i in new)  # the trained items keep their scores
        if 1 in new and 4 in new:
            assert new[4] == new[1]  # the copy ties with its original
    assert any(4 in row for row in after.items.tolist())
