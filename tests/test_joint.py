"""Joint training (ste / DGI / DIGER): gradient paths, tied heads, uncertainty decay, verification."""

import math

import numpy as np
import pytest
import torch

from gensid.config import ExperimentConfig, ModelConfig, QuantizerConfig
from gensid.data.catalog import Interactions
from gensid.data.splits import leave_one_out
from gensid.errors import ConfigError
from gensid.index import SIDIndex, constrained_beam_search
from gensid.methods import DGI, DIGER, STE, JointMethod
from gensid.model import GenerativeRecommender
from gensid.quantize import RQVAE, SemanticIDs
from gensid.train import Batch, ItemFeatures
from gensid.train.objectives import JointObjective, item_snapshot

D, TEXT_DIM, SIZES = 16, 24, [8, 6]


# every loss weight but next-token's at zero
NEXT_TOKEN_ONLY = {"global_cosine": 0.0, "codebook": 0.0, "rqvae_reconstruction": 0.0, "infonce": 0.0, "diversity": 0.0}
# the joint methods by their assignment (untied heads, next-token only)
BY_ASSIGNMENT = {"gumbel_soft": DGI(weight_sharing=False, **NEXT_TOKEN_ONLY),
                 "dril": DIGER(decay="none", **NEXT_TOKEN_ONLY), "ste": STE(**NEXT_TOKEN_ONLY),
                 "argmax": DGI(soft_gradient_flow=False, weight_sharing=False, **NEXT_TOKEN_ONLY)}


def joint_setup(method: JointMethod | str = "gumbel_soft", history_input="codes", seed=0, latent_dim=D):
    """A small joint model built as the pipeline builds it from ``method`` (or its assignment's name),
    its objective, a batch and the item text vectors."""
    method = BY_ASSIGNMENT[method] if isinstance(method, str) else method
    torch.manual_seed(seed)
    qcfg = QuantizerConfig(method="rqvae", codebook_sizes=SIZES, geometry="cosine", latent_dim=latent_dim,
                           hidden_dims=[32])
    tokenizer = RQVAE(TEXT_DIM, qcfg, method.noise_decay)
    text = torch.randn(40, TEXT_DIM)
    tokenizer.quantizer.init_kmeans(tokenizer.encoder(text).detach())
    mcfg = ModelConfig(d_model=D, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32, dropout=0.0,
                       history_input=history_input)
    model = GenerativeRecommender(SIZES, mcfg, max_history=5, tokenizer=tokenizer, decoder_input=method.decoder_input,
                                  tie_heads=method.tie_heads, logits=method.logits)
    cfg = ExperimentConfig(quantizer=qcfg, model=mcfg, method=method)
    rng = np.random.default_rng(seed)
    split = leave_one_out(Interactions([str(i) for i in range(12)],
                                       [rng.integers(0, 40, 6) for _ in range(12)]), max_history=5)
    items = item_snapshot(model, text, keep_text=False)  # as the trainer's refresh gives them
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


@pytest.mark.parametrize("decoder_input", ["codebook", "embedding+codebook"])
def test_a_wider_latent_enters_through_a_projection_and_the_decoder_input_decides_the_gradient(decoder_input):
    # history as codes: the decoder's teacher-forcing inputs carry next-token to the codebooks
    method = DGI(weight_sharing=False, decoder_input=decoder_input, **NEXT_TOKEN_ONLY)
    model, objective, batch, text = joint_setup(method, latent_dim=2 * D)
    assert model.latent_proj.weight.shape == (D, 2 * D)
    objective(model, batch, 0.0)["total"].backward()
    assert grad_norm(model.tokenizer.quantizer.codebooks) > 0
    # history as quantized vectors: the code embeddings learn only as decoder inputs
    model, objective, batch, text = joint_setup(method, latent_dim=2 * D, history_input="quantized")
    objective(model, batch, 0.0)["total"].backward()
    assert (grad_norm(model.code_embeddings.parameters()) > 0) == (decoder_input != "codebook")
    snap = item_snapshot(model, text, keep_text=False)
    assert snap.item_vectors.shape == (len(text), 2 * D)
    memory = model.encode(batch.history_codes, batch.history_mask, history_vectors=snap.quantized[batch.history_items])
    assert model.context(memory, batch.history_mask).shape == (len(batch.targets), 2 * D)


def test_a_disambiguation_position_makes_every_sid_unique_and_is_learned_from_the_batch():
    model, objective, batch, text = joint_setup("gumbel_soft")
    text = torch.cat([text, text[:5]])  # five exact duplicates: their quantizer codes must collide
    sizes = SemanticIDs.from_codes(model.tokenizer.encode(text).numpy(), SIZES).sizes
    model = GenerativeRecommender(sizes, model.cfg, max_history=5, tokenizer=model.tokenizer,
                                  decoder_input="codebook", logits="cosine")
    snap = item_snapshot(model, text, keep_text=False)
    assert snap.codes.shape == (len(text), len(SIZES) + 1)
    assert len(np.unique(snap.codes.numpy(), axis=0)) == len(text)
    assert torch.equal(snap.codes[:, :-1], model.tokenizer.encode(text))
    # the batch carries the disambiguation codes of the last refresh: the last position's targets
    rng = np.random.default_rng(0)
    split = leave_one_out(Interactions([str(u) for u in range(12)], [rng.integers(0, 45, 6) for _ in range(12)]), 5)
    batch = Batch.build(split.train, np.arange(len(split.train)), ItemFeatures(snap.codes))
    objective, losses = JointObjective(objective.cfg, text), []
    for _ in range(2):
        torch.manual_seed(1)
        losses.append(objective(model, batch, 0.0)["next_token"].item())
        batch.target_codes[:, -1] = (batch.target_codes[:, -1] + 1) % sizes[-1]
    assert losses[0] != losses[1]


def test_tied_heads_need_the_latent_to_match_the_model_width():
    with pytest.raises(ConfigError, match="latent_dim"):
        joint_setup(DGI(), latent_dim=2 * D)


def test_two_stage_has_no_codebook_to_feed_the_decoder():
    with pytest.raises(ConfigError, match="decoder_input"):
        GenerativeRecommender(SIZES, ModelConfig(d_model=D, n_heads=2), max_history=5, decoder_input="codebook")


@pytest.mark.parametrize("soft_gradient_flow", [True, False])
def test_dgi_heads_are_the_codebooks_and_carry_the_loss_to_them(soft_gradient_flow):
    model, objective, batch, _ = joint_setup(DGI(soft_gradient_flow=soft_gradient_flow, **NEXT_TOKEN_ONLY))
    for m, head in enumerate(model.heads):
        assert head.weight is model.tokenizer.quantizer.codebooks[m]  # the same Parameter
    assert not any(name.startswith("heads.") and name.endswith("weight") for name in model.state_dict())
    objective(model, batch, 0.0)["total"].backward()
    assert all(book.grad.abs().sum() > 0 for book in model.tokenizer.quantizer.codebooks)  # as heads
    # the item encoder learns from next-token only through the soft vectors
    assert (grad_norm(model.tokenizer.encoder.parameters()) > 0) == soft_gradient_flow


def test_every_loss_term_is_finite_and_weighted():
    method = DIGER(decay="sdud", global_cosine=0.5, codebook=0.25, rqvae_reconstruction=0.1, infonce=0.2,
                   diversity=0.1)
    model, objective, batch, _ = joint_setup(method, history_input="quantized")
    terms = objective(model, batch, 0.3)
    weights = {"next_token": 1.0, "global_cosine": 0.5, "codebook": 0.25, "rqvae_reconstruction": 0.1,
               "infonce": 0.2, "diversity": 0.1, "sdud": 1.0}
    expected = sum(weights[k] * v for k, v in terms.items() if k != "total")
    assert set(terms) == {"next_token", "global_cosine", "codebook", "rqvae_reconstruction", "infonce",
                          "diversity", "sdud", "total"}
    assert torch.isclose(terms["total"], expected) and all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert model.tokenizer.quantizer.log_sigma.grad is not None and model.context_proj.weight.grad is not None


def test_gumbel_temperature_anneals_exponentially_and_dril_stays_fixed():
    dgi = DGI()
    assert dgi.tau(0.0) == pytest.approx(1.0)
    assert dgi.tau(0.5) == pytest.approx(math.sqrt(0.1))
    assert dgi.tau(1.0) == pytest.approx(0.1)
    assert DIGER().tau(0.0) == DIGER().tau(1.0) == 2.0


def test_sdud_sigma_settles_where_the_loss_says():
    model, _, _, _ = joint_setup(DIGER(decay="sdud"))
    quantizer = model.tokenizer.quantizer
    opt = torch.optim.SGD([quantizer.log_sigma], lr=0.1)
    for loss_value in (math.log(8), 0.5):  # a uniform guess, then a well-trained model
        for _ in range(500):
            opt.zero_grad()
            quantizer.sdud_loss(torch.tensor(loss_value)).backward()
            opt.step()
        assert float(quantizer.log_sigma.detach().exp() ** 2) == pytest.approx(loss_value / math.log(8), rel=1e-3)


def test_frqud_puts_noise_on_hot_codes_only():
    method = DIGER(decay="frqud")
    model, _, _, text = joint_setup(method)
    quantizer = model.tokenizer.quantizer.train()
    hot = torch.zeros(100, D)
    hot[:, 0] = 1.0  # every input lands on one code
    for _ in range(50):
        quantizer(hot, method.assignment(), method.tau(0.0))
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
