"""New items without retraining: text -> vector -> tokenizer codes -> SID -> index and features.

Two-stage runs: the SID is the frozen quantizer's codes plus a disambiguation code, the
next free one among the items that share those codes. A code beyond the model's
last-position vocabulary grows that position's code embedding and head by one row,
initialised to the mean of the existing rows: the new code then starts as an "average"
disambiguation code (its logit is the mean of the others' in a dot-product head), so
the item is reachable at once; existing items keep their logits and shift only through the
last position's softmax normaliser.
Joint runs: the SID is the model's own tokenizer's deterministic codes (plus the
disambiguation code, as above, when the run has one); items that share a SID are
ordered by cosine with the new item's vector, as for the trained items.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gensid.errors import InputError
from gensid.pipeline import Run, tokenizer_and_sids
from gensid.quantize import RQVAE
from gensid.train import ItemFeatures
from gensid.train.objectives import item_snapshot


class ItemAdder:
    """Adds items to ``run`` in place (index, item features, model vocabulary, catalog)."""

    def __init__(self, run: Run):
        self.run = run
        self._tokenizer: RQVAE | None = None

    @property
    def tokenizer(self) -> RQVAE:
        """The run's tokenizer, loaded on first use (replaying stored items needs none)."""
        if self._tokenizer is None:
            run = self.run
            if run.parallel:
                raise InputError(f"{run.run_dir}: a train.strategy parallel run cannot add items (yet)")
            self._tokenizer = (run.model.tokenizer if run.joint
                               else tokenizer_and_sids(run.cfg, run.text, run.run_dir, progress=False)[0])
        return self._tokenizer

    def sids(self, vectors: torch.Tensor) -> np.ndarray:
        """SIDs [n, L] for new items' text vectors [n, T], as :meth:`add` would give them."""
        codes = self.tokenizer.encode(vectors).numpy().astype(np.int64)
        if not self.run.disambiguation:
            return codes
        taken: dict[tuple, set[int]] = {}
        extra = np.empty(len(codes), dtype=np.int64)
        for row, prefix in enumerate(codes):
            used = taken.setdefault(tuple(prefix), set(self.run.index.child_codes(prefix).tolist()))
            extra[row] = next(c for c in range(len(used) + 1) if c not in used)
            used.add(int(extra[row]))
        return np.concatenate([codes, extra[:, None]], axis=1)

    def add(self, item_ids: list[str], fields: list[dict[str, str]], vectors: torch.Tensor, sids: np.ndarray
            ) -> list[int]:
        """Insert items (ids, text fields, text vectors [n, T], SIDs [n, L]); returns internal ids."""
        run = self.run
        for m, size in enumerate(run.model.code_sizes):
            needed = int(sids[:, m].max()) + 1 if len(sids) else 0
            if needed > size:
                grow_position(run.model, m, needed)
        internal = [run.dataset.catalog.append(i, f) for i, f in zip(item_ids, fields, strict=True)]
        run.text = torch.cat([run.text, vectors])
        run.index.add(sids)
        new = (item_snapshot(run.model, vectors, run.items.text is not None) if run.joint
               else ItemFeatures(torch.from_numpy(sids), vectors if run.items.text is not None else None))
        run.items = ItemFeatures(torch.cat([run.items.codes, torch.from_numpy(sids)]),
                                 *(None if old is None else torch.cat([old, extra])
                                   for old, extra in ((run.items.text, new.text),
                                                      (run.items.quantized, new.quantized),
                                                      (run.items.item_vectors, new.item_vectors))))
        return internal


@torch.no_grad()
def grow_position(model: nn.Module, position: int, size: int) -> None:
    """Grow code position ``position``'s embedding and head to ``size`` rows (new rows = mean row)."""
    emb, head = model.code_embeddings[position], model.heads[position]
    extra = size - emb.num_embeddings
    bigger = nn.Embedding(size, emb.embedding_dim)
    bigger.weight.copy_(torch.cat([emb.weight, emb.weight.mean(0, keepdim=True).expand(extra, -1)]))
    model.code_embeddings[position] = bigger
    head.weight = nn.Parameter(torch.cat([head.weight, head.weight.mean(0, keepdim=True).expand(extra, -1)]))
    model.code_sizes[position] = size
