"""BM25 over item text with ``bm25s``; the query is the search query plus the titles of the
user's history items (DGI's adaptation of a sparse retriever to personalized search)."""

from __future__ import annotations

import bm25s
import numpy as np

from gensid.data.catalog import Catalog
from gensid.data.search import SearchSamples


class BM25Search:
    def __init__(self, catalog: Catalog, k1: float = 1.5, b: float = 0.75):
        self.catalog = catalog
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(bm25s.tokenize(catalog.texts, stopwords="en", show_progress=False),
                             show_progress=False)

    def query_texts(self, samples: SearchSamples) -> list[str]:
        """The query followed by the history items' titles, most recent first."""
        texts = []
        for query, history in zip(samples.queries, samples.histories, strict=True):
            titles = [self.catalog.title(int(i)) for i in history[::-1] if i >= 0]
            texts.append(" ".join([query, *titles]))
        return texts

    def rank(self, samples: SearchSamples, k: int = 20) -> np.ndarray:
        """Top-k item ids [N, k], best first (-1 where fewer items match any query word)."""
        tokens = bm25s.tokenize(self.query_texts(samples), stopwords="en", show_progress=False)
        k = min(k, len(self.catalog))
        items, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return np.where(scores > 0, items, -1).astype(np.int64)
