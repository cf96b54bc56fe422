"""Small shared utilities: atomic writes, JSON lines, seeding, safetensors state."""

from __future__ import annotations

import hashlib
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

from gensid.errors import RunError


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


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomically save tensors with safetensors (no pickle); ``meta`` and a sha256 of the
    tensors go in the header (safetensors itself checks only the header and the size)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"sha256": tensors_digest(tensors)}
    if meta is not None:
        header["meta"] = json.dumps(meta)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Load tensors and the ``meta`` header saved by :func:`save_tensors`.

    A truncated or corrupted file (header, size, or tensor bytes against the stored sha256)
    raises :class:`~gensid.errors.RunError` naming the file.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad files
        raise RunError(f"{path}: not a readable safetensors file ({exc})") from exc
    if "sha256" in header and tensors_digest(tensors) != header["sha256"]:
        raise RunError(f"{path}: corrupted: the tensor bytes do not match the sha256 stored at save time")
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

    def read(self) -> list[dict]:
        """Every event written so far, oldest first ([] before the first)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where gensid caches downloads and embeddings (``$GENSID_CACHE`` or ~/.cache/gensid)."""
    root = Path(os.environ.get("GENSID_CACHE", Path.home() / ".cache" / "gensid"))
    root.mkdir(parents=True, exist_ok=True)
    return root
