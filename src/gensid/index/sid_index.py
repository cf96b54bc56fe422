"""A trie over full semantic IDs stored as one dense child table per level.

Node ids at depth m number the distinct length-m prefixes. ``children[m]`` is an
int64 tensor [num_nodes_m, K_m]: the depth-(m+1) node reached by code k from node
n, or -1 if no item has that prefix. Masking logits with ``children[m][node] >= 0``
is all a beam step needs: one gather, no Python loop over beams or codes. Full SIDs
end in a disambiguation code, so each leaf is exactly one item (``leaf_item``).
"""

from __future__ import annotations

import numpy as np
import torch


class SIDIndex:
    def __init__(self, codes: np.ndarray, sizes: list[int]):
        """codes [N, L] int64 full SIDs (unique rows), sizes [L] vocabulary per position."""
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
            _, inverse = np.unique(codes[:, :m], axis=0, return_inverse=True)
            node_of_prefix.append(inverse.reshape(-1))
        self.children: list[torch.Tensor] = []
        for m, k in enumerate(sizes):
            table = np.full((int(node_of_prefix[m].max()) + 1, k), -1, dtype=np.int64)
            table[node_of_prefix[m], codes[:, m]] = node_of_prefix[m + 1]
            self.children.append(torch.from_numpy(table))
        leaves = node_of_prefix[-1]
        if len(np.unique(leaves)) != len(codes):
            raise ValueError("two items share a full SID; add a disambiguation code first")
        leaf_item = np.empty(len(codes), dtype=np.int64)
        leaf_item[leaves] = np.arange(len(codes))
        self.leaf_item = torch.from_numpy(leaf_item)

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def __len__(self) -> int:
        return len(self.codes)

    def is_valid(self, sid: torch.Tensor) -> torch.Tensor:
        """[B, L] codes -> [B] bool: is this a full SID of some item?"""
        node = torch.zeros(sid.shape[0], dtype=torch.long)
        for m, table in enumerate(self.children):
            code = sid[:, m]
            ok = (node >= 0) & (code >= 0) & (code < table.shape[1])
            node = torch.where(ok, table[node.clamp(min=0), code.clamp(0, table.shape[1] - 1)], -1)
        return node >= 0
