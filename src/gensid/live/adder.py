"""New items without retraining: text -> vector -> tokenizer codes -> SID -> index and features.

Two-stage runs: the SID is the frozen quantizer's codes plus a disambiguation code, the
next free one among the items that share those codes. The model never learned that code for
this item (a disambiguation code is arbitrary: the k-th item of a prefix group; its
last-position logit is what the model learned for the k-th items of the training groups, low
past 0), so an added item that shares its prefix with other items is *scored as its most
similar sibling* (cosine of the text vectors): its leaf takes that sibling's last-position
log-probability in the beam (:meth:`SIDIndex.last_level_log_probs`), and its history token
reads that sibling's code. An exact copy of an item is then ranked right beside it.
The model does not change: no row is added to its head or embeddings (a code beyond its
last-position vocabulary only widens the index), so the trained items' scores stay exactly
as they were. An added item under a new prefix gets code 0, the code of every sole item.
Joint runs: the SID is the model's own tokenizer's deterministic codes (plus the
disambiguation code, as above, when the run has one); items that share a SID are
ordered by cosine with the new item's vector, as for the trained items.
Parallel runs: the digits come from the run's frozen product quantizer; the item is scored
exactly like every other item from its next ranking on (its digits' embeddings are trained,
whether or not the item was).
"""

from __future__ import annotations

import numpy as np
import torch

from gensid.errors import InputError
from gensid.prepare import tokenizer_and_sids
from gensid.quantize import RQVAE
from gensid.quantize.product import ProductQuantizer
from gensid.run import Run
from gensid.train import ItemFeatures
from gensid.train.objectives import item_snapshot


class ItemAdder:
    """Adds items to ``run`` in place (index, item features, catalog)."""

    def __init__(self, run: Run):
        self.run = run
        self._tokenizer: RQVAE | ProductQuantizer | None = None

    @property
    def tokenizer(self) -> RQVAE | ProductQuantizer:
        """The run's tokenizer, loaded on first use (replaying stored items needs none)."""
        if self._tokenizer is None:
            run = self.run
            if run.parallel:
                self._tokenizer = ProductQuantizer.load(run.run_dir / "index" / "pq.safetensors")
            else:
                self._tokenizer = (run.model.tokenizer if run.joint
                                   else tokenizer_and_sids(run.cfg, run.text, run.run_dir, progress=False)[0])
        return self._tokenizer

    def sids(self, vectors: torch.Tensor) -> np.ndarray:
        """SIDs [n, L] for new items' text vectors [n, T], as :meth:`add` would give them."""
        if self.run.parallel:
            return self.tokenizer.encode(vectors.numpy())
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

    def score_codes(self, vectors: torch.Tensor, sids: np.ndarray) -> np.ndarray:
        """The last-position code each new item [n] is scored as: its most similar sibling's (the
        items under the same prefix, earlier new ones included; cosine of the text vectors, first
        item on ties), or its own code when it has none."""
        run = self.run
        own = sids[:, -1].copy()
        if not self.run.disambiguation:
            return own
        index, text = run.index, torch.nn.functional.normalize(torch.cat([run.text, vectors]).float(), dim=-1)
        prefixes = np.concatenate([index.codes[:, :-1], sids[:, :-1]])
        keys = np.ravel_multi_index(tuple(prefixes.T), index.sizes[:-1])  # one int64 per prefix
        scored = np.concatenate([index.score_code(np.arange(len(index))), own])
        for row in range(len(sids)):
            me = len(index) + row
            siblings = np.flatnonzero(keys[:me] == keys[me])
            if len(siblings):
                nearest = siblings[int((text[torch.from_numpy(siblings)] @ text[me]).argmax())]
                scored[me] = scored[nearest]
        return scored[len(index):]

    def add(self, item_ids: list[str], fields: list[dict[str, str]], vectors: torch.Tensor, sids: np.ndarray
            ) -> list[int]:
        """Insert items (ids, text fields, text vectors [n, T], SIDs [n, L]); returns internal ids."""
        run = self.run
        if run.parallel:  # no trie, no disambiguation: the digits are all the model reads
            internal = [run.dataset.catalog.append(i, f) for i, f in zip(item_ids, fields, strict=True)]
            run.text = torch.cat([run.text, vectors])
            run.items = ItemFeatures(torch.cat([run.items.codes, torch.from_numpy(sids)]),
                                     None if run.items.text is None else torch.cat([run.items.text, vectors]))
            return internal
        stand_in = self.score_codes(vectors, sids)
        reads = sids.copy()  # the codes the model reads for these items in a history
        reads[:, -1] = stand_in
        for m, size in enumerate(run.model.code_sizes):
            if len(reads) and int(reads[:, m].max()) >= size:
                raise InputError(f"code {int(reads[:, m].max())} at position {m} is beyond the model's "
                                 f"vocabulary ({size}) and no sibling stands in for it")
        internal = [run.dataset.catalog.append(i, f) for i, f in zip(item_ids, fields, strict=True)]
        run.text = torch.cat([run.text, vectors])
        run.index.add(sids, stand_in)
        new = (item_snapshot(run.model, vectors, run.items.text is not None) if run.joint
               else ItemFeatures(torch.from_numpy(reads), vectors if run.items.text is not None else None))
        run.items = ItemFeatures(torch.cat([run.items.codes, torch.from_numpy(reads)]),
                                 *(None if old is None else torch.cat([old, extra])
                                   for old, extra in ((run.items.text, new.text),
                                                      (run.items.quantized, new.quantized),
                                                      (run.items.item_vectors, new.item_vectors))))
        return internal
