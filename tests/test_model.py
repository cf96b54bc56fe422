import torch

from gensid.config import ModelConfig
from gensid.model import GenerativeRecommender

CFG = ModelConfig(d_model=32, n_heads=2, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0)
SIZES = [8, 6, 4, 3]


def batch(seed=0, b=5, h=7):
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (b, h), generator=g) for k in SIZES], -1)
    mask = torch.rand(b, h, generator=g) < 0.6
    mask[:, -1] = True
    target = torch.stack([torch.randint(0, k, (b,), generator=g) for k in SIZES], -1)
    return codes, mask, target


def test_logit_shapes_and_loss_gradients_reach_every_part():
    model = GenerativeRecommender(SIZES, CFG, max_history=7)
    codes, mask, target = batch()
    logits = model(codes, mask, target)
    assert [tuple(lg.shape) for lg in logits] == [(5, k) for k in SIZES]
    model.loss(logits, target).backward()
    for name in ("code_embeddings.0.weight", "heads.3.weight", "bos", "history_pos"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_decoder_is_causal_over_codes():
    model = GenerativeRecommender(SIZES, CFG, max_history=7).eval()
    codes, mask, target = batch()
    changed = target.clone()
    changed[:, 2] = (changed[:, 2] + 1) % SIZES[2]
    a, b = model(codes, mask, target), model(codes, mask, changed)
    for m in range(3):  # positions 0..2 see codes of levels < m only
        assert torch.allclose(a[m], b[m], atol=1e-6), m
    assert not torch.allclose(a[3], b[3])


def test_padding_is_ignored():
    model = GenerativeRecommender(SIZES, CFG, max_history=7).eval()
    codes, mask, target = batch()
    garbage = codes.clone()
    garbage[~mask] = 0
    a, b = model(codes, mask, target), model(garbage, mask, target)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))


def test_cosine_heads_and_text_input():
    cfg = ModelConfig(**{**CFG.__dict__, "history_input": "codes+text"})
    model = GenerativeRecommender(SIZES, cfg, max_history=7, text_dim=12, logits="cosine")
    codes, mask, target = batch()
    logits = model(codes, mask, target, torch.randn(5, 7, 12))
    gamma = model.heads[0].log_gamma.exp()
    assert torch.isclose(gamma, torch.tensor(30.0)) and logits[0].abs().max() <= gamma + 1e-4
    model.loss(logits, target).backward()
    assert model.text_proj.weight.grad.abs().sum() > 0 and model.heads[0].log_gamma.grad is not None


def test_one_token_per_code_input():
    cfg = ModelConfig(**{**CFG.__dict__, "history_input": "code_tokens"})
    model = GenerativeRecommender(SIZES, cfg, max_history=7).eval()
    codes, mask, target = batch()
    memory = model.encode(codes, mask)
    assert memory.shape == (5, 7 * len(SIZES), cfg.d_model)
    logits = model(codes, mask, target)
    assert [tuple(lg.shape) for lg in logits] == [(5, k) for k in SIZES]

