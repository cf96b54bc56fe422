"""Small shared utilities: atomic writes, JSON lines, seeding, safetensors state."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``.

    A crash never leaves a half-written file at ``path``: readers see the old
    file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomically save tensors with safetensors (no pickle); ``meta`` goes in the header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"meta": json.dumps(meta)} if meta is not None else None
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Load tensors and the ``meta`` header saved by :func:`save_tensors`.

    A truncated or corrupted file raises ``ValueError`` naming the file.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    meta = json.loads(header["meta"]) if "meta" in header else None
    return tensors, meta


class JsonlLog:
    """Append-only JSON-lines log (one event per line, flushed at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **event: Any) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where gensid caches downloads and embeddings (``$GENSID_CACHE`` or ~/.cache/gensid)."""
    root = Path(os.environ.get("GENSID_CACHE", Path.home() / ".cache" / "gensid"))
    root.mkdir(parents=True, exist_ok=True)
    return root
