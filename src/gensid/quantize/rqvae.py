"""RQ-VAE (MLP encoder -> residual quantizer -> MLP decoder) and RQ-KMeans, one class.

With ``method="rqkmeans"`` the encoder and decoder are identities and the codebooks are
fitted by residual k-means only; with ``method="rqvae"`` the MLPs and codebooks are then
trained for reconstruction + commitment with the straight-through estimator (TIGER).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:  # gensid.config imports the methods, which import this package
    from gensid.config.sections import QuantizerConfig

from gensid.errors import ConfigError
from gensid.quantize.assign import Assignment
from gensid.quantize.residual import ResidualQuantizer, too_few_points
from gensid.quantize.sids import SemanticIDs

STRAIGHT_THROUGH = Assignment("ste")


def mlp(dims: list[int]) -> nn.Module:
    if len(dims) < 2:
        return nn.Identity()
    if len(dims) == 2:
        return nn.Linear(*dims)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Center(nn.Module):
    """Subtracts the mean item vector (fitted once): text embeddings share a large common
    direction that would otherwise dominate every projection of them."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


class ItemAdapter(nn.Module):
    """``x + W x + b`` with ``W`` and ``b`` zero at the start: a learnable item side for a joint
    run whose tokenizer (RQ-KMeans) has none. It starts as the identity, so a warm start keeps
    the source's codes exactly until the losses move the item vectors [N, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.delta = nn.Linear(dim, dim)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


class RQVAE(nn.Module):
    """Item vectors [N, in_dim] -> latent [N, latent] -> codes [N, L] -> reconstruction [N, in_dim].
    ``decay``: the uncertainty decay of a DIGER run's quantizer (its SDUD scale is a parameter)."""

    def __init__(self, in_dim: int, cfg: QuantizerConfig, decay: str = "none"):
        super().__init__()
        self.method = cfg.method
        if cfg.method == "rqkmeans":
            dims, latent = [], in_dim
        elif cfg.method == "rqvae":
            dims, latent = [in_dim, *cfg.hidden_dims, cfg.latent_dim], cfg.latent_dim
        else:
            raise ConfigError(f"quantizer.method {cfg.method!r}: expected rqkmeans or rqvae")
        self.encoder = nn.Sequential(Center(in_dim), mlp(dims)) if dims else nn.Identity()
        self.decoder = mlp(dims[::-1])
        self.quantizer = ResidualQuantizer(latent, cfg.codebook_sizes, cfg.geometry, cfg.beta, decay=decay,
                                           euclidean_scale=cfg.euclidean_scale, hard_residual=cfg.hard_residual)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (reconstruction [N, in_dim], loss scalar); codes by straight-through, as TIGER trains."""
        out = self.quantizer(self.encoder(x), STRAIGHT_THROUGH)
        recon, mse = self.reconstruct(out.quantized, x)
        return recon, mse + out.loss

    def reconstruct(self, quantized: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output [N, in_dim] and its MSE against ``x`` (L2-normalised under cosine)."""
        recon = self.decoder(quantized)
        target = F.normalize(x, dim=-1) if self.quantizer.geometry == "cosine" else x
        return recon, F.mse_loss(recon, target)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def init_encoder(self, x: torch.Tensor) -> None:
        """Centre the inputs; a single linear encoder (``hidden_dims: []``) starts as the PCA
        projection of the centred vectors and the decoder as its inverse."""
        center, projection = self.encoder[0], self.encoder[1]
        center.mean.copy_(x.mean(0))
        if isinstance(projection, nn.Linear):
            _, _, v = torch.linalg.svd(x - center.mean, full_matrices=False)  # v [min(N, D), D]
            components = v[: projection.out_features]
            projection.weight.copy_(components)
            projection.bias.zero_()
            self.decoder.weight.copy_(components.T)
            self.decoder.bias.copy_(center.mean)

    def fit(self, x: torch.Tensor, cfg: QuantizerConfig, seed: int = 0, progress: bool = True) -> list[float]:
        """Encoder init, k-means init of the codebooks, then (rqvae) reconstruction training.
        Returns the epoch losses."""
        with torch.no_grad():
            if self.method == "rqvae":
                self.init_encoder(x)
            self.quantizer.init_kmeans(self.encoder(x), seed=seed)
        if self.method == "rqkmeans":
            return []
        generator = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr)
        losses = []
        for _ in tqdm(range(cfg.epochs), desc="rq-vae", disable=not progress):
            total = 0.0
            for batch in torch.randperm(len(x), generator=generator).split(cfg.batch_size):
                _, loss = self(x[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(batch)
            losses.append(total / len(x))
        return losses


def fit_semantic_ids(vectors: np.ndarray, cfg: QuantizerConfig, seed: int = 0, progress: bool = True,
                     decay: str = "none", fit_items: np.ndarray | None = None) -> tuple[RQVAE, SemanticIDs, dict]:
    """Fit the tokenizer on item vectors [N, D]; return it, the SIDs and their statistics.
    ``fit_items``: fit on these rows only (a cold-start split's trained items), then encode every
    item with the frozen tokenizer, as a live service encodes a new one; the fitted items take the
    disambiguation codes first, the others the next free ones."""
    torch.manual_seed(seed)
    x = torch.from_numpy(vectors).float()
    model = RQVAE(x.shape[1], cfg, decay)
    losses = model.fit(x if fit_items is None else x[torch.from_numpy(fit_items)], cfg, seed=seed, progress=progress)
    model.eval()
    order = None if fit_items is None else np.concatenate([fit_items, np.setdiff1d(np.arange(len(x)), fit_items)])
    sids = SemanticIDs.from_codes(model.encode(x).numpy(), cfg.codebook_sizes, order)
    stats = sids.stats()
    fitted = len(x) if fit_items is None else len(fit_items)
    too_few_points(fitted, max(cfg.codebook_sizes), f"quantizer.codebook_sizes {cfg.codebook_sizes}",
                   stats["collision_rate"])
    if losses:
        stats["final_loss"] = losses[-1]
    if fit_items is not None:
        stats["fitted_items"] = fitted
    return model, sids, stats
