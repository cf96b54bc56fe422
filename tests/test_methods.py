"""Methods are objects: each builds the pieces it claims, on a tiny MovieLens run built by the pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_ml100k
from gensid.config import load_config
from gensid.methods import DGI, DIGER, METHODS, STE, TwoStage
from gensid.model.recommender import TiedHead
from gensid.pipeline import prepare
from gensid.train import Batch
from gensid.train.objectives import JointObjective, NextTokenObjective

RQVAE = ["quantizer.method=rqvae", "quantizer.latent_dim=32", "quantizer.hidden_dims=[]", "quantizer.epochs=0",
         "quantizer.geometry=cosine", "model.d_model=32", "model.d_ff=64", "data.max_users=30"]


def one_step(tmp_path, method: str):
    """A prepared run of ``method`` and the gradients of one training step's total loss."""
    cfg = load_config("configs/ml100k.yaml", [*tiny_ml100k(epochs=1), *RQVAE, f"method={method}"])
    run = prepare(cfg, tmp_path, progress=False)
    objective = JointObjective(cfg, run.text) if cfg.method.joint else NextTokenObjective(cfg)
    batch = Batch.build(run.splits.train, slice(0, 64), run.items)
    run.model.train()
    terms = objective(run.model, batch, 0.5)
    terms["total"].backward()
    return run, terms


def test_every_method_has_a_unique_name_and_a_family():
    names = [m.model_fields["name"].default for m in METHODS]
    assert len(set(names)) == len(names)
    assert {m.family for m in METHODS} == {"two_stage", "joint", "parallel"}


def test_dgi_builds_heads_that_are_its_codebooks_and_its_soft_vectors_carry_next_token_to_them(tmp_path):
    run, terms = one_step(tmp_path, "dgi")
    quantizer = run.model.tokenizer.quantizer
    assert all(isinstance(head, TiedHead) for head in run.model.heads[:quantizer.num_levels])
    for level, head in enumerate(run.model.heads[:quantizer.num_levels]):
        assert head.weight is quantizer.codebooks[level]  # the same Parameter
        assert head.log_gamma is not None  # scaled cosine
    assert {"next_token", "global_cosine", "codebook", "infonce", "diversity"} <= set(terms)
    assert all(book.grad is not None and book.grad.abs().sum() > 0 for book in quantizer.codebooks)
    assert run.model.decoder_input == "codebook"


def test_dgi_ablations_change_only_their_piece():
    full = DGI()
    assert full.assignment().name == "gumbel_soft" and full.tie_heads and full.logits == "cosine"
    assert DGI(soft_gradient_flow=False).assignment().name == "argmax"
    assert not DGI(weight_sharing=False).tie_heads and DGI(weight_sharing=False).logits == "cosine"
    assert DGI(scaled_cosine=False).logits == "dot" and DGI(scaled_cosine=False).tie_heads
    assert DGI().loss_weights() == {"next_token": 1.0, "global_cosine": 1.0, "codebook": 0.25,
                                    "rqvae_reconstruction": 0.0, "infonce": 0.1, "diversity": 0.01}


def test_two_stage_has_no_tokenizer_in_the_model_so_nothing_reaches_the_codebooks(tmp_path):
    run, terms = one_step(tmp_path, "two_stage")
    assert run.model.tokenizer is None and set(terms) == {"next_token", "total"}
    assert run.model.decoder_input == "embedding"
    assert not any(isinstance(head, TiedHead) for head in run.model.heads)
    assert not run.joint and isinstance(run.cfg.method, TwoStage)


def test_ste_passes_the_identity_gradient_to_the_item_encoder_not_to_the_codebooks_through_the_decoder(tmp_path):
    cfg_method = STE(codebook=0.0, rqvae_reconstruction=0.0, infonce=0.0)
    run, _ = one_step(tmp_path, "{" + ", ".join(f"{k}: {v}" for k, v in cfg_method.model_dump().items()) + "}")
    tokenizer = run.model.tokenizer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer.encoder.parameters())
    assert all(book.grad is None or book.grad.abs().sum() == 0 for book in tokenizer.quantizer.codebooks)


@pytest.mark.parametrize("decay", ["sdud", "frqud"])
def test_diger_noise_decays(tmp_path, decay):
    """SDUD: sigma falls as the next-code loss falls; FrqUD: noise only on over-used codes."""
    run, terms = one_step(tmp_path, f"{{name: diger, decay: {decay}}}")
    quantizer = run.model.tokenizer.quantizer
    assert quantizer.decay == decay and DIGER(decay=decay).tau(0.9) == 2.0
    if decay == "sdud":
        assert "sdud" in terms and quantizer.log_sigma.grad is not None
        opt = torch.optim.SGD([quantizer.log_sigma], lr=0.5)
        noise = []
        for loss in (3.0, 1.0, 0.3):  # a falling next-code loss
            for _ in range(200):
                opt.zero_grad()
                quantizer.sdud_loss(torch.tensor(loss)).backward()
                opt.step()
            noise.append(float(quantizer.noise_weight(0)))
        assert noise[0] > noise[1] > noise[2]
        assert noise[2] == pytest.approx(math.sqrt(0.3 / math.log(16)), rel=1e-2)  # sigma^2 = L / log K
    else:
        method, latent = DIGER(), run.model.tokenizer.encoder(run.text).detach()
        latent = torch.cat([latent, latent[:1].expand(len(latent), -1)])  # half the inputs on one item's code
        with torch.no_grad():
            for _ in range(100):  # the EMA of code frequencies settles on the inputs' code usage
                quantizer(latent, method.assignment(), method.tau(0.0))
        usage, weight = quantizer.usage(0), quantizer.noise_weight(0)
        hot = usage > 2.0 / quantizer.codebook_sizes[0]
        assert 0 < int(hot.sum()) < quantizer.codebook_sizes[0]
        assert torch.equal(weight, hot.float())  # noise on the over-used codes only


def test_the_objective_passes_the_temperature_and_freezing_switches_to_argmax(tmp_path):
    cfg = load_config("configs/ml100k.yaml", [*tiny_ml100k(epochs=1), *RQVAE, "method=dgi"])
    run = prepare(cfg, tmp_path, progress=False)
    objective = JointObjective(cfg, run.text)
    assert objective.assignment.name == "gumbel_soft"
    objective.freeze_item_side(run.model)
    assert objective.assignment.name == "argmax"
    assert not any(p.requires_grad for p in run.model.tokenizer.parameters())
    assert not hasattr(run.model.tokenizer.quantizer, "assign")  # the quantizer holds no assignment
