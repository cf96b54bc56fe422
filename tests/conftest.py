"""Shared fixtures: paths to the real data (skipped when absent) and small synthetic pieces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real Amazon data lives in ../shared/data)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_sids(rng: np.random.Generator, n: int, sizes: list[int]) -> np.ndarray:
    """n unique full SIDs [n, len(sizes)] drawn uniformly (last position disambiguates)."""
    from gensid.quantize import SemanticIDs

    codes = np.stack([rng.integers(0, k, n) for k in sizes[:-1]], 1)
    return SemanticIDs.from_codes(codes, sizes[:-1]).codes
