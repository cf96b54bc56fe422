"""The code decoder (gensid.model.decoder): one module for training and cached beam search, and
compatible with torch's nn.TransformerDecoder, which trained the runs saved before it."""

import copy

import numpy as np
import torch
from torch import nn

from conftest import random_sids
from gensid.config import ModelConfig
from gensid.index import SIDIndex, constrained_beam_search
from gensid.model import GenerativeRecommender
from gensid.model.decoder import CodeDecoder

CFG = ModelConfig(d_model=32, n_heads=4, encoder_layers=1, decoder_layers=2, d_ff=64, dropout=0.1)
SIZES = [8, 6, 4, 3]


def torch_decoder(cfg: ModelConfig) -> nn.TransformerDecoder:
    """The decoder as gensid built it before ``CodeDecoder``."""
    layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, cfg.decoder_layers, norm=nn.LayerNorm(cfg.d_model))


def torch_forward(decoder: nn.TransformerDecoder, x: torch.Tensor, memory: torch.Tensor,
                  memory_mask: torch.Tensor) -> torch.Tensor:
    """How ``model.decode`` called it."""
    causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
    return decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~memory_mask)


def decoder_inputs(seed: int, b: int = 5, t: int = 4, h: int = 7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, h, generator=g) < 0.6
    mask[:, -1] = True
    return (torch.randn(b, t, CFG.d_model, generator=g), torch.randn(b, h, CFG.d_model, generator=g), mask)


def test_same_parameters_and_initialisation_as_torchs_decoder():
    torch.manual_seed(3)
    theirs = torch_decoder(CFG).state_dict()
    torch.manual_seed(3)
    ours = CodeDecoder(CFG.d_model, CFG.n_heads, CFG.d_ff, CFG.decoder_layers, CFG.dropout).state_dict()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name  # the random-number order of old runs is kept
    assert "layers.1.multihead_attn.in_proj_weight" in ours and "norm.weight" in ours


def test_torchs_trained_weights_give_the_same_outputs_dropout_and_gradients():
    theirs = torch_decoder(CFG)
    with torch.no_grad():  # weights as after training: no longer the init's zero biases and unit norms
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = CodeDecoder(CFG.d_model, CFG.n_heads, CFG.d_ff, CFG.decoder_layers, CFG.dropout)
    ours.load_state_dict(theirs.state_dict())  # strict
    x, memory, mask = decoder_inputs(0)
    for training in (False, True):
        theirs.train(training), ours.train(training)
        torch.manual_seed(7)
        expected = torch_forward(theirs, x, memory, mask)
        torch.manual_seed(7)
        got = ours(x, memory, mask)
        assert torch.allclose(got, expected, atol=1e-5), training  # in training: the same dropout masks
    expected.square().sum().backward()
    got.square().sum().backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-4), name


def test_cached_steps_equal_the_full_sequence():
    """Three beams per user with different prefixes, reordered between steps: every step's hidden
    state is the full causal sequence's at that position, for the beam's own prefix."""
    model = GenerativeRecommender(SIZES, CFG, max_history=7).eval()
    g = torch.Generator().manual_seed(1)
    batch, width = 4, 3
    codes = torch.stack([torch.randint(0, k, (batch, 7), generator=g) for k in SIZES], -1)
    mask = torch.rand(batch, 7, generator=g) < 0.6
    mask[:, -1] = True
    with torch.no_grad():
        memory = model.encode(codes, mask)
        cache = model.decoder.start(memory, mask)
        prefixes = torch.zeros(batch, 1, 0, dtype=torch.long)  # [B, W, m] codes of each beam
        tokens = model.bos.expand(batch, 1, -1)
        for m in range(len(SIZES)):
            hidden = model.decode_step(cache, tokens, m)  # [B, W, d]
            w = prefixes.shape[1]
            full = model.decode(memory.repeat_interleave(w, 0), mask.repeat_interleave(w, 0),
                                prefixes.reshape(batch * w, m))[:, -1]
            assert torch.allclose(hidden.reshape(batch * w, -1), full, atol=1e-5), m
            parent = torch.randint(0, w, (batch, width), generator=g)  # beams re-ranked, some repeated
            code = torch.randint(0, SIZES[m], (batch, width), generator=g)
            cache.reorder(parent)
            prefixes = torch.cat([prefixes.gather(1, parent[..., None].expand(-1, -1, m)), code[..., None]], 2)
            tokens = model.code_vectors(m, code)


def test_gradients_reach_every_decoder_parameter():
    model = GenerativeRecommender(SIZES, CFG, max_history=7).train()
    g = torch.Generator().manual_seed(2)
    codes = torch.stack([torch.randint(0, k, (6, 7), generator=g) for k in SIZES], -1)
    target = torch.stack([torch.randint(0, k, (6,), generator=g) for k in SIZES], -1)
    mask = torch.ones(6, 7, dtype=torch.bool)
    model.loss(model(codes, mask, target), target).backward()
    decoder = dict(model.decoder.named_parameters())
    assert len(decoder) == 2 * 18 + 2  # per layer: 2 x 4 attention, 2 x 2 linear, 3 x 2 norm
    for name, p in decoder.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


class TorchDecoderSteps(nn.Module):
    """torch's decoder behind ``CodeDecoder``'s start/step, recomputing every beam's whole prefix
    with the memory copied per beam: no cache, nothing shared."""

    def __init__(self, decoder: nn.TransformerDecoder):
        super().__init__()
        self.decoder = decoder

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> "TorchDecoderSteps.Inputs":
        return self.Inputs(memory, memory_mask)

    class Inputs:
        def __init__(self, memory: torch.Tensor, memory_mask: torch.Tensor):
            self.memory, self.memory_mask, self.x = memory, memory_mask, None  # x [B, W, t, d]

        def reorder(self, parent: torch.Tensor) -> None:
            self.x = self.x.gather(1, parent[..., None, None].expand(-1, -1, *self.x.shape[2:]))

    def step(self, cache: "TorchDecoderSteps.Inputs", x: torch.Tensor) -> torch.Tensor:
        cache.x = x[:, :, None] if cache.x is None else torch.cat([cache.x, x[:, :, None]], 2)
        batch, width, t, d = cache.x.shape
        hidden = torch_forward(self.decoder, cache.x.reshape(batch * width, t, d),
                               cache.memory.repeat_interleave(width, 0), cache.memory_mask.repeat_interleave(width, 0))
        return hidden[:, -1].view(batch, width, d)


def test_beam_search_on_a_trained_model_ranks_as_torchs_decoder():
    """A model trained to predict item (3 * last item + 1) mod 60: beam search with the cached
    decoder returns the same items and scores as torch's decoder with the same weights."""
    rng = np.random.default_rng(0)
    codes = random_sids(rng, 60, [6, 5, 1])
    sizes = [6, 5, int(codes[:, -1].max()) + 1]
    catalog, index = torch.from_numpy(codes), SIDIndex(codes, sizes)
    torch.manual_seed(0)
    model = GenerativeRecommender(sizes, CFG, max_history=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mask = torch.ones(64, 5, dtype=torch.bool)
    for _ in range(200):
        history = torch.randint(0, 60, (64, 5))
        target = catalog[(3 * history[:, -1] + 1) % 60]
        opt.zero_grad()
        model.loss(model(catalog[history], mask, target), target).backward()
        opt.step()
    model.eval()
    history = torch.from_numpy(rng.integers(0, 60, (40, 5)))
    ours = constrained_beam_search(model, index, catalog[history], mask[:40], beam_size=5)
    assert (ours.items[:, 0] == (3 * history[:, -1] + 1) % 60).float().mean() > 0.5  # trained (chance: 1/60)
    reference = copy.deepcopy(model)
    reference.decoder = TorchDecoderSteps(torch_decoder(CFG))
    reference.decoder.decoder.load_state_dict(model.decoder.state_dict())  # strict: the same names
    reference.eval()
    theirs = constrained_beam_search(reference, index, catalog[history], mask[:40], beam_size=5)
    assert torch.equal(ours.items, theirs.items)
    assert torch.allclose(ours.scores, theirs.scores, atol=1e-4)
