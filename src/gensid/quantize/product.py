"""Long, unordered semantic IDs by (optimized) product quantization, as RPG builds them.

The text vector [T] is (optionally PCA-whitened, then) rotated by OPQ and cut into ``digits``
sub-vectors; each sub-vector's nearest of ``codebook_size`` centroids is one digit. The
digits are unordered: no digit refines another, so a model can predict all of them at once.

Everything is one faiss index (``PCAW{T},OPQ{m},PQ{m}x{bits}``), fitted once and stored
serialized (a uint8 tensor in safetensors, no pickle), so a new item's digits come from the
same frozen quantizer at serving time (:meth:`ProductQuantizer.encode`).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import torch

from gensid.errors import ConfigError, RunError
from gensid.io import load_tensors, save_tensors
from gensid.quantize.residual import too_few_points
from gensid.quantize.sids import code_usage, collision_rate


class ProductQuantizer:
    """``fit(vectors [N, T])`` once, then ``encode(vectors [n, T]) -> digits [n, m]`` int64."""

    def __init__(self, index: faiss.Index, digits: int, codebook_size: int):
        self.index, self.digits, self.codebook_size = index, digits, codebook_size

    @classmethod
    def fit(cls, vectors: np.ndarray, digits: int, codebook_size: int = 256, opq: bool = True,
            whiten: bool = False) -> ProductQuantizer:
        """Train on ``vectors`` [N, T] float32 (a cold-start run: the trained items' only). ``digits``
        must divide T (each digit quantizes T / digits dimensions); ``codebook_size`` is a power of
        two (faiss stores digits as bits)."""
        dim = vectors.shape[1]
        bits = int(math.log2(codebook_size))
        if 2**bits != codebook_size:
            raise ConfigError(f"parallel.codebook_size {codebook_size}: expected a power of two, e.g. 256")
        if dim % digits:
            raise ConfigError(f"parallel.digits {digits}: must divide the text vector's {dim} dimensions")
        steps = ([f"PCAW{dim}"] if whiten else []) + ([f"OPQ{digits}"] if opq else []) + [f"PQ{digits}x{bits}"]
        index = faiss.index_factory(dim, ",".join(steps))
        opq_transforms = quiet_clustering(index, digits)
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        for transform in opq_transforms:  # they pointed to a product quantizer that Python frees
            transform.pq = None
        quantizer = cls(index, digits, codebook_size)
        too_few_points(len(vectors), codebook_size, f"parallel.codebook_size {codebook_size}",
                       collision_rate(quantizer.encode(vectors)))
        return quantizer

    def encode(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """vectors [n, T] -> digits [n, m] int64 in [0, codebook_size)."""
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        packed = self.index.sa_encode(x)  # [n, ceil(m * bits / 8)] uint8
        if self.codebook_size == 256:
            return packed.astype(np.int64)
        bits = int(math.log2(self.codebook_size))
        unpacked = np.unpackbits(packed, axis=1, bitorder="little")[:, : self.digits * bits]
        weights = 1 << np.arange(bits)
        return (unpacked.reshape(len(x), self.digits, bits) * weights).sum(-1).astype(np.int64)

    def digit_distances(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """vectors [n, T] -> [n, m]: the distance of each of a vector's m sub-vectors (after the
        index's PCA and OPQ transforms) to the centroid of its digit; small = typical of the digit."""
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexPreTransform):
            for i in range(index.chain.size()):
                x = faiss.downcast_VectorTransform(index.chain.at(i)).apply(x)
            index = faiss.downcast_index(index.index)
        pq = index.pq
        centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        own = centroids[np.arange(pq.M), self.encode(vectors)]  # [n, m, dsub]
        return np.linalg.norm(x.reshape(len(x), pq.M, pq.dsub) - own, axis=-1)

    def save(self, path: str | Path) -> None:
        blob = torch.from_numpy(faiss.serialize_index(self.index))
        save_tensors(path, {"faiss_index": blob}, {"digits": self.digits, "codebook_size": self.codebook_size})

    @classmethod
    def load(cls, path: str | Path) -> ProductQuantizer:
        tensors, meta = load_tensors(path)
        if "faiss_index" not in tensors:
            raise RunError(f"{path}: not a product quantizer (no faiss_index tensor)")
        index = faiss.deserialize_index(tensors["faiss_index"].numpy())
        return cls(index, int(meta["digits"]), int(meta["codebook_size"]))


def quiet_clustering(index: faiss.Index, digits: int) -> list:
    """Stop faiss printing "please provide at least N training points" for every digit of every OPQ
    iteration (over a thousand lines on a small catalog; :func:`too_few_points` says it once). That
    threshold only decides the message: OPQ gets the 8-bit product quantizer it would build itself,
    with the threshold at 1, and so does the final product quantizer. Returns the OPQ transforms,
    whose ``pq`` must be reset after training."""
    index = faiss.downcast_index(index)
    transforms = []
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                pq = faiss.ProductQuantizer(transform.d_out, digits, 8)
                pq.cp.min_points_per_centroid = 1
                transform.pq = pq
                transform.referenced_pq = pq  # alive as long as the transform
                transforms.append(transform)
        index = faiss.downcast_index(index.index)
    index.pq.cp.min_points_per_centroid = 1
    return transforms


def digit_stats(codes: np.ndarray, codebook_size: int) -> dict:
    """Collisions (items sharing all digits) and per-digit code usage of ``codes`` [N, m]."""
    usage = code_usage(codes, [codebook_size] * codes.shape[1])
    return {"digits": codes.shape[1], "codebook_size": codebook_size, "collision_rate": collision_rate(codes),
            "mean_perplexity": float(np.mean([u["perplexity"] for u in usage])),
            "min_used": int(min(u["used"] for u in usage)), "levels": usage}
