"""Dense dual encoder for personalized search: frozen sentence vectors, fine-tuned projections.

context = W_c [query vector ; mean of the history items' text vectors]   -> d
item    = W_i item text vector                                             -> d
trained with in-batch InfoNCE (cosine / temperature) through the one :class:`~gensid.train.Trainer`
(:class:`~gensid.train.objectives.DenseObjective`, :func:`gensid.baselines.training.train_dense`),
ranked by exact inner product of the normalised vectors with faiss (``IndexFlatIP``).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gensid.data.search import SearchSamples
from gensid.errors import RunError
from gensid.io import load_tensors, save_tensors


def context_inputs(query_vectors: torch.Tensor, histories: np.ndarray | torch.Tensor, item_text: torch.Tensor
                   ) -> torch.Tensor:
    """[N, T] query vectors, [N, H] history ids (-1 pad) -> [N, 2T] (history mean is 0 when empty)."""
    hist = torch.as_tensor(histories)
    mask = (hist >= 0).unsqueeze(-1).float()
    mean = (item_text[hist.clamp(min=0)] * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.cat([query_vectors, mean], -1)


class DenseDualEncoder(nn.Module):
    def __init__(self, text_dim: int, dim: int = 128, temperature: float = 0.05):
        super().__init__()
        self.context = nn.Linear(2 * text_dim, dim)
        self.item = nn.Linear(text_dim, dim)
        self.temperature = temperature

    def save(self, path: str | Path) -> None:
        """Weights and sizes in one safetensors file."""
        save_tensors(path, self.state_dict(), meta={"text_dim": self.item.in_features, "dim": self.item.out_features,
                                                    "temperature": self.temperature})

    @classmethod
    def load(cls, path: str | Path) -> DenseDualEncoder:
        """A model saved by :meth:`save`, in eval mode."""
        tensors, meta = load_tensors(path)
        if not meta or "temperature" not in meta:
            raise RunError(f"{path}: not a dense dual encoder (no sizes in its header)")
        model = cls(meta["text_dim"], meta["dim"], meta["temperature"])
        model.load_state_dict(tensors)
        return model.eval()

    def loss(self, context_in: torch.Tensor, item_in: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """In-batch InfoNCE of :func:`context_inputs` [B, 2T] against the target items' text vectors [B, T];
        ``targets`` [B] item ids (a row whose target repeats another row's is no negative of it)."""
        c = F.normalize(self.context(context_in), dim=-1)
        i = F.normalize(self.item(item_in), dim=-1)
        scores = c @ i.T / self.temperature
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        scores = scores.masked_fill(same & ~torch.eye(len(targets), dtype=torch.bool), float("-inf"))
        return F.cross_entropy(scores, torch.arange(len(targets)))

    @torch.no_grad()
    def item_vectors(self, item_text: torch.Tensor) -> torch.Tensor:
        """Unit item vectors [N, dim] of item text vectors [N, T]."""
        return F.normalize(self.item(item_text), dim=-1)

    @torch.no_grad()
    def log_probs(self, query_vectors: torch.Tensor, histories: np.ndarray, item_text: torch.Tensor,
                  item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] query vectors, [B, H] history ids -> log-softmax over all items of cosine / temperature
        [B, num_items]: the training objective's distribution, over the whole catalog. ``item_vectors``:
        :meth:`item_vectors` of ``item_text``, when the caller keeps them (else computed here)."""
        items = self.item_vectors(item_text) if item_vectors is None else item_vectors
        context = F.normalize(self.context(context_inputs(query_vectors, histories, item_text)), dim=-1)
        return (context @ items.T / self.temperature).log_softmax(-1)

    @torch.no_grad()
    def rank(self, samples: SearchSamples, query_vectors: torch.Tensor, item_text: torch.Tensor, k: int = 20
             ) -> np.ndarray:
        """Exact top-k item ids [N, k] by cosine (faiss inner product over unit vectors)."""
        items = self.item_vectors(item_text).numpy()
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(np.ascontiguousarray(items, dtype=np.float32))
        context = F.normalize(self.context(context_inputs(query_vectors, samples.histories, item_text)), dim=-1)
        _, ranked = index.search(np.ascontiguousarray(context.numpy(), dtype=np.float32), min(k, len(items)))
        return ranked.astype(np.int64)
