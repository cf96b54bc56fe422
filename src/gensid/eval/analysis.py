"""Mechanism analyses of learnable SIDs: drift, train/inference agreement, code usage,
hubness, isotropy and hit rate by item popularity. All work on plain arrays so they apply to any run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from gensid.io import load_tensors, save_tensors
from gensid.model.recommender import GenerativeRecommender
from gensid.quantize.assign import Assignment
from gensid.quantize.sids import code_usage, collision_rate
from gensid.train.objectives import item_snapshot


def sid_drift(before: np.ndarray, after: np.ndarray) -> float:
    """Share of items whose SID [N, L] changed."""
    return float((np.asarray(before) != np.asarray(after)).any(1).mean())


@torch.no_grad()
def assignment_agreement(model: GenerativeRecommender, text: torch.Tensor, deterministic: np.ndarray,
                         assignment: Assignment) -> dict:
    """Share of items whose training-time (noisy) codes under ``assignment`` equal the inference codes,
    overall and per level."""
    tokenizer = model.tokenizer
    was_training = tokenizer.training
    tokenizer.train()
    codes = tokenizer.quantizer(tokenizer.encoder(text), assignment, track_usage=False).codes.numpy()
    tokenizer.train(was_training)
    same = codes == deterministic
    return {"all": float(same.all(1).mean()), "per_level": same.mean(0).round(4).tolist()}


class SIDMonitor:
    """Per-epoch analysis of a joint run's item side; remembers the initial and last SIDs.

    The last epoch's codes are kept in ``codes_path`` so a resumed run measures drift
    against the epoch before the interruption. ``assignment()``: the training assignment now
    (the objective's), whose codes are compared with the index's.
    """

    def __init__(self, text: torch.Tensor, initial_codes: np.ndarray, codes_path: Path,
                 assignment: Callable[[], Assignment]):
        self.text, self.initial, self.codes_path = text, np.asarray(initial_codes), Path(codes_path)
        self.assignment = assignment

    def __call__(self, model: GenerativeRecommender) -> dict:
        levels = model.tokenizer.quantizer.num_levels  # without a disambiguation code
        codes = item_snapshot(model, self.text, keep_text=False).codes[:, :levels]
        previous = load_tensors(self.codes_path)[0]["codes"].numpy() if self.codes_path.exists() else self.initial
        save_tensors(self.codes_path, {"codes": codes})
        codes = codes.numpy()
        sizes = model.tokenizer.quantizer.codebook_sizes
        usage = code_usage(codes, sizes)
        for level, entry in enumerate(usage):
            entry["histogram"] = np.bincount(codes[:, level], minlength=sizes[level]).tolist()
        out = {"drift_incremental": sid_drift(previous, codes), "drift_cumulative": sid_drift(self.initial, codes),
               "agreement": assignment_agreement(model, self.text, codes, self.assignment()), "code_usage": usage,
               "collision_rate": collision_rate(codes)}
        quantizer = model.tokenizer.quantizer
        if quantizer.log_sigma is not None:
            out["sdud_sigma"] = float(quantizer.log_sigma.exp())
        return out


def popularity_buckets(popularity: np.ndarray, buckets: int = 5) -> np.ndarray:
    """Bucket of each item [N]: items sorted by popularity (most first) and cut into ``buckets``
    groups with equal shares of the training interactions; 0 = head, buckets-1 = tail."""
    order = np.argsort(-popularity, kind="stable")
    share = np.cumsum(popularity[order]) / max(popularity.sum(), 1)
    bucket = np.empty(len(popularity), dtype=np.int64)
    bucket[order] = np.minimum((share * buckets - 1e-9).astype(np.int64).clip(min=0), buckets - 1)
    return bucket


def hit_rate_by_bucket(ranked: np.ndarray, targets: np.ndarray, bucket_of_item: np.ndarray, k: int = 10,
                       buckets: int = 5) -> list[dict]:
    """Hit@k of the samples whose target falls in each popularity bucket (head -> tail)."""
    hits = (ranked[:, :k] == targets[:, None]).any(1)
    target_bucket = bucket_of_item[targets]
    return [{"bucket": b, "samples": int((target_bucket == b).sum()),
             "items": int((bucket_of_item == b).sum()),
             f"hit@{k}": float(hits[target_bucket == b].mean()) if (target_bucket == b).any() else float("nan")}
            for b in range(buckets)]


def norm_vs_popularity(vectors: np.ndarray, popularity: np.ndarray, bucket_of_item: np.ndarray) -> dict:
    """Hubness check: Spearman correlation of item-vector norm and popularity, mean norm per bucket."""
    norms = np.linalg.norm(vectors, axis=1)
    rho = spearmanr(norms, popularity).statistic
    return {"spearman": float(rho),
            "mean_norm_by_bucket": [float(norms[bucket_of_item == b].mean()) for b in range(int(bucket_of_item.max()) + 1)]}


def isotropy(vectors: np.ndarray) -> dict:
    """How evenly item vectors [N, d] spread their directions (each L2-normalised to u_i):

    - ``mean_cosine``: mean cosine over all pairs, ``(|sum u|^2 - N) / (N (N - 1))``; 0 when no
      direction is shared, 1 when all items point the same way;
    - ``partition``: ``min_c Z(c) / max_c Z(c)`` with ``Z(c) = sum_i exp(c . u_i)`` over the
      eigenvectors c of ``U^T U`` and their negatives (Mu & Viswanath 2018); 1 = isotropic;
    - ``effective_dims``: the participation ratio ``(sum l)^2 / sum l^2`` of the eigenvalues l of
      the directions' covariance: how many dimensions carry the spread (d when all do equally).
    """
    u = np.asarray(vectors, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True).clip(min=1e-12)
    n = len(u)
    total = u.sum(0)
    _, directions = np.linalg.eigh(u.T @ u)
    z = np.exp(u @ np.concatenate([directions, -directions], 1)).sum(0)
    spread = np.linalg.eigvalsh(np.cov(u, rowvar=False)).clip(min=0)
    return {"mean_cosine": float((total @ total - n) / (n * (n - 1))),
            "partition": float(z.min() / z.max()),
            "effective_dims": float(spread.sum() ** 2 / (spread ** 2).sum()) if spread.any() else 0.0}
