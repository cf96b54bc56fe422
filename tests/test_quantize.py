import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gensid.config import QuantizerConfig
from gensid.errors import ConfigError, GensidWarning
from gensid.quantize import Assignment, ResidualQuantizer, SemanticIDs, code_usage, fit_semantic_ids


def test_disambiguation_makes_sids_unique_in_item_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [3, 3]])
    sids = SemanticIDs.from_codes(codes, [4, 4])
    assert sids.codes[:, -1].tolist() == [0, 0, 1, 2, 0]
    assert sids.sizes == [4, 4, 3]
    assert len(np.unique(sids.codes, axis=0)) == len(codes)
    assert sids.collision_rate() == pytest.approx(3 / 5)


def test_code_usage_perplexity_and_dead_codes():
    usage = code_usage(np.array([[0], [0], [1], [1]]), [4])[0]
    assert usage == {"size": 4, "used": 2, "dead": 2, "perplexity": pytest.approx(2.0)}


@pytest.mark.parametrize("geometry", ["euclidean", "cosine"])
def test_forward_shapes_and_encode_agree(geometry):
    torch.manual_seed(0)
    rq = ResidualQuantizer(16, [8, 4, 4], geometry)
    x = torch.randn(50, 16)
    rq.init_kmeans(x)
    out = rq(x)
    assert out.codes.shape == (50, 3) and out.quantized.shape == (50, 16)
    assert out.level_vectors.shape == (50, 3, 16) and [lg.shape[1] for lg in out.logits] == [8, 4, 4]
    assert torch.equal(out.codes, rq.encode(x))
    assert torch.allclose(rq.decode(out.codes), out.quantized, atol=1e-5)


def test_euclidean_scale_keeps_the_codes_and_sharpens_soft_assignments():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(200, 16), dim=-1)  # unit vectors, like text embeddings
    plain, scaled = ResidualQuantizer(16, [8, 8]), ResidualQuantizer(16, [8, 8], euclidean_scale=30.0)
    plain.init_kmeans(x)
    scaled.load_state_dict(plain.state_dict())
    assert torch.allclose(scaled.level_logits(0, x), 30 * plain.level_logits(0, x), rtol=1e-5, atol=1e-4)
    assert torch.equal(scaled.encode(x), plain.encode(x))
    top = [q.level_logits(0, x).softmax(-1).max(-1).values.mean() for q in (plain, scaled)]
    assert top[1] > top[0] + 0.3
    with pytest.raises(ConfigError, match="euclidean_scale"):
        ResidualQuantizer(16, [8], euclidean_scale=0.0)


def test_residual_levels_reduce_reconstruction_error():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    errors = []
    for levels in (1, 2, 3):
        rq = ResidualQuantizer(8, [16] * levels)
        rq.init_kmeans(x)
        errors.append(float((rq.decode(rq.encode(x)) - x).pow(2).mean().detach()))
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize(
    ("assignment", "reaches_input", "reaches_codebooks"),
    [("argmax", False, False), ("ste", True, False), ("gumbel_soft", True, True), ("dril", True, True)],
)
def test_gradient_paths_of_a_downstream_loss(assignment, reaches_input, reaches_codebooks):
    """Only a loss on the vectors that flow on (not the quantizer's own losses)."""
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, [4, 4])
    x = torch.randn(10, 8, requires_grad=True)
    target = torch.randn(10, 8)
    loss = (rq(x, Assignment(assignment)).quantized - target).pow(2).sum()
    if loss.requires_grad:  # argmax: nothing upstream of the codes can learn from this loss
        loss.backward()
    got_input = x.grad is not None and bool(x.grad.abs().sum() > 0)
    got_books = all(b.grad is not None and bool(b.grad.abs().sum() > 0) for b in rq.codebooks)
    assert (got_input, got_books) == (reaches_input, reaches_codebooks)


@pytest.mark.parametrize("assignment", ["gumbel_soft", "dril"])
def test_noisy_assignments_are_deterministic_in_eval_mode(assignment):
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, [6, 6])
    x = torch.randn(200, 8)
    train_codes = rq(x, Assignment(assignment)).codes
    rq.eval()
    assert torch.equal(rq(x, Assignment(assignment)).codes, rq.encode(x))
    assert not torch.equal(train_codes, rq.encode(x))  # Gumbel noise changed some codes


def test_a_hard_residual_keeps_the_training_codes_the_index_codes_and_the_gradient():
    """gumbel_soft: a soft residual moves deeper codes away from the deterministic ones; the
    hard residual keeps every level's code, and a loss on the soft vectors still reaches the
    input and every codebook."""
    torch.manual_seed(0)
    x = torch.randn(300, 8, requires_grad=True)
    soft = ResidualQuantizer(8, [6, 6, 6])
    hard = ResidualQuantizer(8, [6, 6, 6], hard_residual=True)
    hard.load_state_dict(soft.state_dict())
    gumbel_soft = Assignment("gumbel_soft")
    soft_codes = soft(x, gumbel_soft).codes
    assert torch.equal(soft_codes[:, 0], soft.encode(x)[:, 0])  # level 1 sees the same residual
    assert not torch.equal(soft_codes, soft.encode(x))
    out = hard(x, gumbel_soft)
    assert torch.equal(out.codes, hard.encode(x))
    out.level_vectors.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(book.grad.abs().sum() > 0 for book in hard.codebooks)


def test_an_item_on_its_own_centroid_gets_a_bounded_gradient_and_keeps_its_codes():
    """Cosine geometry: an item that equals a level-1 centroid leaves a zero residual at level 2
    (a singleton cluster, or a duplicate text). Its soft assignment must not blow up the
    gradient (the default normalisation eps gave norms near 1e12 / 1e8 in training), and the
    small-residual rescaling must not change any deterministic code."""
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, [4, 4], geometry="cosine", hard_residual=True)
    with torch.no_grad():
        rq.codebooks[0][0] = F.normalize(rq.codebooks[0][0], dim=-1)
    x = torch.cat([rq.codebooks[0][:1].detach(), torch.randn(5, 8)]).requires_grad_(True)
    rq(x, Assignment("gumbel_soft")).level_vectors.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.norm() < 1e3
    # tiny residuals: the same argmax codes as an exact unit normalisation
    residual = torch.randn(50, 8) * 1e-5
    exact = (F.normalize(residual, dim=-1, eps=1e-12) @ F.normalize(rq.codebooks[1], dim=-1).T).argmax(-1)
    assert torch.equal(rq.level_logits(1, residual).argmax(-1), exact)


def test_rqvae_trains_and_rqkmeans_fits():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    cfg = QuantizerConfig(method="rqvae", codebook_sizes=[8, 8], latent_dim=8, hidden_dims=[16], epochs=30,
                          batch_size=64)
    model, sids, stats = fit_semantic_ids(vectors, cfg, progress=False)
    assert sids.codes.shape == (300, 3) and len(np.unique(sids.codes, axis=0)) == 300
    assert stats["final_loss"] < 1.5
    _, sids_km, stats_km = fit_semantic_ids(vectors, QuantizerConfig(codebook_sizes=[8, 8]), progress=False)
    assert sids_km.codes.shape == (300, 3) and stats_km["levels"][0]["used"] == 8


def test_unknown_geometry_and_assignment_are_rejected():
    with pytest.raises(ConfigError, match="quantizer.geometry"):
        ResidualQuantizer(4, [2], geometry="manhattan")
    with pytest.raises(ConfigError, match="assignment 'magic'"):
        Assignment("magic")


def test_too_few_items_for_the_codebooks_is_said_once_with_the_collision_rate(capfd):
    # faiss wants 39 points per centroid: 300 items for 16 codes are too few, 700 are enough
    vectors = np.random.default_rng(0).standard_normal((700, 24)).astype(np.float32)
    with pytest.warns(GensidWarning) as caught:
        _, _, stats = fit_semantic_ids(vectors[:300], QuantizerConfig(codebook_sizes=[16, 16, 16]), progress=False)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "quantizer.codebook_sizes [16, 16, 16]: k-means fitted 16 codes to 300 items, fewer than the 39 per code "
        f"faiss asks for (624); {stats['collision_rate']:.1%} of the items share all their codes with another "
        "item (the collision rate)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_semantic_ids(vectors, QuantizerConfig(codebook_sizes=[16, 16, 16]), progress=False)
    assert "WARNING clustering" not in capfd.readouterr().err  # faiss's own message, once per level, is silenced
