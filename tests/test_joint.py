"""Joint training (ste / DGI / DIGER): gradient paths, tied heads, uncertainty decay, verification."""

import math

import numpy as np
import pytest
import torch

from gensid.config import ExperimentConfig, LossConfig, ModelConfig, QuantizerConfig
from gensid.data.catalog import Interactions
from gensid.data.splits import leave_one_out
from gensid.index import SIDIndex, constrained_beam_search
from gensid.model import GenerativeRecommender
from gensid.quantize import RQVAE, Assignment
from gensid.train import Batch, ItemFeatures
from gensid.train.objectives import JointObjective, item_snapshot

D, TEXT_DIM, SIZES = 16, 24, [8, 6]


def joint_setup(assignment="gumbel_soft", tie_heads=False, logits="cosine", history_input="codes",
                decay="none", loss=None, seed=0):
    torch.manual_seed(seed)
    qcfg = QuantizerConfig(method="rqvae", codebook_sizes=SIZES, geometry="cosine", latent_dim=D,
                           hidden_dims=[32], assignment=assignment, decay=decay)
    tokenizer = RQVAE(TEXT_DIM, qcfg)
    text = torch.randn(40, TEXT_DIM)
    tokenizer.quantizer.init_kmeans(tokenizer.encoder(text).detach())
    tokenizer.quantizer.assign = Assignment(assignment)
    mcfg = ModelConfig(d_model=D, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32, dropout=0.0,
                       history_input=history_input, logits=logits, tie_heads=tie_heads)
    model = GenerativeRecommender(SIZES, mcfg, max_history=5, tokenizer=tokenizer)
    cfg = ExperimentConfig(quantizer=qcfg, model=mcfg, loss=loss or LossConfig(next_token=1.0, sdud=0.0))
    rng = np.random.default_rng(seed)
    split = leave_one_out(Interactions([str(i) for i in range(12)],
                                       [rng.integers(0, 40, 6) for _ in range(12)]), max_history=5)
    items = ItemFeatures(torch.zeros(40, len(SIZES), dtype=torch.long))
    batch = Batch.build(split.train, np.arange(len(split.train)), items)
    return model, JointObjective(cfg, text), batch, text


def grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


@pytest.mark.parametrize("assignment", ["gumbel_soft", "dril", "ste", "argmax"])
def test_next_token_loss_alone_reaches_the_item_side_only_when_differentiable(assignment):
    model, objective, batch, _ = joint_setup(assignment)
    objective(model, batch, 0.0)["total"].backward()
    encoder = grad_norm(model.tokenizer.encoder.parameters())
    codebooks = grad_norm(model.tokenizer.quantizer.codebooks)
    if assignment == "argmax":  # frozen codes: exactly nothing reaches the item side
        assert encoder == 0.0 and codebooks == 0.0
    elif assignment == "ste":  # the identity gradient goes to the encoder, not the codebook
        assert encoder > 0 and codebooks == 0.0
    else:  # soft vectors: both the codebooks and the item encoder learn from next-token
        assert encoder > 0 and codebooks > 0


@pytest.mark.parametrize("assignment", ["gumbel_soft", "dril", "ste"])
def test_tied_heads_are_the_codebooks_and_carry_the_loss_to_them(assignment):
    model, objective, batch, _ = joint_setup(assignment, tie_heads=True)
    for m, head in enumerate(model.heads):
        assert head.weight.data_ptr() == model.tokenizer.quantizer.codebooks[m].data_ptr()
    assert not any(name.startswith("heads.") and name.endswith("weight") for name in model.state_dict())
    objective(model, batch, 0.0)["total"].backward()
    assert all(book.grad.abs().sum() > 0 for book in model.tokenizer.quantizer.codebooks)
    assert grad_norm(model.tokenizer.encoder.parameters()) > 0


def test_every_loss_term_is_finite_and_weighted():
    loss = LossConfig(next_token=1.0, global_cosine=0.5, codebook=0.25, rqvae_reconstruction=0.1, infonce=0.2,
                      diversity=0.1, sdud=1.0)
    model, objective, batch, _ = joint_setup("dril", history_input="quantized", decay="sdud", loss=loss)
    terms = objective(model, batch, 0.3)
    expected = sum(getattr(loss, k) * v for k, v in terms.items() if k != "total")
    assert set(terms) == {"next_token", "global_cosine", "codebook", "rqvae_reconstruction", "infonce",
                          "diversity", "sdud", "total"}
    assert torch.isclose(terms["total"], expected) and all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert model.tokenizer.quantizer.log_sigma.grad is not None and model.context_proj.weight.grad is not None


def test_gumbel_temperature_anneals_exponentially_and_dril_stays_fixed():
    _, objective, _, _ = joint_setup("gumbel_soft")
    assert objective.temperature(0.0) == pytest.approx(1.0)
    assert objective.temperature(0.5) == pytest.approx(math.sqrt(0.1))
    assert objective.temperature(1.0) == pytest.approx(0.1)
    _, objective, _, _ = joint_setup("dril")
    assert objective.temperature(0.0) == objective.temperature(1.0) == 2.0


def test_sdud_sigma_settles_where_the_loss_says():
    model, _, _, _ = joint_setup("dril", decay="sdud")
    quantizer = model.tokenizer.quantizer
    opt = torch.optim.SGD([quantizer.log_sigma], lr=0.1)
    for loss_value in (math.log(8), 0.5):  # a uniform guess, then a well-trained model
        for _ in range(500):
            opt.zero_grad()
            quantizer.sdud_loss(torch.tensor(loss_value)).backward()
            opt.step()
        assert float(quantizer.log_sigma.detach().exp() ** 2) == pytest.approx(loss_value / math.log(8), rel=1e-3)


def test_frqud_puts_noise_on_hot_codes_only():
    model, _, _, text = joint_setup("dril", decay="frqud")
    quantizer = model.tokenizer.quantizer.train()
    hot = torch.zeros(100, D)
    hot[:, 0] = 1.0  # every input lands on one code
    for _ in range(50):
        quantizer(hot)
    weight = quantizer.noise_weight(0)
    assert weight.shape == (SIZES[0],) and weight.sum() == 1.0
    assert weight[quantizer.encode(hot)[0, 0]] == 1.0


def test_items_sharing_a_sid_are_ordered_by_cosine_with_the_context():
    model, _, batch, text = joint_setup("gumbel_soft", history_input="quantized")
    model.eval()
    snap = item_snapshot(model, text, keep_text=False)
    codes = torch.zeros(40, len(SIZES), dtype=torch.long).numpy()  # one leaf holds every item
    index = SIDIndex(codes, SIZES)
    vectors = snap.quantized[batch.history_items]
    result = constrained_beam_search(model, index, batch.history_codes, batch.history_mask, 40,
                                     history_vectors=vectors, item_vectors=snap.item_vectors)
    memory = model.encode(batch.history_codes, batch.history_mask, None, vectors)
    context = torch.nn.functional.normalize(model.context(memory, batch.history_mask), dim=-1)
    cosine = context @ torch.nn.functional.normalize(snap.item_vectors, dim=-1).T
    assert torch.equal(result.items, cosine.argsort(dim=1, descending=True, stable=True))
