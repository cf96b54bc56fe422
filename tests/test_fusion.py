"""Hybrid retrieval: the mixture of the generative beam and a full-catalog scorer, and the scorers'
catalog distributions (dense dual encoder, SASRec)."""

import math

import numpy as np
import pytest
import torch

from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.sasrec import SASRec
from gensid.config import SASRecConfig
from gensid.data.search import SearchSamples
from gensid.errors import RunError
from gensid.fusion import generative_log_probs, mix
from gensid.index import BeamResult, SIDIndex
from gensid.io import save_tensors


def test_mix_on_a_hand_computed_case():
    gen_items = torch.tensor([[2, 0]])
    gen_log_probs = torch.tensor([[0.6, 0.3]]).log()
    catalog = torch.tensor([[0.1, 0.15, 0.3, 0.45]]).log()
    items, scores = mix(gen_items, gen_log_probs, catalog, 0.5, k=4)
    # item 0: .5*.3 + .5*.1 = .2; 1: .075; 2: .5*.6 + .5*.3 = .45; 3: .225
    assert items.tolist() == [[2, 3, 0, 1]]
    assert torch.allclose(scores.exp(), torch.tensor([[0.45, 0.225, 0.2, 0.075]]))


def test_mix_ends_are_the_two_rankings_and_the_mixture_is_a_distribution():
    rng = torch.Generator().manual_seed(0)
    catalog = torch.randn(3, 50, generator=rng).log_softmax(-1)
    gen_items = torch.stack([torch.randperm(50, generator=rng)[:8] for _ in range(3)])
    gen_items[1, 6:] = -1  # fewer items than the beam width
    gen_log_probs = torch.randn(3, 8, generator=rng).masked_fill(gen_items < 0, float("-inf")).log_softmax(-1)
    items, scores = mix(gen_items, gen_log_probs, catalog, 0.0, k=5)
    assert torch.equal(items, gen_items[:, :5]) and torch.equal(scores, gen_log_probs[:, :5])
    items, _ = mix(gen_items, gen_log_probs, catalog, 1.0, k=5)
    assert torch.equal(items, catalog.topk(5).indices)
    _, scores = mix(gen_items, gen_log_probs, catalog, 0.3, k=50)
    # all of the catalog's mass and all of the beam's: the mixture sums to 1
    assert torch.allclose(scores.exp().sum(1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="mixing weight"):
        mix(gen_items, gen_log_probs, catalog, 1.5, k=5)


def test_generative_probability_is_shared_by_the_items_of_a_sid():
    index = SIDIndex(np.array([[0, 1], [0, 1], [1, 0]]), [2, 2])  # items 0 and 1 share a SID
    result = BeamResult(torch.tensor([[1, 0, 2, -1]]), torch.tensor([[0.8, 0.8, 0.2, 0.0]]).log())
    probs = generative_log_probs(index, result).exp()
    assert torch.allclose(probs[0, :3], torch.tensor([0.4, 0.4, 0.2]))
    assert probs[0, 3] == 0  # no item


def test_dense_log_probs_are_its_ranking_as_a_distribution(tmp_path):
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.standard_normal((30, 8)).astype(np.float32))
    queries = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    samples = SearchSamples([""] * 5, rng.integers(-1, 30, (5, 3)), np.zeros(5, dtype=np.int64),
                            np.zeros(5, dtype=np.int64))
    torch.manual_seed(0)
    model = DenseDualEncoder(8, dim=8)
    log_probs = model.log_probs(queries, samples.histories, items)
    assert log_probs.shape == (5, 30)
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(5), atol=1e-5)
    assert np.array_equal(log_probs.topk(3).indices.numpy(), model.rank(samples, queries, items, k=3))
    model.save(tmp_path / "dense.safetensors")
    assert torch.allclose(DenseDualEncoder.load(tmp_path / "dense.safetensors").log_probs(queries, samples.histories,
                                                                                          items), log_probs)
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(RunError, match="not a dense dual encoder"):
        DenseDualEncoder.load(tmp_path / "other.safetensors")


def test_sasrec_save_load_keeps_its_distribution(tmp_path):
    torch.manual_seed(0)
    model = SASRec(40, SASRecConfig(hidden=16, layers=1, heads=2, inner=32), max_len=6).eval()
    histories = np.array([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    model.save(tmp_path / "model.safetensors", best_epoch=3)
    loaded = SASRec.load(tmp_path / "model.safetensors")
    assert loaded.cfg == model.cfg and not loaded.training
    log_probs = loaded.log_probs(histories)
    assert torch.allclose(log_probs, model.log_probs(histories))
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(2), atol=1e-5)
    assert math.isclose(float(log_probs[0].exp().sum()), 1.0, rel_tol=1e-5)
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(RunError, match="not a SASRec model"):
        SASRec.load(tmp_path / "other.safetensors")
