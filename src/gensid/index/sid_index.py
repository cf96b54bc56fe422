"""A trie over semantic IDs stored as one dense child table per level, plus leaf item lists.

Node ids at depth m number the distinct length-m prefixes. ``children[m]`` is an
int64 tensor [num_nodes_m, K_m]: the depth-(m+1) node reached by code k from node
n, or -1 if no item has that prefix. Masking logits with ``children[m][node] >= 0``
is all a beam step needs: one gather, no Python loop over beams or codes.

A leaf (a full SID) holds one or more items (the inverted index SID -> items), stored
CSR-style: the items of leaf ``l`` are ``leaf_items[leaf_start[l]:leaf_start[l + 1]]``,
in item-id order. With TIGER's disambiguation code every leaf holds one item; with
the learnable SIDs of the joint strategies items may share a leaf and are ordered by
a geometric score at search time.

A leaf may be *scored as* another code of its parent (``leaf_score_code``): an item added after
training under a prefix that already has items gets a disambiguation code the model never
learned for it, so the beam scores its leaf with the last-position log-probability of its most
similar sibling's code instead (:meth:`last_level_log_probs`). Leaves of the trained items score
as their own code, and the model's outputs (softmax normaliser included) do not change.
"""

from __future__ import annotations

import numpy as np
import torch


class SIDIndex:
    def __init__(self, codes: np.ndarray, sizes: list[int]):
        """codes [N, L] int64 SIDs, sizes [L] vocabulary per position."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(sizes):
            raise ValueError(f"codes must be [N, {len(sizes)}], got {codes.shape}")
        for m, k in enumerate(sizes):
            if len(codes) and (codes[:, m].min() < 0 or codes[:, m].max() >= k):
                raise ValueError(f"codes at position {m} must lie in [0, {k})")
        self.codes = codes
        self.sizes = list(sizes)
        node_of_prefix = [np.zeros(len(codes), dtype=np.int64)]  # depth 0: the root
        for m in range(1, len(sizes) + 1):
            # a depth-m node = (its parent node, its code): one int64 key, a 1-D unique in prefix order
            key = node_of_prefix[-1] * sizes[m - 1] + codes[:, m - 1]
            node_of_prefix.append(np.unique(key, return_inverse=True)[1].reshape(-1))
        self.children: list[torch.Tensor] = []
        for m, k in enumerate(sizes):
            table = np.full((int(node_of_prefix[m].max()) + 1, k), -1, dtype=np.int64)
            table[node_of_prefix[m], codes[:, m]] = node_of_prefix[m + 1]
            self.children.append(torch.from_numpy(table))
        self.leaf_of_item = node_of_prefix[-1]
        self.leaf_score_code: torch.Tensor | None = None  # [num_leaves] code a leaf scores as, -1 = its own
        self._build_leaves()

    def _build_leaves(self) -> None:
        """CSR leaf item lists from ``leaf_of_item`` [N] (items by leaf, then item id)."""
        leaf_of_item = self.leaf_of_item
        order = np.lexsort((np.arange(len(leaf_of_item)), leaf_of_item))
        counts = np.bincount(leaf_of_item, minlength=self._num_leaves(self.children[-1].numpy()))
        self.leaf_items = torch.from_numpy(order.astype(np.int64))
        self.leaf_start = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self.max_leaf_size = int(counts.max()) if len(counts) else 0

    def add(self, codes: np.ndarray, score_codes: np.ndarray | None = None) -> np.ndarray:
        """Insert items with SIDs ``codes`` [n, L] (ids ``len(self)..len(self)+n-1``), growing the
        child tables by a row per new node (and by columns where a code is beyond ``sizes``).
        ``score_codes`` [n]: the last-position code each new item's leaf is scored as (its own
        code, or -1, for none). Returns their item ids [n]; they are retrievable at once."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.num_levels)
        if len(codes) and codes.min() < 0:
            raise ValueError("codes must be >= 0")
        tables = [t.numpy() for t in self.children]
        leaves = np.empty(len(codes), dtype=np.int64)
        for row, sid in enumerate(codes):
            node = 0
            for m, code in enumerate(sid):
                table = tables[m]
                if code >= table.shape[1]:  # a code beyond the vocabulary: widen this level
                    table = np.pad(table, ((0, 0), (0, code + 1 - table.shape[1])), constant_values=-1)
                    self.sizes[m] = table.shape[1]
                if table[node, code] < 0:  # a new prefix: a new node at the next depth
                    table[node, code] = len(tables[m + 1]) if m + 1 < len(tables) else self._num_leaves(table)
                    if m + 1 < len(tables):
                        tables[m + 1] = np.pad(tables[m + 1], ((0, 1), (0, 0)), constant_values=-1)
                tables[m] = table
                node = int(table[node, code])
            leaves[row] = node
        self.children = [torch.from_numpy(t) for t in tables]
        ids = np.arange(len(self.codes), len(self.codes) + len(codes))
        self.codes = np.concatenate([self.codes, codes])
        self.leaf_of_item = np.concatenate([self.leaf_of_item, leaves])
        self._build_leaves()
        if score_codes is not None:
            self._score_leaves(leaves, codes[:, -1], np.asarray(score_codes, dtype=np.int64).reshape(-1))
        elif self.leaf_score_code is not None:
            self._score_leaves(leaves, codes[:, -1], codes[:, -1])
        return ids

    def _score_leaves(self, leaves: np.ndarray, own: np.ndarray, score: np.ndarray) -> None:
        num_leaves = len(self.leaf_start) - 1
        table = (self.leaf_score_code.numpy() if self.leaf_score_code is not None
                 else np.zeros(0, dtype=np.int64))
        table = np.concatenate([table, np.full(num_leaves - len(table), -1, dtype=np.int64)])
        aliased = (score >= 0) & (score != own)
        table[leaves[aliased]] = score[aliased]
        self.leaf_score_code = torch.from_numpy(table) if (table >= 0).any() else None

    def last_level_log_probs(self, log_probs: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
        """The last position's log-probabilities [..., K_model] from the model and the leaves [..., K]
        each code leads to (-1 = none) -> the log-probability each leaf is scored by [..., K]: its own
        code's, or its stand-in code's (``leaf_score_code``); -inf for codes beyond the model's
        vocabulary that stand in for nothing."""
        width = self.children[-1].shape[1]
        if log_probs.shape[-1] < width:
            log_probs = torch.nn.functional.pad(log_probs, (0, width - log_probs.shape[-1]), value=float("-inf"))
        if self.leaf_score_code is None:
            return log_probs
        stand_in = torch.where(leaves >= 0, self.leaf_score_code[leaves.clamp(min=0)], -1)
        return torch.where(stand_in >= 0, log_probs.gather(-1, stand_in.clamp(min=0)), log_probs)

    def score_code(self, items: np.ndarray) -> np.ndarray:
        """The last-position code each item's leaf is scored as [n] (its own code unless added with a
        stand-in)."""
        own = self.codes[items, -1]
        if self.leaf_score_code is None:
            return own
        stand_in = self.leaf_score_code.numpy()[self.leaf_of_item[items]]
        return np.where(stand_in >= 0, stand_in, own)

    @staticmethod
    def _num_leaves(last_table: np.ndarray) -> int:
        return int(last_table.max()) + 1 if last_table.size else 0

    def child_codes(self, prefix: np.ndarray) -> np.ndarray:
        """Codes already used after ``prefix`` [m] (m < L), sorted; empty if the prefix is new."""
        node = 0
        for m, code in enumerate(prefix):
            table = self.children[m]
            if not 0 <= code < table.shape[1] or table[node, code] < 0:
                return np.zeros(0, dtype=np.int64)
            node = int(table[node, code])
        return (self.children[len(prefix)][node] >= 0).nonzero()[:, 0].numpy()

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def __len__(self) -> int:
        return len(self.codes)

    def collision_rate(self) -> float:
        """Share of items whose leaf holds another item too."""
        sizes = (self.leaf_start[1:] - self.leaf_start[:-1]).numpy()
        return float(sizes[sizes > 1].sum() / max(len(self.codes), 1))

    def items_of_leaves(self, leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """leaves [...] (-1 = none) -> items [..., S] (-1 padded), S = largest leaf among them."""
        safe = leaves.clamp(min=0)
        start, count = self.leaf_start[safe], self.leaf_start[safe + 1] - self.leaf_start[safe]
        count = torch.where(leaves >= 0, count, 0)
        width = max(int(count.max()) if count.numel() else 0, 1)
        offset = torch.arange(width)
        valid = offset < count.unsqueeze(-1)
        position = (start.unsqueeze(-1) + offset).clamp(max=len(self.leaf_items) - 1)
        return torch.where(valid, self.leaf_items[position], -1), valid

    def sid_sizes(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] (-1 = none) -> how many items share each one's SID [...] (1 where -1)."""
        sizes = self.leaf_start[1:] - self.leaf_start[:-1]
        leaves = torch.from_numpy(self.leaf_of_item)[items.clamp(min=0)]
        return torch.where(items >= 0, sizes[leaves], 1)

    def is_valid(self, sid: torch.Tensor) -> torch.Tensor:
        """[B, L] codes -> [B] bool: is this a full SID of some item?"""
        node = torch.zeros(sid.shape[0], dtype=torch.long)
        for m, table in enumerate(self.children):
            code = sid[:, m]
            ok = (node >= 0) & (code >= 0) & (code < table.shape[1])
            node = torch.where(ok, table[node.clamp(min=0), code.clamp(0, table.shape[1] - 1)], -1)
        return node >= 0
