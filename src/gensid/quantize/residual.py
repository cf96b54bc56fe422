"""A residual quantizer: L codebooks applied to successive residuals.

Geometry ``euclidean`` scores codes by ``-scale * ||r - e||^2`` (a fixed ``scale``, 1 by
default); ``cosine`` L2-normalises the input and scores codes by ``gamma * cos(r, e)`` with a
learnable ``gamma``. A scale leaves the argmax codes as they are but sharpens the soft
assignments of ``gumbel_soft`` and ``dril`` against their Gumbel noise: unit text vectors
have top-1/top-2 score gaps of 0.01-0.1 against a noise of standard deviation 1.3. Either way the
vector subtracted from the residual is the raw codebook row: unit rows would overshoot
the shrinking residuals of the deeper levels (and collapse their codes).

What the next level's residual subtracts: the assignment's vector (DGI's
``r_j = r_{j-1} - z~_j``; a soft vector under ``gumbel_soft``), or with ``hard_residual`` the
codebook row of the deterministic code. A soft residual shifts the deeper levels' codes in
training away from the ones the index holds (on Beauty 8% at level 2, 31% at level 3), and
those codes are the recommender's targets; the hard residual keeps every training code the
index's own, while the soft vectors still carry the gradient to codebooks and item encoder.

Uncertainty decay (DIGER) scales the Gumbel noise of the ``dril`` assignment:

- ``sdud``: a learned scale ``sigma``. :meth:`ResidualQuantizer.sdud_loss` ties it to the
  next-SID loss, ``L / (2 sigma^2 log K) + log sigma``, whose minimum is at
  ``sigma^2 = L / log K``: sigma starts near 1 (``L`` of a uniform guess is ``log K``)
  and decays as the recommender's loss falls.
- ``frqud``: an EMA of each code's assignment frequency; only "hot" codes, used more
  than ``ratio / K``, get noise, which pushes items off over-used codes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gensid.errors import ConfigError, GensidWarning
from gensid.quantize.assign import ARGMAX, Assignment


@dataclass
class QuantizerOutput:
    codes: torch.Tensor  # [N, L] long
    quantized: torch.Tensor  # [N, D] sum of the per-level vectors
    level_vectors: torch.Tensor  # [N, L, D]
    logits: list[torch.Tensor]  # L x [N, K_l]
    loss: torch.Tensor  # scalar: codebook + beta * commitment, summed over levels


class ResidualQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_sizes: list[int], geometry: str = "euclidean",
                 beta: float = 0.25, gamma_init: float = 30.0,
                 decay: str = "none", frqud_ratio: float = 2.0, frqud_momentum: float = 0.99,
                 euclidean_scale: float = 1.0, hard_residual: bool = False):
        super().__init__()
        if geometry not in ("euclidean", "cosine"):
            raise ConfigError(f"quantizer.geometry {geometry!r}: expected euclidean or cosine")
        if decay not in DECAYS:
            raise ConfigError(f"method.decay {decay!r}: expected one of {DECAYS}")
        if euclidean_scale <= 0:
            raise ConfigError(f"quantizer.euclidean_scale {euclidean_scale}: must be positive")
        self.dim, self.geometry, self.beta = dim, geometry, beta
        self.decay, self.frqud_ratio, self.frqud_momentum = decay, frqud_ratio, frqud_momentum
        self.euclidean_scale, self.hard_residual = euclidean_scale, hard_residual
        self.codebook_sizes = list(codebook_sizes)
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(k, dim) / dim**0.5) for k in codebook_sizes]
        )
        self.log_gamma = nn.Parameter(torch.tensor(float(np.log(gamma_init))))
        self.log_sigma = nn.Parameter(torch.zeros(())) if decay == "sdud" else None
        for level, k in enumerate(codebook_sizes):  # FrqUD's EMA code frequencies
            self.register_buffer(f"usage_{level}", torch.full((k,), 1.0 / k))

    @property
    def num_levels(self) -> int:
        return len(self.codebooks)

    def codebook(self, level: int) -> torch.Tensor:
        """Codebook ``level`` [K, D]: the vectors an assignment passes on."""
        return self.codebooks[level]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.geometry == "cosine" else x

    def level_logits(self, level: int, residual: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, K] scores (higher is closer)."""
        book = self.codebook(level)
        if self.geometry == "cosine":
            # an item that is its own centroid (a singleton cluster, or a duplicate text) leaves a
            # zero residual, whose direction's gradient is 1 / eps: the default eps (1e-12) gave
            # item-encoder gradient norms up to 2e8. Real residuals are > .05 here; a positive
            # rescaling of a residual below RESIDUAL_EPS keeps its argmax code.
            unit = F.normalize(residual, dim=-1, eps=RESIDUAL_EPS)
            return self.log_gamma.exp() * unit @ F.normalize(book, dim=-1).T
        distance = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ book.T + book.pow(2).sum(-1)
        return -self.euclidean_scale * distance

    def usage(self, level: int) -> torch.Tensor:
        return getattr(self, f"usage_{level}")

    def noise_weight(self, level: int) -> torch.Tensor | float:
        """Multiplier of the Gumbel noise at ``level``: scalar or [K]."""
        if self.decay == "sdud":
            return self.log_sigma.exp().detach()  # set by sdud_loss only, not by the noise's effect
        if self.decay == "frqud":
            return (self.usage(level) > self.frqud_ratio / self.codebook_sizes[level]).float()
        return 1.0

    def sdud_loss(self, next_sid_loss: torch.Tensor) -> torch.Tensor:
        """SDUD's auxiliary objective for ``sigma`` (zero without SDUD)."""
        if self.log_sigma is None:
            return next_sid_loss.new_zeros(())
        log_k = float(np.log(max(self.codebook_sizes)))
        return next_sid_loss.detach() / (2 * log_k) * torch.exp(-2 * self.log_sigma) + self.log_sigma

    def forward(self, x: torch.Tensor, assignment: Assignment = ARGMAX, tau: float = 1.0,
                track_usage: bool = True) -> QuantizerOutput:
        """x [N, dim] -> codes, vectors and losses under ``assignment`` at temperature ``tau`` (the
        deterministic argmax in eval mode). ``track_usage=False``: leave FrqUD's EMA alone."""
        residual = self.prepare(x)
        codes, vectors, logits = [], [], []
        loss = x.new_zeros(())
        for level in range(self.num_levels):
            book = self.codebook(level)
            scores = self.level_logits(level, residual)
            code, vector = assignment(scores, book, residual, self.training, self.noise_weight(level), tau)
            if self.training and track_usage and self.decay == "frqud":
                freq = torch.bincount(code, minlength=len(book)).float() / len(code)
                self.usage(level).lerp_(freq, 1 - self.frqud_momentum)
            hard = book[code]
            loss = loss + F.mse_loss(hard, residual.detach()) + self.beta * F.mse_loss(residual, hard.detach())
            codes.append(code)
            vectors.append(vector)
            logits.append(scores)
            residual = residual - (book[scores.argmax(-1)] if self.hard_residual else vector)
        level_vectors = torch.stack(vectors, dim=1)
        return QuantizerOutput(torch.stack(codes, 1), level_vectors.sum(1), level_vectors, logits, loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic codes [N, L] (argmax at every level)."""
        residual = self.prepare(x)
        codes = []
        for level in range(self.num_levels):
            code = self.level_logits(level, residual).argmax(-1)
            residual = residual - self.codebook(level)[code]
            codes.append(code)
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[N, L] codes -> [N, D] sum of their codebook vectors."""
        return sum(self.codebook(level)[codes[:, level]] for level in range(self.num_levels))

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, seed: int = 0, niter: int = 25) -> None:
        """Residual k-means: fit each level's codebook to the residuals left by the previous one."""
        residual = self.prepare(x).double().numpy()
        for level, k in enumerate(self.codebook_sizes):
            # level 0 sees unit inputs under cosine: spherical centroids; deeper levels keep the
            # residuals' scale in the centroids (cosine scoring normalises them anyway)
            centroids = kmeans(residual.astype(np.float32), k, seed=seed + level, niter=niter,
                               spherical=self.geometry == "cosine" and level == 0)
            self.codebooks[level].copy_(torch.from_numpy(centroids))
            book = self.codebook(level).double().numpy()
            scores = self.level_logits(level, torch.from_numpy(residual).float()).numpy()
            residual = residual - book[scores.argmax(-1)]


DECAYS = ("none", "sdud", "frqud")
FAISS_MIN_POINTS = 39  # faiss's min_points_per_centroid: fewer training points per centroid make it warn
RESIDUAL_EPS = 1e-2  # the smallest residual norm that cosine scoring rescales to unit length


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 25, spherical: bool = False) -> np.ndarray:
    """``k`` centroids of ``x`` [N, D] with faiss; fewer points than ``k`` reuse points plus noise."""
    n, d = x.shape
    rng = np.random.default_rng(seed)
    if n <= k:
        extra = x[rng.integers(0, n, k - n)] + 1e-3 * rng.standard_normal((k - n, d)).astype(np.float32)
        return np.concatenate([x, extra]).astype(np.float32)
    # min_points_per_centroid only decides when faiss prints "please provide at least k * 39 training
    # points" (once per level, from C++): the quantizer says it once itself (too_few_points)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, max_points_per_centroid=10**6,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.astype(np.float32)


def too_few_points(n: int, codes: int, what: str, collisions: float) -> None:
    """Warn once (``GensidWarning``) when k-means fitted ``codes`` centroids to ``n`` points, fewer than
    faiss's rule of thumb, with the collision rate the codes ended with."""
    if n < FAISS_MIN_POINTS * codes:
        warnings.warn(f"{what}: k-means fitted {codes} codes to {n} items, fewer than the {FAISS_MIN_POINTS} "
                      f"per code faiss asks for ({FAISS_MIN_POINTS * codes}); {collisions:.1%} of the items share "
                      "all their codes with another item (the collision rate)", GensidWarning, stacklevel=3)
